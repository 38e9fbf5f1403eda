//! S3: the run's s3s-fs (an S3-compatible server keeping each bucket as a
//! directory), with an access key of its own and a secret key per run.

use super::{free_port, log_file, scratch, spawn_kept, wait_until};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub struct S3 {
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    pub root: PathBuf,
}

impl S3 {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A new bucket (s3s-fs keeps each bucket as a directory).
    pub fn bucket(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed));
        std::fs::create_dir_all(self.root.join(&name)).unwrap();
        name
    }

    /// The environment the CLI reads S3 settings from.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("S3_ENDPOINT", self.endpoint()),
            ("S3_REGION", "us-east-1".into()),
            ("S3_ACCESS_KEY_ID", self.access_key.clone()),
            ("S3_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }
}

fn s3s_fs() -> PathBuf {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or(home.join(".cargo"));
    let p = cargo_home.join("bin/s3s-fs");
    if p.exists() {
        return p;
    }
    PathBuf::from("s3s-fs")
}

pub fn s3() -> &'static S3 {
    static S: OnceLock<S3> = OnceLock::new();
    S.get_or_init(|| {
        let dir = scratch().join("s3");
        let root = dir.join("data");
        std::fs::create_dir_all(&root).unwrap();
        let port = free_port();
        let log = dir.join("s3s.log");
        let (o, e) = log_file(&log);
        let access_key = "firedrill-test".to_string();
        let secret_key = format!("secret-{}-{}", std::process::id(), port);
        let mut cmd = Command::new(s3s_fs());
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            &access_key,
            "--secret-key",
            &secret_key,
        ])
        .arg(&root)
        .stdout(o)
        .stderr(e);
        let mut child = spawn_kept(cmd, libc::SIGKILL);
        wait_until("s3s-fs", &mut child, &log, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        S3 {
            port,
            access_key,
            secret_key,
            root,
        }
    })
}
