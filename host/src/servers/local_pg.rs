//! A throwaway PostgreSQL cluster from the installed server binaries: for
//! drills with `--local` (zero load on production), the demo and the tests.
//!
//! Invariants: the server dies with the process that started it, however that
//! process ends (it is a child of one long-lived thread with
//! PR_SET_PDEATHSIG); `stop` (also on drop) removes its directory; clusters
//! left by a killed process are swept by [`LocalCluster::sweep_orphans`].
//! A cluster's directory names its owner by pid *and* start time: pids are
//! reused (a restarted container numbers its processes from 1 again), and a
//! reused pid must not keep a dead run's cluster alive, nor get its signal.
//!
//! Private by default: a drill's cluster holds restored production data, so
//! it listens on a Unix socket only, in a 0700 directory made with mkdtemp
//! semantics (an unpredictable name; an existing path or a planted symlink
//! is refused, never reused), and every connection needs the superuser's
//! random password, which lives only in the URL [`LocalCluster::url`]
//! returns. TCP (with trust authentication) is for the tests and benchmarks
//! that stand in for a production server: [`LocalCluster::start_tcp`].

use super::pg::{pg_tool, pick_tool, Need, PgUrl};
use super::ServerError;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const PREFIX: &str = "firedrill-local-";
const STARTUP: Duration = Duration::from_secs(60);
/// The socket's name is `.s.PGSQL.<port>`; in a directory of its own any will do.
const SOCKET_PORT: u16 = 5432;

pub struct LocalCluster {
    dir: PathBuf,
    port: u16,
    /// Also listening on 127.0.0.1:`port` (trust authentication).
    tcp: bool,
    password: String,
    pid: u32,
    stopped: bool,
    bin: PathBuf,
    settings: Vec<String>,
}

impl LocalCluster {
    /// Starts a private cluster in a new directory under `parent`: a Unix
    /// socket in that directory only, scram-sha-256 authentication with a
    /// random password for `postgres` (in [`LocalCluster::url`] only).
    /// `settings` are extra `name=value` server settings. Blocking.
    pub fn start(parent: &Path, settings: &[&str]) -> Result<LocalCluster, ServerError> {
        Self::start_with(None, parent, settings, false)
    }

    /// Like [`LocalCluster::start`], from the installed server binaries that
    /// can load what a server of `need`'s major dumped: the lowest major at
    /// least that one (initdb and postgres from the same directory). None:
    /// the newest. With only older servers installed, the error names the
    /// version needed and the fix.
    pub fn start_for(
        parent: &Path,
        settings: &[&str],
        need: Option<&Need>,
    ) -> Result<LocalCluster, ServerError> {
        let initdb = pick_tool("initdb", need)?.path;
        Self::start_with(Some(initdb), parent, settings, false)
    }

    /// What a cluster for restoring `manifest` must run: its source's major
    /// version or a later one (none known: any).
    pub fn need_for(manifest: &crate::archive::manifest::Manifest) -> Option<Need> {
        manifest.server_major().map(|major| Need {
            major,
            subject: format!("backup {} comes from", manifest.id),
        })
    }

    /// Like [`LocalCluster::start`], and also listening on 127.0.0.1 at a
    /// free port where `postgres` connects without a password: only for
    /// tests and benchmarks standing in for a production server, never for
    /// a drill.
    pub fn start_tcp(parent: &Path, settings: &[&str]) -> Result<LocalCluster, ServerError> {
        Self::start_with(None, parent, settings, true)
    }

    /// [`LocalCluster::start_tcp`] with the server binaries (initdb,
    /// postgres) in `bin` rather than the installed ones: for tests that need
    /// a server build of their own (e.g. one with extensions of their own).
    pub fn start_tcp_from(
        bin: &Path,
        parent: &Path,
        settings: &[&str],
    ) -> Result<LocalCluster, ServerError> {
        Self::start_with(Some(bin.join("initdb")), parent, settings, true)
    }

