//! A backup of one PostgreSQL server's databases into the store.
//!
//! Per database: a leader transaction exports a snapshot; `pg_dump
//! --snapshot` writes the pre-data and post-data sections; N workers import
//! the same snapshot and stream `COPY ... TO STDOUT` through zstd and sha256
//! into the store, cutting large tables into chunks at row boundaries. The
//! manifest is written last.
//!
//! Invariants: no temporary files (memory is bounded by jobs x part size);
//! a failure leaves no manifest, so nothing half-written is ever listed as a
//! backup; passwords never reach a command line or a message.

pub mod redis;

use crate::archive::manifest::{
    self, Chunk, Compression, DatabaseEntry, Manifest, SequenceEntry, TableEntry, TableMode,
    Timings,
};
use crate::archive::{ObjectRef, ObjectWriter, Store};
use crate::caps::sql::{SqlScope, SqlTarget};
use crate::caps::types::{self as wit, DatabaseInfo, DumpPlan};
use crate::caps::CallContext;
use crate::coord::CommitGuard;
use crate::jobs::JobError;
use crate::runtime::Plugin;
use crate::servers::pg::{ident, PgUrl, Tool};
use crate::telemetry::progress::Progress;
use futures::TryStreamExt;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::io::AsyncReadExt;

#[derive(Clone)]
pub struct BackupOptions {
    /// The name backups of this server are filed under.
    pub source: String,
    /// One URL per database to back up.
    pub databases: Vec<PgUrl>,
    pub jobs: usize,
    pub compression_level: i32,
    /// Cut a table's data into a new object after this many COPY bytes.
    pub chunk_bytes: u64,
    /// Dump roles and tablespaces too (skipped with a warning when not readable).
    pub globals: bool,
    /// Include role passwords in the globals (off unless asked).
    pub role_passwords: bool,
    /// The dump-planner plugin; none dumps everything.
    pub planner: Option<Arc<Plugin>>,
    /// The role the planner's `source` sql grant connects as (the source's
    /// `plugin_sql_url`; its database is swapped for each one dumped). None:
    /// such a grant is refused, naming the setting.
    pub plugin_sql: Option<PgUrl>,
    /// The lease this backup runs under: its token goes into the manifest,
    /// and the manifest is written only while the lease is still held.
    pub guard: Option<CommitGuard>,
    pub progress: Arc<Progress>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub id: String,
    pub source: String,
    pub store: String,
    pub databases: Vec<String>,
    pub tables: usize,
    pub rows: u64,
    /// Bytes stored (compressed).
    /// Redis: keys in the snapshot.
    pub keys: u64,
    pub bytes: u64,
    /// COPY bytes (or the RDB) before compression.
    pub raw_bytes: u64,
    pub seconds: f64,
}

#[tracing::instrument(name = "backup", skip_all, fields(source = %opts.source))]
pub async fn run(store: &Store, opts: &BackupOptions) -> Result<BackupSummary, JobError> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let id = manifest::new_backup_id(started);
    let dir = crate::archive::backup_dir(&opts.source, &id);
    tracing::info!(backup = %id, source = %opts.source, store = %store.display(), "backup started");
    let (encryption, store) = sealing(store, &dir).await?;
    let store = &store;
    let mut server_version = String::new();
    let mut databases = Vec::new();
    for url in &opts.databases {
        let (entry, version) = dump_database(store, &dir, url, opts).await?;
        server_version = version;
        databases.push(entry);
    }
    let globals = match (opts.globals, opts.databases.first()) {
        (true, Some(url)) => dump_globals(store, &dir, url, opts).await?,
        _ => None,
    };
    let seconds = clock.elapsed().as_secs_f64();
    let m = Manifest {
        format: manifest::FORMAT.into(),
        id: id.clone(),
        source: opts.source.clone(),
        kind: "postgres".into(),
        postgres: crate::servers::pg::versions_for(&server_version),
        server_version,
        tool: format!("firedrill {}", env!("CARGO_PKG_VERSION")),
        compression: Compression {
            algorithm: "zstd".into(),
            level: opts.compression_level,
        },
        globals,
        databases,
        timings: Timings {
            started: to_unix(started),
            finished: manifest::unix_now(),
            seconds,
        },
        plugins: opts.planner.iter().map(|p| p.version()).collect(),
        fencing_token: opts.guard.as_ref().map(|g| g.token()),
        redis: None,
        encryption,
        signature: None,
    };
    commit(store, &m, opts.guard.as_ref(), &opts.progress).await
}

