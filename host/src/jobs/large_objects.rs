//! Large objects (`lo_create`, `lo_import`, `lo_from_bytea`): their data,
//! which lives outside every table, so the COPY chunks of the tables never
//! see it.
//!
//! Their metadata (the objects themselves, owners, grants, comments) is in
//! pg_dump's pre-data (`SELECT pg_catalog.lo_create('<oid>')`, `ALTER LARGE
//! OBJECT`, `GRANT ... ON LARGE OBJECT`), so a restore creates each object
//! exactly once there, as its owner with its grants; this module carries the
//! bytes. A backup reads them in the database's exported snapshot as COPY
//! text of `(oid, offset, bytes)` rows, one row per [`LO_SLICE`] of an
//! object (so one huge object neither sits whole in memory nor in one
//! chunk), in (oid, offset) order, cut into chunks at row boundaries. A
//! restore loads each chunk into a temporary table and writes it with
//! `lo_put`, one transaction per chunk, committed only after the chunk
//! checked out; a drill reads the restored objects back the same way and
//! compares the count, the bytes and each chunk's checksum.
//!
//! `psql` can do all of this by hand (docs/RESTORE-BY-HAND.md).

use super::backup::BackupOptions;
use super::drill::{verdict, Check};
use super::JobError;
use crate::archive::manifest::{
    Chunk, DatabaseEntry, LargeObjectChunk, LargeObjects, ObjectRef, LO_SLICE,
};
use crate::archive::{ArchiveError, Backup, ObjectWriter, Store};
use crate::servers::pg::PgUrl;
use crate::telemetry::progress::Progress;
use futures::{SinkExt, TryStreamExt};
use sha2::{Digest, Sha256};

/// The size of large object `m.oid`, read as of the transaction's snapshot
/// (262144 is `INV_READ`). The descriptor is closed at once (the `OFFSET 0`s
/// keep open, seek and close in that order): left open, every object
/// would hold one until the transaction ends.
const SIZE_OF_M_OID: &str =
    "(SELECT b.size FROM (SELECT a.fd, pg_catalog.lo_lseek64(a.fd, 0, 2) AS size \
     FROM (SELECT pg_catalog.lo_open(m.oid, 262144) AS fd OFFSET 0) a OFFSET 0) b \
     WHERE pg_catalog.lo_close(b.fd) = 0)";

/// The data rows of the objects whose (oid, offset) falls in `range`
/// (inclusive), as COPY text; the same query on both sides of a drill.
fn data_query(range: Option<((u32, i64), (u32, i64))>) -> String {
    let (inner, outer) = match range {
        None => (String::new(), String::new()),
        Some(((o1, f1), (o2, f2))) => (
            format!(" WHERE m.oid BETWEEN {o1}::oid AND {o2}::oid"),
            format!(" WHERE (k.oid, k.off) >= ({o1}::oid, {f1}::bigint) AND (k.oid, k.off) <= ({o2}::oid, {f2}::bigint)"),
        ),
    };
    format!(
        "COPY (SELECT k.oid, k.off, pg_catalog.lo_get(k.oid, k.off, {LO_SLICE}) FROM \
         (SELECT m.oid, s.off FROM pg_catalog.pg_largeobject_metadata m \
          CROSS JOIN LATERAL pg_catalog.generate_series(0::bigint, {SIZE_OF_M_OID} - 1, {LO_SLICE}) AS s(off){inner}) k\
         {outer} ORDER BY 1, 2) TO STDOUT"
    )
}

fn count_query() -> String {
    format!("SELECT count(*)::bigint, coalesce(sum({SIZE_OF_M_OID}), 0)::bigint FROM pg_catalog.pg_largeobject_metadata m")
}

/// The (oid, offset) a COPY text row starts with.
fn row_key(row: &[u8]) -> Option<(u32, i64)> {
    let mut fields = row.splitn(3, |b| *b == b'\t');
    let oid = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let off = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    Some((oid, off))
}

