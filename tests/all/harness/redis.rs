//! Redis: the run's redis-server (`harness::redis()`, shared by every test)
//! and servers of a test's own (`OwnRedis`), for tests that need a password,
//! a setting, or keys no other test sees. Both are the product's throwaway
//! server (`servers::local_redis::LocalRedis`) over TCP.

use super::{scratch, stop_at_exit};
use firedrill::servers::local_redis::LocalRedis;
use std::sync::OnceLock;

/// What every test server runs with, before a test's own arguments:
/// `DEBUG` for the tests that corrupt or inspect a server, and no wait for
/// more replicas before a diskless snapshot (5 s by default).
const TEST_ARGS: [&str; 4] = [
    "--enable-debug-command",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
];

/// A redis-server on 127.0.0.1 at a free port, accepting connections.
/// `extra` comes last, so that it wins (a later `--dir` replaces its own).
fn start(extra: &[&str]) -> LocalRedis {
    let args: Vec<&str> = TEST_ARGS.iter().chain(extra).copied().collect();
    LocalRedis::start_tcp(scratch(), &args).unwrap_or_else(|e| panic!("{e}"))
}

pub struct Redis {
    pub port: u16,
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn connection(&self) -> ::redis::Connection {
        ::redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// The run's server, kept for the whole run (stopped by the exit hook,
/// its data removed with the scratch directory).
pub fn redis() -> &'static Redis {
    static R: OnceLock<Redis> = OnceLock::new();
    R.get_or_init(|| {
        let server = start(&[]);
        stop_at_exit(server.pid(), libc::SIGTERM);
        let port = server.port().expect("a TCP server");
        std::mem::forget(server);
        Redis { port }
    })
}

/// A redis-server of one test's own (the shared one holds other tests'
/// keys), stopped and its directory removed when dropped.
pub struct OwnRedis {
    pub port: u16,
    server: LocalRedis,
}

impl OwnRedis {
    /// `extra`: more redis-server arguments, e.g. `["--requirepass", "pw"]`.
    pub fn start(extra: &[&str]) -> OwnRedis {
        let server = start(extra);
        OwnRedis {
            port: server.port().expect("a TCP server"),
            server,
        }
    }

    /// `redis://[user:password@]127.0.0.1:port/`
    pub fn url(&self, auth: &str) -> String {
        format!("redis://{auth}127.0.0.1:{}/", self.port)
    }

    pub fn connection(&self, auth: &str) -> ::redis::Connection {
        ::redis::Client::open(self.url(auth))
            .unwrap()
            .get_connection()
            .unwrap()
    }
}