/// When the store has recipients: the backup's key, its header stored
/// first, and the store sealing every object under it.
pub(crate) async fn sealing(
    store: &Store,
    dir: &str,
) -> Result<(Option<manifest::Encryption>, Store), JobError> {
    Ok(match crate::archive::new_backup_key(store, dir).await? {
        Some((enc, key)) => (Some(enc), store.sealing(Some(key))),
        None => (None, store.clone()),
    })
}

/// Writes the manifest, the commit: until it exists the backup does not.
/// Only while the lease is still held, when there is one.
pub(crate) async fn commit(
    store: &Store,
    m: &Manifest,
    guard: Option<&CommitGuard>,
    progress: &Progress,
) -> Result<BackupSummary, JobError> {
    progress.phase("committing");
    if let Some(guard) = guard {
        guard.check().await?;
    }
    crate::archive::put_manifest(store, m).await?;
    let summary = BackupSummary {
        id: m.id.clone(),
        source: m.source.clone(),
        store: store.display().to_string(),
        databases: m.databases.iter().map(|d| d.name.clone()).collect(),
        tables: m.table_count(),
        rows: m.rows(),
        keys: m.keys(),
        bytes: m.size(),
        raw_bytes: m.raw_bytes(),
        seconds: m.timings.seconds,
    };
    tracing::info!(backup = %summary.id, bytes = summary.bytes, tables = summary.tables, seconds = summary.seconds, "backup committed");
    Ok(summary)
}

pub(crate) fn to_unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What to copy from one table.
#[derive(Debug, Clone)]
struct Job {
    schema: String,
    name: String,
    mode: TableMode,
    size: u64,
    chunk_rows: Option<u64>,
    /// Part of a large table: (index, first heap page, end page or open).
    range: Option<(usize, u64, Option<u64>)>,
    /// The columns COPY writes (generated ones excluded), for range queries.
    columns: Vec<String>,
    indexes: Vec<String>,
    constraints: Vec<String>,
    /// An extension's configuration table: the rows its extension marked
    /// as the user's (`pg_extension_config_dump`'s filter, `WHERE ...`).
    condition: Option<String>,
}

/// What the backup needs about a table beyond what the planner sees.
struct TableExtra {
    heap_pages: u64,
    copy_columns: Vec<String>,
    indexes: Vec<String>,
    constraints: Vec<String>,
    condition: Option<String>,
}

/// Every backup session: a row-level security policy that applies to the
/// backup role makes a read of that table fail instead of hiding rows.
const NO_ROW_SECURITY: &str = "SET row_security = off;";

/// Ranges of heap pages can be scanned on their own from PostgreSQL 14 on.
const TID_RANGE_SCANS: i32 = 140_000;

