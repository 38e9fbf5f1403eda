//! The telemetry receiver: rotel, a real OTLP receiver (gRPC and HTTP),
//! one per test that starts it, dumping what it receives to a file as text.

use super::{free_port, root, tempdir};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real OTLP receiver (rotel, fetched by scripts/setup) on random local
/// gRPC and HTTP ports; what it receives is dumped to a file as text.
pub struct Rotel {
    child: Child,
    pub grpc: u16,
    pub http: u16,
    out: PathBuf,
}

impl Rotel {
    pub fn start() -> Rotel {
        let bin = root().join("target/tools/rotel-agent-0.0.1a15");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup",
            bin.display()
        );
        let (grpc, http) = (free_port(), free_port());
        let out = tempdir("rotel").join("received.txt");
        let child = Command::new(bin)
            .args(["start", "--exporter", "blackhole"])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args([
                "--debug-log",
                "traces",
                "--debug-log",
                "metrics",
                "--debug-log",
                "logs",
            ])
            .args(["--debug-log-verbosity", "detailed"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", http)).is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "rotel never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Rotel {
            child,
            grpc,
            http,
            out,
        }
    }

    pub fn received(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).into_owned()
    }

    /// What it received once every needle is in it (or the timeout passed).
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.received();
            if needles.iter().all(|n| text.contains(n)) || start.elapsed() > timeout {
                return text;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
