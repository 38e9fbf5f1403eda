//! Azure Blob Storage: the run's Azurite (installed by scripts/setup into
//! target/tools), with an account of the run's own and a random key;
//! requests are signed with it, as Azure checks them.

use super::{dechunked, free_port, http, log_file, root, scratch, spawn_kept, wait_until, Reply};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub struct Azurite {
    pub port: u16,
    pub account: String,
    pub key: String,
}

impl Azurite {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, self.account)
    }

    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
            self.account,
            self.key,
            self.endpoint()
        )
    }

    /// The account and key variables of the Azure CLI, with the endpoint.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_SERVICE_ENDPOINT", self.endpoint()),
            ("AZURE_STORAGE_ACCOUNT", self.account.clone()),
            ("AZURE_STORAGE_KEY", self.key.clone()),
        ]
    }

    /// A new container, created with a request signed by the account key
    /// (Azurite checks signatures as Azure does).
    pub fn container(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = format!("/{}/{name}?restype=container", self.account);
        let r = self.signed("PUT", &path, &name, "restype:container");
        assert_eq!(r.status, 201, "creating container {name}: {}", r.body);
        name
    }

    /// Every blob in `container` with its size, from the emulator's own
    /// listing.
    pub fn blobs(&self, container: &str) -> Vec<(String, u64)> {
        let path = format!("/{}/{container}?restype=container&comp=list", self.account);
        let r = dechunked(self.signed("GET", &path, container, "comp:list\nrestype:container"));
        assert_eq!(r.status, 200, "listing {container}: {}", r.body);
        let mut out = Vec::new();
        for blob in r.body.split("<Blob>").skip(1) {
            let field = |tag: &str| {
                let open = format!("<{tag}>");
                let start = blob.find(&open).unwrap() + open.len();
                blob[start..start + blob[start..].find('<').unwrap()].to_string()
            };
            out.push((field("Name"), field("Content-Length").parse().unwrap()));
        }
        out
    }

    /// A Shared Key request: `resource` is the path after the account,
    /// `query` the canonicalized query lines.
    fn signed(&self, method: &str, path: &str, resource: &str, query: &str) -> Reply {
        use base64::Engine as _;
        use hmac::Mac as _;
        let date = rfc1123_now();
        let version = "2021-08-06";
        let mut canon = format!("/{}/{}/{resource}", self.account, self.account);
        if !query.is_empty() {
            canon.push('\n');
            canon.push_str(query);
        }
        let to_sign = format!(
            "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{canon}"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(&self.key)
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let auth = format!("SharedKey {}:{sig}", self.account);
        http(
            self.port,
            method,
            path,
            &[
                ("x-ms-date", &date),
                ("x-ms-version", version),
                ("authorization", &auth),
            ],
            "",
        )
    }
}

/// The current time as HTTP dates are written.
fn rfc1123_now() -> String {
    let t = unsafe { libc::time(std::ptr::null_mut()) };
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::gmtime_r(&t, &mut tm) };
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[tm.tm_wday as usize],
        tm.tm_mday,
        MONTHS[tm.tm_mon as usize],
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

pub fn azurite() -> &'static Azurite {
    static A: OnceLock<Azurite> = OnceLock::new();
    A.get_or_init(|| {
        let bin = root().join("target/tools/azurite/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup",
            bin.display()
        );
        let dir = scratch().join("azurite");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let log = dir.join("azurite.log");
        let (o, e) = log_file(&log);
        // An account of this run's own, with a random key: a test that
        // looks for the key in output finds only what leaked.
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let account = "firedrilltest".to_string();
        let mut cmd = Command::new(bin);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.join("data"))
            // opendal may speak a newer API version than this Azurite knows.
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
            .env("AZURITE_ACCOUNTS", format!("{account}:{key}"))
            .stdout(o)
            .stderr(e);
        let mut child = spawn_kept(cmd, libc::SIGKILL);
        wait_until("azurite", &mut child, &log, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Azurite { port, account, key }
    })
}