#[tracing::instrument(name = "backup.database", skip_all, fields(database = %url.database()))]
async fn dump_database(
    store: &Store,
    dir: &str,
    url: &PgUrl,
    opts: &BackupOptions,
) -> Result<(DatabaseEntry, String), JobError> {
    let db = url.database();
    let leader = url.connect().await?;
    // A policy must fail the backup, never hide rows from it (as in pg_dump).
    leader
        .batch_execute(&format!(
            "{NO_ROW_SECURITY} BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        ))
        .await
        .map_err(|e| JobError::sql(&db, "start the snapshot transaction", e))?;
    let row = leader
        .query_one("SELECT pg_export_snapshot(), current_setting('server_version'), current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| JobError::sql(&db, "export a snapshot", e))?;
    let (snapshot, version, version_num): (String, String, i32) =
        (row.get(0), row.get(1), row.get(2));
    // Fails here, before anything is written, when no pg_dump can read this server.
    let url = &url.on_server(&opts.source, version_num)?;
    let (info, extras) = describe(&leader, &db, &opts.source, &version, version_num).await?;
    let plan = match &opts.planner {
        Some(p) => {
            // Never the backup role's URL: the operator's role for plugins, or none.
            let plugin_sql = opts.plugin_sql.as_ref().map(|u| u.with_database(&db));
            let wants_source = p
                .policy()
                .grants
                .sql
                .as_ref()
                .is_some_and(|g| g.database == SqlScope::Source);
            if wants_source && plugin_sql.is_none() {
                return Err(JobError::Config(format!(
                    "the dump planner {} has a `sql = {{ database = \"source\" }}` grant: set plugin_sql_url on the source (FIREDRILL_PLUGIN_SQL_URL, or --plugin-sql-url) to a role of its own for plugins, never the backup role",
                    p.name()
                )));
            }
            let (p, info) = (p.clone(), info.clone());
            tokio::task::spawn_blocking(move || {
                let ctx = CallContext {
                    sql: plugin_sql.map(|u| SqlTarget {
                        scope: SqlScope::Source,
                        url: u.secret_url().to_string(),
                    }),
                    ..Default::default()
                };
                p.plan_dump(&ctx, &info)
            })
            .await
            .map_err(|e| JobError::Internal(e.to_string()))??
        }
        None => DumpPlan {
            tables: vec![],
            exclude_schemas: vec![],
            include_globals: true,
            notes: vec!["everything (no dump planner)".into()],
        },
    };
    let (mut jobs, excluded) = apply_plan(&info, &plan)?;
    refuse_unreadable_tables(&leader, &db, &jobs).await?;
    refuse_row_security(&leader, &db, &jobs).await?;
    crate::jobs::large_objects::refuse_unreadable(&leader, &db).await?;
    refuse_hidden_subscriptions(&leader, &db).await?;
    for job in &mut jobs {
        if let Some(e) = extras.get(&(job.schema.clone(), job.name.clone())) {
            job.indexes = e.indexes.clone();
            job.constraints = e.constraints.clone();
            job.condition = e.condition.clone();
            // Named in the COPY and the manifest: restored, a table may
            // hold the same columns in another order.
            job.columns = e.copy_columns.clone();
        }
    }
    if version_num >= TID_RANGE_SCANS && opts.jobs > 1 {
        jobs = split_large_tables(jobs, &extras, opts.jobs, opts.chunk_bytes);
    }
    opts.progress.phase(format!("copying the tables of {db}"));
    opts.progress.add_total(jobs.len() as u64);
    let sequences = sequences(&leader, &db, &excluded, &plan.exclude_schemas).await?;
    let db_dir = format!("{dir}{}/", manifest::path_segment(&db));
    let queue: Arc<Mutex<VecDeque<Job>>> = Arc::new(Mutex::new(jobs.into_iter().collect()));
    let workers = (0..opts.jobs.max(1))
        .map(|_| copy_worker(store, &db_dir, url, &snapshot, queue.clone(), opts));
    let (pre, post, tables, large_objects) = tokio::try_join!(
        dump_section(
            store,
            &db_dir,
            url,
            &snapshot,
            "pre-data",
            &excluded,
            &plan.exclude_schemas,
            opts.compression_level
        ),
        dump_section(
            store,
            &db_dir,
            url,
            &snapshot,
            "post-data",
            &excluded,
            &plan.exclude_schemas,
            opts.compression_level
        ),
        futures::future::try_join_all(workers),
        crate::jobs::large_objects::dump(store, &db_dir, url, &snapshot, opts),
    )?;
    let _ = leader.batch_execute("COMMIT").await;
    let tables = merge_ranges(tables.into_iter().flatten().collect());
    Ok((
        DatabaseEntry {
            name: db,
            snapshot,
            pre_data: pre,
            post_data: post,
            tables,
            sequences,
            plan_notes: plan.notes,
            large_objects,
        },
        version,
    ))
}

/// Fails before anything is copied when a table whose data is backed up has
/// a row-level security policy that applies to the backup role: its COPY
/// would fail (row_security is off), so every such table is named at once.
async fn refuse_row_security(
    client: &tokio_postgres::Client,
    db: &str,
    jobs: &[Job],
) -> Result<(), JobError> {
    let (hit, role) = tables_where(
        client,
        db,
        "c.relrowsecurity AND row_security_active(c.oid)",
        "look for row-level security policies",
        jobs.iter().filter(|j| j.mode == TableMode::Full),
    )
    .await?;
    match hit.is_empty() {
        true => Ok(()),
        false => Err(row_security_refusal(db, &hit.join(", "), &role)),
    }
}

/// Fails before anything is copied when the backup role may not read some
/// of the tables it is to back up (pg_dump locks each table whose
/// definition it writes, and COPY reads the rows), naming them all and the
/// fix, instead of whichever of pg_dump or a COPY happens to fail first.
async fn refuse_unreadable_tables(
    client: &tokio_postgres::Client,
    db: &str,
    jobs: &[Job],
) -> Result<(), JobError> {
    let (hit, role) = tables_where(
        client,
        db,
        "c.relkind = 'r' AND NOT (pg_catalog.has_schema_privilege(n.oid, 'USAGE')
                                  AND pg_catalog.has_table_privilege(c.oid, 'SELECT'))",
        "check that the tables are readable",
        jobs.iter(),
    )
    .await?;
    let Some(example) = hit.first() else {
        return Ok(());
    };
    let shown = match hit.len() > 10 {
        true => format!("{} and {} more", hit[..10].join(", "), hit.len() - 10),
        false => hit.join(", "),
    };
    Err(JobError::Sql {
        database: db.into(),
        what: "back up its tables".into(),
        message: format!(
            "role {role} may not read {shown}: grant it pg_read_all_data (GRANT pg_read_all_data TO {}; PostgreSQL 14 and later), or USAGE on their schemas and SELECT on each (such as {example}); see docs/ROLES.md",
            ident(&role)
        ),
    })
}

/// The user tables (`schema.table`) matching `condition` that are among
/// `jobs`, and the backup role's name.
async fn tables_where(
    client: &tokio_postgres::Client,
    db: &str,
    condition: &str,
    what: &str,
    jobs: impl Iterator<Item = &Job>,
) -> Result<(Vec<String>, String), JobError> {
    let wanted: std::collections::HashSet<(&str, &str)> =
        jobs.map(|j| (j.schema.as_str(), j.name.as_str())).collect();
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' AND {condition}
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(|e| JobError::sql(db, what, e))?;
    let hit: Vec<String> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(s, t)| wanted.contains(&(s.as_str(), t.as_str())))
        .map(|(s, t)| format!("{s}.{t}"))
        .collect();
    let role = match hit.is_empty() {
        true => String::new(),
        false => client
            .query_one("SELECT current_user::text", &[])
            .await
            .map_err(|e| JobError::sql(db, what, e))?
            .get(0),
    };
    Ok((hit, role))
}

/// pg_dump leaves out a database's subscriptions unless it runs as a
/// superuser, with only a warning ("subscriptions not dumped"): the backup
/// would lack them and still succeed, so it fails here instead, naming them.
async fn refuse_hidden_subscriptions(
    client: &tokio_postgres::Client,
    db: &str,
) -> Result<(), JobError> {
    let rows = client
        .query(
            "SELECT s.subname::text, current_user::text FROM pg_catalog.pg_subscription s
             WHERE s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
               AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| JobError::sql(db, "look for subscriptions", e))?;
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let names: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    Err(JobError::Sql {
        database: db.into(),
        what: "back up the subscriptions".into(),
        message: format!(
            "the database has subscriptions ({}) and pg_dump writes them only for a superuser, which role {} is not: back it up as a superuser; a backup without them would be incomplete",
            names.join(", "),
            first.get::<_, String>(1)
        ),
    })
}

/// A table the backup role would read only part of: which, and the fix.
fn row_security_refusal(db: &str, tables: &str, role: &str) -> JobError {
    let (noun, verb) = match tables.contains(", ") {
        true => ("tables", "have"),
        false => ("table", "has"),
    };
    JobError::Sql {
        database: db.into(),
        what: format!("back up {tables}"),
        message: format!(
            "{noun} {tables} {verb} row-level security and role {role} is subject to it: grant BYPASSRLS to the backup role (ALTER ROLE {} BYPASSRLS) or use a superuser; a backup without it would hold only the rows the policy shows",
            ident(role)
        ),
    }
}

/// The database as the dump planner sees it.
async fn describe(
    client: &tokio_postgres::Client,
    db: &str,
    source: &str,
    version: &str,
    version_num: i32,
) -> Result<(DatabaseInfo, HashMap<(String, String), TableExtra>), JobError> {
    let generated = if version_num >= 120_000 {
        "a.attgenerated <> ''"
    } else {
        "false"
    };
    let tables_sql = format!("
        SELECT n.nspname, c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid)::bigint,
               coalesce((SELECT json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, {generated}) ORDER BY a.attnum)::text
                         FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
               (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint,
               ARRAY(SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid ORDER BY 1),
               ARRAY(SELECT con.conname::text FROM pg_constraint con WHERE con.conrelid = c.oid ORDER BY 1),
               (SELECT x.extcondition[array_position(x.extconfig, c.oid)] FROM pg_extension x WHERE c.oid = ANY (x.extconfig) LIMIT 1)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
          AND (NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
               -- An extension's member, but its data is the user's (as pg_dump does).
               OR EXISTS (SELECT 1 FROM pg_extension x WHERE c.oid = ANY (x.extconfig)))
        ORDER BY 1, 2");
    let rows = client
        .query(&tables_sql, &[])
        .await
        .map_err(|e| JobError::sql(db, "list the tables", e))?;
    let mut tables = Vec::new();
    let mut extras = HashMap::new();
    for r in rows {
        let columns: Vec<(String, String, bool, bool)> =
            serde_json::from_str(r.get::<_, &str>(4)).unwrap_or_default();
        let key: (String, String) = (r.get(0), r.get(1));
        extras.insert(
            key.clone(),
            TableExtra {
                heap_pages: r.get::<_, i64>(5).max(0) as u64,
                copy_columns: columns
                    .iter()
                    .filter(|c| !c.3)
                    .map(|c| c.0.clone())
                    .collect(),
                indexes: r.get(6),
                constraints: r.get(7),
                condition: r
                    .get::<_, Option<String>>(8)
                    .filter(|c| !c.trim().is_empty()),
            },
        );
        tables.push(wit::TableInfo {
            table: wit::TableRef {
                schema: key.0,
                name: key.1,
            },
            estimated_rows: r.get(2),
            size_bytes: r.get::<_, i64>(3).max(0) as u64,
            columns: columns
                .into_iter()
                .map(|(name, type_name, nullable, _)| wit::ColumnInfo {
                    name,
                    type_name,
                    nullable,
                })
                .collect(),
        });
    }
    let schemas = client
        .query("SELECT nspname FROM pg_namespace WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%' ORDER BY 1", &[])
        .await
        .map_err(|e| JobError::sql(db, "list the schemas", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok((
        DatabaseInfo {
            source: source.into(),
            database: db.into(),
            server_version: version.into(),
            schemas,
            tables,
            labels: vec![],
        },
        extras,
    ))
}

/// Cuts each table with more heap than two chunks into page ranges, one per
/// job at most, so one large table is read by several connections at once
/// (pg_dump reads a table through one).
fn split_large_tables(
    jobs: Vec<Job>,
    extras: &HashMap<(String, String), TableExtra>,
    workers: usize,
    chunk_bytes: u64,
) -> Vec<Job> {
    let mut out = Vec::new();
    for job in jobs {
        let extra = extras.get(&(job.schema.clone(), job.name.clone()));
        let pages = extra.map(|e| e.heap_pages).unwrap_or(0);
        let heap = pages * 8192;
        let parts = (heap / chunk_bytes.max(1)).min(workers as u64);
        if job.mode != TableMode::Full
            || parts < 2
            || job.condition.is_some()
            || extra.is_none_or(|e| e.copy_columns.is_empty())
        {
            out.push(job);
            continue;
        }
        for i in 0..parts {
            let from = pages * i / parts;
            // The last range is open: it also holds rows on pages added since the estimate.
            let to = (i + 1 < parts).then(|| pages * (i + 1) / parts);
            out.push(Job {
                range: Some((i as usize, from, to)),
                columns: extra.map(|e| e.copy_columns.clone()).unwrap_or_default(),
                size: job.size / parts,
                ..job.clone()
            });
        }
    }
    out.sort_by(|a, b| b.size.cmp(&a.size));
    out
}

/// Joins the parts of tables that were read in page ranges.
fn merge_ranges(mut parts: Vec<TableEntry>) -> Vec<TableEntry> {
    parts.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    let mut out: Vec<TableEntry> = Vec::new();
    for p in parts {
        match out.last_mut() {
            Some(last) if last.schema == p.schema && last.name == p.name => {
                last.rows += p.rows;
                last.raw_bytes += p.raw_bytes;
                last.chunks.extend(p.chunks);
            }
            _ => out.push(p),
        }
    }
    for t in &mut out {
        t.chunks.sort_by(|a, b| a.object.path.cmp(&b.object.path));
    }
    out
}

/// Where each sequence stands, except those of excluded tables and schemas.
async fn sequences(
    client: &tokio_postgres::Client,
    db: &str,
    excluded: &[(String, String)],
    exclude_schemas: &[String],
) -> Result<Vec<SequenceEntry>, JobError> {
    const SEQUENCES: &str = "
        SELECT n.nspname, c.relname, tn.nspname, t.relname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
             AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
        LEFT JOIN pg_class t ON t.oid = d.refobjid
        LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
        WHERE c.relkind = 'S' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
          AND (NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')
               OR EXISTS (SELECT 1 FROM pg_extension x WHERE c.oid = ANY (x.extconfig)))
        ORDER BY 1, 2";
    let rows = client
        .query(SEQUENCES, &[])
        .await
        .map_err(|e| JobError::sql(db, "list the sequences", e))?;
    let mut out = Vec::new();
    for r in rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        let owner: Option<(String, String)> = r
            .get::<_, Option<String>>(2)
            .zip(r.get::<_, Option<String>>(3));
        if exclude_schemas.contains(&schema)
            || owner.is_some_and(|o| excluded.contains(&o) || exclude_schemas.contains(&o.0))
        {
            continue;
        }
        let v = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}.{}",
                    ident(&schema),
                    ident(&name)
                ),
                &[],
            )
            .await
            .map_err(|e| match e.as_db_error().is_some_and(|d| d.code().code() == "42501") {
                // Named with the fix: pg_read_all_data covers sequences too.
                true => JobError::Sql {
                    database: db.into(),
                    what: format!("read sequence {schema}.{name}"),
                    message: format!(
                        "{}: grant the backup role pg_read_all_data, or USAGE on schema {schema} and SELECT on the sequence; see docs/ROLES.md",
                        e.as_db_error().map(|d| d.message()).unwrap_or_default()
                    ),
                },
                false => JobError::sql(db, &format!("read sequence {schema}.{name}"), e),
            })?;
        out.push(SequenceEntry {
            schema,
            name,
            last_value: v.get(0),
            is_called: v.get(1),
        });
    }
    Ok(out)
}