/// Fails before anything is copied when the backup role may not read some
/// large objects (it needs SELECT on each, or to own it, or superuser;
/// `pg_read_all_data` does not cover them), naming them and the fix, rather
/// than failing half-way through the copy with the first one's oid.
pub(super) async fn refuse_unreadable(
    client: &tokio_postgres::Client,
    db: &str,
) -> Result<(), JobError> {
    let rows = client
        .query(
            "SELECT m.oid::text, current_user::text, count(*) OVER ()
             FROM pg_catalog.pg_largeobject_metadata m
             WHERE NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
               AND NOT current_setting('lo_compat_privileges')::bool
               AND NOT pg_catalog.pg_has_role(m.lomowner, 'USAGE')
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.aclexplode(m.lomacl) a
                               WHERE a.privilege_type = 'SELECT'
                                 -- 0 is PUBLIC, which pg_has_role does not know.
                                 AND CASE WHEN a.grantee = 0 THEN true ELSE pg_catalog.pg_has_role(a.grantee, 'USAGE') END)
             ORDER BY m.oid LIMIT 10",
            &[],
        )
        .await
        .map_err(|e| JobError::sql(db, "check that the large objects are readable", e))?;
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let (role, total): (String, i64) = (first.get(1), first.get(2));
    let oids: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    // The server has the last word: should a version let more roles read
    // large objects than the ACLs above say, the backup is not refused.
    let probe = format!(
        "SAVEPOINT firedrill_lo_probe; SELECT pg_catalog.lo_close(pg_catalog.lo_open({}::oid, 262144)); RELEASE SAVEPOINT firedrill_lo_probe",
        oids[0]
    );
    if client.batch_execute(&probe).await.is_ok() {
        return Ok(());
    }
    client
        .batch_execute("ROLLBACK TO SAVEPOINT firedrill_lo_probe")
        .await
        .map_err(|e| JobError::sql(db, "check that the large objects are readable", e))?;
    let listed = match total as usize > oids.len() {
        true => format!(
            "{} and {} more",
            oids.join(", "),
            total as usize - oids.len()
        ),
        false => oids.join(", "),
    };
    Err(JobError::refused(
        db,
        "back up the large objects",
        format!(
            "role {role} may not read large object{} {listed}: grant it SELECT on each (GRANT SELECT ON LARGE OBJECT {} TO {}), make it their owner, or use a superuser; pg_read_all_data does not cover large objects, and a backup without them would be incomplete",
            if total == 1 { "" } else { "s" },
            oids[0],
            crate::servers::pg::ident(&role)
        ),
    ))
}

