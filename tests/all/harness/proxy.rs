//! The fault proxy: an HTTP proxy in front of a store (the run's S3 by
//! default) that answers 503, drops, cuts off or delays requests in a fixed
//! pattern, counting what it injected, so that a test can assert that the
//! product retried through every kind.

use super::{free_port, s3};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

/// What a [`FaultProxy`] does to the requests it passes on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Faults {
    /// A fixed pattern: 5 % answered 503 SlowDown, ~3 % dropped without an
    /// answer, ~3 % cut off mid-answer, 10 % delayed by 300 ms.
    Some,
    /// Every request answered 503: the store is down.
    Down,
    None,
}

/// Injected so far, by kind.
#[derive(Default, Debug)]
pub struct FaultCounts {
    pub requests: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
    pub cut: std::sync::atomic::AtomicU64,
    pub slow: std::sync::atomic::AtomicU64,
}

/// An HTTP proxy in front of the test S3 server that injects faults. One
/// request per connection (it asks both sides to close), so each fault hits
/// exactly one request; the pattern is fixed so a run always sees every kind.
pub struct FaultProxy {
    pub port: u16,
    faults: std::sync::Arc<Mutex<Faults>>,
    pub counts: std::sync::Arc<FaultCounts>,
}

impl FaultProxy {
    pub fn start(faults: Faults) -> FaultProxy {
        FaultProxy::start_to(s3().port, faults)
    }

    /// A fault proxy in front of any HTTP server on 127.0.0.1 (a store).
    pub fn start_to(upstream: u16, faults: Faults) -> FaultProxy {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let proxy = FaultProxy {
            port,
            faults: std::sync::Arc::new(Mutex::new(faults)),
            counts: Default::default(),
        };
        let (f, c) = (proxy.faults.clone(), proxy.counts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (f, c) = (f.clone(), c.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(conn, upstream, *f.lock().unwrap(), &c);
                });
            }
        });
        proxy
    }

    pub fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    /// The CLI's S3 environment, through this proxy.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = s3().env();
        env[0] = ("S3_ENDPOINT", format!("http://127.0.0.1:{}", self.port));
        env
    }
}

fn proxy_one(
    client: TcpStream,
    upstream: u16,
    faults: Faults,
    counts: &FaultCounts,
) -> std::io::Result<()> {
    use std::io::{BufRead, Read, Write};
    use std::sync::atomic::Ordering::Relaxed;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = std::io::BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if !lower.starts_with("connection:") {
            head.push(line);
        }
    }
    // The body as it came (chunk framing included), to pass on unchanged.
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            body.extend_from_slice(line.as_bytes());
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if size == 0 {
                loop {
                    let mut t = String::new();
                    reader.read_line(&mut t)?;
                    body.extend_from_slice(t.as_bytes());
                    if t == "\r\n" || t.is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    let n = counts.requests.fetch_add(1, Relaxed);
    let mut client = client;
    let refuse = |client: &mut TcpStream| {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>injected by the test proxy</Message></Error>";
        write!(
            client,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xml}",
            xml.len()
        )
    };
    let mut cut = false;
    match faults {
        Faults::Down => {
            counts.errors.fetch_add(1, Relaxed);
            return refuse(&mut client);
        }
        Faults::Some if n % 20 == 7 => {
            counts.errors.fetch_add(1, Relaxed);
            return refuse(&mut client);
        }
        Faults::Some if n % 31 == 13 => {
            counts.dropped.fetch_add(1, Relaxed);
            return client.shutdown(std::net::Shutdown::Both);
        }
        Faults::Some if n % 29 == 5 => cut = true,
        Faults::Some if n % 10 == 3 => {
            counts.slow.fetch_add(1, Relaxed);
            std::thread::sleep(Duration::from_millis(300));
        }
        _ => {}
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut request = head.concat();
    request.push_str("connection: close\r\n\r\n");
    up.write_all(request.as_bytes())?;
    up.write_all(&body)?;
    if cut {
        // The head and a little of the body, then the connection drops.
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(0);
        if answer.len() > end + 16 {
            counts.cut.fetch_add(1, Relaxed);
            client.write_all(&answer[..end + 16])?;
            return client.shutdown(std::net::Shutdown::Both);
        }
        return client.write_all(&answer);
    }
    std::io::copy(&mut up, &mut client)?;
    Ok(())
}
