//! The point-in-time fire drill of a physical backup: the base backup
//! restored into a private, throwaway cluster of the same major, the WAL
//! replayed from the archive to a moment T (a random one that the archive
//! covers after the backup, within the last 24 hours), the copy promoted
//! and proven:
//!
//! - `wal.chain`: the archive continues the backup without a gap;
//! - `physical.backup_manifest`: every file checks out against the server's
//!   own backup_manifest (pg_verifybackup, when installed); for an
//!   incremental backup, every member of its chain against its own;
//! - `physical.chain` (incremental backups): the chain, full backup first,
//!   combined by pg_combinebackup, and what each member stored;
//! - `pitr.target`: recovery stopped at T, not before and not after (the
//!   last replayed commit is at most T);
//! - `pitr.heartbeat`: the newest heartbeat the agent wrote into the source
//!   (`firedrill.heartbeat`, every N seconds) lies in `[T - N, T]`: WAL
//!   written after the backup really was replayed, up to T;
//! - `amcheck`: pg_amcheck finds no corruption in any database;
//! - the verifier plugins, as for logical drills, each as a role made for
//!   the database it checks.
//!
//! The report records RTO split into unpack and replay, the WAL bytes
//! replayed, and the archive's lag (the real RPO).
//!
//! Invariants: the cluster, its data directory and the WAL socket are
//! removed on every exit path (the session owns them); WAL reaches the
//! server only through `firedrill wal fetch --via`, verified.

use super::report::{pass, verdict, Check, DrillReport, PhysicalDrill, Status};
use super::{run_verifier, DrillOptions, DrillSession, DrillTarget};
use crate::archive::manifest::PhysicalEntry;
use crate::archive::wal::{self, Segment};
use crate::archive::{Backup, Store};
use crate::caps::types as wit;
use crate::jobs::restore::physical::{self, PhysicalRestoreOptions, RecoveryTarget};
use crate::jobs::wal::fetch::FetchServer;
use crate::jobs::JobError;
use crate::servers::pg::PgUrl;
use std::sync::Arc;

/// The heartbeat table the agent keeps in each physical source.
pub const HEARTBEAT_TABLE: &str = "firedrill.heartbeat";
/// How far back a drill's moment may lie.
const WINDOW: i64 = 24 * 3600;
/// Clock and commit slack around a heartbeat.
const SLACK: i64 = 5;