/// Reads every large object's data in `snapshot` into chunks under
/// `<db>/large-objects/`. None when the database has none.
#[tracing::instrument(name = "backup.large_objects", skip_all, fields(database = %url.database()))]
pub(super) async fn dump(
    store: &Store,
    db_dir: &str,
    url: &PgUrl,
    snapshot: &str,
    opts: &BackupOptions,
) -> Result<Option<LargeObjects>, JobError> {
    let db = url.database();
    let client = url.connect().await?;
    client
        .batch_execute(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'; SET LOCAL bytea_output = 'hex'"))
        .await
        .map_err(|e| JobError::sql(&db, "import the snapshot", e))?;
    let r = client
        .query_one(&count_query(), &[])
        .await
        .map_err(|e| JobError::sql(&db, "count the large objects", e))?;
    let (count, bytes) = (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64);
    if count == 0 {
        let _ = client.batch_execute("COMMIT").await;
        return Ok(None);
    }
    let what = "read the large objects (the backup role needs SELECT on each, or superuser)";
    let stream = client
        .copy_out(&data_query(None))
        .await
        .map_err(|e| JobError::sql(&db, what, e))?;
    futures::pin_mut!(stream);
    let db_seg = db_dir
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let rel = |n: usize| format!("{db_seg}/large-objects/{n:05}.lo.zst");
    let mut chunks: Vec<LargeObjectChunk> = Vec::new();
    let mut current: Option<Open> = None;
    loop {
        let row = match stream.try_next().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                if let Some(o) = current.take() {
                    o.writer.abort().await;
                }
                return Err(JobError::sql(&db, what, e));
            }
        };
        // COPY sends one whole row per message.
        let Some(key) = row_key(&row) else {
            if let Some(o) = current.take() {
                o.writer.abort().await;
            }
            return Err(JobError::Internal(format!(
                "database {db}: an unexpected large-object row from COPY: {:?}",
                String::from_utf8_lossy(&row[..row.len().min(40)])
            )));
        };
        let o = match current.as_mut() {
            Some(o) => o,
            None => current.insert(Open {
                writer: ObjectWriter::create(
                    store,
                    &format!("{db_dir}large-objects/{:05}.lo.zst", chunks.len()),
                    opts.compression_level,
                )
                .await?,
                hasher: Sha256::new(),
                first: key,
                last: key,
            }),
        };
        o.hasher.update(&row);
        o.last = key;
        if let Err(e) = o.writer.write(&row).await {
            if let Some(o) = current.take() {
                o.writer.abort().await;
            }
            return Err(e.into());
        }
        if o.writer.raw >= opts.chunk_bytes {
            let o = current.take().expect("open");
            chunks.push(o.close(&rel(chunks.len())).await?);
        }
    }
    if let Some(o) = current.take() {
        chunks.push(o.close(&rel(chunks.len())).await?);
    }
    let _ = client.batch_execute("COMMIT").await;
    opts.progress
        .add_bytes(chunks.iter().map(|c| c.chunk.object.size).sum());
    tracing::debug!(database = %db, count, bytes, chunks = chunks.len(), "large objects copied");
    Ok(Some(LargeObjects {
        count,
        bytes,
        chunks,
    }))
}

struct Open {
    writer: ObjectWriter,
    hasher: Sha256,
    first: (u32, i64),
    last: (u32, i64),
}

impl Open {
    async fn close(self, rel: &str) -> Result<LargeObjectChunk, JobError> {
        let (rows, raw_bytes) = (self.writer.rows, self.writer.raw);
        let object = ObjectRef {
            raw: None,
            ..self.writer.finish(rel).await?
        };
        Ok(LargeObjectChunk {
            chunk: Chunk {
                object,
                rows,
                raw_bytes,
            },
            raw_sha256: hex::encode(self.hasher.finalize()),
            first: self.first,
            last: self.last,
        })
    }
}

/// Writes the large objects' data into `target`, whose pre-data has
/// created them (with their owners and grants): one transaction per chunk,
/// committed only once the chunk checked out whole.
pub(super) async fn restore(
    store: &Store,
    backup: &Backup,
    entry: &DatabaseEntry,
    target: &PgUrl,
    progress: &Progress,
) -> Result<(), JobError> {
    let Some(los) = &entry.large_objects else {
        return Ok(());
    };
    if los.chunks.is_empty() {
        return Ok(());
    }
    progress.add_total(los.chunks.len() as u64);
    let db = target.database();
    let mut client = target.connect().await?;
    for c in &los.chunks {
        let path = &c.chunk.object.path;
        let what = format!("load {path}");
        let tx = client
            .transaction()
            .await
            .map_err(|e| JobError::sql(&db, "begin", e))?;
        tx.batch_execute("CREATE TEMPORARY TABLE firedrill_lo_chunk (loid oid, off bigint, data bytea) ON COMMIT DROP")
            .await
            .map_err(|e| JobError::sql(&db, &what, e))?;
        let sink = tx
            .copy_in("COPY pg_temp.firedrill_lo_chunk FROM STDIN")
            .await
            .map_err(|e| JobError::sql(&db, &what, e))?;
        futures::pin_mut!(sink);
        let mut reader = backup.reader(store, &c.chunk.bounded()).await?;
        while let Some(piece) = reader.next().await? {
            sink.send(bytes::Bytes::from(piece))
                .await
                .map_err(|e| JobError::sql(&db, &what, e))?;
        }
        if reader.rows != c.chunk.rows {
            return Err(ArchiveError::Corrupt {
                object: path.clone(),
                reason: format!(
                    "{} rows, the manifest records {}",
                    reader.rows, c.chunk.rows
                ),
            }
            .into());
        }
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| JobError::sql(&db, &what, e))?;
        // Pre-data made each object (exactly once, with its owner and
        // grants); one it did not make is an error here, not a new object.
        tx.execute(
            "SELECT pg_catalog.lo_put(loid, off, data) FROM pg_temp.firedrill_lo_chunk ORDER BY loid, off",
            &[],
        )
        .await
        .map_err(|e| JobError::sql(&db, &what, e))?;
        tx.commit()
            .await
            .map_err(|e| JobError::sql(&db, "commit", e))?;
        progress.add_done(1);
        progress.add_bytes(c.chunk.object.size);
    }
    Ok(())
}

