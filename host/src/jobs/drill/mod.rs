//! A fire drill: restore a backup into a throwaway database, prove it, and
//! write the report next to the backup.
//!
//! Steps: pick the backup; restore each of its databases into
//! `firedrill_drill_<id>` (every object's checksum is checked on the way in,
//! the globals too); run the built-in checks (tables present, row counts as
//! counted at backup time, indexes valid and present, constraints present,
//! sequence positions), the verifier plugins (each with a read-only sql grant
//! on the drill database only) and the SQL assertions, both as a role made
//! for that drill database (`drill_role`), never as the drill's own, often
//! superuser, role; measure the restore
//! time (RTO) and the backup's age (RPO); write `drills/<timestamp>.json`.
//!
//! Invariants: the drill databases (and a local cluster) are removed on every
//! path: success, failure, and, through [`DrillSession::cleanup`], signals;
//! a drill never writes to the source and never touches a database it did not
//! create, except to sweep the orphans of its own crashed runs.

pub mod redis;
pub mod role;

use crate::archive::manifest::{self, DatabaseEntry, Manifest, TableMode};
use crate::archive::{self as arch, Store};
use crate::caps::sql::{SqlScope, SqlTarget};
use crate::caps::types::{self as wit, CheckStatus};
use crate::caps::CallContext;
use crate::coord::CommitGuard;
use crate::jobs::restore::{self, RestoreOptions};
use crate::jobs::JobError;
use crate::runtime::Plugin;
use crate::servers::local_pg::LocalCluster;
use crate::servers::pg::{ident, PgUrl};
use crate::telemetry::progress::Progress;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub const REPORT_FORMAT: &str = "firedrill-drill/1";
const DRILL_PREFIX: &str = "firedrill_drill_";

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

/// One SQL assertion: passes when its first column is true, or it returns no rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub name: String,
    pub sql: String,
    /// The backup's database to run it in (default: the first).
    pub database: Option<String>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// "built-in", "assertions", or the plugin's name.
    pub by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Fail,
    Warn,
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableCount {
    pub schema: String,
    pub name: String,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrilledDatabase {
    pub name: String,
    pub drill_database: String,
    pub restore_seconds: f64,
    pub tables: Vec<TableCount>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub format: String,
    pub backup_id: String,
    pub source: String,
    /// Seconds since the epoch.
    pub started: i64,
    pub finished: i64,
    pub passed: bool,
    /// Recovery time: how long the restore took, all databases.
    pub rto_seconds: f64,
    /// Recovery point: the backup's age when the drill started.
    pub rpo_seconds: i64,
    pub backup_bytes: u64,
    pub backup_rows: u64,
    /// "local" or the drill server, without credentials.
    pub target: String,
    pub databases: Vec<DrilledDatabase>,
    pub checks: Vec<Check>,
    pub plugins: Vec<String>,
    /// Why the drill could not run to the end, if it could not.
    pub error: Option<String>,
    /// Where the report is stored, relative to the store's root.
    #[serde(default)]
    pub report: String,
    /// Always last: the manifest's signature scheme
    /// ([`crate::archive::signed`]), by the store's signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<manifest::Signature>,
}

impl DrillReport {
    /// The report as stored: pretty JSON, signed as a manifest is
    /// ([`manifest::Manifest::to_bytes`]) when `keys` hold a signing key.
    pub fn to_bytes(&self, keys: &arch::Keys) -> Vec<u8> {
        let mut r = self.clone();
        r.signature = None;
        let body = serde_json::to_vec_pretty(&r).expect("a report serializes");
        arch::signed::to_bytes(body, |b| keys.sign(b))
    }

    pub fn failed_checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }
}

/// What a drill has created, so that it can be removed from anywhere
/// (including a signal handler) exactly once.
#[derive(Default)]
pub struct DrillSession {
    databases: Mutex<Vec<PgUrl>>,
    /// The drill server (as the drill's own role) and a role made on it.
    roles: Mutex<Vec<(PgUrl, String)>>,
    local: Mutex<Option<LocalCluster>>,
    pub(super) redis: Mutex<Option<crate::jobs::drill::redis::LocalRedis>>,
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
        compact_time(report.started)
    );
    report.report = path.clone();
    redact_report(&mut report);
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