pub(super) async fn drill(
    store: &Store,
    backup: &Backup,
    entry: &PhysicalEntry,
    opts: &DrillOptions,
    session: &Arc<DrillSession>,
    report: &mut DrillReport,
) -> Result<(), JobError> {
    let m = &backup.manifest;
    report.target = "local (physical)".into();
    let parent = match &opts.target {
        DrillTarget::Local(p) => p.clone(),
        // A physical copy needs a cluster of its own, whatever the
        // configured drill server.
        DrillTarget::Server(_) => std::env::temp_dir(),
    };

    // The archive: whole after this backup, and how far it reaches.
    let chain =
        crate::jobs::wal::verify::verify(store, &m.source, std::slice::from_ref(m), false).await?;
    let covered = chain.backups.first();
    report.checks.push(match covered {
        Some(b) if b.continuous => pass(
            "wal.chain",
            "the WAL archive continues the backup without a gap".to_string(),
        ),
        Some(b) => verdict(
            "wal.chain".into(),
            false,
            b.problem.clone().unwrap_or_default(),
        ),
        None => verdict("wal.chain".into(), false, "no coverage computed".into()),
    });
    let newest = newest_archived(store, &m.source, entry).await?;
    let now = crate::archive::manifest::unix_now();
    let lag = newest.map(|(a, _)| (now - a).max(0));

    // The moment: random within what the archive covers past the backup,
    // leaving room for a heartbeat after it (without one, recovery could
    // find no commit past the moment and end short of it).
    let lower = m.timings.finished + 2;
    let target = match newest {
        Some((upper, Some(every)))
            if upper - every - SLACK > lower && covered.is_some_and(|b| b.continuous) =>
        {
            let upper = upper - every - SLACK;
            let lower = lower.max(upper - WINDOW);
            Some(lower + (rand::random::<u64>() % ((upper - lower) as u64 + 1)) as i64)
        }
        _ => None,
    };
    let recovery = match target {
        Some(t) => RecoveryTarget::Time(pg_time(t)),
        None => {
            report.checks.push(Check {
                name: "pitr.window".into(),
                status: Status::Skip,
                detail: "the archive does not reach past the backup yet: replayed to its end"
                    .into(),
                by: "built-in".into(),
            });
            RecoveryTarget::Latest
        }
    };

    let scratch = tempfile::Builder::new()
        .prefix("firedrill-pitr-")
        .tempdir_in(&parent)
        .map_err(|e| {
            JobError::Internal(format!(
                "cannot make a directory in {}: {e}",
                parent.display()
            ))
        })?;
    // The server runs as `postgres` when we are root: it must reach its data.
    if let Some((uid, gid)) = crate::servers::local_pg::server_user()? {
        std::os::unix::fs::chown(scratch.path(), Some(uid), Some(gid)).map_err(|e| {
            JobError::Internal(format!(
                "cannot hand {} to the server's user: {e}",
                scratch.path().display()
            ))
        })?;
    }
    let data_dir = scratch.path().join("data");
    session.scratch.lock().unwrap().push(scratch);
    let exe = std::env::current_exe()
        .map_err(|e| JobError::Internal(format!("cannot find the firedrill binary: {e}")))?;
    let (fetcher, restore_command) =
        FetchServer::for_restore(store, &m.source, &entry.system_id, &exe)?;
    let restore = PhysicalRestoreOptions {
        data_dir,
        force: false,
        target: recovery.clone(),
        restore_command: Some(restore_command),
        env: vec![],
        progress: opts.progress.clone(),
        keep_running: true,
    };
    opts.progress
        .phase("restoring the base backup and replaying WAL");
    let (summary, cluster) = physical::run(store, backup, &restore).await?;
    let cluster = cluster.expect("kept running");
    let replayed = fetcher.served.load(std::sync::atomic::Ordering::Relaxed);
    drop(fetcher);
    let admin = cluster.url_as(&entry.superuser, "postgres");
    *session.local.lock().unwrap() = Some(cluster);
    report.rto_seconds = summary.unpack_seconds + summary.replay_seconds;
    if let Some(l) = lag {
        report.rpo_seconds = l;
    }
    report.checks.push(
        if summary.verified.starts_with("pg_verifybackup: ok")
            || summary.verified.contains("verified")
        {
            pass("physical.backup_manifest", summary.verified.clone())
        } else {
            Check {
                name: "physical.backup_manifest".into(),
                status: Status::Skip,
                detail: summary.verified.clone(),
                by: "built-in".into(),
            }
        },
    );

    if !summary.chain.is_empty() {
        report.checks.push(pass(
            "physical.chain",
            format!(
                "{} backups combined by pg_combinebackup: {}",
                summary.chain.len(),
                summary
                    .chain
                    .iter()
                    .map(|c| format!("{} ({} bytes stored)", c.id, c.stored_bytes))
                    .collect::<Vec<_>>()
                    .join(" <- ")
            ),
        ));
    }
    let databases = admin.list_databases().await?;
    if let Some(t) = target {
        let reached = last_replayed_commit(&admin).await?;
        report.checks.push(match reached {
            Some(r) if r <= t => pass(
                "pitr.target",
                format!(
                    "asked for {}, recovery stopped at {} (last commit {})",
                    pg_time(t),
                    summary.reached_lsn,
                    summary.reached_time.as_deref().unwrap_or("?")
                ),
            ),
            Some(_) => verdict(
                "pitr.target".into(),
                false,
                format!(
                    "asked for {}, but a commit of {} was replayed: recovery went past its target",
                    pg_time(t),
                    summary.reached_time.as_deref().unwrap_or("?")
                ),
            ),
            None => verdict(
                "pitr.target".into(),
                false,
                "recovery replayed no commit: nothing after the backup was applied".into(),
            ),
        });
        report
            .checks
            .push(heartbeat_check(&admin, &databases, t).await);
    }
    report.checks.push(amcheck(&admin, m.server_major()).await);

    let ctx = |db: &str| wit::DrillContext {
        backup_id: m.id.clone(),
        source: m.source.clone(),
        database: db.to_string(),
        backup_created: m.timings.started,
        drill_started: report.started,
        tables: vec![],
        previous: None,
        labels: vec![("kind".into(), "physical".into())],
    };
    for db in &databases {
        if opts.verifiers.is_empty() {
            break;
        }
        let target = admin.with_database(db);
        let role = crate::jobs::drill::role::create(&target).await?;
        let prefix = format!("{db}:");
        for plugin in &opts.verifiers {
            let calls = super::verifiers::drill_call(&role.url);
            report
                .checks
                .extend(run_verifier(plugin, calls, &ctx(db), &prefix).await);
        }
    }
    report.physical = Some(PhysicalDrill {
        target_time: target.map(pg_time),
        reached_lsn: summary.reached_lsn.to_string(),
        reached_time: summary.reached_time.clone(),
        timeline: summary.timeline,
        unpack_seconds: summary.unpack_seconds,
        replay_seconds: summary.replay_seconds,
        wal_bytes_replayed: replayed,
        archive_lag_seconds: lag,
        chain: summary.chain.clone(),
    });
    Ok(())
}

