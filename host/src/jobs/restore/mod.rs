//! Restores one database of a backup: create the target database, apply
//! pre-data (statement by statement over our own connection: see
//! `script`), load every table with `COPY ... FROM STDIN` over the
//! restore's connections, biggest first, and post-data side by side over
//! the same connections (see `post_data`): once every load is handed out,
//! the index builds and keys of post-data's first run start on free
//! connections as their tables finish loading, beside the other loads, as
//! `pg_restore -j` does. Every connection runs with settings for a bulk
//! load (`restore_session`); the last commit is made durable before the
//! restore reports success.
//!
//! Invariants: every object is checked against the manifest while it is read
//! (a chunk is committed only after its checksum and row count check out; a
//! schema script is checked whole before its first statement runs); nothing
//! of a backup reaches a shell-capable client (psql); a
//! failure names the object and drops the database this restore created; an
//! existing database that holds anything is never touched without `force`.

pub mod combine;
pub mod physical;
pub mod post_data;
pub mod script;

use crate::archive::manifest::{DatabaseEntry, Manifest, TableEntry, TableMode};
use crate::archive::{ArchiveError, Backup, ObjectRef, Store};
use crate::jobs::JobError;
use crate::servers::pg::{ident, PgUrl};
use crate::telemetry::progress::Progress;
use futures::SinkExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub struct RestoreOptions {
    /// The database to restore into (created when missing).
    pub target: PgUrl,
    pub jobs: usize,
    /// Replace an existing database that is not empty.
    pub force: bool,
    /// Which database of the backup (needed when it holds several).
    pub database: Option<String>,
    /// Set as the created database's comment (drills mark theirs).
    pub comment: Option<String>,
    /// Moved per chunk loaded (steps are chunks).
    pub progress: Arc<Progress>,
    /// Create, without login, each role the schema names that the server
    /// lacks: only for a throwaway cluster that firedrill started itself,
    /// where roles are no one else's (a drill of a real database names its
    /// owners; without them every statement that mentions one fails).
    pub create_missing_roles: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    pub id: String,
    pub source: String,
    pub database: String,
    pub target: String,
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
}

#[tracing::instrument(name = "restore", skip_all, fields(backup = %backup.manifest.id, target = %opts.target.database()))]
pub async fn run(
    store: &Store,
    backup: &Backup,
    opts: &RestoreOptions,
) -> Result<RestoreSummary, JobError> {
    let manifest = &backup.manifest;
    if manifest.redis.is_some() {
        return Err(JobError::Config(format!(
            "backup {} is a Redis snapshot: start redis-server on it (see docs/RESTORE-BY-HAND.md), or drill it",
            manifest.id
        )));
    }
    let clock = Instant::now();
    let entry = pick_database(manifest, opts.database.as_deref())?;
    let target_db = opts.target.database();
    crate::servers::pg::refuse_older_target(&opts.target, manifest).await?;
    let created = prepare_target(&opts.target, opts.force, opts.comment.as_deref()).await?;
    let result = load(store, backup, entry, opts).await;
    if let Err(e) = &result {
        if created {
            tracing::warn!(database = %target_db, "restore failed, dropping the database it created: {e}");
            let _ = drop_database(&opts.target).await;
        }
    }
    let (rows, bytes) = result?;
    Ok(RestoreSummary {
        id: manifest.id.clone(),
        source: manifest.source.clone(),
        database: entry.name.clone(),
        target: opts.target.redacted(),
        tables: entry.tables.len(),
        rows,
        bytes,
        seconds: clock.elapsed().as_secs_f64(),
    })
}

pub fn pick_database<'m>(
    m: &'m Manifest,
    name: Option<&str>,
) -> Result<&'m DatabaseEntry, JobError> {
    let names = || {
        m.databases
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => m.databases.iter().find(|d| d.name == n).ok_or_else(|| {
            JobError::Config(format!(
                "backup {} has no database {n:?}; it has: {}",
                m.id,
                names()
            ))
        }),
        None if m.databases.len() == 1 => Ok(&m.databases[0]),
        None => Err(JobError::Config(format!(
            "backup {} holds several databases ({}); name one with --database",
            m.id,
            names()
        ))),
    }
}