/// The drill's large-object checks: as many objects and bytes as at backup
/// time, and each chunk's rows read back from the restored database with
/// the backup's own query hash to the chunk's checksum.
pub(super) async fn check(
    client: &tokio_postgres::Client,
    drill_db: &str,
    entry: &DatabaseEntry,
    prefix: &str,
    checks: &mut Vec<Check>,
) -> Result<(), JobError> {
    let sql = |what: &str, e| JobError::sql(drill_db, what, e);
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL bytea_output = 'hex'",
        )
        .await
        .map_err(|e| sql("begin", e))?;
    let r = client
        .query_one(&count_query(), &[])
        .await
        .map_err(|e| sql("count the large objects", e))?;
    let (count, bytes) = (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64);
    let name = format!("{prefix}large-objects");
    let Some(los) = &entry.large_objects else {
        let _ = client.batch_execute("COMMIT").await;
        if count > 0 {
            checks.push(verdict(
                name,
                false,
                format!("{count} large objects restored ({bytes} bytes) but the backup holds no large-object data: it was made by a firedrill that did not back their data up; take a new backup"),
            ));
        }
        return Ok(());
    };
    let mut wrong = Vec::new();
    for c in &los.chunks {
        let stream = client
            .copy_out(&data_query(Some((c.first, c.last))))
            .await
            .map_err(|e| sql("read the large objects back", e))?;
        futures::pin_mut!(stream);
        let mut h = Sha256::new();
        while let Some(row) = stream
            .try_next()
            .await
            .map_err(|e| sql("read the large objects back", e))?
        {
            h.update(&row);
        }
        if hex::encode(h.finalize()) != c.raw_sha256 {
            wrong.push(format!(
                "large objects {}..{} ({}) differ from the backup",
                c.first.0, c.last.0, c.chunk.object.path
            ));
        }
    }
    let _ = client.batch_execute("COMMIT").await;
    let ok = count == los.count && bytes == los.bytes && wrong.is_empty();
    let detail = if ok {
        format!(
            "{count} large objects, {bytes} bytes, identical to the backup's {} chunks",
            los.chunks.len()
        )
    } else {
        let mut d = Vec::new();
        if count != los.count || bytes != los.bytes {
            d.push(format!(
                "{count} large objects ({bytes} bytes) restored, {} ({} bytes) at backup time",
                los.count, los.bytes
            ));
        }
        d.extend(wrong);
        d.join("; ")
    };
    checks.push(verdict(name, ok, detail));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_keyed_by_oid_and_offset() {
        assert_eq!(
            row_key(b"16386\t1048576\t\\\\x6869\n"),
            Some((16386, 1048576))
        );
        assert_eq!(row_key(b"garbage"), None);
        assert!(data_query(Some(((1, 0), (2, 5)))).contains("<= (2::oid, 5::bigint)"));
    }
}