/// Check names and details and the error can quote anything (a verifier's
/// output, a server's message): they leave through the redactor, in one batch.
fn redact_report(report: &mut DrillReport) {
    let mut texts: Vec<String> = report
        .checks
        .iter()
        .flat_map(|c| [c.name.clone(), c.detail.clone()])
        .collect();
    texts.push(report.error.clone().unwrap_or_default());
    let mut out = crate::telemetry::redactor().redact_lines(texts).into_iter();
    for c in &mut report.checks {
        c.name = out.next().unwrap_or_default();
        c.detail = out.next().unwrap_or_default();
    }
    if report.error.is_some() {
        report.error = out.next();
    }
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

fn compact_time(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

async fn pick_backup(
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
                    JobError::Config(
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
                LocalCluster::start_for(&parent, &[], source.as_ref())
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
    let previous = previous_drill(store, manifest).await;
    let several = manifest.databases.len() > 1;
    for (i, entry) in manifest.databases.iter().enumerate() {
        let drill_db = if several {
            format!("{DRILL_PREFIX}{}_{i}", sanitize(&manifest.id))
        } else {
            format!("{DRILL_PREFIX}{}", sanitize(&manifest.id))
        };
        let target = server.with_database(&drill_db);
        session.databases.lock().unwrap().push(target.clone());
        let clock = Instant::now();
        let ropts = RestoreOptions {
            target: target.clone(),
            jobs: opts.jobs,
            force: false,
            database: Some(entry.name.clone()),
            comment: Some(marker()),
            progress: opts.progress.clone(),
            create_missing_roles: matches!(opts.target, DrillTarget::Local(_)),
        };
        restore::run(store, backup, &ropts).await?;
        let seconds = clock.elapsed().as_secs_f64();
        report.rto_seconds += seconds;
        let prefix = if several {
            format!("{}:", entry.name)
        } else {
            String::new()
        };
        opts.progress.phase(format!("checking {drill_db}"));
        let client = target.connect().await?;
        let counts = builtin_checks(&client, &drill_db, entry, &prefix, &mut report.checks).await?;
        report.databases.push(DrilledDatabase {
            name: entry.name.clone(),
            drill_database: drill_db.clone(),
            restore_seconds: seconds,
            tables: counts,
        });
        let ctx = drill_context(
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
            report
                .checks
                .extend(run_verifier(plugin, drill_call(&role.url), &ctx, &prefix).await);
        }
        let assertions: Vec<&Assertion> = opts
            .assertions
            .iter()
            .filter(|a| a.database.as_deref().map_or(i == 0, |d| d == entry.name))
            .collect();
        if !assertions.is_empty() {
            let client = role.url.connect().await?;
            for a in assertions {
                report.checks.push(run_assertion(&client, a, &prefix).await);
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

fn sanitize(id: &str) -> String {
    id.to_ascii_lowercase().replace('-', "_")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Written on each drill database, so that a later run can tell its own orphans.
fn marker() -> String {
    format!(
        "firedrill drill host={} pid={} started={}",
        hostname(),
        std::process::id(),
        manifest::unix_now()
    )
}

/// Drops drill databases left by crashed runs: those this host made whose
/// process is gone, and any older than a week; then the drill roles whose
/// database is gone.
pub async fn sweep_orphans(server: &PgUrl) {
    let Ok(admin) = server.with_database("postgres").connect().await else {
        return;
    };
    let Ok(rows) = admin
        .query(
            "SELECT d.datname, coalesce(shobj_description(d.oid, 'pg_database'), '') FROM pg_database d WHERE d.datname LIKE 'firedrill\\_drill\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    let host = hostname();
    for r in rows {
        let (name, comment): (String, String) = (r.get(0), r.get(1));
        let field = |k: &str| {
            comment
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        let Some(pid) = field("pid=").and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let started = field("started=")
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0);
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        let dead = field("host=").as_deref() == Some(host.as_str()) && gone;
        let stale = manifest::unix_now() - started > 7 * 24 * 3600;
        if dead || stale {
            tracing::warn!(database = %name, "dropping a drill database left by a crashed run");
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&name)
                ))
                .await;
        }
    }
    // Their roles, and any other whose database is gone.
    crate::jobs::drill::role::sweep_orphans(&admin).await;
}

pub(super) fn pass(name: &str, detail: String) -> Check {
    Check {
        name: name.into(),
        status: Status::Pass,
        detail,
        by: "built-in".into(),
    }
}

pub(super) fn verdict(name: String, ok: bool, detail: String) -> Check {
    Check {
        name,
        status: if ok { Status::Pass } else { Status::Fail },
        detail,
        by: "built-in".into(),
    }
}

/// The filter of each extension configuration table that has one: the
/// backup copied only the rows it selects (as pg_dump does), and the rows
/// the extension's own script inserted at restore do not match it. Read
/// from the drill database, which holds only what the restore put there.
async fn extension_conditions(
    client: &tokio_postgres::Client,
) -> Result<std::collections::HashMap<(String, String), String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT n.nspname::text, c.relname::text, x.extcondition[array_position(x.extconfig, c.oid)]
             FROM pg_extension x CROSS JOIN LATERAL unnest(x.extconfig) AS cfg(oid)
             JOIN pg_class c ON c.oid = cfg.oid JOIN pg_namespace n ON n.oid = c.relnamespace",
            &[],
        )
        .await?
        .into_iter()
        .filter_map(|r| {
            let condition: Option<String> = r.get(2);
            let condition = condition.filter(|c| !c.trim().is_empty())?;
            Some(((r.get(0), r.get(1)), condition))
        })
        .collect())
}

/// The checks every drill runs; returns the restored row counts.
#[tracing::instrument(name = "drill.checks", skip_all, fields(database = drill_db))]
async fn builtin_checks(
    client: &tokio_postgres::Client,
    drill_db: &str,
    entry: &DatabaseEntry,
    prefix: &str,
    checks: &mut Vec<Check>,
) -> Result<Vec<TableCount>, JobError> {
    let sql = |what: &str, e| JobError::sql(drill_db, what, e);
    let present: BTreeSet<(String, String)> = client
        .query("SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')", &[])
        .await
        .map_err(|e| sql("list the tables", e))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<String> = entry
        .tables
        .iter()
        .filter(|t| !present.contains(&(t.schema.clone(), t.name.clone())))
        .map(|t| t.qualified())
        .collect();
    checks.push(verdict(
        format!("{prefix}tables.present"),
        missing.is_empty(),
        if missing.is_empty() {
            format!("all {} tables", entry.tables.len())
        } else {
            format!("missing: {}", missing.join(", "))
        },
    ));
    let conditions = extension_conditions(client)
        .await
        .map_err(|e| sql("list the extensions' configuration tables", e))?;
    let mut counts = Vec::new();
    for t in &entry.tables {
        if missing.contains(&t.qualified()) {
            continue;
        }
        let condition = conditions
            .get(&(t.schema.clone(), t.name.clone()))
            .map(String::as_str)
            .unwrap_or_default();
        // ONLY: the backup copied this table's own rows, never its
        // inheritance children's (each child is a table of its own).
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM ONLY {}.{} {condition}",
                    ident(&t.schema),
                    ident(&t.name)
                ),
                &[],
            )
            .await
            .map_err(|e| sql(&format!("count {}", t.qualified()), e))?
            .get(0);
        let expected = if t.mode == TableMode::Full { t.rows } else { 0 };
        checks.push(verdict(
            format!("{prefix}rows.{}", t.qualified()),
            n as u64 == expected,
            if n as u64 == expected {
                format!("{n} rows, as counted at backup time")
            } else {
                format!("{n} rows restored, {expected} counted at backup time")
            },
        ));
        counts.push(TableCount {
            schema: t.schema.clone(),
            name: t.name.clone(),
            rows: n as u64,
        });
    }
    let invalid: Vec<String> = client
        .query("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid OR NOT indisready ORDER BY 1", &[])
        .await
        .map_err(|e| sql("check the indexes", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    checks.push(verdict(
        format!("{prefix}indexes.valid"),
        invalid.is_empty(),
        if invalid.is_empty() {
            "every index is valid".into()
        } else {
            format!("invalid: {}", invalid.join(", "))
        },
    ));
    let named = |q: &'static str| async move {
        client.query(q, &[]).await.map(|rows| {
            rows.into_iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                    )
                })
                .collect::<BTreeSet<_>>()
        })
    };
    let indexes = named("SELECT n.nspname::text, t.relname::text, c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace")
        .await
        .map_err(|e| sql("list the indexes", e))?;
    let constraints = named("SELECT n.nspname::text, t.relname::text, con.conname::text FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace")
        .await
        .map_err(|e| sql("list the constraints", e))?;
    for (what, expected_of, found) in [
        (
            "indexes.present",
            (|t: &manifest::TableEntry| &t.indexes) as fn(&manifest::TableEntry) -> &Vec<String>,
            &indexes,
        ),
        (
            "constraints.present",
            |t: &manifest::TableEntry| &t.constraints,
            &constraints,
        ),
    ] {
        let expected: Vec<(String, String, String)> = entry
            .tables
            .iter()
            .flat_map(|t| {
                expected_of(t)
                    .iter()
                    .map(move |n| (t.schema.clone(), t.name.clone(), n.clone()))
            })
            .collect();
        let lost: Vec<String> = expected
            .iter()
            .filter(|e| !found.contains(e))
            .map(|(s, t, n)| format!("{n} on {s}.{t}"))
            .collect();
        checks.push(verdict(
            format!("{prefix}{what}"),
            lost.is_empty(),
            if lost.is_empty() {
                format!("all {} from the backup", expected.len())
            } else {
                format!("missing: {}", lost.join(", "))
            },
        ));
    }
    let mut off = Vec::new();
    for s in &entry.sequences {
        let r = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}.{}",
                    ident(&s.schema),
                    ident(&s.name)
                ),
                &[],
            )
            .await
            .map_err(|e| sql(&format!("read sequence {}.{}", s.schema, s.name), e))?;
        let (v, called): (i64, bool) = (r.get(0), r.get(1));
        if v != s.last_value || called != s.is_called {
            off.push(format!(
                "{}.{} at {v}, backed up at {}",
                s.schema, s.name, s.last_value
            ));
        }
    }
    crate::jobs::large_objects::check(client, drill_db, entry, prefix, checks).await?;
    checks.push(verdict(
        format!("{prefix}sequences"),
        off.is_empty(),
        if off.is_empty() {
            format!("all {} where the backup left them", entry.sequences.len())
        } else {
            off.join("; ")
        },
    ));
    Ok(counts)
}