/// Creates the target database, or checks that the existing one may be used.
/// Returns whether it was created here.
async fn prepare_target(
    target: &PgUrl,
    force: bool,
    comment: Option<&str>,
) -> Result<bool, JobError> {
    let db = target.database();
    let admin = target.with_database("postgres").connect().await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await
        .map_err(|e| JobError::sql("postgres", "look for the target database", e))?
        .is_some();
    if exists {
        let objects: i64 = target
            .connect()
            .await?
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' AND c.relkind IN ('r','p','v','m','S','f')",
                &[],
            )
            .await
            .map_err(|e| JobError::sql(&db, "check whether the target is empty", e))?
            .get(0);
        if objects == 0 {
            return Ok(false);
        }
        if !force {
            return Err(JobError::TargetNotEmpty {
                database: db,
                objects,
            });
        }
        tracing::warn!(database = %db, objects, "--force: replacing the existing database");
        admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", ident(&db)))
            .await
            .map_err(|e| JobError::sql("postgres", "drop the database being replaced", e))?;
    }
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            ident(&db)
        ))
        .await
        .map_err(|e| JobError::sql("postgres", "create the target database", e))?;
    if let Some(c) = comment {
        admin
            .batch_execute(&format!(
                "COMMENT ON DATABASE {} IS '{}'",
                ident(&db),
                c.replace('\'', "''")
            ))
            .await
            .map_err(|e| JobError::sql("postgres", "mark the target database", e))?;
    }
    Ok(true)
}

pub async fn drop_database(target: &PgUrl) -> Result<(), JobError> {
    let admin = target.with_database("postgres").connect().await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(&target.database())
        ))
        .await
        .map_err(|e| JobError::sql("postgres", "drop a database", e))
}

async fn load(
    store: &Store,
    backup: &Backup,
    entry: &DatabaseEntry,
    opts: &RestoreOptions,
) -> Result<(u64, u64), JobError> {
    let pre_data = read_script(store, backup, &entry.pre_data).await?;
    {
        // Its own connection: the script's settings leave with it.
        let session = Session::open(opts).await?;
        for st in &pre_data.statements()? {
            session
                .execute(st.line, st.sql, &entry.pre_data, opts)
                .await?;
        }
    }
    let post_data = read_script(store, backup, &entry.post_data).await?;
    let statements = post_data.statements()?;
    let tables: HashMap<script::TableName, u64> = entry
        .tables
        .iter()
        .map(|t| ((t.schema.clone(), t.name.clone()), t.raw_bytes))
        .collect();
    let mut steps = post_data::plan(&statements, &tables);
    let mut sessions = Vec::new();
    for _ in 0..opts.jobs.max(1) {
        sessions.push(Session::open(opts).await?);
    }
    let db = opts.target.database();
    let version: i32 = sessions[0]
        .client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| JobError::sql(&db, "read the server's version", e))?
        .get(0);
    let streams = match (opts.jobs, version < 160_000) {
        (0 | 1, _) => 1,
        (jobs, true) => jobs.min(STREAMS_BEFORE_16),
        // Chunk by chunk: from 16 on, extending a table scales.
        (_, false) => usize::MAX,
    };
    let loads = loads(entry, streams);
    opts.progress.phase(format!("loading {db}"));
    opts.progress
        .add_total(loads.iter().map(|(_, l)| l.chunks.len() as u64).sum());
    // The first step's index builds and keys start as their tables finish
    // loading, beside the loads of the others. Every load is handed out
    // before any job (`Together::next`), so no connection loads data with
    // a setting a post-data job left on it (search_path, row_security).
    let first = match steps.first() {
        Some(post_data::Step::Together(_)) => match steps.remove(0) {
            post_data::Step::Together(jobs) => jobs,
            post_data::Step::Alone(_) => unreachable!(),
        },
        _ => Vec::new(),
    };
    let ctx = Ctx {
        store,
        backup,
        opts,
        post_data: &entry.post_data,
    };
    let counts = ctx
        .side_by_side(&mut sessions, post_data::Together::with_loads(loads, first))
        .await?;
    crate::jobs::large_objects::restore(store, backup, entry, &opts.target, &opts.progress).await?;
    set_sequences(entry, &opts.target).await?;
    opts.progress
        .phase(format!("indexes and constraints of {db}"));
    for step in steps {
        match step {
            post_data::Step::Alone(job) => sessions[0].run(job, &entry.post_data, opts).await?,
            post_data::Step::Together(jobs) => {
                ctx.side_by_side(
                    &mut sessions,
                    post_data::Together::with_loads(Vec::new(), jobs),
                )
                .await?;
            }
        }
    }
    sessions[0].make_durable(&db).await?;
    Ok(counts)
}

/// A part of a table's data loaded in one transaction.
struct Load<'e> {
    table: &'e TableEntry,
    chunks: std::ops::Range<usize>,
}

