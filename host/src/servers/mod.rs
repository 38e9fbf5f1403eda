//! The servers firedrill talks to and the throwaway ones it starts:
//! PostgreSQL (connection URLs, TLS, the client tools picked per server
//! major, local clusters) and Redis (URLs, a small RESP client, the RDB
//! snapshot over the replication protocol, and [`redis::client`], the
//! `redis` crate's client that coordination and the keyvalue capability use).
//!
//! Invariants: below the plugin host in the layering (see `src/layers.rs`):
//! nothing here knows about jobs, plugins, coordination, the configuration
//! or the agent; from the archive it takes only manifest types and the
//! writer a snapshot streams into. Failures are [`ServerError`]s, which a
//! job's error carries as they are (`JobError::Server`). A password never reaches a message (URLs are shown through
//! `telemetry::redact::redact_url`) or a command line.

pub mod local_pg;
pub mod local_redis;
pub mod pg;
pub mod pg_tls;
pub mod redis;
pub mod replication;

/// Why talking to (or starting) a server failed. A job's error carries it
/// as it is (`JobError::Server`, transparent), so a message reads the same
/// whichever layer reports it.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A URL, a setting or an installation that must be fixed first; the
    /// message names the fix.
    #[error("{0}")]
    Config(String),
    /// `url` is always the redacted form.
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("database {database}: cannot {what}: {message}")]
    Sql {
        database: String,
        what: String,
        message: String,
    },
    /// The replication protocol (base backups, WAL streaming) failed or the
    /// server sent what the protocol does not allow; `url` is redacted.
    #[error("replication connection to {url}: {message}")]
    Replication { url: String, message: String },
    /// A client tool, a local server or a Redis connection failed.
    #[error("{tool}: {message}")]
    Tool { tool: String, message: String },
    /// Writing what a server sent (a Redis snapshot) into the store.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
}

impl ServerError {
    /// A failed statement on `database`, what it was for, and for the
    /// SQLSTATE classes an operator fixes on the server, a hint saying so.
    pub fn sql(database: &str, what: &str, e: tokio_postgres::Error) -> ServerError {
        let message = match e.as_db_error() {
            Some(db) => {
                // The classes an operator fixes on the server, not in firedrill.
                let hint = match db.code().code() {
                    "53100" => ": the server is out of disk space",
                    "53200" => ": the server is out of memory",
                    "57014" => ": a statement timeout or a cancel on the server stopped it",
                    "57P01" | "57P02" | "57P03" => ": the server shut down or restarted",
                    _ => "",
                };
                format!("{} ({}){hint}", db.message(), db.code().code())
            }
            None => e.to_string(),
        };
        ServerError::Sql {
            database: database.into(),
            what: what.into(),
            message,
        }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now, never handed out
/// before by this process, and below the kernel's ephemeral range: the
/// callers pick a port before their server binds it, and in between an
/// outgoing connection could be given an ephemeral one (the kernel takes
/// those from 32768 up by default). For the TCP throwaway servers of the
/// tests and benchmarks.
pub fn free_port() -> std::io::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 20000.min(below / 2);
    let mut last = None;
    for _ in 0..1000 {
        let port = rand::random_range(low..below);
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) {
            continue;
        }
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => {
                given.push(port);
                return Ok(port);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::other(format!("every port from {low} to {below} was taken"))
    }))
}
