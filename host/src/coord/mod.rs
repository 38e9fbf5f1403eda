//! Coordination across a fleet of agents: leases per (job, source) with
//! fencing tokens, a fleet-wide quota of concurrent drills, and events.
//!
//! With Redis configured every agent sharing the namespace sees the same
//! locks, quota and event stream; without it the agent runs single-node and
//! the same calls are answered in-process, so the jobs never ask which.
//!
//! Invariants: a fencing token is never reused (Redis `INCR`, or an
//! in-process counter); a lease whose renewal failed reports itself lost and
//! its holder's commit check fails; a slot marked done is never run again by
//! anyone; nothing here holds a Redis connection across a job (commands are
//! short, except the one shared blocking read of the event stream's tail on
//! its own connection).
//! Agent keys live under `<namespace>` and plugin keys under
//! `<namespace>plugin:`, so no plugin grant reaches a lock.

mod events;
mod lock;
mod quota;

pub use events::{Event, EventCursor, EventReader};
pub use lock::{CommitGuard, Lease, TryLock};
pub use quota::Permit;

use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("redis at {url}: {message} (check coordination.redis_url and that the server is up)")]
    Redis { url: String, message: String },
    #[error("cannot take the {job} lease on source {name:?} in the lock directory {dir}: {message} (set coordination.lock_dir or FIREDRILL_LOCK_DIR to a directory of this user, or of root, that others cannot write to; the agent and hand-run commands must name the same one)")]
    LockFile {
        job: String,
        name: String,
        dir: String,
        message: String,
    },
    #[error("the {job} lease on source {name:?} was lost (fencing token {token}): another agent may hold it now, so this run must not commit")]
    LeaseLost {
        job: String,
        name: String,
        token: u64,
    },
}

/// How an agent coordinates.
#[derive(Debug, Clone)]
pub struct CoordOptions {
    /// `redis://[user:password@]host:port/db`; none means single-node.
    pub redis_url: Option<String>,
    /// Prefix of every key, e.g. `firedrill:`.
    pub namespace: String,
    /// How long a lease outlives its holder; renewed every third of it.
    pub lease: Duration,
    /// Drills running at once across the fleet.
    pub drill_quota: usize,
    /// Events kept on the capped stream for late readers.
    pub stream_len: usize,
    /// This agent's name in lock values and events.
    pub node: String,
    /// Without Redis: where leases are also taken as file locks, so a CLI
    /// job and an agent on this node never run the same (job, source) at
    /// once. None: in-process only (tests, benches).
    pub lock_dir: Option<std::path::PathBuf>,
    /// What else names a lease besides (job, source) in `lock_dir`: the
    /// store, so agents of different stores that reuse a source name do not
    /// wait for each other.
    pub scope: String,
}

impl Default for CoordOptions {
    fn default() -> Self {
        CoordOptions {
            redis_url: None,
            namespace: "firedrill:".into(),
            lease: Duration::from_secs(30),
            drill_quota: 2,
            stream_len: 1000,
            node: default_node(),
            lock_dir: None,
            scope: String::new(),
        }
    }
}

/// Where a node's agents and CLI runs meet without Redis: FIREDRILL_LOCK_DIR,
/// else `/run/firedrill` when it exists (the systemd unit's runtime
/// directory: the agent's user and root both use it) or for root, else
/// `/tmp/firedrill-<uid>`. Fixed paths, not TMPDIR or XDG_RUNTIME_DIR: a
/// service and an operator's shell see different values of those, and
/// would not meet. Made 0700; one that others can write to, or another
/// user's (but for root), is refused when a lease is taken.
pub fn default_lock_dir(env: &dyn Fn(&str) -> Option<String>) -> std::path::PathBuf {
    if let Some(d) = env("FIREDRILL_LOCK_DIR").filter(|d| !d.trim().is_empty()) {
        return d.into();
    }
    let run = std::path::Path::new("/run/firedrill");
    // SAFETY: geteuid has no preconditions and cannot fail.
    match unsafe { libc::geteuid() } {
        _ if run.is_dir() => run.into(),
        0 => run.into(),
        uid => format!("/tmp/firedrill-{uid}").into(),
    }
}

/// `hostname/pid`: unique per running agent.
pub fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}/{}", std::process::id())
}

#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    opts: CoordOptions,
    backend: Backend,
}

enum Backend {
    Local(local::Local),
    Redis(Redis),
}

/// The Redis side: one multiplexed connection for short commands.
struct Redis {
    client: redis::Client,
    conn: redis::aio::MultiplexedConnection,
    /// For messages: the URL without its password.
    shown: String,
    /// The one tail of the event stream that every events reader shares.
    events: events::Hub,
}

impl Coordinator {
    /// Connects to Redis (when configured) and checks it answers.
    pub async fn new(opts: CoordOptions) -> Result<Coordinator, CoordError> {
        let backend = match &opts.redis_url {
            None => Backend::Local(local::Local::new(opts.stream_len)),
            Some(url) => {
                let shown = crate::telemetry::redact::redact_url(url);
                let err = |e: redis::RedisError| CoordError::Redis {
                    url: shown.clone(),
                    message: e.to_string(),
                };
                let client = crate::servers::redis::client(url).map_err(err)?;
                let conn = client
                    .get_multiplexed_async_connection_with_config(&short_commands())
                    .await
                    .map_err(err)?;
                let mut c = conn.clone();
                let _: String = redis::cmd("PING").query_async(&mut c).await.map_err(err)?;
                Backend::Redis(Redis {
                    client,
                    conn,
                    shown,
                    events: events::Hub::default(),
                })
            }
        };
        Ok(Coordinator {
            inner: Arc::new(Inner { opts, backend }),
        })
    }

    /// Single-node coordination without any setup (benches, tests).
    pub fn local() -> Coordinator {
        let opts = CoordOptions::default();
        Coordinator {
            inner: Arc::new(Inner {
                backend: Backend::Local(local::Local::new(opts.stream_len)),
                opts,
            }),
        }
    }

    pub fn options(&self) -> &CoordOptions {
        &self.inner.opts
    }

    pub fn is_fleet(&self) -> bool {
        matches!(self.inner.backend, Backend::Redis(_))
    }

    fn key(&self, parts: &[&str]) -> String {
        format!("{}{}", self.inner.opts.namespace, parts.join(":"))
    }
}

fn short_commands() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)))
}

impl Redis {
    fn error(&self, e: redis::RedisError) -> CoordError {
        CoordError::Redis {
            url: self.shown.clone(),
            message: e.to_string(),
        }
    }
}

/// In-process stand-ins for the Redis structures.
mod local {
    use super::Event;
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    pub(super) struct Local {
        pub(super) state: Mutex<State>,
        /// Bumped on every event so readers can wait for the next one.
        pub(super) seq: tokio::sync::watch::Sender<u64>,
        pub(super) cap: usize,
    }

    #[derive(Default)]
    pub(super) struct State {
        /// (job, source) -> (holder value, fencing token, the file lock
        /// held with it when the options name a lock directory).
        pub(super) locks: HashMap<(String, String), (String, u64, Option<std::fs::File>)>,
        pub(super) fences: HashMap<(String, String), u64>,
        pub(super) done: HashMap<(String, String), i64>,
        pub(super) drills: Vec<String>,
        pub(super) events: VecDeque<(u64, Event)>,
    }

    impl Local {
        pub(super) fn new(cap: usize) -> Local {
            Local {
                state: Mutex::default(),
                seq: tokio::sync::watch::channel(0).0,
                cap: cap.max(1),
            }
        }
    }
}