/// Before PostgreSQL 16, how many COPY streams load one table at a time.
/// Two go ~1.2x faster than one on 2 cores (measured on PostgreSQL 15:
/// 2 KB rows with jsonb, whole restore 1.22x at wal_level minimal; pgbench
/// rows no slower), but every stream queues on the table's extension lock
/// there, so more would mostly wait; from 16 on, extension scales.
const STREAMS_BEFORE_16: usize = 2;

/// What to load, biggest table first (the restore's longest stream): each
/// table in at most `streams` contiguous parts (chunk by chunk when it has
/// fewer chunks), each part in one transaction, side by side. A table in
/// one part may load frozen (`FREEZE_FROM`): so with one connection every
/// table loads whole.
fn loads(entry: &DatabaseEntry, streams: usize) -> Vec<(script::TableName, Load<'_>)> {
    let mut tables: Vec<&TableEntry> = entry
        .tables
        .iter()
        .filter(|t| t.mode == TableMode::Full && !t.chunks.is_empty())
        .collect();
    tables.sort_by(|a, b| b.raw_bytes.cmp(&a.raw_bytes));
    tables
        .into_iter()
        .flat_map(|table| {
            let n = table.chunks.len();
            let k = streams.clamp(1, n);
            let parts = (0..k).map(move |i| n * i / k..n * (i + 1) / k);
            parts.map(move |chunks| {
                (
                    (table.schema.clone(), table.name.clone()),
                    Load { table, chunks },
                )
            })
        })
        .collect()
}

/// What every connection of one restore shares.
struct Ctx<'a> {
    store: &'a Store,
    backup: &'a Backup,
    opts: &'a RestoreOptions,
    post_data: &'a ObjectRef,
}

impl Ctx<'_> {
    /// Runs what `together` hands out over `sessions`, each a task at a
    /// time; returns the rows and stored bytes loaded.
    async fn side_by_side(
        &self,
        sessions: &mut [Session],
        together: post_data::Together<Load<'_>>,
    ) -> Result<(u64, u64), JobError> {
        let together = &together;
        let workers = sessions
            .iter_mut()
            .enumerate()
            .map(|(i, session)| async move {
                let mut counts = (0, 0);
                while let Some(task) = together.next(i).await {
                    let r = match task {
                        post_data::Task::Load(load) => {
                            self.load(session, &load).await.map(|(r, b)| {
                                counts.0 += r;
                                counts.1 += b;
                            })
                        }
                        post_data::Task::Job(job) => {
                            session.run(job, self.post_data, self.opts).await
                        }
                    };
                    together.done(i, r.is_ok());
                    r?;
                }
                Ok::<_, JobError>(counts)
            });
        Ok(futures::future::try_join_all(workers)
            .await?
            .into_iter()
            .fold((0, 0), |(r, b), (r2, b2)| (r + r2, b + b2)))
    }

    /// Loads a part of a table in one transaction: nothing is committed
    /// until each of its objects has checked out whole.
    async fn load(&self, session: &mut Session, load: &Load<'_>) -> Result<(u64, u64), JobError> {
        let (opts, table) = (self.opts, load.table);
        let db = opts.target.database();
        let tx = session
            .client
            .transaction()
            .await
            .map_err(|e| JobError::sql(&db, "begin", e))?;
        let freeze = load.chunks.len() == table.chunks.len()
            && table.raw_bytes >= FREEZE_FROM
            && empty_then_truncated(&tx, table).await.map_err(|e| {
                JobError::sql(&db, &format!("load {}", table.chunks[0].object.path), e)
            })?;
        let (mut rows, mut bytes) = (0, 0);
        for chunk in &table.chunks[load.chunks.clone()] {
            let failed = |e| JobError::sql(&db, &format!("load {}", chunk.object.path), e);
            let sink = tx
                .copy_in(&copy_in_statement(table, freeze))
                .await
                .map_err(failed)?;
            futures::pin_mut!(sink);
            let mut reader = self.backup.reader(self.store, &chunk.bounded()).await?;
            while let Some(piece) = reader.next().await? {
                sink.send(bytes::Bytes::from(piece)).await.map_err(failed)?;
            }
            if reader.rows != chunk.rows {
                return Err(ArchiveError::Corrupt {
                    object: chunk.object.path.clone(),
                    reason: format!("{} rows, the manifest records {}", reader.rows, chunk.rows),
                }
                .into());
            }
            sink.as_mut().finish().await.map_err(failed)?;
            rows += chunk.rows;
            bytes += chunk.object.size;
            opts.progress.add_done(1);
            opts.progress.add_bytes(chunk.object.size);
        }
        tx.commit()
            .await
            .map_err(|e| JobError::sql(&db, "commit", e))?;
        Ok((rows, bytes))
    }
}

