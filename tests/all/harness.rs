//! Real servers for the integration tests: a PostgreSQL cluster (initdb from
//! the installed server binaries), a redis-server and an S3-compatible server
//! (s3s-fs), each on 127.0.0.1 with a random port, started once per test run
//! on first use and torn down when the run ends, however it ends.
//!
//! Teardown: the servers are children of one long-lived thread with
//! PR_SET_PDEATHSIG, so the kernel kills them when the test process dies
//! (even on a panic or SIGKILL); at a normal exit an atexit hook stops them
//! and removes their data. Data left by a killed run is swept by the next.
//! The machine's own Postgres and Redis on their standard ports are never used.

#![allow(dead_code)] // the harness serves every feature module; each uses a part of it

use std::net::{TcpListener, TcpStream};
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

/// A plugin component built by `scripts/build-plugins`.
pub fn component(crate_name: &str) -> PathBuf {
    let p = root()
        .join("target/components")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-plugins first (scripts/test does)",
        p.display()
    );
    p
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
    CHILDREN.lock().unwrap().push((child.id(), stop_signal));
    child
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
/// below the kernel's ephemeral range: tests pick ports before their servers
/// bind them, and in between an outgoing connection could be given an
/// ephemeral port (the kernel takes those from 32768 up by default).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 20000.min(below / 2);
    loop {
        let port = rand::random_range(low..below);
        let mut given = GIVEN.lock().unwrap();
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
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

// ----- PostgreSQL -----------------------------------------------------------

pub struct Postgres {
    pub port: u16,
    pub bin: PathBuf,
}

impl Postgres {
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(db), postgres::NoTls).unwrap()
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
        CHILDREN
            .lock()
            .unwrap()
            .push((cluster.pid(), libc::SIGQUIT));
        let pg = Postgres {
            port: cluster.port(),
            bin: pg_bin_dir(),
        };
        std::mem::forget(cluster);
        pg
    })
}

// ----- Redis ----------------------------------------------------------------

pub struct Redis {
    pub port: u16,
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

pub fn redis() -> &'static Redis {
    static R: OnceLock<Redis> = OnceLock::new();
    R.get_or_init(|| {
        let dir = scratch().join("redis");
        std::fs::create_dir_all(&dir).unwrap();
        let (_, port) = start_redis_server(&dir, &[]);
        Redis { port }
    })
}

/// A redis-server on a free port with its data in `dir`, accepting connections.
/// `extra` comes last, so that it wins (a later `--dir` replaces `dir`).
fn start_redis_server(dir: &Path, extra: &[&str]) -> (Child, u16) {
    let port = free_port();
    let log = dir.join("redis.log");
    let (o, e) = log_file(&log);
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(["--enable-debug-command", "yes"])
    // Diskless replication waits 5 s for more replicas by default.
    .args(["--repl-diskless-sync-delay", "0"])
    .arg("--dir")
    .arg(dir)
    .args(extra)
    .stdout(o)
    .stderr(e);
    let mut child = spawn_kept(cmd, libc::SIGTERM);
    wait_until("redis-server", &mut child, &log, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (child, port)
}

// ----- S3 (s3s-fs) ----------------------------------------------------------

pub struct S3 {
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    pub root: PathBuf,
}

impl S3 {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A new bucket (s3s-fs keeps each bucket as a directory).
    pub fn bucket(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed));
        std::fs::create_dir_all(self.root.join(&name)).unwrap();
        name
    }

    /// The environment the CLI reads S3 settings from.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("S3_ENDPOINT", self.endpoint()),
            ("S3_REGION", "us-east-1".into()),
            ("S3_ACCESS_KEY_ID", self.access_key.clone()),
            ("S3_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }
}

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

fn s3s_fs() -> PathBuf {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or(home.join(".cargo"));
    let p = cargo_home.join("bin/s3s-fs");
    if p.exists() {
        return p;
    }
    PathBuf::from("s3s-fs")
}

pub fn s3() -> &'static S3 {
    static S: OnceLock<S3> = OnceLock::new();
    S.get_or_init(|| {
        let dir = scratch().join("s3");
        let root = dir.join("data");
        std::fs::create_dir_all(&root).unwrap();
        let port = free_port();
        let log = dir.join("s3s.log");
        let (o, e) = log_file(&log);
        let access_key = "firedrill-test".to_string();
        let secret_key = format!("secret-{}-{}", std::process::id(), port);
        let mut cmd = Command::new(s3s_fs());
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            &access_key,
            "--secret-key",
            &secret_key,
        ])
        .arg(&root)
        .stdout(o)
        .stderr(e);
        let mut child = spawn_kept(cmd, libc::SIGKILL);
        wait_until("s3s-fs", &mut child, &log, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        S3 {
            port,
            access_key,
            secret_key,
            root,
        }
    })
}

