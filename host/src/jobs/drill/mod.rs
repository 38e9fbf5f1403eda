//! A fire drill: restore a backup into a throwaway database, prove it, and
//! write the report next to the backup.
//!
//! Steps: pick the backup; restore each of its databases into
//! `firedrill_drill_<id>` (every object's checksum is checked on the way in,
//! the globals too); run the built-in checks (tables present, row counts as
//! counted at backup time, indexes valid and present, constraints present,
//! sequence positions), the verifier plugins (each with a read-only sql grant
//! on the drill database only) and the SQL assertions, both as a role made
//! for that drill database ([`role`]), never as the drill's own, often
//! superuser, role; measure the restore
//! time (RTO) and the backup's age (RPO); write `drills/<timestamp>.json`.
//!
//! Here: the options, the session, [`run`], the choice of backup and of
//! target, and the flow of each database, top to bottom. The report and its
//! checks are in `report`; the drill databases, their restore and the
//! built-in checks in `postgres`; the verifier plugins' calls in
//! `verifiers`; the SQL assertions in `assertions`; a Redis backup's drill
//! in [`redis`]; the role plugins and assertions run as in [`role`].
//!
//! Invariants: the drill databases (and a local cluster) are removed on every
//! path: success, failure, and, through [`DrillSession::cleanup`], signals;
//! a drill never writes to the source and never touches a database it did not
//! create, except to sweep the orphans of its own crashed runs.

mod assertions;
mod physical;
mod postgres;
pub mod redis;
mod report;
pub mod role;
mod verifiers;

pub use assertions::{parse_assertions, Assertion};
pub use physical::HEARTBEAT_TABLE;
pub use postgres::sweep_orphans;
pub(super) use report::{pass, verdict};
pub use report::{
    Check, DrillReport, DrilledDatabase, PhysicalDrill, Status, TableCount, REPORT_FORMAT,
};
pub(super) use verifiers::run_verifier;

use crate::archive::manifest::{self, Manifest};
use crate::archive::{self as arch, Store};
use crate::coord::CommitGuard;
use crate::jobs::restore;
use crate::jobs::JobError;
use crate::runtime::Plugin;
use crate::servers::local_pg::LocalCluster;
use crate::servers::pg::PgUrl;
use crate::telemetry::progress::Progress;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Server settings of a local drill cluster for a logical backup.
const DRILL_CLUSTER_SETTINGS: &[&str] = &["wal_level=minimal", "max_wal_senders=0"];

/// Which backup to drill.
#[derive(Debug, Clone)]
pub enum Pick {
    Id(String),
    Latest,
    LatestUnverified,
}

/// Where the drill databases live.
#[derive(Debug, Clone)]
pub enum DrillTarget {
    /// A drill server (any database URL on it; the drill creates its own).
    Server(PgUrl),
    /// A throwaway cluster started for this drill under this directory.
    Local(PathBuf),
}

#[derive(Clone)]
pub struct DrillOptions {
    pub target: DrillTarget,
    pub jobs: usize,
    pub source: Option<String>,
    pub verifiers: Vec<Arc<Plugin>>,
    pub assertions: Vec<Assertion>,
    /// The lease this drill runs under: the report is written only while it is held.
    pub guard: Option<CommitGuard>,
    pub progress: Arc<Progress>,
}

/// What a drill has created, so that it can be removed from anywhere
/// (including a signal handler) exactly once.
#[derive(Default)]
pub struct DrillSession {
    databases: Mutex<Vec<PgUrl>>,
    /// The drill server (as the drill's own role) and a role made on it.
    roles: Mutex<Vec<(PgUrl, String)>>,
    local: Mutex<Option<LocalCluster>>,
    /// Directories a drill made (a physical copy's data directory), removed
    /// after the cluster stops.
    scratch: Mutex<Vec<tempfile::TempDir>>,
    pub(super) redis: Mutex<Option<crate::servers::local_redis::LocalRedis>>,
}

impl DrillSession {
    pub fn new() -> Arc<DrillSession> {
        Arc::new(DrillSession::default())
    }

    /// Drops every drill database and its role, and stops the local cluster.
    pub async fn cleanup(&self) {
        let dbs: Vec<PgUrl> = std::mem::take(&mut *self.databases.lock().unwrap());
        for db in dbs {
            if let Err(e) = restore::drop_database(&db).await {
                tracing::error!(database = %db.database(), "cannot drop the drill database: {e}");
            }
        }
        // After the databases: the roles' grants go with them.
        let roles: Vec<(PgUrl, String)> = std::mem::take(&mut *self.roles.lock().unwrap());
        for (server, role) in roles {
            if let Err(e) = crate::jobs::drill::role::drop(&server, &role).await {
                tracing::error!(role = %role, "cannot drop the drill's role: {e}");
            }
        }
        let local = self.local.lock().unwrap().take();
        if let Some(mut cluster) = local {
            let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
        }
        let scratch = std::mem::take(&mut *self.scratch.lock().unwrap());
        if !scratch.is_empty() {
            let _ = tokio::task::spawn_blocking(move || drop(scratch)).await;
        }
        let redis = self.redis.lock().unwrap().take();
        if let Some(r) = redis {
            let _ = tokio::task::spawn_blocking(move || r.stop()).await;
        }
    }
}