/// The tables to copy, and the (schema, table) pairs left out entirely.
fn apply_plan(
    info: &DatabaseInfo,
    plan: &DumpPlan,
) -> Result<(Vec<Job>, Vec<(String, String)>), JobError> {
    if let Some(t) = plan.tables.iter().find(|t| !t.masks.is_empty()) {
        return Err(JobError::Plan(format!(
            "the dump plan masks columns of {}.{}; masking is not supported by this version of firedrill",
            t.table.schema, t.table.name
        )));
    }
    let mut jobs = Vec::new();
    let mut excluded = Vec::new();
    for t in &info.tables {
        let planned = plan
            .tables
            .iter()
            .find(|p| p.table.schema == t.table.schema && p.table.name == t.table.name);
        let mode = match planned.map(|p| p.mode) {
            _ if plan.exclude_schemas.contains(&t.table.schema) => None,
            Some(wit::TableMode::Exclude) => None,
            Some(wit::TableMode::SchemaOnly) => Some(TableMode::SchemaOnly),
            Some(wit::TableMode::Full) | None => Some(TableMode::Full),
        };
        match mode {
            None => excluded.push((t.table.schema.clone(), t.table.name.clone())),
            Some(mode) => jobs.push(Job {
                schema: t.table.schema.clone(),
                name: t.table.name.clone(),
                mode,
                size: t.size_bytes,
                chunk_rows: planned.and_then(|p| p.chunk_rows),
                range: None,
                columns: vec![],
                indexes: vec![],
                constraints: vec![],
                condition: None,
            }),
        }
    }
    // Largest first, so the long tables start early and the workers finish together.
    jobs.sort_by(|a, b| b.size.cmp(&a.size));
    Ok((jobs, excluded))
}