fn drill_context(
    m: &Manifest,
    entry: &DatabaseEntry,
    drill_db: &str,
    started: i64,
    previous: Option<&DrillReport>,
) -> wit::DrillContext {
    let expectations = |tables: &mut dyn Iterator<Item = (String, String, u64)>| {
        tables
            .map(|(schema, name, rows)| wit::TableExpectation {
                table: wit::TableRef { schema, name },
                rows,
            })
            .collect::<Vec<_>>()
    };
    wit::DrillContext {
        backup_id: m.id.clone(),
        source: m.source.clone(),
        database: drill_db.into(),
        backup_created: m.timings.started,
        drill_started: started,
        tables: expectations(&mut entry.tables.iter().map(|t| {
            (
                t.schema.clone(),
                t.name.clone(),
                if t.mode == TableMode::Full { t.rows } else { 0 },
            )
        })),
        previous: previous.and_then(|p| {
            let db = p.databases.iter().find(|d| d.name == entry.name)?;
            Some(wit::PreviousDrill {
                backup_id: p.backup_id.clone(),
                drilled_at: p.started,
                passed: p.passed,
                tables: expectations(
                    &mut db
                        .tables
                        .iter()
                        .map(|t| (t.schema.clone(), t.name.clone(), t.rows)),
                ),
            })
        }),
        labels: vec![("database".into(), entry.name.clone())],
    }
}