// ----- plugins --------------------------------------------------------------

/// A runtime whose code cache lives in this run's scratch directory.
pub fn runtime() -> firedrill::runtime::Runtime {
    firedrill::runtime::Runtime::new(firedrill::runtime::RuntimeOptions {
        cache_dir: Some(scratch().join("code-cache")),
        max_instances: 64,
        max_memory: 1 << 30,
        trust: Default::default(),
    })
    .unwrap()
}

/// A policies directory holding `policies` (file name, TOML) and a copy of
/// each named component as `<crate>.wasm`.
pub fn policy_dir(components: &[&str], policies: &[(&str, &str)]) -> PathBuf {
    let dir = tempdir("policies");
    for c in components {
        std::fs::copy(
            component(c),
            dir.join(format!("{}.wasm", c.replace('-', "_"))),
        )
        .unwrap();
    }
    for (name, text) in policies {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

/// Loads one plugin from a policy text in a fresh directory.
pub fn load(
    component_name: &str,
    policy: &str,
) -> Result<firedrill::runtime::Plugin, firedrill::runtime::PolicyError> {
    let dir = policy_dir(&[component_name], &[("p.toml", policy)]);
    let policy = firedrill::runtime::Policy::load(&dir.join("p.toml"))?;
    firedrill::runtime::Plugin::load(&runtime(), policy)
}

/// Runs the `firedrill` binary.
pub fn firedrill(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    firedrill_command(args, env).output().unwrap()
}

/// The `firedrill` command [`firedrill`] runs, for a test that starts it
/// and acts while it runs.
pub fn firedrill_command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firedrill"));
    cmd.args(args)
        .env("FIREDRILL_CACHE_DIR", scratch().join("cli-cache"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in ["DATABASE_URL", "S3_BUCKET", "FIREDRILL_STORE"] {
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

// ----- the agent and its API ---------------------------------------------------

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the API answers");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The status of a GET, or none when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<u16> {
    TcpStream::connect(("127.0.0.1", port)).ok()?;
    let r = std::panic::catch_unwind(|| http(port, "GET", path, &[], ""));
    r.ok().map(|r| r.status)
}

/// Starts `firedrill agent` (info logs, only the given template variables)
/// and waits until it answers /ready.
pub fn start_agent(config: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firedrill"));
    cmd.args(["agent", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info");
    for k in [
        "DATABASE_URL",
        "S3_BUCKET",
        "BACKUP_INTERVAL",
        "BACKUP_RETENTION_DAYS",
        "VERIFY_INTERVAL",
        "FIREDRILL_REDIS_URL",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
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

/// A redis-server of one test's own (the shared one holds other tests'
/// keys), stopped when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: Child,
}

impl OwnRedis {
    /// `extra`: more redis-server arguments, e.g. `["--requirepass", "pw"]`.
    pub fn start(extra: &[&str]) -> OwnRedis {
        let (child, port) = start_redis_server(&tempdir("own-redis"), extra);
        OwnRedis { port, child }
    }

    /// `redis://[user:password@]127.0.0.1:port/`
    pub fn url(&self, auth: &str) -> String {
        format!("redis://{auth}127.0.0.1:{}/", self.port)
    }

    pub fn connection(&self, auth: &str) -> redis::Connection {
        redis::Client::open(self.url(auth))
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

pub fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command (install openssl)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Certificates for TLS tests (openssl CLI, EC keys): `name`.crt/.key,
/// a self-signed CA.
const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

pub fn self_signed_ca(dir: &Path, name: &str) {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    let subject = format!("/CN=firedrill test {name}");
    let mut args = vec!["req", "-x509"];
    args.extend(EC);
    args.extend([
        "-nodes", "-keyout", &key, "-out", &crt, "-days", "30", "-subj", &subject,
    ]);
    openssl(dir, &args);
}

/// `name`.crt/.key (0600) signed by ca.crt in `dir`, with the extensions `ext`.
pub fn issue_cert(dir: &Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, crt, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext).unwrap();
    let mut args = vec!["req", "-new"];
    args.extend(EC);
    args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", subject]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "30",
            "-extfile",
            &extfile,
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o600)).unwrap();
}

// ----- PostgreSQL of a given major version (tests/all/versions.rs) ----------

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
        let pid = self._cluster.pid();
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _)| *p != pid);
    }
}

impl std::ops::Deref for PostgresFrom {
    type Target = Postgres;
    fn deref(&self) -> &Postgres {
        &self.pg
    }
}

pub fn postgres_from(bin: &Path) -> PostgresFrom {
    let cluster = firedrill::servers::local_pg::LocalCluster::start_tcp_from(
        bin,
        scratch(),
        &["max_connections=50"],
    )
    .unwrap_or_else(|e| panic!("PostgreSQL from {}: {e}", bin.display()));
    CHILDREN
        .lock()
        .unwrap()
        .push((cluster.pid(), libc::SIGQUIT));
    PostgresFrom {
        pg: Postgres {
            port: cluster.port(),
            bin: bin.to_path_buf(),
        },
        _cluster: cluster,
    }
}

// ----- GCS (fake-gcs-server) and Azure Blob Storage (Azurite) ----------------
// Both installed by scripts/setup into target/tools; one of each per run.

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

pub struct Azurite {
    pub port: u16,
    pub account: String,
    pub key: String,
}

impl Azurite {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, self.account)
    }

    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
            self.account,
            self.key,
            self.endpoint()
        )
    }

    /// The account and key variables of the Azure CLI, with the endpoint.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_SERVICE_ENDPOINT", self.endpoint()),
            ("AZURE_STORAGE_ACCOUNT", self.account.clone()),
            ("AZURE_STORAGE_KEY", self.key.clone()),
        ]
    }

    /// A new container, created with a request signed by the account key
    /// (Azurite checks signatures as Azure does).
    pub fn container(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = format!("/{}/{name}?restype=container", self.account);
        let r = self.signed("PUT", &path, &name, "restype:container");
        assert_eq!(r.status, 201, "creating container {name}: {}", r.body);
        name
    }

    /// Every blob in `container` with its size, from the emulator's own
    /// listing.
    pub fn blobs(&self, container: &str) -> Vec<(String, u64)> {
        let path = format!("/{}/{container}?restype=container&comp=list", self.account);
        let r = dechunked(self.signed("GET", &path, container, "comp:list\nrestype:container"));
        assert_eq!(r.status, 200, "listing {container}: {}", r.body);
        let mut out = Vec::new();
        for blob in r.body.split("<Blob>").skip(1) {
            let field = |tag: &str| {
                let open = format!("<{tag}>");
                let start = blob.find(&open).unwrap() + open.len();
                blob[start..start + blob[start..].find('<').unwrap()].to_string()
            };
            out.push((field("Name"), field("Content-Length").parse().unwrap()));
        }
        out
    }

    /// A Shared Key request: `resource` is the path after the account,
    /// `query` the canonicalized query lines.
    fn signed(&self, method: &str, path: &str, resource: &str, query: &str) -> Reply {
        use base64::Engine as _;
        use hmac::Mac as _;
        let date = rfc1123_now();
        let version = "2021-08-06";
        let mut canon = format!("/{}/{}/{resource}", self.account, self.account);
        if !query.is_empty() {
            canon.push('\n');
            canon.push_str(query);
        }
        let to_sign = format!(
            "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{canon}"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(&self.key)
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let auth = format!("SharedKey {}:{sig}", self.account);
        http(
            self.port,
            method,
            path,
            &[
                ("x-ms-date", &date),
                ("x-ms-version", version),
                ("authorization", &auth),
            ],
            "",
        )
    }
}