/// Runs a drill and writes its report. `Err` only when there was nothing to
/// drill or the report could not be written; a backup that fails its checks
/// is an `Ok` report with `passed: false`.
#[tracing::instrument(name = "drill", skip_all, fields(source = opts.source.as_deref().unwrap_or("")))]
pub async fn run(
    store: &Store,
    pick: &Pick,
    opts: &DrillOptions,
    session: &Arc<DrillSession>,
) -> Result<DrillReport, JobError> {
    let (source, id) = pick_backup(store, pick, opts.source.as_deref()).await?;
    let manifest = arch::read_manifest(store, &source, &id).await?;
    let started = manifest::unix_now();
    let mut report = DrillReport {
        format: REPORT_FORMAT.into(),
        backup_id: id.clone(),
        source: source.clone(),
        started,
        finished: started,
        passed: false,
        rto_seconds: 0.0,
        rpo_seconds: started - manifest.timings.finished,
        backup_bytes: manifest.size(),
        backup_rows: manifest.rows(),
        target: String::new(),
        databases: vec![],
        checks: vec![],
        plugins: opts.verifiers.iter().map(|p| p.version()).collect(),
        error: None,
        report: String::new(),
        physical: None,
        signature: None,
    };
    tracing::info!(backup = %id, source = %source, "drill started");
    report
        .checks
        .push(unlisted_objects(store, &manifest).await?);
    let outcome = match open(store, &source, &id, &mut report).await {
        Ok(backup) => drill(store, &backup, opts, session, &mut report).await,
        Err(e) => Err(e),
    };
    session.cleanup().await;
    if let Err(e) = outcome {
        report.checks.push(Check {
            name: "restore".into(),
            status: Status::Fail,
            detail: e.to_string(),
            by: "built-in".into(),
        });
        report.error = Some(e.to_string());
    }
    report.finished = manifest::unix_now();
    report.passed = report.error.is_none()
        && report.failed_checks().next().is_none()
        && !report.checks.is_empty();
    let path = format!(
        "{}drills/{}.json",
        arch::backup_dir(&source, &id),
        report::compact_time(report.started)
    );
    report.report = path.clone();
    report::redact_report(&mut report);
    if let Some(guard) = &opts.guard {
        guard.check().await?;
    }
    if store.keys().signing.is_none() && !store.keys().trusted.is_empty() {
        tracing::warn!(
            report = %path,
            "the drill report is not signed (no signing key: --signing-key, [store] signing_key_file); \
             with verify keys configured, list, drill and prune will not count this drill"
        );
    }
    store.put(&path, report.to_bytes(store.keys())).await?;
    tracing::info!(backup = %id, passed = report.passed, rto = report.rto_seconds, "drill finished");
    Ok(report)
}

/// Objects in the backup's directory that its manifest does not list: not
/// needed to restore, but not ours either (a tampered or mixed-up backup).
async fn unlisted_objects(store: &Store, m: &Manifest) -> Result<Check, JobError> {
    let dir = arch::backup_dir(&m.source, &m.id);
    let listed: BTreeSet<String> = m.objects().map(|o| format!("{dir}{}", o.path)).collect();
    let extra: Vec<String> = store
        .list_recursive(&dir)
        .await?
        .into_iter()
        .map(|(path, _)| path)
        .filter(|p| !listed.contains(p))
        .filter_map(|p| p.strip_prefix(&dir).map(str::to_string))
        .filter(|p| p != manifest::MANIFEST && !p.starts_with("drills/"))
        .collect();
    Ok(if extra.is_empty() {
        pass(
            "archive.objects",
            format!("{} objects, each listed in the manifest", listed.len()),
        )
    } else {
        Check {
            name: "archive.objects".into(),
            status: Status::Warn,
            detail: format!("not listed in the manifest: {}", extra.join(", ")),
            by: "built-in".into(),
        }
    })
}

pub async fn pick_backup(
    store: &Store,
    pick: &Pick,
    source: Option<&str>,
) -> Result<(String, String), JobError> {
    match pick {
        Pick::Id(id) => Ok(arch::find_backup(store, Some(id), source).await?),
        Pick::Latest => Ok(arch::find_backup(store, None, source).await?),
        Pick::LatestUnverified => {
            let all = arch::list_backups(store).await?;
            all.iter()
                .rev()
                .filter(|l| l.complete && l.last_drill.is_none())
                .find(|l| source.is_none_or(|s| l.source == s))
                .map(|l| (l.source.clone(), l.id.clone()))
                .ok_or_else(|| {
                    JobError::NothingToDrill(
                        "every complete backup has been drilled already (see `firedrill list`)"
                            .into(),
                    )
                })
        }
    }
}

