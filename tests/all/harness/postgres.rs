//! PostgreSQL: the run's cluster (`harness::postgres()`, shared by every
//! test, which keeps to databases of its own via `fresh_database`) and
//! clusters of a given major version for the version matrix. Both are the
//! product's throwaway-cluster code (`servers::local_pg::LocalCluster`)
//! over TCP with trust authentication.

use super::{not_at_exit, root, scratch, stop_at_exit};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub struct Postgres {
    pub port: u16,
    pub bin: PathBuf,
}

impl Postgres {
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn client(&self, db: &str) -> ::postgres::Client {
        ::postgres::Client::connect(&self.url(db), ::postgres::NoTls).unwrap()
    }

    /// A new empty database with a unique name; returns its name.
    pub fn fresh_database(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}_{}", N.fetch_add(1, Ordering::Relaxed));
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        name
    }
}

fn pg_bin_dir() -> PathBuf {
    // The same lookup the agent uses for its client tools.
    let initdb = firedrill::servers::pg::pg_tool("initdb").unwrap();
    assert!(
        initdb.is_absolute() && initdb.exists(),
        "no PostgreSQL server binaries (initdb) found: run scripts/setup"
    );
    initdb.parent().unwrap().to_path_buf()
}

/// The run's cluster: the agent's own throwaway-cluster code, kept for the
/// whole run (stopped, with its data, by the exit hook).
pub fn postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        let cluster = firedrill::servers::local_pg::LocalCluster::start_tcp(
            scratch(),
            &["max_connections=200", "shared_buffers=64MB"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        stop_at_exit(cluster.pid(), libc::SIGQUIT);
        let pg = Postgres {
            port: cluster.port(),
            bin: pg_bin_dir(),
        };
        std::mem::forget(cluster);
        pg
    })
}

/// The bin directory of PostgreSQL `major` for the version matrix: Debian's
/// packages for the machine's own major, else `scripts/setup`'s
/// `target/tools/pg<major>/bin`. A missing one fails the test, never skips it.
pub fn pg_bin(major: u32) -> PathBuf {
    let candidates = [
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        root().join(format!("target/tools/pg{major}/bin")),
    ];
    candidates
        .iter()
        .find(|d| d.join("initdb").exists() && d.join("pg_dump").exists())
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL {major} (server and client tools) in {} or {}: run scripts/setup",
                candidates[0].display(),
                candidates[1].display()
            )
        })
        .clone()
}

/// A private cluster of its own from the binaries in `bin` (the agent's
/// throwaway-cluster code, over TCP on a free port), stopped and removed
/// when dropped (and by the exit hook, if the test dies first).
pub struct PostgresFrom {
    pub pg: Postgres,
    _cluster: firedrill::servers::local_pg::LocalCluster,
}

impl Drop for PostgresFrom {
    fn drop(&mut self) {
        // The cluster stops itself next; its pid must not be signalled at exit.
        not_at_exit(self._cluster.pid());
    }
}

impl PostgresFrom {
    /// Stops the server at once (a crash) and starts it again on the same
    /// data and port: crash recovery runs.
    pub fn restart(&mut self) {
        not_at_exit(self._cluster.pid());
        self._cluster
            .restart()
            .unwrap_or_else(|e| panic!("restarting PostgreSQL: {e}"));
        stop_at_exit(self._cluster.pid(), libc::SIGQUIT);
    }
}

impl std::ops::Deref for PostgresFrom {
    type Target = Postgres;
    fn deref(&self) -> &Postgres {
        &self.pg
    }
}

pub fn postgres_from(bin: &Path) -> PostgresFrom {
    postgres_from_with(bin, &[])
}

/// [`postgres_from`] with server settings (`name=value`) added.
pub fn postgres_from_with(bin: &Path, settings: &[&str]) -> PostgresFrom {
    let mut all = vec!["max_connections=50"];
    all.extend_from_slice(settings);
    let cluster = firedrill::servers::local_pg::LocalCluster::start_tcp_from(bin, scratch(), &all)
        .unwrap_or_else(|e| panic!("PostgreSQL from {}: {e}", bin.display()));
    stop_at_exit(cluster.pid(), libc::SIGQUIT);
    PostgresFrom {
        pg: Postgres {
            port: cluster.port(),
            bin: bin.to_path_buf(),
        },
        _cluster: cluster,
    }
}
