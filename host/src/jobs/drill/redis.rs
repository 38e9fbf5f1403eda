//! Drilling a Redis backup: the snapshot is downloaded (checksum checked),
//! a throwaway `redis-server` loads it, the key counts are compared with
//! what the backup saw, and the verifier plugins run with a keyvalue grant
//! on that instance only. The instance and its directory are removed by the
//! drill's session, always.
//!
//! The instance holds production data: it is a private
//! [`LocalRedis`] (no TCP, a Unix socket in a 0700 directory, a random
//! password; see `servers::local_redis`).

use crate::archive::manifest::{KeyCount, RedisEntry};
use crate::archive::{Backup, Store};
use crate::caps::keyvalue::KvTarget;
use crate::caps::types as wit;
use crate::caps::CallContext;
use crate::jobs::drill::{
    pass, run_verifier, verdict, DrillOptions, DrillReport, DrillSession, DrillTarget,
};
use crate::jobs::JobError;
use crate::servers::local_redis::{LocalRedis, RedisDir};
use crate::servers::redis::{keyspace, RedisUrl};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How long a snapshot may take to load before the drill gives up.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

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
    let dir = RedisDir::new(&parent)?;
    opts.progress.phase("downloading the snapshot");
    let manifest = &backup.manifest;
    // On failure `dir` goes with the error: nothing is left behind.
    download(store, backup, entry, &dir.snapshot()).await?;
    report.checks.push(pass(
        "redis.rdb.checksum",
        format!("{} checks out ({} bytes)", entry.rdb.path, entry.raw_bytes),
    ));
    opts.progress.phase("loading the snapshot");
    let server = LocalRedis::start(dir)?;
    let url = server.url();
    *session.redis.lock().unwrap() = Some(server);
    let restored = wait_loaded(&url, session).await?;
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
    file: &Path,
) -> Result<(), JobError> {
    let mut reader = backup.reader(store, &entry.bounded()).await?;
    let mut out = tokio::fs::File::create(file)
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
) -> Result<BTreeMap<String, KeyCount>, JobError> {
    let start = Instant::now();
    loop {
        let exited = session
            .redis
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|r| r.exited());
        if let Some(why) = exited {
            return Err(JobError::tool(
                "redis-server",
                format!("could not load the snapshot ({why})"),
            ));
        }
        if let Ok(mut conn) = url.connect().await {
            if let Ok(persistence) = conn.info("persistence").await {
                if crate::servers::redis::info_field(&persistence, "loading") == Some("0") {
                    return Ok(keyspace(&conn.info("keyspace").await?));
                }
            }
        }
        if start.elapsed() > LOAD_TIMEOUT {
            return Err(JobError::tool(
                "redis-server",
                format!(
                    "the snapshot did not load within {}s",
                    LOAD_TIMEOUT.as_secs()
                ),
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

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