#[allow(clippy::too_many_arguments)]
async fn dump_section(
    store: &Store,
    db_dir: &str,
    url: &PgUrl,
    snapshot: &str,
    section: &str,
    excluded: &[(String, String)],
    exclude_schemas: &[String],
    level: i32,
) -> Result<ObjectRef, JobError> {
    let rel = format!("schema/{section}.sql.zst");
    let mut cmd = url.command("pg_dump")?;
    cmd.arg(format!("--section={section}"))
        .arg(format!("--snapshot={snapshot}"))
        // A restore applies the script itself, as UTF-8 (`sql_script`).
        .arg("--encoding=UTF8")
        .arg("--no-password");
    for (s, t) in excluded {
        cmd.arg(format!("--exclude-table={}.{}", ident(s), ident(t)));
    }
    for s in exclude_schemas {
        cmd.arg(format!("--exclude-schema={}", ident(s)));
    }
    let path = format!("{}{rel}", db_dir);
    let object = run_into_object(store, &path, cmd, level, "pg_dump").await?;
    Ok(ObjectRef {
        path: path_in_backup(db_dir, &rel),
        ..object
    })
}

/// The path of an object relative to the backup directory.
fn path_in_backup(db_dir: &str, rel: &str) -> String {
    // db_dir is "<source>/<id>/<db>/": keep "<db>/..."
    let db = db_dir
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    format!("{db}/{rel}")
}