async fn set_sequences(entry: &DatabaseEntry, target: &PgUrl) -> Result<(), JobError> {
    if entry.sequences.is_empty() {
        return Ok(());
    }
    let db = target.database();
    let client = target.connect().await?;
    for s in &entry.sequences {
        let name = format!("{}.{}", ident(&s.schema), ident(&s.name));
        client
            .execute(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&name, &s.last_value, &s.is_called],
            )
            .await
            .map_err(|e| JobError::sql(&db, &format!("set sequence {}.{}", s.schema, s.name), e))?;
    }
    Ok(())
}

/// A schema script (pre-data, post-data), read whole first, so its size,
/// checksum and decompressed size are known good before the first
/// statement runs. Never given to psql, whose meta-commands (`\!`,
/// `\o |cmd`) would run a tampered backup's shell commands on this host.
struct Script<'o> {
    object: &'o ObjectRef,
    text: Vec<u8>,
}

impl Script<'_> {
    fn statements(&self) -> Result<Vec<script::Statement<'_>>, JobError> {
        script::split(&self.text).map_err(|source| JobError::Script {
            object: self.object.path.clone(),
            source,
        })
    }
}

async fn read_script<'o>(
    store: &Store,
    backup: &Backup,
    object: &'o ObjectRef,
) -> Result<Script<'o>, JobError> {
    let text = backup.reader(store, object).await?.read_all().await?;
    Ok(Script { object, text })
}

/// One of the restore's connections, with the script's session settings
/// it has applied (by name).
struct Session {
    client: tokio_postgres::Client,
    applied: HashMap<String, String>,
}

impl Session {
    async fn open(opts: &RestoreOptions) -> Result<Session, JobError> {
        let client = opts.target.connect().await?;
        restore_session(&client, opts).await?;
        Ok(Session {
            client,
            applied: HashMap::new(),
        })
    }

    async fn run(
        &mut self,
        job: post_data::Job,
        object: &ObjectRef,
        opts: &RestoreOptions,
    ) -> Result<(), JobError> {
        for (name, sql) in job.session.iter() {
            if self.applied.get(name) != Some(sql) {
                self.execute(0, sql, object, opts).await?;
                self.applied.insert(name.clone(), sql.clone());
            }
        }
        for st in &job.statements {
            self.execute(st.line, &st.text, object, opts).await?;
        }
        Ok(())
    }

    /// One statement alone through the extended protocol (which refuses two
    /// commands in one); a role the schema names that this server lacks is
    /// created first where the caller allows (`create_missing_roles`).
    async fn execute(
        &self,
        line: usize,
        sql: &str,
        object: &ObjectRef,
        opts: &RestoreOptions,
    ) -> Result<(), JobError> {
        let db = opts.target.database();
        let what = || match line {
            0 => format!("apply {} (a session setting: {sql})", object.path),
            _ => format!("apply {} (the statement at line {line})", object.path),
        };
        // A statement may name several roles (a GRANT), each missing.
        let mut created = 0;
        loop {
            let Err(e) = self.client.execute_typed(sql, &[]).await else {
                return Ok(());
            };
            match (missing_role(&e), opts.create_missing_roles) {
                (Some((role, _)), true) if created < MAX_ROLES_PER_STATEMENT => {
                    let made = self
                        .client
                        .batch_execute(&format!("CREATE ROLE {} NOLOGIN", ident(&role)))
                        .await;
                    // Another connection of this restore may have just made it.
                    use tokio_postgres::error::SqlState;
                    match made {
                        Err(e)
                            if e.code() != Some(&SqlState::DUPLICATE_OBJECT)
                                && e.code() != Some(&SqlState::UNIQUE_VIOLATION) =>
                        {
                            return Err(JobError::sql(&db, &format!("create role {role}"), e))
                        }
                        _ => created += 1,
                    }
                }
                (Some((_, message)), _) => {
                    return Err(JobError::refused(
                        &db,
                        what(),
                        format!(
                            "{message}: the backup's objects are owned by or granted to roles this server does not have; create them first (the backup's globals.sql.zst holds its roles: see docs/RESTORE-BY-HAND.md), then restore again"
                        ),
                    ))
                }
                (None, _) => return Err(JobError::sql(&db, &what(), e)),
            }
        }
    }