/// The newest drill report of an earlier backup of the same source.
async fn previous_drill(store: &Store, m: &Manifest) -> Option<DrillReport> {
    let all = arch::list_backups(store).await.ok()?;
    for l in all
        .iter()
        .rev()
        .filter(|l| l.source == m.source && l.id < m.id && l.last_drill.is_some())
    {
        if let Some(r) = arch::last_drill_report(store, &l.source, &l.id).await {
            return serde_json::from_slice(&r).ok();
        }
    }
    None
}

/// What a verifier of a Postgres drill reaches: the drill database, read-only
/// unless its grant says otherwise.
fn drill_call(target: &PgUrl) -> CallContext {
    CallContext {
        sql: Some(SqlTarget {
            scope: SqlScope::Drill,
            url: target.secret_url().to_string(),
        }),
        ..Default::default()
    }
}

/// Runs one verifier with `call`: what its grants reach (the drill database
/// or the drill instance, only).
#[tracing::instrument(name = "drill.verifier", skip_all, fields(plugin = plugin.name()))]
pub(super) async fn run_verifier(
    plugin: &Arc<Plugin>,
    call: CallContext,
    ctx: &wit::DrillContext,
    prefix: &str,
) -> Vec<Check> {
    let (p, ctx) = (plugin.clone(), ctx.clone());
    // The plugin call's span is a child of this one, on the blocking thread too.
    let span = tracing::Span::current();
    let result = tokio::task::spawn_blocking(move || span.in_scope(|| p.verify(&call, &ctx))).await;
    let by = plugin.name().to_string();
    match result {
        Ok(Ok(results)) if results.is_empty() => vec![Check {
            name: format!("{prefix}{by}"),
            status: Status::Warn,
            detail: "the verifier returned no checks".into(),
            by,
        }],
        Ok(Ok(results)) => results
            .into_iter()
            .map(|r| Check {
                name: format!("{prefix}{}", r.name),
                status: match r.status {
                    CheckStatus::Pass => Status::Pass,
                    CheckStatus::Fail => Status::Fail,
                    CheckStatus::Warn => Status::Warn,
                    CheckStatus::Skip => Status::Skip,
                },
                detail: r.detail,
                by: by.clone(),
            })
            .collect(),
        Ok(Err(e)) => vec![Check {
            name: format!("{prefix}{by}"),
            status: Status::Fail,
            detail: e.to_string(),
            by,
        }],
        Err(e) => vec![Check {
            name: format!("{prefix}{by}"),
            status: Status::Fail,
            detail: format!("the call did not finish: {e}"),
            by,
        }],
    }
}