/// Runs a tool and streams its stdout into an object.
async fn run_into_object(
    store: &Store,
    path: &str,
    mut cmd: tokio::process::Command,
    level: i32,
    tool: &str,
) -> Result<ObjectRef, JobError> {
    cmd.stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut child = Tool::spawn(cmd, tool)?;
    let mut stdout = child.child.stdout.take().expect("piped");
    let mut w = ObjectWriter::create(store, path, level).await?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                w.abort().await;
                return Err(child.error(e.to_string()));
            }
        };
        if let Err(e) = w.write(&buf[..n]).await {
            w.abort().await;
            return Err(e.into());
        }
    }
    if let Err(e) = child.wait("").await {
        w.abort().await;
        return Err(e);
    }
    Ok(w.finish(path).await?)
}

async fn dump_globals(
    store: &Store,
    dir: &str,
    url: &PgUrl,
    opts: &BackupOptions,
) -> Result<Option<ObjectRef>, JobError> {
    let mut cmd = url.command("pg_dumpall")?;
    cmd.arg("--globals-only").arg("--no-password");
    if !opts.role_passwords {
        cmd.arg("--no-role-passwords");
    }
    match run_into_object(
        store,
        &format!("{dir}globals.sql.zst"),
        cmd,
        opts.compression_level,
        "pg_dumpall",
    )
    .await
    {
        Ok(o) => Ok(Some(ObjectRef {
            path: "globals.sql.zst".into(),
            ..o
        })),
        Err(JobError::Tool { message, .. }) => {
            tracing::warn!(
                "roles and tablespaces not backed up (the user cannot read them?): {message}"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Takes tables off the queue until it is empty, each through one COPY.
async fn copy_worker(
    store: &Store,
    db_dir: &str,
    url: &PgUrl,
    snapshot: &str,
    queue: Arc<Mutex<VecDeque<Job>>>,
    opts: &BackupOptions,
) -> Result<Vec<TableEntry>, JobError> {
    let db = url.database();
    let client = url.connect().await?;
    client
        .batch_execute(&format!("{NO_ROW_SECURITY} BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .await
        .map_err(|e| JobError::sql(&db, "import the snapshot", e))?;
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| JobError::sql(&db, "read the backup role's name", e))?
        .get(0);
    let mut done = Vec::new();
    loop {
        let Some(job) = queue.lock().unwrap().pop_front() else {
            break;
        };
        let mut entry = TableEntry {
            schema: job.schema.clone(),
            name: job.name.clone(),
            mode: job.mode,
            rows: 0,
            raw_bytes: 0,
            chunks: vec![],
            indexes: job.indexes.clone(),
            constraints: job.constraints.clone(),
            columns: job.columns.clone(),
        };
        if job.mode == TableMode::Full {
            copy_table(store, db_dir, &client, &db, &role, &job, &mut entry, opts).await?;
        }
        opts.progress.add_done(1);
        opts.progress
            .add_bytes(entry.chunks.iter().map(|c| c.object.size).sum());
        done.push(entry);
    }
    let _ = client.batch_execute("COMMIT").await;
    Ok(done)
}

#[allow(clippy::too_many_arguments)]
#[tracing::instrument(name = "backup.copy", skip_all, fields(table = %entry.qualified()))]
async fn copy_table(
    store: &Store,
    db_dir: &str,
    client: &tokio_postgres::Client,
    db: &str,
    role: &str,
    job: &Job,
    entry: &mut TableEntry,
    opts: &BackupOptions,
) -> Result<(), JobError> {
    let table_dir = format!(
        "data/{}.{}/",
        manifest::path_segment(&job.schema),
        manifest::path_segment(&job.name)
    );
    let qualified = format!("{}.{}", ident(&job.schema), ident(&job.name));
    let columns = job
        .columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let (query, prefix) = match job.range {
        // Not split (`split_large_tables`): config tables are small.
        None if job.condition.is_some() => (
            format!(
                "COPY (SELECT {columns} FROM ONLY {qualified} {}) TO STDOUT",
                job.condition.as_deref().unwrap_or_default()
            ),
            String::new(),
        ),
        // A table without columns (rows of nothing) has no list to name.
        None if job.columns.is_empty() => (format!("COPY {qualified} TO STDOUT"), String::new()),
        None => (
            format!("COPY {qualified} ({columns}) TO STDOUT"),
            String::new(),
        ),
        Some((i, from, to)) => {
            let upper = to
                .map(|t| format!(" AND ctid < '({t},0)'::tid"))
                .unwrap_or_default();
            (
                format!("COPY (SELECT {columns} FROM ONLY {qualified} WHERE ctid >= '({from},0)'::tid{upper}) TO STDOUT"),
                format!("r{i:03}-"),
            )
        }
    };
    let stream = client.copy_out(&query).await.map_err(|e| {
        // A policy that appeared after `refuse_row_security` looked.
        let rls = e.as_db_error().is_some_and(|d| {
            d.code().code() == "42501" && d.message().contains("row-level security")
        });
        match rls {
            true => row_security_refusal(db, &entry.qualified(), role),
            false => JobError::sql(db, &format!("copy {}", entry.qualified()), e),
        }
    })?;
    futures::pin_mut!(stream);
    let chunk_path = |n: usize| format!("{table_dir}{prefix}{n:05}.copy.zst");
    let full =
        |w: &ObjectWriter| w.raw >= opts.chunk_bytes || job.chunk_rows.is_some_and(|r| w.rows >= r);
    // Opened on the first row of each chunk: an empty table has no chunks.
    let mut current: Option<ObjectWriter> = None;
    loop {
        let piece = match stream.try_next().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                if let Some(w) = current.take() {
                    w.abort().await;
                }
                return Err(JobError::sql(db, &format!("copy {}", entry.qualified()), e));
            }
        };
        let w = match current.as_mut() {
            Some(w) => w,
            None => current.insert(
                ObjectWriter::create(
                    store,
                    &format!("{db_dir}{}", chunk_path(entry.chunks.len())),
                    opts.compression_level,
                )
                .await?,
            ),
        };
        if let Err(e) = w.write(&piece).await {
            if let Some(w) = current.take() {
                w.abort().await;
            }
            return Err(e.into());
        }
        // COPY sends whole rows per message, so a cut here is at a row boundary.
        if full(w) && piece.ends_with(b"\n") {
            let w = current.take().expect("open");
            let rel = path_in_backup(db_dir, &chunk_path(entry.chunks.len()));
            entry.chunks.push(close_chunk(w, &rel).await?);
        }
    }
    if let Some(w) = current.take() {
        let rel = path_in_backup(db_dir, &chunk_path(entry.chunks.len()));
        entry.chunks.push(close_chunk(w, &rel).await?);
    }
    entry.rows = entry.chunks.iter().map(|c| c.rows).sum();
    entry.raw_bytes = entry.chunks.iter().map(|c| c.raw_bytes).sum();
    tracing::debug!(table = %entry.qualified(), rows = entry.rows, chunks = entry.chunks.len(), "table copied");
    Ok(())
}

#[tracing::instrument(name = "backup.upload", skip_all, fields(object = rel))]
async fn close_chunk(w: ObjectWriter, rel: &str) -> Result<Chunk, JobError> {
    let (rows, raw_bytes) = (w.rows, w.raw);
    // The chunk records its decompressed size as `raw_bytes` (flattened
    // next to the object's fields), so the object does not repeat it.
    let object = ObjectRef {
        raw: None,
        ..w.finish(rel).await?
    };
    Ok(Chunk {
        object,
        rows,
        raw_bytes,
    })
}
