//! A backup of one PostgreSQL server's databases into the store.
//!
//! Per database: a leader transaction exports a snapshot; `pg_dump
//! --snapshot` writes the pre-data and post-data sections; N workers import
//! the same snapshot and stream `COPY ... TO STDOUT` through zstd and sha256
//! into the store, cutting large tables into chunks at row boundaries. The
//! manifest is written last.
//!
//! Here: the options, [`run`] and the flow of one database
//! (`dump_database`), top to bottom. What to dump is decided in `plan`
//! (catalog, planner plugin, refusals, page ranges); what is read under the
//! snapshot and stored is in `postgres` (pg_dump sections, sequences, COPY
//! workers, chunks); the sealing and the manifest's write are in `commit`,
//! which Redis backups (`redis`) share.
//!
//! Invariants: no temporary files (memory is bounded by jobs x part size);
//! a failure leaves no manifest, so nothing half-written is ever listed as a
//! backup; passwords never reach a command line or a message.

mod commit;
pub mod physical;
mod plan;
mod postgres;
pub mod redis;

pub(crate) use commit::{commit, sealing, to_unix};

use crate::archive::manifest::{self, Compression, DatabaseEntry, Manifest, Timings};
use crate::archive::Store;
use crate::coord::CommitGuard;
use crate::jobs::JobError;
use crate::runtime::Plugin;
use crate::servers::pg::PgUrl;
use crate::telemetry::progress::Progress;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

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
    /// A physical incremental backup: the backup it builds on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// An incremental backup was asked for and a full one taken: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_because: Option<String>,
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
        (true, Some(url)) => postgres::dump_globals(store, &dir, url, opts).await?,
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
        physical: None,
        encryption,
        signature: None,
    };
    commit(store, &m, opts.guard.as_ref(), &opts.progress).await
}

#[tracing::instrument(name = "backup.database", skip_all, fields(database = %url.database()))]
async fn dump_database(
    store: &Store,
    dir: &str,
    url: &PgUrl,
    opts: &BackupOptions,
) -> Result<(DatabaseEntry, String), JobError> {
    let db = url.database();
    let leader = url.connect().await?;
    let (snapshot, version, version_num) = postgres::export_snapshot(&leader, &db).await?;
    // Fails here, before anything is written, when no pg_dump can read this server.
    let url = &url.on_server(&opts.source, version_num)?;
    let (info, extras) = plan::describe(&leader, &db, &opts.source, &version, version_num).await?;
    let dump_plan = plan::ask_planner(opts, &db, &info).await?;
    let (mut jobs, excluded) = plan::apply_plan(&info, &dump_plan)?;
    plan::refuse_incomplete(&leader, &db, &jobs).await?;
    plan::add_extras(&mut jobs, &extras);
    if version_num >= plan::TID_RANGE_SCANS && opts.jobs > 1 {
        jobs = plan::split_large_tables(jobs, &extras, opts.jobs, opts.chunk_bytes);
    }
    opts.progress.phase(format!("copying the tables of {db}"));
    opts.progress.add_total(jobs.len() as u64);
    let sequences =
        postgres::sequences(&leader, &db, &excluded, &dump_plan.exclude_schemas).await?;
    let db_dir = format!("{dir}{}/", manifest::path_segment(&db));
    let queue: Arc<Mutex<VecDeque<plan::Job>>> = Arc::new(Mutex::new(jobs.into_iter().collect()));
    let workers = (0..opts.jobs.max(1))
        .map(|_| postgres::copy_worker(store, &db_dir, url, &snapshot, queue.clone(), opts));
    let (pre, post, tables, large_objects) = tokio::try_join!(
        postgres::dump_section(
            store,
            &db_dir,
            url,
            &snapshot,
            "pre-data",
            &excluded,
            &dump_plan.exclude_schemas,
            opts.compression_level
        ),
        postgres::dump_section(
            store,
            &db_dir,
            url,
            &snapshot,
            "post-data",
            &excluded,
            &dump_plan.exclude_schemas,
            opts.compression_level
        ),
        futures::future::try_join_all(workers),
        crate::jobs::large_objects::dump(store, &db_dir, url, &snapshot, opts),
    )?;
    let _ = leader.batch_execute("COMMIT").await;
    let tables = postgres::merge_ranges(tables.into_iter().flatten().collect());
    Ok((
        DatabaseEntry {
            name: db,
            snapshot,
            pre_data: pre,
            post_data: post,
            tables,
            sequences,
            plan_notes: dump_plan.notes,
            large_objects,
        },
        version,
    ))
}