async fn run_assertion(client: &tokio_postgres::Client, a: &Assertion, prefix: &str) -> Check {
    let outcome = async {
        client.batch_execute("BEGIN READ ONLY").await?;
        let rows = client.query(a.sql.as_str(), &[]).await;
        client.batch_execute("ROLLBACK").await?;
        rows
    }
    .await;
    let (ok, detail) = match outcome {
        Ok(rows) if rows.is_empty() => (true, "no rows".to_string()),
        Ok(rows) => match rows[0].try_get::<_, bool>(0) {
            Ok(true) => (true, "true".to_string()),
            Ok(false) => (false, "false".to_string()),
            Err(_) => (
                false,
                format!("{} rows; the first column is not a boolean", rows.len()),
            ),
        },
        Err(e) => (
            false,
            e.as_db_error()
                .map(|d| format!("{} ({})", d.message(), d.code().code()))
                .unwrap_or_else(|| e.to_string()),
        ),
    };
    Check {
        name: format!("{prefix}assert.{}", a.name),
        status: if ok { Status::Pass } else { Status::Fail },
        detail,
        by: "assertions".into(),
    }
}

/// Reads an assertions file: statements ending with `;`, each optionally
/// preceded by `-- name: NAME` and `-- database: DB` lines.
pub fn parse_assertions(text: &str) -> Result<Vec<Assertion>, String> {
    let mut out = Vec::new();
    let (mut name, mut database, mut sql) = (None::<String>, None::<String>, String::new());
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("-- name:") {
            name = Some(v.trim().to_string());
            continue;
        }
        if let Some(v) = t.strip_prefix("-- database:") {
            database = Some(v.trim().to_string());
            continue;
        }
        if t.is_empty() || t.starts_with("--") {
            continue;
        }
        sql.push_str(line);
        sql.push('\n');
        if t.ends_with(';') {
            let statement = sql.trim().trim_end_matches(';').trim().to_string();
            let name = name.take().unwrap_or_else(|| format!("line-{}", n + 1));
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "line {}: assertion name {name:?}: use letters, digits, '-', '_' and '.'",
                    n + 1
                ));
            }
            out.push(Assertion {
                name,
                sql: statement,
                database: database.take(),
            });
            sql.clear();
        }
    }
    if !sql.trim().is_empty() {
        return Err("the last statement does not end with ';'".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_files_parse() {
        let a = parse_assertions(
            "-- checks for the orders database\n-- name: fresh\nSELECT max(created) > now() - interval '1 day'\n  FROM orders;\n\nSELECT id FROM orders WHERE amount < 0;\n-- database: auth\n-- name: users\nSELECT count(*) > 0 FROM users;\n",
        )
        .unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].name, "fresh");
        assert!(a[0].sql.starts_with("SELECT max(created)") && a[0].sql.ends_with("FROM orders"));
        assert_eq!(a[1].name, "line-6");
        assert_eq!(a[2].database.as_deref(), Some("auth"));
        assert!(parse_assertions("SELECT 1")
            .unwrap_err()
            .contains("does not end"));
        assert!(parse_assertions("-- name: bad name\nSELECT 1;").is_err());
    }

    #[test]
    fn drill_names_are_lowercase_identifiers() {
        assert_eq!(
            sanitize("20261122T210000Z-k3x9qa"),
            "20261122t210000z_k3x9qa"
        );
        assert!(format!("{DRILL_PREFIX}{}_12", sanitize("20261122T210000Z-k3x9qa")).len() < 64);
    }

    #[test]
    fn reports_are_signed_like_manifests_and_tampering_shows() {
        use crate::archive::{check_report, signed::Problem, Keys};
        let keys = |seed: [u8; 32]| {
            let k = ed25519_dalek::SigningKey::from_bytes(&seed);
            Keys {
                trusted: vec![k.verifying_key()],
                signing: Some(k),
                ..Default::default()
            }
        };
        let (ours, stranger) = (keys([7; 32]), keys([9; 32]));
        let reader = Keys {
            trusted: ours.trusted.clone(),
            ..Default::default()
        };
        let (src, id) = ("app", "20261122T210000Z-k3x9qa");
        let report = DrillReport {
            format: REPORT_FORMAT.into(),
            backup_id: id.into(),
            source: src.into(),
            started: 1,
            finished: 2,
            passed: false,
            rto_seconds: 1.5,
            rpo_seconds: 60,
            backup_bytes: 10,
            backup_rows: 3,
            target: "local".into(),
            databases: vec![],
            checks: vec![pass("tables", "3 tables, each present".into())],
            plugins: vec![],
            error: Some("row count of public.t: 3, 4 at the backup".into()),
            report: format!("{src}/{id}/drills/19700101T000001Z.json"),
            signature: None,
        };
        let stored = report.to_bytes(&ours);
        let back: DrillReport = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back.signature.as_ref().unwrap().algorithm, "ed25519");
        assert_eq!(back.to_bytes(&ours), stored, "signing is deterministic");
        let signer = crate::archive::keys::key_id(&ours.trusted[0]);
        assert_eq!(check_report(&reader, &stored, src, id), Ok(Some(signer)));
        // Without trusted keys nothing is checked.
        assert_eq!(check_report(&Keys::default(), &stored, src, id), Ok(None));

        // Failed turned into passed.
        let text = String::from_utf8(stored.clone()).unwrap();
        let forged = text.replacen("\"passed\": false", "\"passed\": true", 1);
        assert_ne!(forged, text);
        assert!(matches!(
            check_report(&reader, forged.as_bytes(), src, id),
            Err(Problem::Bad(r)) if r.contains("modified after it was signed")
        ));
        // The signature cut off.
        let unsigned = report.to_bytes(&Keys::default());
        assert_eq!(
            check_report(&reader, &unsigned, src, id),
            Err(Problem::Unsigned)
        );
        // Signed, by a key the reader does not trust.
        assert!(matches!(
            check_report(&reader, &report.to_bytes(&stranger), src, id),
            Err(Problem::Untrusted(_))
        ));
        // A member appended after the signature.
        let appended = format!("{}, \"passed\": true}}", text.trim_end_matches('}'));
        assert!(matches!(
            check_report(&reader, appended.as_bytes(), src, id),
            Err(Problem::Bad(_))
        ));
        // A genuine report copied next to another backup vouches for nothing there.
        assert!(matches!(
            check_report(&reader, &stored, src, "20261123T210000Z-aaaaaa"),
            Err(Problem::Unreadable(r)) if r.contains("not the backup it is stored with")
        ));
        assert!(matches!(
            check_report(&reader, b"not json", src, id),
            Err(Problem::Unreadable(_))
        ));
    }
}
