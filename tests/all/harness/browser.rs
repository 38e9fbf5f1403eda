//! A real browser for the status page: Debian's Chromium, headless, driven
//! over WebDriver by its chromedriver (both installed by scripts/setup),
//! on a port of its own, one session per [`Browser`], with JavaScript off
//! (the page must work without it).

use super::{free_port, log_file, spawn_kept, tempdir, wait_until};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command};

pub struct Browser {
    port: u16,
    session: String,
    driver: Child,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    pub fn start() -> Browser {
        let port = free_port();
        let dir = tempdir("chromedriver");
        let log = dir.join("chromedriver.log");
        let (o, e) = log_file(&log);
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}")).stdout(o).stderr(e);
        let mut driver = spawn_kept(cmd, libc::SIGTERM);
        wait_until("chromedriver", &mut driver, &log, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let profile = dir.join("profile");
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // An element a page is still loading is waited for.
            "timeouts": {"implicit": 5000},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--blink-settings=scriptEnabled=false",
                         "--window-size=1280,1400", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let (status, v) = webdriver(port, "POST", "/session", &caps.to_string());
        assert_eq!(status, 200, "no browser session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            port,
            session,
            driver,
        }
    }

    fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let path = format!("/session/{}{path}", self.session);
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, v) = webdriver(self.port, method, &path, &body);
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    pub fn go(&self, url: &str) {
        self.call("POST", "/url", serde_json::json!({ "url": url }));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", serde_json::Value::Null)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Waits (up to 30 s) until the page's URL is one `at` accepts: a click
    /// that submits a form returns before the redirect after it is followed.
    pub fn wait_url(&self, at: impl Fn(&str) -> bool) -> String {
        let start = std::time::Instant::now();
        loop {
            let url = self.url();
            if at(&url) {
                return url;
            }
            assert!(
                start.elapsed().as_secs() < 30,
                "never there: {url}: {}",
                self.source()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn source(&self) -> String {
        self.call("GET", "/source", serde_json::Value::Null)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            serde_json::json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no {css}: {v}"))
            .to_string()
    }

    pub fn count(&self, css: &str) -> usize {
        self.call(
            "POST",
            "/elements",
            serde_json::json!({"using": "css selector", "value": css}),
        )
        .as_array()
        .map_or(0, Vec::len)
    }

    pub fn text(&self, css: &str) -> String {
        let e = self.element(css);
        self.call(
            "GET",
            &format!("/element/{e}/text"),
            serde_json::Value::Null,
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            serde_json::json!({ "text": text }),
        );
    }

    pub fn click(&self, css: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &format!("/element/{e}/click"),
            serde_json::json!({}),
        );
    }

    pub fn cookies(&self) -> Vec<serde_json::Value> {
        self.call("GET", "/cookie", serde_json::Value::Null)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The page as a PNG.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let b64 = self.call("GET", "/screenshot", serde_json::Value::Null);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = std::panic::catch_unwind(|| webdriver(self.port, "DELETE", &path, ""));
        unsafe { libc::kill(self.driver.id() as i32, libc::SIGTERM) };
        let _ = self.driver.wait();
        super::not_at_exit(self.driver.id());
    }
}

/// One WebDriver request: chromedriver keeps connections open, so the
/// answer is read by its content-length, not to the end of the stream.
fn webdriver(port: u16, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("chromedriver answers");
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut bytes = vec![0; len];
    r.read_exact(&mut bytes).unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}