/// When the newest WAL of the backup's timeline was archived (whole or
/// partial segment), from the records' own times, and the heartbeat the
/// streamer was keeping then.
async fn newest_archived(
    store: &Store,
    source: &str,
    entry: &PhysicalEntry,
) -> Result<Option<(i64, Option<i64>)>, JobError> {
    let dir = wal::timeline_dir(source, entry.end_timeline);
    let mut names: Vec<String> = store
        .list_recursive(&dir)
        .await?
        .into_iter()
        .filter_map(|(p, _)| {
            p.strip_prefix(&dir)
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect();
    // Newest first: a partial copy sorts after its segment's whole one.
    names.sort();
    for name in names.iter().rev().take(3) {
        let seg = name.trim_end_matches(".partial");
        if Segment::parse(seg, entry.segment_size).is_none() {
            continue;
        }
        if let Ok(r) = wal::read_record(store, &format!("{dir}{name}")).await {
            return Ok(Some((r.archived_at, r.heartbeat_seconds.map(|h| h as i64))));
        }
    }
    Ok(None)
}

/// The commit time of the last transaction recovery replayed (unix
/// seconds, rounded up: a commit within a second counts as after it).
async fn last_replayed_commit(admin: &PgUrl) -> Result<Option<i64>, JobError> {
    let c = admin.connect().await?;
    let row = c
        .query_one(
            "SELECT ceil(extract(epoch FROM pg_last_xact_replay_timestamp()))::float8",
            &[],
        )
        .await
        .map_err(|e| JobError::sql("postgres", "read where recovery stopped", e))?;
    Ok(row.get::<_, Option<f64>>(0).map(|v| v as i64))
}

/// The newest heartbeat in the restored copy lies in `[t - every - slack, t]`.
async fn heartbeat_check(admin: &PgUrl, databases: &[String], t: i64) -> Check {
    for db in databases {
        let Ok(c) = admin.with_database(db).connect().await else {
            continue;
        };
        let found = c
            .query_opt(
                "SELECT extract(epoch FROM max(at))::float8, max(every_seconds) FROM firedrill.heartbeat WHERE to_regclass('firedrill.heartbeat') IS NOT NULL",
                &[],
            )
            .await;
        let Ok(Some(row)) = found else { continue };
        let (Some(at), Some(every)) = (row.get::<_, Option<f64>>(0), row.get::<_, Option<i32>>(1))
        else {
            continue;
        };
        let at = at as i64;
        let lower = t - i64::from(every) - SLACK;
        if at > t {
            return verdict(
                "pitr.heartbeat".into(),
                false,
                format!("a heartbeat of {} was replayed, after the target {}: recovery did not stop where asked", pg_time(at), pg_time(t)),
            );
        }
        if at >= lower {
            return pass(
                "pitr.heartbeat",
                format!(
                    "the newest heartbeat ({}) lies within {}s before the target {}: WAL after the backup was replayed up to the moment asked",
                    pg_time(at),
                    t - at,
                    pg_time(t)
                ),
            );
        }
        // Recovery that runs out of WAL before its target fails on its own
        // (PostgreSQL 13+), so an old heartbeat means the heartbeat was not
        // written then (a failed write, an agent restart, a lease handover),
        // not that WAL is missing: worth a look, not a failed drill.
        return Check {
            name: "pitr.heartbeat".into(),
            status: Status::Warn,
            detail: format!("the newest heartbeat is {} but the target is {}: no heartbeat was written in the {}s before the target (expected one every {every}s)", pg_time(at), pg_time(t), t - at),
            by: "built-in".into(),
        };
    }
    Check {
        name: "pitr.heartbeat".into(),
        status: Status::Skip,
        detail: format!("no {HEARTBEAT_TABLE} in the backup (the agent keeps one in physical sources unless heartbeat = \"off\")"),
        by: "built-in".into(),
    }
}

/// pg_amcheck over every database of the copy (installing amcheck there,
/// a throwaway cluster).
async fn amcheck(admin: &PgUrl, major: Option<u32>) -> Check {
    let need = major.map(|major| crate::servers::pg::Need {
        major,
        subject: "the drill's amcheck".into(),
    });
    let tool = match crate::servers::pg::pick_tool("pg_amcheck", need.as_ref()) {
        Ok(t) => t,
        Err(e) => {
            return Check {
                name: "amcheck".into(),
                status: Status::Skip,
                detail: format!("pg_amcheck is not installed: {e}"),
                by: "built-in".into(),
            }
        }
    };
    let mut cmd = tokio::process::Command::new(&tool.path);
    cmd.arg(format!("--maintenance-db={}", admin.without_password()))
        .args(["--all", "--install-missing"])
        .env_remove("PGPASSWORD")
        .kill_on_drop(true);
    if let Some(p) = admin.password() {
        cmd.env("PGPASSWORD", p);
    }
    match cmd.output().await {
        Ok(o) if o.status.success() => {
            pass("amcheck", "pg_amcheck --all: no corruption found".into())
        }
        Ok(o) => verdict(
            "amcheck".into(),
            false,
            format!(
                "pg_amcheck --all: {}",
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .chain(String::from_utf8_lossy(&o.stderr).lines())
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        Err(e) => verdict(
            "amcheck".into(),
            false,
            format!("cannot run pg_amcheck: {e}"),
        ),
    }
}

/// A moment as `recovery_target_time` reads it (`2026-12-02 10:00:00+00`:
/// it refuses ISO 8601's `T` and `Z`).
pub fn pg_time(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    let iso = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}+00", iso.trim_end_matches('Z').replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn moments_are_written_as_recovery_target_time_reads_them() {
        assert_eq!(super::pg_time(1_764_669_600), "2025-12-02 10:00:00+00");
    }
}
