//! A throwaway redis-server: for Redis drills (the snapshot loaded into an
//! instance of the drill's own), the tests and the benchmarks.
//!
//! Invariants: the server dies with the process that started it, however
//! that process ends (spawned through [`super::local_pg::spawn_kept`], with
//! PR_SET_PDEATHSIG); `stop` (also on drop) kills it and removes its
//! directory. Its settings live in a 0600 config file in that directory,
//! never on its command line, where a password would show in `ps`.
//!
//! Private by default: a drill's instance holds production data, so
//! [`LocalRedis::start`] listens on no TCP port, only on a Unix socket (mode
//! 0700) in a 0700 directory made with mkdtemp semantics (an unpredictable
//! name; an existing path or a planted symlink is refused), and wants a
//! random password that lives only in the URL [`LocalRedis::url`] returns.
//! TCP on 127.0.0.1 (no password unless the caller's settings set one) is
//! for the tests and benchmarks that stand in for a production server:
//! [`LocalRedis::start_tcp`].

use super::local_pg::{private_dir, random_password, spawn_kept};
use super::redis::RedisUrl;
use super::ServerError;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a TCP server may take to accept connections.
const STARTUP: Duration = Duration::from_secs(60);
/// The snapshot a server loads at start, in its directory.
const SNAPSHOT: &str = "dump.rdb";
/// What the server prints (its log and any complaint about its settings).
const LOG: &str = "redis.log";

/// A private directory for a server not started yet, so that the caller can
/// put the snapshot it should load there first ([`RedisDir::snapshot`]).
/// Removed when dropped, unless a server was started in it.
pub struct RedisDir {
    path: PathBuf,
}

