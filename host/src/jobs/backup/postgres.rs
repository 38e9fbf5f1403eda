//! What a backup reads of one database under its snapshot and stores: the
//! leader's exported snapshot, `pg_dump --snapshot` for the pre-data and
//! post-data sections (and `pg_dumpall` for the globals), the sequences'
//! positions, and the COPY workers that stream each table (or page range of
//! one) through zstd and sha256 into the store, cut into chunks.
//!
//! Invariants: every reader imports the one snapshot, with row security off
//! (a policy fails the backup, never hides rows from it); a chunk is cut only
//! at a row boundary; no temporary files (memory is bounded by jobs x part
//! size); an object being written when something fails is aborted, never
//! left to look complete.

use super::plan::{row_security_refusal, Job};
use super::BackupOptions;
use crate::archive::manifest::{self, Chunk, SequenceEntry, TableEntry, TableMode};
use crate::archive::{ObjectRef, ObjectWriter, Store};
use crate::jobs::JobError;
use crate::servers::pg::{ident, PgUrl, Tool};
use crate::servers::ServerError;
use futures::TryStreamExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;

/// Every backup session: a row-level security policy that applies to the
/// backup role makes a read of that table fail instead of hiding rows.
const NO_ROW_SECURITY: &str = "SET row_security = off;";

/// Opens the leader's transaction and exports its snapshot, which pg_dump
/// and every COPY worker of this database import: the snapshot's name, the
/// server's version and its number.
pub(super) async fn export_snapshot(
    leader: &tokio_postgres::Client,
    db: &str,
) -> Result<(String, String, i32), JobError> {
    // A policy must fail the backup, never hide rows from it (as in pg_dump).
    leader
        .batch_execute(&format!(
            "{NO_ROW_SECURITY} BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        ))
        .await
        .map_err(|e| JobError::sql(db, "start the snapshot transaction", e))?;
    let row = leader
        .query_one("SELECT pg_export_snapshot(), current_setting('server_version'), current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| JobError::sql(db, "export a snapshot", e))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// Where each sequence stands, except those of excluded tables and schemas.
pub(super) async fn sequences(
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
                true => JobError::refused(
                    db,
                    format!("read sequence {schema}.{name}"),
                    format!(
                        "{}: grant the backup role pg_read_all_data, or USAGE on schema {schema} and SELECT on the sequence; see docs/ROLES.md",
                        e.as_db_error().map(|d| d.message()).unwrap_or_default()
                    ),
                ),
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

#[allow(clippy::too_many_arguments)]
pub(super) async fn dump_section(
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
                return Err(child.error(e.to_string()).into());
            }
        };
        if let Err(e) = w.write(&buf[..n]).await {
            w.abort().await;
            return Err(e.into());
        }
    }
    if let Err(e) = child.wait("").await {
        w.abort().await;
        return Err(e.into());
    }
    Ok(w.finish(path).await?)
}

pub(super) async fn dump_globals(
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
        Err(JobError::Server(ServerError::Tool { message, .. })) => {
            tracing::warn!(
                "roles and tablespaces not backed up (the user cannot read them?): {message}"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Takes tables off the queue until it is empty, each through one COPY.
pub(super) async fn copy_worker(
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
        // A policy that appeared after `refuse_incomplete` looked.
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

/// Joins the parts of tables that were read in page ranges.
pub(super) fn merge_ranges(mut parts: Vec<TableEntry>) -> Vec<TableEntry> {
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
