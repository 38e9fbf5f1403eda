//! Drilling a Redis backup: the snapshot is downloaded (checksum checked),
//! a throwaway `redis-server` loads it, the key counts are compared with
//! what the backup saw, and the verifier plugins run with a keyvalue grant
//! on that instance only. The instance and its directory are removed by the
//! drill's session, always.
//!
//! The instance holds production data: no TCP, a Unix socket (mode 0700) in
//! a 0700 directory made with mkdtemp semantics, and a random password,
//! given to the server in a 0600 config file (never on its command line).

use crate::archive::manifest::{KeyCount, RedisEntry};
use crate::archive::{Backup, Store};
use crate::caps::keyvalue::KvTarget;
use crate::caps::types as wit;
use crate::caps::CallContext;
use crate::jobs::drill::{
    pass, run_verifier, verdict, DrillOptions, DrillReport, DrillSession, DrillTarget,
};
use crate::jobs::JobError;
use crate::servers::redis::{keyspace, RedisUrl};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How long a snapshot may take to load before the drill gives up.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// A running throwaway redis-server, stopped and removed by the session.
pub struct LocalRedis {
    child: std::process::Child,
    dir: PathBuf,
}

impl LocalRedis {
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) async fn drill(
    store: &Store,
    backup: &Backup,
    entry: &RedisEntry,
    opts: &DrillOptions,
    session: &Arc<DrillSession>,
    report: &mut DrillReport,
) -> Result<(), JobError> {
    let parent = match &opts.target {
        DrillTarget::Local(p) => p.clone(),
        // A Postgres drill server cannot load an RDB: Redis drills run here.
        DrillTarget::Server(_) => std::env::temp_dir(),
    };
    report.target = "local redis-server".into();
    let clock = Instant::now();
    let dir = private_dir(&parent).map_err(|e| {
        JobError::Internal(format!(
            "cannot create a directory in {}: {e}",
            parent.display()
        ))
    })?;
    opts.progress.phase("downloading the snapshot");
    let manifest = &backup.manifest;
    if let Err(e) = download(store, backup, entry, &dir).await {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    report.checks.push(pass(
        "redis.rdb.checksum",
        format!("{} checks out ({} bytes)", entry.rdb.path, entry.raw_bytes),
    ));
    opts.progress.phase("loading the snapshot");
    let password = crate::servers::local_pg::random_password();
    let socket = dir.join("redis.sock");
    let conf = dir.join("redis.conf");
    if let Err(e) = write_private(&conf, &server_config(&dir, &socket, &password)) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(JobError::Internal(format!("{}: {e}", conf.display())));
    }
    let mut cmd = std::process::Command::new(redis_server());
    cmd.arg(&conf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = crate::servers::local_pg::spawn_kept(cmd).map_err(|e| JobError::Tool {
        tool: "redis-server".into(),
        message: format!("cannot start it ({e}); install the redis-server package"),
    })?;
    *session.redis.lock().unwrap() = Some(LocalRedis {
        child,
        dir: dir.clone(),
    });
    let url = socket_url(&socket, &password);
    let restored = wait_loaded(&url, session, &dir).await?;
    report.rto_seconds = clock.elapsed().as_secs_f64();

    for (db, check) in key_checks(&entry.keys_before, &entry.keys_after, &restored) {
        report
            .checks
            .push(verdict(format!("redis.{db}.keys"), check.0, check.1));
    }
    let ctx = wit::DrillContext {
        backup_id: manifest.id.clone(),
        source: manifest.source.clone(),
        database: "local redis-server (private socket)".into(),
        backup_created: manifest.timings.started,
        drill_started: report.started,
        tables: vec![],
        previous: None,
        labels: vec![("kind".into(), "redis".into())],
    };
    opts.progress.phase("checking");
    for plugin in &opts.verifiers {
        let call = CallContext {
            keyvalue: Some(
                KvTarget::new(url.secret_url(), "")
                    .map_err(|e| JobError::Internal(e.to_string()))?,
            ),
            ..Default::default()
        };
        report
            .checks
            .extend(run_verifier(plugin, call, &ctx, "").await);
    }
    Ok(())
}

async fn download(
    store: &Store,
    backup: &Backup,
    entry: &RedisEntry,
    dir: &Path,
) -> Result<(), JobError> {
    let mut reader = backup.reader(store, &entry.bounded()).await?;
    let file = dir.join("dump.rdb");
    let mut out = tokio::fs::File::create(&file)
        .await
        .map_err(|e| JobError::Internal(format!("{}: {e}", file.display())))?;
    while let Some(piece) = reader.next().await? {
        out.write_all(&piece)
            .await
            .map_err(|e| JobError::Internal(format!("{}: {e}", file.display())))?;
    }
    out.flush()
        .await
        .map_err(|e| JobError::Internal(e.to_string()))?;
    Ok(())
}

/// Waits until the server answers with the snapshot loaded; its key counts.
async fn wait_loaded(
    url: &RedisUrl,
    session: &DrillSession,
    dir: &Path,
) -> Result<BTreeMap<String, KeyCount>, JobError> {
    let start = Instant::now();
    loop {
        let exited = session
            .redis
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|r| r.child.try_wait().ok().flatten());
        if let Some(status) = exited {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            return Err(JobError::Tool {
                tool: "redis-server".into(),
                message: format!(
                    "could not load the snapshot ({status}): {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                ),
            });
        }
        if let Ok(mut conn) = url.connect().await {
            if let Ok(persistence) = conn.info("persistence").await {
                if crate::servers::redis::info_field(&persistence, "loading") == Some("0") {
                    return Ok(keyspace(&conn.info("keyspace").await?));
                }
            }
        }
        if start.elapsed() > LOAD_TIMEOUT {
            return Err(JobError::Tool {
                tool: "redis-server".into(),
                message: format!(
                    "the snapshot did not load within {}s",
                    LOAD_TIMEOUT.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per database: (ok, detail). The restored count must lie between what the
/// backup saw before and after the snapshot, less the keys that may have
/// expired since (keys with a TTL).
fn key_checks(
    before: &BTreeMap<String, KeyCount>,
    after: &BTreeMap<String, KeyCount>,
    restored: &BTreeMap<String, KeyCount>,
) -> Vec<(String, (bool, String))> {
    let mut dbs: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .chain(restored.keys())
        .collect();
    dbs.sort();
    dbs.dedup();
    dbs.into_iter()
        .map(|db| {
            let (b, a, r) = (
                before.get(db).copied().unwrap_or_default(),
                after.get(db).copied().unwrap_or_default(),
                restored.get(db).copied().unwrap_or_default(),
            );
            let low = b.keys.min(a.keys).saturating_sub(b.expires.max(a.expires));
            let high = b.keys.max(a.keys);
            let ok = (low..=high).contains(&r.keys);
            let seen = if b.keys == a.keys {
                format!("{}", b.keys)
            } else {
                format!("{} to {}", b.keys, a.keys)
            };
            (
                db.clone(),
                (
                    ok,
                    format!(
                        "{} keys restored; the backup saw {seen} ({} with a TTL)",
                        r.keys,
                        b.expires.max(a.expires)
                    ),
                ),
            )
        })
        .collect()
}

fn private_dir(parent: &Path) -> std::io::Result<PathBuf> {
    crate::servers::local_pg::private_dir(
        parent,
        &format!("firedrill-redis-drill-{}-", std::process::id()),
    )
}

/// The server's settings: no TCP, its socket and data in `dir`, a password.
fn server_config(dir: &Path, socket: &Path, password: &str) -> String {
    // Quoted: a path may hold spaces.
    let quote = |p: &Path| format!("\"{}\"", p.display().to_string().replace(['\\', '"'], ""));
    format!(
        "port 0\nunixsocket {}\nunixsocketperm 700\nrequirepass {password}\nsave \"\"\nappendonly no\ndir {}\ndbfilename dump.rdb\nlogfile redis.log\n",
        quote(socket),
        quote(dir)
    )
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

/// `redis+unix:///path?pass=...`: what the redis crate and [`RedisUrl`] both read.
fn socket_url(socket: &Path, password: &str) -> RedisUrl {
    let mut url = url::Url::parse("redis+unix:///").expect("a URL");
    url.set_path(&socket.display().to_string());
    url.query_pairs_mut().append_pair("pass", password);
    RedisUrl::parse(url.as_str()).expect("a socket URL")
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

    #[tokio::test]
    async fn the_drill_server_listens_on_its_socket_only_and_wants_its_password() {
        let parent = tempfile::tempdir().unwrap();
        let dir = private_dir(parent.path()).unwrap();
        let socket = dir.join("redis.sock");
        let conf = dir.join("redis.conf");
        write_private(&conf, &server_config(&dir, &socket, "s3cret-pass")).unwrap();
        assert!(
            write_private(&conf, "").is_err(),
            "an existing file is refused"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut cmd = std::process::Command::new(redis_server());
        cmd.arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = crate::servers::local_pg::spawn_kept(cmd).unwrap();
        let server = LocalRedis {
            child,
            dir: dir.clone(),
        };
        let url = socket_url(&socket, "s3cret-pass");
        let start = Instant::now();
        let mut conn = loop {
            match url.connect().await {
                Ok(c) => break c,
                Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("{e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let port = conn.command(&[b"CONFIG", b"GET", b"port"]).await.unwrap();
        assert_eq!(
            port,
            crate::servers::redis::Reply::Array(vec![
                crate::servers::redis::Reply::Bulk(Some(b"port".to_vec())),
                crate::servers::redis::Reply::Bulk(Some(b"0".to_vec()))
            ]),
            "no TCP"
        );
        // The same socket without the password, or with another: refused.
        let mut anon = RedisUrl::parse(&format!("redis+unix://{}", socket.display()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let r = anon.command(&[b"GET", b"x"]).await.unwrap();
        assert!(
            matches!(&r, crate::servers::redis::Reply::Error(e) if e.starts_with("NOAUTH")),
            "{r:?}"
        );
        let e = socket_url(&socket, "guess")
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

    #[test]
    fn key_counts_allow_for_expiry_and_writes_during_the_snapshot() {
        let kc = |keys, expires| KeyCount { keys, expires };
        let map = |v: KeyCount| BTreeMap::from([("db0".to_string(), v)]);
        let check = |b, a, r| key_checks(&map(b), &map(a), &map(r))[0].1 .0;
        assert!(check(kc(10, 0), kc(10, 0), kc(10, 0)));
        assert!(
            !check(kc(10, 0), kc(10, 0), kc(9, 0)),
            "a key without a TTL went missing"
        );
        assert!(
            check(kc(10, 2), kc(10, 2), kc(8, 0)),
            "two keys may have expired"
        );
        assert!(
            check(kc(10, 0), kc(12, 0), kc(11, 0)),
            "written during the snapshot"
        );
        assert!(
            !check(kc(10, 0), kc(10, 0), kc(11, 0)),
            "more keys than the server ever had"
        );
        // A database only the restore has is a failure too.
        let r = key_checks(
            &map(kc(1, 0)),
            &map(kc(1, 0)),
            &BTreeMap::from([("db0".into(), kc(1, 0)), ("db5".into(), kc(3, 0))]),
        );
        assert!(!r[1].1 .0, "{r:?}");
    }
}
