//! The `firedrill` binary: one command run to its end (`firedrill`,
//! `firedrill_command`, `output_text`), or a running agent started on a
//! config file or none (`start_agent`, `start_bare_agent`) and stopped with
//! SIGTERM (`run_agent_for`), and the peak memory of a run.

use super::{http_get, scratch};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the `firedrill` binary.
pub fn firedrill(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    firedrill_command(args, env).output().unwrap()
}

/// The `firedrill` command [`firedrill`] runs, for a test that starts it
/// and acts while it runs.
pub fn firedrill_command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firedrill"));
    // Leases without Redis are file locks: the run's own directory, not
    // the machine's /run/firedrill.
    cmd.args(args)
        .env("FIREDRILL_CACHE_DIR", scratch().join("cli-cache"))
        .env("FIREDRILL_LOCK_DIR", scratch().join("locks"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Another test may have set FIREDRILL_TOKEN_KEY in this process: it
    // would add the built-in authorizer here, by test order.
    for k in [
        "DATABASE_URL",
        "S3_BUCKET",
        "FIREDRILL_STORE",
        "FIREDRILL_TOKEN_KEY",
    ] {
        if !env.iter().any(|(e, _)| e == &k) {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// stdout and stderr of a run, for assertions and messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts `firedrill agent` (info logs, only the given template variables)
/// and waits until it answers /ready.
pub fn start_agent(config: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firedrill"));
    cmd.args(["agent", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("FIREDRILL_LOCK_DIR", scratch().join("locks"));
    for k in [
        "DATABASE_URL",
        "S3_BUCKET",
        "BACKUP_INTERVAL",
        "BACKUP_RETENTION_DAYS",
        "VERIFY_INTERVAL",
        "FIREDRILL_REDIS_URL",
        "FIREDRILL_TOKEN_KEY",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    ready(cmd, port)
}

/// Starts `firedrill agent` with no configuration file and nothing of this
/// process's environment but PATH and HOME: what `env` says is all it has.
pub fn start_bare_agent(port: u16, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firedrill"));
    cmd.arg("agent").env_clear();
    for k in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("FIREDRILL_LOCK_DIR", scratch().join("locks"))
        .env("FIREDRILL_LISTEN", format!("127.0.0.1:{port}"));
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    ready(cmd, port)
}

/// Spawns the agent `cmd` and waits until it answers /ready.
fn ready(mut cmd: Command, port: u16) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while http_get(port, "/ready") != Some(200) {
        if let Some(status) = child.try_wait().unwrap() {
            // The agent logs to stdout; its last word is on stderr.
            let mut out = String::new();
            use std::io::Read;
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            let _ = child.stderr.take().unwrap().read_to_string(&mut out);
            panic!("the agent exited with {status}: {out}");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Lets a started agent run for `secs` (it must not die meanwhile), then
/// stops it with SIGTERM and returns what it printed.
pub fn run_agent_for(mut child: Child, secs: u64) -> std::process::Output {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        assert!(child.try_wait().unwrap().is_none(), "the agent died");
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait_with_output().unwrap()
}

/// Waits for `child`; returns its exit status and the kernel's high-water
/// mark of its own memory (KiB). getrusage would also count this test
/// process, whose pages the child shared until exec.
pub fn wait_with_peak_rss(child: &mut Child) -> (std::process::ExitStatus, u64) {
    let mut peak_kib = 0u64;
    loop {
        let hwm = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            });
        peak_kib = peak_kib.max(hwm.unwrap_or(0));
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak_kib);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