impl RedisDir {
    /// A new 0700 directory with an unpredictable name under `parent`.
    pub fn new(parent: &Path) -> Result<RedisDir, ServerError> {
        let path = private_dir(parent, &format!("firedrill-redis-{}-", std::process::id()))
            .map_err(|e| {
                fail(format!(
                    "cannot create a directory in {}: {e}",
                    parent.display()
                ))
            })?;
        Ok(RedisDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the snapshot goes for the server to load it at start.
    pub fn snapshot(&self) -> PathBuf {
        self.path.join(SNAPSHOT)
    }

    /// The path, now owned by a server (this no longer removes it).
    fn keep(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for RedisDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running throwaway redis-server.
pub struct LocalRedis {
    child: Child,
    dir: PathBuf,
    listen: Listen,
    stopped: bool,
}

enum Listen {
    /// The socket and the password it wants.
    Socket(PathBuf, String),
    Tcp(u16),
}

impl LocalRedis {
    /// Starts a private server in `dir`: its Unix socket only, a random
    /// password. It loads the directory's snapshot, if one is there.
    /// Returns once spawned, as loading a large snapshot takes a while: the
    /// caller polls [`LocalRedis::url`] and [`LocalRedis::exited`].
    pub fn start(dir: RedisDir) -> Result<LocalRedis, ServerError> {
        let password = random_password();
        let socket = dir.path().join("redis.sock");
        let settings = format!(
            "port 0\nunixsocket {}\nunixsocketperm 700\nrequirepass {password}\n",
            quote(&socket.display().to_string())
        );
        let child = launch(dir.path(), &settings)?;
        Ok(LocalRedis {
            child,
            dir: dir.keep(),
            listen: Listen::Socket(socket, password),
            stopped: false,
        })
    }

    /// A server on 127.0.0.1 at a free port, in a new directory under
    /// `parent`, with `args` after the defaults so that they win. `args` are
    /// in redis-server's command-line form (`["--requirepass", "pw"]`) and
    /// go to its config file like the rest. Only for tests and benchmarks
    /// standing in for a production server, never for a drill. Blocking
    /// until it accepts connections.
    pub fn start_tcp(parent: &Path, args: &[&str]) -> Result<LocalRedis, ServerError> {
        let port = super::free_port().map_err(|e| fail(format!("no free port: {e}")))?;
        let settings = format!("port {port}\nbind 127.0.0.1\n{}", settings_of(args)?);
        let dir = RedisDir::new(parent)?;
        let child = launch(dir.path(), &settings)?;
        let mut server = LocalRedis {
            child,
            dir: dir.keep(),
            listen: Listen::Tcp(port),
            stopped: false,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(why) = server.exited() {
                return Err(fail(format!("did not start: {why}")));
            }
            if start.elapsed() > STARTUP {
                return Err(fail(format!(
                    "not listening after {}s: {}",
                    STARTUP.as_secs(),
                    server.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// The socket with the password (`redis+unix:///path?pass=...`, which
    /// the redis crate and [`RedisUrl`] both read), or
    /// `redis://127.0.0.1:<port>/` for a TCP server.
    pub fn url(&self) -> RedisUrl {
        match &self.listen {
            Listen::Socket(socket, password) => {
                let mut url = url::Url::parse("redis+unix:///").expect("a URL");
                url.set_path(&socket.display().to_string());
                url.query_pairs_mut().append_pair("pass", password);
                RedisUrl::parse(url.as_str()).expect("a socket URL")
            }
            Listen::Tcp(port) => {
                RedisUrl::parse(&format!("redis://127.0.0.1:{port}/")).expect("a URL")
            }
        }
    }

    /// The TCP port of a [`LocalRedis::start_tcp`] server (a private one has none).
    pub fn port(&self) -> Option<u16> {
        match self.listen {
            Listen::Tcp(port) => Some(port),
            Listen::Socket(..) => None,
        }
    }

    /// The directory holding its settings, data, log and socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// If the server has exited: its status and the last lines it printed.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        Some(format!("{status}: {}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join(LOG)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }

    /// Kills the server (its data is throwaway) and removes its directory.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn fail(message: String) -> ServerError {
    ServerError::Tool {
        tool: "redis-server".into(),
        message,
    }
}

/// Writes the config file (what every server here shares, then `settings`)
/// and spawns the server on it, its output in the directory's log.
fn launch(dir: &Path, settings: &str) -> Result<Child, ServerError> {
    let conf = dir.join("redis.conf");
    let text = format!(
        "save \"\"\nappendonly no\ndir {}\ndbfilename {SNAPSHOT}\n{settings}",
        quote(&dir.display().to_string())
    );
    write_private(&conf, &text).map_err(|e| fail(format!("{}: {e}", conf.display())))?;
    let log = dir.join(LOG);
    let out = write_private(&log, "")
        .and_then(|_| std::fs::OpenOptions::new().append(true).open(&log))
        .map_err(|e| fail(format!("{}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| fail(format!("{}: {e}", log.display())))?;
    let mut cmd = Command::new(redis_server());
    cmd.arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    spawn_kept(cmd).map_err(|e| {
        fail(format!(
            "cannot start it ({e}); install the redis-server package"
        ))
    })
}

/// Command-line arguments (`--name value...`) as config file lines, each
/// value quoted, as redis-server itself turns its arguments into settings.
fn settings_of(args: &[&str]) -> Result<String, ServerError> {
    let mut text = String::new();
    for arg in args {
        match arg.strip_prefix("--") {
            Some(name) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(name);
            }
            None if text.is_empty() => {
                return Err(fail(format!("a setting starts with --<name>, not {arg:?}")))
            }
            None => {
                text.push(' ');
                text.push_str(&quote(arg));
            }
        }
    }
    if !text.is_empty() {
        text.push('\n');
    }
    Ok(text)
}

/// A config file string: a path or a value may hold spaces or quotes.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\r' => q.push_str("\\r"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// Created 0600, refusing an existing file.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// `FIREDRILL_REDIS_SERVER`, else `redis-server` on the PATH.
fn redis_server() -> PathBuf {
    std::env::var_os("FIREDRILL_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::redis::Reply;

    async fn connect(url: &RedisUrl) -> crate::servers::redis::Conn {
        let start = Instant::now();
        loop {
            match url.connect().await {
                Ok(c) => break c,
                Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("{e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    #[tokio::test]
    async fn a_private_server_listens_on_its_socket_only_and_wants_its_password() {
        let parent = tempfile::tempdir().unwrap();
        let dir = RedisDir::new(parent.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let server = LocalRedis::start(dir).unwrap();
        let dir = server.dir().to_path_buf();
        let conf = dir.join("redis.conf");
        assert_eq!(
            std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            write_private(&conf, "").is_err(),
            "an existing file is refused"
        );
        let url = server.url();
        let password = url::Url::parse(url.secret_url())
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "pass")
            .map(|(_, v)| v.into_owned())
            .expect("a password");
        assert_eq!(password.len(), 48, "192 random bits");
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&password),
            "the password is on the command line"
        );
        let mut conn = connect(&url).await;
        let port = conn.command(&[b"CONFIG", b"GET", b"port"]).await.unwrap();
        assert_eq!(
            port,
            Reply::Array(vec![
                Reply::Bulk(Some(b"port".to_vec())),
                Reply::Bulk(Some(b"0".to_vec()))
            ]),
            "no TCP"
        );
        // The same socket without the password, or with another: refused.
        let socket = dir.join("redis.sock");
        let mut anon = RedisUrl::parse(&format!("redis+unix://{}", socket.display()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let r = anon.command(&[b"GET", b"x"]).await.unwrap();
        assert!(
            matches!(&r, Reply::Error(e) if e.starts_with("NOAUTH")),
            "{r:?}"
        );
        let guess = url.secret_url().replace(&password, "guess");
        let e = RedisUrl::parse(&guess)
            .unwrap()
            .connect()
            .await
            .err()
            .expect("a wrong password got in");
        assert!(!e.to_string().contains("guess"), "{e}");
        // The keyvalue capability's client reads the same URL.
        let mut kv = redis::Client::open(url.secret_url())
            .unwrap()
            .get_connection()
            .unwrap();
        let pong: String = redis::cmd("PING").query(&mut kv).unwrap();
        assert_eq!(pong, "PONG");
        server.stop();
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn a_tcp_server_takes_settings_and_a_bad_one_is_reported_with_its_log() {
        let parent = tempfile::tempdir().unwrap();
        let server =
            LocalRedis::start_tcp(parent.path(), &["--requirepass", "two words \"q\""]).unwrap();
        let port = server.port().expect("a TCP port");
        let mut conn = connect(
            &RedisUrl::parse(&format!("redis://:two%20words%20%22q%22@127.0.0.1:{port}/")).unwrap(),
        )
        .await;
        assert_eq!(
            conn.command(&[b"PING"]).await.unwrap(),
            Reply::Status("PONG".into())
        );
        let dir = server.dir().to_path_buf();
        drop(server);
        assert!(!dir.exists(), "dropping stops it and removes its directory");

        let e = LocalRedis::start_tcp(parent.path(), &["--no-such-setting", "1"])
            .err()
            .expect("a bad setting started");
        assert!(e.to_string().contains("no-such-setting"), "{e}");
        assert!(
            LocalRedis::start_tcp(parent.path(), &["save", ""]).is_err(),
            "a value without a name"
        );
        assert_eq!(
            std::fs::read_dir(parent.path()).unwrap().count(),
            0,
            "a server that failed to start leaves nothing behind"
        );
    }
}
