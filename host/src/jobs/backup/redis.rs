//! Backing up a Redis server: its RDB snapshot over the replication protocol
//! -> zstd -> sha256 -> the store, with key counts per database from
//! `INFO keyspace` taken just before and just after, then the manifest.
//!
//! Invariant (as for Postgres): the manifest is written last and only while
//! the lease is held; a failed or interrupted fetch leaves no manifest, and
//! the upload of the snapshot is aborted.

use crate::archive::manifest::{self, Compression, Manifest, RedisEntry, Timings};
use crate::archive::{ObjectRef, ObjectWriter, Store};
use crate::coord::CommitGuard;
use crate::jobs::backup::{commit, to_unix, BackupSummary};
use crate::jobs::JobError;
use crate::servers::redis::{info_field, keyspace, RedisUrl};
use crate::telemetry::progress::Progress;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Where the snapshot lives inside a backup.
pub const RDB_OBJECT: &str = "redis/dump.rdb.zst";

pub struct RedisBackupOptions {
    pub source: String,
    pub url: RedisUrl,
    pub compression_level: i32,
    pub guard: Option<CommitGuard>,
    pub progress: Arc<Progress>,
}

#[tracing::instrument(name = "backup", skip_all, fields(source = %opts.source))]
pub async fn run(store: &Store, opts: &RedisBackupOptions) -> Result<BackupSummary, JobError> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let id = manifest::new_backup_id(started);
    let dir = crate::archive::backup_dir(&opts.source, &id);
    tracing::info!(backup = %id, source = %opts.source, server = %opts.url.redacted(), "redis backup started");
    let (encryption, store) = crate::jobs::backup::sealing(store, &dir).await?;
    let store = &store;
    let mut info = opts.url.connect().await?;
    let server = info.info("server").await?;
    let version = info_field(&server, "redis_version")
        .unwrap_or("unknown")
        .to_string();
    let keys_before = keyspace(&info.info("keyspace").await?);

    opts.progress.phase("fetching the snapshot");
    let replica = opts.url.connect().await?;
    let mut out =
        ObjectWriter::create(store, &format!("{dir}{RDB_OBJECT}"), opts.compression_level).await?;
    let raw_bytes = match replica.fetch_rdb(&mut out, &opts.progress).await {
        Ok(n) => n,
        Err(e) => {
            out.abort().await;
            return Err(e.into());
        }
    };
    // `raw_bytes` records the decompressed size beside it.
    let rdb = ObjectRef {
        raw: None,
        ..out.finish(RDB_OBJECT).await?
    };
    let keys_after = keyspace(&info.info("keyspace").await?);
    let m = Manifest {
        format: manifest::FORMAT.into(),
        id,
        source: opts.source.clone(),
        kind: "redis".into(),
        server_version: version,
        tool: format!("firedrill {}", env!("CARGO_PKG_VERSION")),
        compression: Compression {
            algorithm: "zstd".into(),
            level: opts.compression_level,
        },
        globals: None,
        databases: vec![],
        timings: Timings {
            started: to_unix(started),
            finished: manifest::unix_now(),
            seconds: clock.elapsed().as_secs_f64(),
        },
        plugins: vec![],
        fencing_token: opts.guard.as_ref().map(|g| g.token()),
        redis: Some(RedisEntry {
            rdb,
            raw_bytes,
            keys_before,
            keys_after,
        }),
        encryption,
        postgres: None,
        physical: None,
        signature: None,
    };
    commit(store, &m, opts.guard.as_ref(), &opts.progress).await
}
