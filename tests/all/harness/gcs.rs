//! Google Cloud Storage: the run's fake-gcs-server (installed by
//! scripts/setup into target/tools), taking JSON API calls without auth.

use super::{
    dechunked, free_port, http, http_get, log_file, root, scratch, spawn_kept, wait_until,
};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub struct Gcs {
    pub port: u16,
}

impl Gcs {
    /// A new, empty bucket (the emulator takes JSON API calls without auth).
    pub fn bucket(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let r = http(
            self.port,
            "POST",
            "/storage/v1/b",
            &[("content-type", "application/json")],
            &format!("{{\"name\":\"{name}\"}}"),
        );
        assert_eq!(r.status, 200, "creating GCS bucket {name}: {}", r.body);
        name
    }

    /// The environment every Google client reads for an emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{}", self.port))]
    }

    /// Every object in `bucket` with its size, from the emulator's own
    /// listing.
    pub fn objects(&self, bucket: &str) -> Vec<(String, u64)> {
        let r = dechunked(http(
            self.port,
            "GET",
            &format!("/storage/v1/b/{bucket}/o"),
            &[],
            "",
        ));
        assert_eq!(r.status, 200, "listing {bucket}: {}", r.body);
        let items = r.json()["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .map(|o| {
                let size = o["size"].as_str().unwrap().parse().unwrap();
                (o["name"].as_str().unwrap().to_string(), size)
            })
            .collect()
    }
}

pub fn gcs() -> &'static Gcs {
    static G: OnceLock<Gcs> = OnceLock::new();
    G.get_or_init(|| {
        let bin = root().join("target/tools/fake-gcs-server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup",
            bin.display()
        );
        let dir = scratch().join("gcs");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let log = dir.join("fake-gcs-server.log");
        let (o, e) = log_file(&log);
        let mut cmd = Command::new(bin);
        cmd.args([
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-backend",
            "filesystem",
            "-log-level",
            "warn",
            // Resumable upload sessions are handed out at this address.
            "-external-url",
            &format!("http://127.0.0.1:{port}"),
        ])
        .arg("-filesystem-root")
        .arg(dir.join("data"))
        .stdout(o)
        .stderr(e);
        let mut child = spawn_kept(cmd, libc::SIGKILL);
        wait_until("fake-gcs-server", &mut child, &log, || {
            http_get(port, "/storage/v1/b").is_some_and(|s| s == 200)
        });
        Gcs { port }
    })
}