/// A reply whose body came in chunked transfer encoding, joined.
fn dechunked(mut r: Reply) -> Reply {
    if r.header("transfer-encoding") != Some("chunked") {
        return r;
    }
    let (mut rest, mut body) = (r.body.as_str(), String::new());
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        body.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    r.body = body;
    r
}

/// The current time as HTTP dates are written.
fn rfc1123_now() -> String {
    let t = unsafe { libc::time(std::ptr::null_mut()) };
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::gmtime_r(&t, &mut tm) };
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[tm.tm_wday as usize],
        tm.tm_mday,
        MONTHS[tm.tm_mon as usize],
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

pub fn azurite() -> &'static Azurite {
    static A: OnceLock<Azurite> = OnceLock::new();
    A.get_or_init(|| {
        let bin = root().join("target/tools/azurite/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup",
            bin.display()
        );
        let dir = scratch().join("azurite");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let log = dir.join("azurite.log");
        let (o, e) = log_file(&log);
        // An account of this run's own, with a random key: a test that
        // looks for the key in output finds only what leaked.
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let account = "firedrilltest".to_string();
        let mut cmd = Command::new(bin);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.join("data"))
            // opendal may speak a newer API version than this Azurite knows.
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
            .env("AZURITE_ACCOUNTS", format!("{account}:{key}"))
            .stdout(o)
            .stderr(e);
        let mut child = spawn_kept(cmd, libc::SIGKILL);
        wait_until("azurite", &mut child, &log, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Azurite { port, account, key }
    })
}
