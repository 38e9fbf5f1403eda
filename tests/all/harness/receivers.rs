//! Where notifications arrive: an HTTP receiver (a webhook or a Slack
//! incoming webhook) that records every request and answers 503 to the
//! first few, a listener that never answers, and an SMTP server (aiosmtpd
//! from target/tools, STARTTLS required, under the run's own CA) that keeps
//! each message in a maildir.

use super::{free_port, log_file, spawn_kept, tempdir, wait_until};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Received {
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct HttpReceiver {
    pub port: u16,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl HttpReceiver {
    /// Answers the first `fail_first` requests with 503, then 200.
    pub fn start(fail_first: usize) -> HttpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let n = log.lock().unwrap().len();
                let status = if n < fail_first { 503 } else { 200 };
                if let Some(r) = answer(conn, status) {
                    log.lock().unwrap().push(r);
                }
            }
        });
        HttpReceiver { port, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far, answered or refused.
    pub fn requests(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests answered 200.
    pub fn delivered(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }
}

fn answer(conn: TcpStream, status: u16) -> Option<Received> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    );
    Some(Received {
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        status,
    })
}

/// A port that takes connections and never answers (kept while the
/// listener lives: the kernel accepts into its backlog).
pub fn black_hole() -> (u16, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    (l.local_addr().unwrap().port(), l)
}

pub struct Smtp {
    pub port: u16,
    /// The CA that signed the server's certificate (for `ca_file`).
    pub ca: PathBuf,
    maildir: PathBuf,
    child: std::process::Child,
}

impl Smtp {
    pub fn start() -> Smtp {
        let dir = tempdir("smtp");
        super::self_signed_ca(&dir, "ca");
        super::issue_cert(
            &dir,
            "smtp",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        let maildir = dir.join("mail");
        let port = free_port();
        let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/aiosmtpd");
        assert!(
            tools.exists(),
            "{} is missing: run scripts/setup",
            tools.display()
        );
        let log = dir.join("aiosmtpd.log");
        let (o, e) = log_file(&log);
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", &tools)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .arg("--tlscert")
            .arg(dir.join("smtp.crt"))
            .arg("--tlskey")
            .arg(dir.join("smtp.key"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(o)
            .stderr(e);
        let mut child = spawn_kept(cmd, libc::SIGTERM);
        wait_until("aiosmtpd", &mut child, &log, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Smtp {
            port,
            ca: dir.join("ca.crt"),
            maildir,
            child,
        }
    }

    /// Every message received, as stored (headers and body).
    pub fn messages(&self) -> Vec<String> {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|d| {
                d.filter_map(|f| std::fs::read_to_string(f.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        super::not_at_exit(self.child.id());
    }
}