    fn start_with(
        initdb: Option<PathBuf>,
        parent: &Path,
        settings: &[&str],
        tcp: bool,
    ) -> Result<LocalCluster, ServerError> {
        let fail = |m: String| ServerError::Tool {
            tool: "local postgres".into(),
            message: m,
        };
        let initdb = match initdb {
            Some(initdb) => initdb,
            None => pg_tool("initdb")?,
        };
        if !initdb.exists() {
            return Err(fail(format!("no PostgreSQL server binaries ({} does not exist): install the postgresql package, or point FIREDRILL_PG_BIN at its bin directory", initdb.display())));
        }
        let bin = initdb.parent().unwrap_or(Path::new("/")).to_path_buf();
        let me = std::process::id();
        let dir = private_dir(
            parent,
            &format!("{PREFIX}{me}.{}-", start_time(me).unwrap_or(0)),
        )
        .map_err(|e| {
            fail(format!(
                "cannot create a directory in {}: {e}",
                parent.display()
            ))
        })?;
        set_mode(&dir, 0o700);
        let password = random_password();
        let pwfile = dir.join("pwfile");
        let written = {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pwfile)
                .and_then(|mut f| f.write_all(password.as_bytes()))
        };
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(fail(format!("cannot write {}: {e}", pwfile.display())));
        }
        let data = dir.join("data");
        let mut init = Command::new(&initdb);
        init.arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth-local=scram-sha-256"])
            .arg(if tcp {
                "--auth-host=trust"
            } else {
                "--auth-host=scram-sha-256"
            })
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--no-sync"]);
        init.stdout(Stdio::null()).stderr(Stdio::piped());
        let owned = as_postgres_user(&mut init, &[&dir, &pwfile]);
        let out = owned.and_then(|_| {
            init.output()
                .map_err(|e| fail(format!("cannot run initdb: {e}")))
        });
        let _ = std::fs::remove_file(&pwfile);
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(fail(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let port = if tcp {
            super::free_port().map_err(|e| fail(format!("no free port: {e}")))?
        } else {
            SOCKET_PORT
        };
        let mut cluster = LocalCluster {
            dir,
            port,
            tcp,
            password,
            pid: 0,
            stopped: false,
            bin,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        if let Err(e) = cluster.launch() {
            cluster.stop();
            return Err(e);
        }
        Ok(cluster)
    }

    /// Starts the server on the cluster's directory and port; blocking until
    /// it accepts connections.
    fn launch(&mut self) -> Result<(), ServerError> {
        let fail = |m: String| ServerError::Tool {
            tool: "local postgres".into(),
            message: m,
        };
        let (data, log) = (self.dir.join("data"), self.dir.join("postgres.log"));
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| fail(e.to_string()))?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(self.port.to_string());
        let socket_dir = format!("unix_socket_directories={}", self.dir.display());
        let listen = if self.tcp {
            "listen_addresses=127.0.0.1"
        } else {
            "listen_addresses="
        };
        for s in [
            listen,
            &socket_dir,
            "unix_socket_permissions=0700",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ]
        .into_iter()
        .chain(self.settings.iter().map(String::as_str))
        {
            cmd.arg("-c").arg(s);
        }
        cmd.stdout(Stdio::from(
            logfile.try_clone().map_err(|e| fail(e.to_string()))?,
        ))
        .stderr(Stdio::from(logfile));
        as_postgres_user(&mut cmd, &[&self.dir, &log])?;
        let mut child = spawn_kept(cmd).map_err(|e| fail(format!("cannot start postgres: {e}")))?;
        self.pid = child.id();
        let mut ready = postgres::Config::new();
        ready
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .password(&self.password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        let start = Instant::now();
        while ready.connect(postgres::NoTls).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() > STARTUP {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(fail(format!("postgres did not start: {}", said.trim())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server at once, as a crash or a failover would, and starts
    /// it again on the same data and port (crash recovery runs). For tests
    /// of what a job does when its server goes away.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        stop_pid(self.pid);
        self.launch()
    }

    /// The TCP port of a [`LocalCluster::start_tcp`] cluster (a private
    /// one has none: this is then the number in its socket's name).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the cluster, its data and its socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `postgres` on database `db`: over TCP without a password for a
    /// [`LocalCluster::start_tcp`] cluster, else over the private socket
    /// with the password (the socket directory percent-encoded as the host,
    /// which libpq and tokio-postgres both read).
    pub fn url(&self, db: &str) -> PgUrl {
        let url = if self.tcp {
            format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
        } else {
            format!(
                "postgres://postgres:{}@{}:{}/{db}",
                self.password,
                socket_host(&self.dir),
                self.port
            )
        };
        PgUrl::parse(&url).expect("a valid URL")
    }

    /// Stops the server at once (the data is throwaway) and removes its directory.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        stop_pid(self.pid);
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Removes the clusters under `parent` whose starting process is gone.
    pub fn sweep_orphans(parent: &Path) {
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // `<pid>.<start time>-<n>`; older runs wrote `<pid>-<n>`.
            let Some(owner) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
                continue;
            };
            let (pid, started) = match owner.split_once('.') {
                Some((p, t)) => (p.parse::<u32>().ok(), t.parse::<u64>().ok()),
                None => (owner.parse::<u32>().ok(), None),
            };
            let Some(pid) = pid else {
                continue;
            };
            if alive(pid as i32) && (started.is_none() || start_time(pid) == started) {
                continue;
            }
            let data = e.path().join("data");
            let postmaster =
                std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
            if let Some(pm) = postmaster
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<u32>().ok())
            {
                // Only the server of this directory: after a restart the pid
                // may be anyone's.
                let cmdline = std::fs::read(format!("/proc/{pm}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&*data.to_string_lossy()) {
                    stop_pid(pm);
                }
            }
            tracing::info!(dir = %e.path().display(), "removing a local drill cluster left by a crashed run");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A socket directory as a URL's host: every byte but [A-Za-z0-9_.~-] percent-encoded.
fn socket_host(dir: &Path) -> String {
    dir.as_os_str()
        .as_encoded_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// When process `pid` started (clock ticks since boot), if it exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn alive(pid: i32) -> bool {
    unsafe {
        libc::kill(pid, 0) == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
}

/// SIGQUIT is postgres' immediate shutdown; waits up to 10 s for it.
fn stop_pid(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGQUIT) };
    let until = Instant::now() + Duration::from_secs(10);
    while alive(pid as i32) && Instant::now() < until {
        let mut status = 0;
        unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// mkdtemp: a fresh random name under `parent`, created 0700, never an
/// existing path or a symlink. For the drill servers' private directories.
pub(crate) fn private_dir(parent: &Path, prefix: &str) -> std::io::Result<PathBuf> {
    Ok(tempfile::Builder::new()
        .prefix(prefix)
        .rand_bytes(10)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(parent)?
        .keep())
}

/// A password for a throwaway server or role: 192 random bits, hex.
pub(crate) fn random_password() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

/// initdb refuses to run as root: as root, the server runs as `postgres`.
fn as_postgres_user(cmd: &mut Command, owned: &[&Path]) -> Result<(), ServerError> {
    use std::os::unix::process::CommandExt;
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let (uid, gid) = postgres_ids()?;
    for p in owned {
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
            unsafe { libc::chown(c.as_ptr(), uid, gid) };
        }
    }
    cmd.uid(uid).gid(gid);
    Ok(())
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns from one thread that lives as long as the process: PR_SET_PDEATHSIG
/// fires when the spawning *thread* exits, so a short-lived thread would take
/// the server down with it.
pub fn spawn_kept(mut cmd: Command) -> std::io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("firedrill-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("a thread");
        Mutex::new(tx)
    });
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(std::io::Error::other)?;
    rx.recv().map_err(std::io::Error::other)?
}

/// Restored clusters (physical restores): a data directory firedrill
/// unpacked and configured itself, started as it is, with no initdb.
impl LocalCluster {
    /// A private directory (0700, mkdtemp semantics) under `parent` for a
    /// restored cluster's socket and log; named like every local cluster's,
    /// so [`LocalCluster::sweep_orphans`] removes it after a crash.
    pub fn private_run_dir(parent: &Path) -> Result<PathBuf, ServerError> {
        let me = std::process::id();
        let dir = private_dir(
            parent,
            &format!("{PREFIX}{me}.{}-", start_time(me).unwrap_or(0)),
        )
        .map_err(|e| ServerError::Tool {
            tool: "local postgres".into(),
            message: format!("cannot create a directory in {}: {e}", parent.display()),
        })?;
        set_mode(&dir, 0o700);
        Ok(dir)
    }

    /// Starts `bin`/postgres on the prepared data directory `data`, its
    /// socket (and nothing else: no TCP) in `run_dir` (from
    /// [`LocalCluster::private_run_dir`]), its log in `run_dir/postgres.log`.
    /// Returns once the server process runs, not once it accepts
    /// connections: recovery may replay for hours; watch
    /// [`LocalCluster::exited`]. As root, `owned` (the data directory and
    /// the tablespaces' directories) are given to `postgres` whole, links
    /// not followed. Stopping (or dropping) it removes `run_dir`, not `data`
    /// (unless inside it). Not for [`LocalCluster::restart`]. Connect with
    /// [`LocalCluster::url_as`] (the cluster's own roles; authentication is
    /// the data directory's pg_hba.conf). `env` is added to the server's
    /// environment (its restore_command inherits it: secrets go there, never
    /// on a command line).
    pub fn start_restored(
        bin: &Path,
        run_dir: PathBuf,
        data: &Path,
        owned: &[&Path],
        env: &[(String, String)],
    ) -> Result<LocalCluster, ServerError> {
        let fail = |m: String| ServerError::Tool {
            tool: "local postgres".into(),
            message: m,
        };
        let log = run_dir.join("postgres.log");
        let logfile = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&log)
            .map_err(|e| fail(format!("{}: {e}", log.display())))?;
        if let Some((uid, gid)) = server_user()? {
            for tree in owned {
                chown_tree(tree, uid, gid).map_err(|e| {
                    fail(format!("cannot give {} to postgres: {e}", tree.display()))
                })?;
            }
        }
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(data)
            .arg("-p")
            .arg(SOCKET_PORT.to_string());
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let socket_dir = format!("unix_socket_directories={}", run_dir.display());
        for s in [
            "listen_addresses=",
            &socket_dir,
            "unix_socket_permissions=0700",
        ] {
            cmd.arg("-c").arg(s);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(
                logfile.try_clone().map_err(|e| fail(e.to_string()))?,
            ))
            .stderr(Stdio::from(logfile));
        as_postgres_user(&mut cmd, &[&run_dir, &log])?;
        let child = spawn_kept(cmd).map_err(|e| fail(format!("cannot start postgres: {e}")))?;
        Ok(LocalCluster {
            dir: run_dir,
            port: SOCKET_PORT,
            tcp: false,
            password: String::new(),
            pid: child.id(),
            stopped: false,
            bin: bin.to_path_buf(),
            settings: vec![],
        })
    }

    /// How the server process ended, if it has (reaped here). Once it has
    /// said so, dropping the cluster no longer removes its directory (the
    /// log is there to read, and the pid is no longer the server's to
    /// signal): remove [`LocalCluster::dir`] when done with it.
    pub fn exited(&mut self) -> Option<String> {
        if self.stopped {
            return Some("stopped".into());
        }
        let mut status = 0;
        let r = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
        if r == self.pid as i32 {
            self.stopped = true;
            return Some(if libc::WIFEXITED(status) {
                format!("exit status {}", libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                format!("killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("wait status {status}")
            });
        }
        if r < 0 && !alive(self.pid as i32) {
            self.stopped = true;
            return Some("gone".into());
        }
        None
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read(self.dir.join("postgres.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Role `user` on database `db` over the private socket, with the
    /// cluster's password when it has one (a restored cluster has none: its
    /// pg_hba.conf decides).
    pub fn url_as(&self, user: &str, db: &str) -> PgUrl {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let password = if self.password.is_empty() {
            String::new()
        } else {
            format!(":{}", self.password)
        };
        // A restored catalog is the backup's: settings it attaches to roles
        // and databases (ALTER ROLE ... SET) must not load libraries into
        // the sessions firedrill opens; startup options win over them.
        let options = if self.password.is_empty() {
            format!(
                "?options={}",
                enc("-c session_preload_libraries= -c local_preload_libraries=")
            )
        } else {
            String::new()
        };
        let url = format!(
            "postgres://{}{password}@{}:{}/{}{options}",
            enc(user),
            socket_host(&self.dir),
            self.port,
            enc(db)
        );
        PgUrl::parse(&url).expect("a valid URL")
    }

    /// Stops the server cleanly (a fast shutdown: sessions end, a
    /// checkpoint is written, the data directory is left consistent) and
    /// removes the cluster's directory. Blocking. After `patience`, an
    /// immediate shutdown instead, and an error saying so.
    pub fn shutdown_fast(&mut self, patience: Duration) -> Result<(), ServerError> {
        if self.stopped {
            let _ = std::fs::remove_dir_all(&self.dir);
            return Ok(());
        }
        unsafe { libc::kill(self.pid as i32, libc::SIGINT) };
        let until = Instant::now() + patience;
        while self.exited().is_none() {
            if Instant::now() > until {
                let tail = self.log_tail(5);
                self.stop();
                return Err(ServerError::Tool {
                    tool: "local postgres".into(),
                    message: format!(
                        "a fast shutdown did not end within {}s; stopped at once instead (the next start runs crash recovery): {tail}",
                        patience.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stopped = true;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// The user a local server runs as, when it is not ourselves: `postgres`
/// when we are root (the server refuses to run as root); None otherwise.
pub fn server_user() -> Result<Option<(libc::uid_t, libc::gid_t)>, ServerError> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    postgres_ids().map(Some)
}

/// The `postgres` user's uid and gid.
fn postgres_ids() -> Result<(libc::uid_t, libc::gid_t), ServerError> {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(ServerError::Tool {
            tool: "local postgres".into(),
            message: "running as root needs a `postgres` user (the postgresql package creates it)"
                .into(),
        });
    }
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// lchown of `top` and everything below it; symlinks are changed, never followed.
fn chown_tree(top: &Path, uid: libc::uid_t, gid: libc::gid_t) -> std::io::Result<()> {
    let mut stack = vec![top.to_path_buf()];
    while let Some(p) = stack.pop() {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if std::fs::symlink_metadata(&p)?.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_does_not_keep_a_dead_runs_cluster() {
        let parent = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let started = start_time(me).expect("our own start time");
        let name = |owner: String| parent.path().join(format!("{PREFIX}{owner}-0"));
        let ours = name(format!("{me}.{started}"));
        // Our pid, another start time: a run before a container restart.
        let dead = name(format!("{me}.{}", started + 1));
        let legacy = name(format!("{me}"));
        for d in [&ours, &dead, &legacy] {
            std::fs::create_dir_all(d.join("data")).unwrap();
        }
        // A stale postmaster.pid naming a process that is not its server.
        std::fs::write(dead.join("data/postmaster.pid"), format!("{me}\n")).unwrap();
        LocalCluster::sweep_orphans(parent.path());
        assert!(ours.exists() && legacy.exists());
        assert!(!dead.exists());
    }
}

#[cfg(test)]
mod private_cluster {
    use super::*;

    #[test]
    fn a_private_cluster_answers_only_on_its_socket_with_its_password() {
        let parent = tempfile::tempdir().unwrap();
        let c = LocalCluster::start(parent.path(), &[]).unwrap();
        let dir = c.dir().to_path_buf();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("{PREFIX}{}.", std::process::id())),
            "{name}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(!dir.join("pwfile").exists(), "the password file is removed");
        let url = c.url("postgres");
        assert_eq!(url.server(), "local-5432");
        let mut client = postgres::Client::connect(url.secret_url(), postgres::NoTls).unwrap();
        let listen: String = client
            .query_one("SHOW listen_addresses", &[])
            .unwrap()
            .get(0);
        assert_eq!(listen, "", "no TCP");
        for password in [None, Some("wrong")] {
            let mut cfg = postgres::Config::new();
            cfg.host_path(&dir)
                .port(SOCKET_PORT)
                .user("postgres")
                .dbname("postgres");
            if let Some(p) = password {
                cfg.password(p);
            }
            assert!(cfg.connect(postgres::NoTls).is_err(), "{password:?} got in");
        }
        // libpq reads the same URL (the socket directory as its host).
        let out = Command::new(pg_tool("psql").unwrap())
            .env("PGPASSWORD", url.password().unwrap())
            .arg(format!("--dbname={}", url.without_password()))
            .args(["-XtAc", "SELECT 40 + 2"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "42",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(c);
        assert!(!dir.exists());
    }
}