    /// Commits with `synchronous_commit` on, which flushes every earlier
    /// commit of this restore too (the write-ahead log is flushed in
    /// order): success is reported only for what a crash would keep.
    async fn make_durable(&self, db: &str) -> Result<(), JobError> {
        self.client
            .batch_execute(
                "SET synchronous_commit = on; BEGIN; SELECT pg_catalog.txid_current(); COMMIT;",
            )
            .await
            .map_err(|e| JobError::sql(db, "flush the restore's commits", e))
    }
}

/// Settings for a bulk load into a new database, on every connection of
/// the restore: commits do not wait for the disk (`make_durable` makes the
/// last one wait for all), and index builds sort in memory where this
/// machine's memory allows (only when the server runs here, never lowered).
async fn restore_session(
    client: &tokio_postgres::Client,
    opts: &RestoreOptions,
) -> Result<(), JobError> {
    let db = opts.target.database();
    let mut sql = String::from("SET synchronous_commit = off;");
    if let Some(kib) = opts
        .target
        .is_local()
        .then(|| maintenance_work_mem_kib(opts.jobs))
        .flatten()
    {
        let current: i64 = client
            .query_one(
                "SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'maintenance_work_mem'",
                &[],
            )
            .await
            .map_err(|e| JobError::sql(&db, "read maintenance_work_mem", e))?
            .get(0);
        if kib > current as u64 {
            sql.push_str(&format!(" SET maintenance_work_mem = '{kib}kB';"));
        }
    }
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| JobError::sql(&db, "set up the restore's session", e))
}

/// A quarter of the memory available now, shared by the workers, within
/// 64 MiB..1 GiB each: an index build that sorts in memory runs several
/// times faster than one that spills, and a drill shares the machine.
fn maintenance_work_mem_kib(jobs: usize) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((available / 4 / jobs.max(1) as u64).clamp(64 << 10, 1 << 20))
}

/// More would mean the server keeps answering "no such role" for a role
/// just created: an error, not a loop.
const MAX_ROLES_PER_STATEMENT: usize = 64;

/// A table loaded whole in one transaction is truncated in it first when
/// it is empty (new: an extension's configuration table may already hold
/// the extension's own rows, and keeps them; and nothing references it),
/// which lets COPY write its rows frozen and visible to all: no hint-bit
/// rewrite of every page on first read (a drill's checks), no freezing
/// vacuum later, and at wal_level minimal no WAL. Smaller tables skip it (a
/// TRUNCATE makes a new file: thousands of tiny tables would pay more than
/// they gain); a table whose chunks load side by side (`loads`) cannot.
const FREEZE_FROM: u64 = 1 << 20;

async fn empty_then_truncated(
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableEntry,
) -> Result<bool, tokio_postgres::Error> {
    let name = format!("{}.{}", ident(&table.schema), ident(&table.name));
    // Locked first, so no row another session commits meanwhile goes
    // unseen and then truncated. A key referencing the table (an
    // extension's, made with it) would refuse the TRUNCATE: left alone.
    tx.batch_execute(&format!("LOCK TABLE ONLY {name} IN ACCESS EXCLUSIVE MODE"))
        .await?;
    let keep: bool = tx
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM ONLY {name})
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE confrelid = $1::text::regclass)"
            ),
            &[&name],
        )
        .await?
        .get(0);
    if !keep {
        tx.batch_execute(&format!("TRUNCATE ONLY {name}")).await?;
    }
    Ok(!keep)
}

/// COPY into the columns the backup named, in its order: the restored
/// table may hold them in another (an inheritance child whose parent gained
/// a column after it was made lists the parent's columns first when
/// pg_dump recreates it).
fn copy_in_statement(table: &TableEntry, freeze: bool) -> String {
    let columns = match table.columns.is_empty() {
        true => String::new(),
        false => format!(
            " ({})",
            table
                .columns
                .iter()
                .map(|c| ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "COPY {}.{}{columns} FROM STDIN{}",
        ident(&table.schema),
        ident(&table.name),
        if freeze { " (FREEZE)" } else { "" }
    )
}

/// `role "x" does not exist`: roles are cluster-wide, outside a database's
/// backup, so a new server lacks them until the globals are applied.
fn missing_role(e: &tokio_postgres::Error) -> Option<(String, String)> {
    let d = e
        .as_db_error()
        .filter(|d| d.code().code() == "42704" && d.message().starts_with("role \""))?;
    // `role "name" does not exist`, the name as it is (quotes not doubled).
    let role = d
        .message()
        .strip_prefix("role \"")?
        .strip_suffix("\" does not exist")?
        .to_string();
    Some((role, format!("{} ({})", d.message(), d.code().code())))
}