/// Opens the backup (signature, key) and says so in the report.
async fn open(
    store: &Store,
    source: &str,
    id: &str,
    report: &mut DrillReport,
) -> Result<arch::Backup, JobError> {
    let backup = arch::open_backup(store, source, id).await?;
    if let Some(key) = &backup.signed_by {
        report.checks.push(pass(
            "manifest.signature",
            format!("signed by trusted key {key}"),
        ));
    }
    if let Some(enc) = &backup.manifest.encryption {
        let fps: Vec<&str> = enc
            .recipients
            .iter()
            .map(|r| r.fingerprint.as_str())
            .collect();
        report.checks.push(pass(
            "archive.encryption",
            format!(
                "{}: {} ({}), header generation {}",
                enc.scheme,
                enc.header.path,
                fps.join(", "),
                enc.generation
            ),
        ));
    }
    Ok(backup)
}

async fn drill(
    store: &Store,
    backup: &arch::Backup,
    opts: &DrillOptions,
    session: &Arc<DrillSession>,
    report: &mut DrillReport,
) -> Result<(), JobError> {
    let manifest = &backup.manifest;
    if let Some(entry) = &manifest.redis {
        return crate::jobs::drill::redis::drill(store, backup, entry, opts, session, report).await;
    }
    if let Some(entry) = &manifest.physical {
        return physical::drill(store, backup, entry, opts, session, report).await;
    }
    let server = match &opts.target {
        DrillTarget::Server(url) => {
            report.target = url.redacted();
            sweep_orphans(url).await;
            url.clone()
        }
        DrillTarget::Local(parent) => {
            report.target = "local".into();
            let parent = parent.clone();
            let source = LocalCluster::need_for(manifest);
            let cluster = tokio::task::spawn_blocking(move || {
                LocalCluster::sweep_orphans(&parent);
                // A throwaway cluster nothing replicates from: a restore's
                // COPY into a table it truncated, and its index builds,
                // write no WAL.
                LocalCluster::start_for(&parent, DRILL_CLUSTER_SETTINGS, source.as_ref())
            })
            .await
            .map_err(|e| JobError::Internal(e.to_string()))??;
            let url = cluster.url("postgres");
            *session.local.lock().unwrap() = Some(cluster);
            url
        }
    };
    if let Some(globals) = &manifest.globals {
        // Checked whole, never applied (a drill restores into a server whose
        // roles it does not own), and streamed: nothing of it is kept.
        backup.reader(store, globals).await?.check().await?;
        report.checks.push(pass(
            "globals.checksum",
            format!("{} checks out", globals.path),
        ));
    }
    let previous = report::previous_drill(store, manifest).await;
    let several = manifest.databases.len() > 1;
    for (i, entry) in manifest.databases.iter().enumerate() {
        let drill_db = postgres::database_name(&manifest.id, several.then_some(i));
        let target = server.with_database(&drill_db);
        session.databases.lock().unwrap().push(target.clone());
        let seconds = postgres::restore(store, backup, entry, &target, opts).await?;
        report.rto_seconds += seconds;
        let prefix = if several {
            format!("{}:", entry.name)
        } else {
            String::new()
        };
        opts.progress.phase(format!("checking {drill_db}"));
        let client = target.connect().await?;
        let counts =
            postgres::builtin_checks(&client, &drill_db, entry, &prefix, &mut report.checks)
                .await?;
        report.databases.push(DrilledDatabase {
            name: entry.name.clone(),
            drill_database: drill_db.clone(),
            restore_seconds: seconds,
            tables: counts,
        });
        let ctx = verifiers::drill_context(
            manifest,
            entry,
            &drill_db,
            report.started,
            previous.as_ref(),
        );
        drop(client);
        // Plugins and assertions run as a role that can read this database
        // and do nothing else; the drill's own role may be superuser.
        let role = crate::jobs::drill::role::create(&target).await?;
        session
            .roles
            .lock()
            .unwrap()
            .push((server.clone(), role.name.clone()));
        for plugin in &opts.verifiers {
            report.checks.extend(
                run_verifier(plugin, verifiers::drill_call(&role.url), &ctx, &prefix).await,
            );
        }
        let here = assertions::for_database(&opts.assertions, i, &entry.name);
        if !here.is_empty() {
            let client = role.url.connect().await?;
            for a in here {
                report
                    .checks
                    .push(assertions::run_assertion(&client, a, &prefix).await);
            }
        }
        // Dropped now rather than at the end: one drill database at a time.
        restore::drop_database(&target).await?;
        session
            .databases
            .lock()
            .unwrap()
            .retain(|d| d.database() != drill_db);
        crate::jobs::drill::role::drop(&server, &role.name).await?;
        session
            .roles
            .lock()
            .unwrap()
            .retain(|(_, r)| *r != role.name);
    }
    Ok(())
}
