//! Real servers for the integration tests, each on 127.0.0.1 with a random
//! port, started once per test run on first use (or once per test, where a
//! test needs one of its own) and torn down when the run ends, however it
//! ends. A file per server:
//!
//! - `postgres`: the run's cluster and clusters of a given major version
//!   (the product's `servers::local_pg::LocalCluster`);
//! - `redis`: the run's redis-server and servers of a test's own (the
//!   product's `servers::local_redis::LocalRedis`);
//! - `s3` (s3s-fs), `gcs` (fake-gcs-server), `azurite` (Azure Blob Storage):
//!   the object stores' emulators;
//! - `proxy`: a fault-injecting HTTP proxy in front of a store;
//! - `rotel`: a real OTLP receiver;
//! - `agent`: the `firedrill` binary, as a command and as a running agent;
//! - `http`: a bare HTTP/1.1 client for the API and the emulators;
//! - `plugins`: built components, policy directories, a plugin runtime;
//! - `tls`: certificates from the openssl command.
//!
//! Test modules see one flat API (`harness::postgres()`, `harness::OwnRedis`,
//! ...): everything public is re-exported here.
//!
//! Teardown: the servers are children of one long-lived thread with
//! PR_SET_PDEATHSIG, so the kernel kills them when the test process dies
//! (even on a panic or SIGKILL); at a normal exit an atexit hook stops the
//! run's shared servers and removes the scratch directory with their data.
//! Data left by a killed run is swept by the next. The machine's own
//! Postgres and Redis on their standard ports are never used.

#![allow(dead_code, unused_imports)] // the harness serves every feature module; each uses a part of it

mod agent;
mod azurite;
mod browser;
mod gcs;
mod http;
mod plugins;
mod postgres;
mod proxy;
mod receivers;
mod redis;
mod rotel;
mod s3;
mod tls;

pub use agent::{
    firedrill, firedrill_command, output_text, run_agent_for, start_agent, start_bare_agent,
    wait_with_peak_rss,
};
pub use azurite::{azurite, Azurite};
pub use browser::Browser;
pub use gcs::{gcs, Gcs};
pub use http::{http, http_get, Reply};
pub use plugins::{component, load, policy_dir, runtime};
pub use postgres::{pg_bin, postgres, postgres_from, postgres_from_with, Postgres, PostgresFrom};
pub use proxy::{FaultCounts, FaultProxy, Faults};
pub use receivers::{black_hole, HttpReceiver, Received, Smtp};
pub use redis::{redis, OwnRedis, Redis};
pub use rotel::Rotel;
pub use s3::{s3, S3};
pub use tls::{issue_cert, openssl, self_signed_ca};

use http::dechunked;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const STARTUP: Duration = Duration::from_secs(60);

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// This run's scratch directory (removed at exit).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::temp_dir().join("firedrill-tests");
        std::fs::create_dir_all(&base).unwrap();
        sweep_dead_runs(&base);
        let dir = base.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&base, 0o755);
        set_mode(&dir, 0o755);
        let _ = SCRATCH_FOR_EXIT.set(dir.clone());
        extern "C" fn at_exit() {
            stop_all();
        }
        unsafe { libc::atexit(at_exit) };
        dir
    })
}

/// A fresh directory under the scratch directory.
pub fn tempdir(label: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = scratch().join(format!("{label}-{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn sweep_dead_runs(base: &Path) {
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

// ----- process keeping ------------------------------------------------------

static CHILDREN: Mutex<Vec<(u32, libc::c_int)>> = Mutex::new(Vec::new());

/// Spawns `cmd` so that it dies with this process (see `local_pg::spawn_kept`)
/// and is stopped with `stop_signal` at exit.
fn spawn_kept(cmd: Command, stop_signal: libc::c_int) -> Child {
    let child = firedrill::servers::local_pg::spawn_kept(cmd)
        .unwrap_or_else(|e| panic!("cannot start a test server: {e}"));
    stop_at_exit(child.id(), stop_signal);
    child
}

/// Stops process `pid` with `signal` at exit: for the servers the product's
/// code started (also with PR_SET_PDEATHSIG) and the run keeps.
fn stop_at_exit(pid: u32, signal: libc::c_int) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((pid, signal));
}

/// Undoes [`stop_at_exit`] for a server stopped before the exit: its pid
/// may be anyone's by then.
fn not_at_exit(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(p, _)| *p != pid);
}

fn stop_all() {
    let children = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|e| e.into_inner()));
    for (pid, sig) in &children {
        unsafe { libc::kill(*pid as i32, *sig) };
    }
    let until = Instant::now() + Duration::from_secs(5);
    for (pid, _) in &children {
        while unsafe { libc::kill(*pid as i32, 0) } == 0 && Instant::now() < until {
            let mut status = 0;
            unsafe { libc::waitpid(*pid as i32, &mut status, libc::WNOHANG) };
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(dir) = SCRATCH_FOR_EXIT.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

static SCRATCH_FOR_EXIT: OnceLock<PathBuf> = OnceLock::new();

/// A port nothing listens on now, never handed out before in this run, and
/// below the kernel's ephemeral range: the product's own
/// (`firedrill::servers::free_port`), which its TCP throwaway servers use.
pub fn free_port() -> u16 {
    firedrill::servers::free_port().unwrap_or_else(|e| panic!("no free port: {e}"))
}

fn wait_until(what: &str, child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) while starting:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < STARTUP,
            "{what} not ready after {STARTUP:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let f = std::fs::File::create(path).unwrap();
    (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
}
