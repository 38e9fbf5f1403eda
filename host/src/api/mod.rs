//! The agent's HTTP surface. Today: `/health` (the process answers) and
//! `/ready` (start-up finished and not shutting down). The authenticated `/v1`
//! API grows here.
//!
//! Invariant: nothing here blocks a job; a slow or hostile client costs one
//! task, bounded by a read timeout and a request-size cap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Shared with the agent: flipped to ready after start-up, back on shutdown.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Binds `addr` and serves until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    ready: Arc<Readiness>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let ready = ready.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request line and headers, at most 4 KiB, for at most 5 s.
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        let m = sock.read(&mut buf[n..]).await?;
                        if m == 0 {
                            break;
                        }
                        n += m;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let request = String::from_utf8_lossy(&buf[..n]);
                let mut parts = request.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, body) = match (method, path) {
                    ("GET" | "HEAD", "/health") => ("200 OK", "{\"status\":\"ok\"}"),
                    ("GET" | "HEAD", "/ready") if ready.get() => {
                        ("200 OK", "{\"status\":\"ready\"}")
                    }
                    ("GET" | "HEAD", "/ready") => {
                        ("503 Service Unavailable", "{\"status\":\"not ready\"}")
                    }
                    ("GET" | "HEAD", _) => ("404 Not Found", "{\"error\":\"not found\"}"),
                    _ => (
                        "405 Method Not Allowed",
                        "{\"error\":\"method not allowed\"}",
                    ),
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    body.len(),
                    if method == "HEAD" { "" } else { body }
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok((local, task))
}
