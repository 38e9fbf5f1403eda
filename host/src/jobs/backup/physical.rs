//! A physical base backup of a whole PostgreSQL cluster over the
//! replication protocol: `BASE_BACKUP` with the WAL it needs and the
//! server's `backup_manifest`; each tar stream (base, then one per
//! tablespace) -> zstd -> (age) -> sha256 -> the store, cut into parts while
//! the server streams; firedrill's manifest last.
//!
//! Invariants (as for logical backups): no temporary files, memory bounded
//! by one part's buffers whatever the cluster's size; the manifest is
//! written last and only while the lease is held; a failure aborts the
//! upload in flight and leaves no manifest.

use crate::archive::manifest::{self, Compression, Manifest, PhysicalEntry, TarArchive, Timings};
use crate::archive::{ObjectRef, ObjectWriter, Store};
use crate::coord::CommitGuard;
use crate::jobs::backup::{commit, sealing, to_unix, BackupSummary};
use crate::jobs::JobError;
use crate::servers::pg::PgUrl;
use crate::servers::replication::{BackupEvent, BaseBackupOptions, ReplicationConn};
use crate::telemetry::progress::Progress;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Where the server's own manifest lives inside a backup.
pub const BACKUP_MANIFEST_OBJECT: &str = "physical/backup_manifest.zst";

pub struct PhysicalBackupOptions {
    pub source: String,
    /// The server; the replication connection uses the same URL, role and TLS.
    pub url: PgUrl,
    pub compression_level: i32,
    /// A tar stream is cut into a new object after this many bytes.
    pub part_bytes: u64,
    /// Ask the server for an immediate checkpoint rather than waiting for
    /// the next one (what `pg_basebackup -c fast` does).
    pub fast_checkpoint: bool,
    pub guard: Option<CommitGuard>,
    pub progress: Arc<Progress>,
}

/// The object of part `n` of archive `name` (`base` or a tablespace's OID).
pub fn part_path(name: &str, n: usize) -> String {
    format!("physical/{}/{n:05}.tar.zst", manifest::path_segment(name))
}

#[tracing::instrument(name = "backup.physical", skip_all, fields(source = %opts.source))]
pub async fn run(store: &Store, opts: &PhysicalBackupOptions) -> Result<BackupSummary, JobError> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let id = manifest::new_backup_id(started);
    let dir = crate::archive::backup_dir(&opts.source, &id);
    tracing::info!(backup = %id, source = %opts.source, server = %opts.url.redacted(), "physical backup started");

    // The restored copy is checked as the bootstrap superuser, whatever the
    // source calls it; a replication connection cannot run SQL, so ask now.
    let sql = opts.url.connect().await?;
    let superuser: String = sql
        .query_one("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[])
        .await
        .map_err(|e| JobError::sql(&opts.url.database(), "read the bootstrap superuser", e))?
        .get(0);
    let server_version: String = sql
        .query_one("SHOW server_version", &[])
        .await
        .map_err(|e| JobError::sql(&opts.url.database(), "read the server version", e))?
        .get(0);
    drop(sql);

    let mut conn = ReplicationConn::connect(&opts.url).await?;
    let system = conn.identify_system().await?;
    let segment_size = conn.segment_size().await?;
    let (encryption, store) = sealing(store, &dir).await?;
    let store = &store;

    opts.progress.phase("streaming the base backup");
    let mut backup = conn
        .base_backup(&BaseBackupOptions {
            label: format!("firedrill {id}"),
            fast_checkpoint: opts.fast_checkpoint,
            wal: true,
            manifest: true,
            max_rate_kib: None,
        })
        .await?;
    let start_lsn = backup.start_lsn;
    let start_timeline = backup.start_timeline;
    let mut sink = Sink {
        store,
        dir: &dir,
        level: opts.compression_level,
        part_bytes: opts.part_bytes.max(1 << 20),
        archives: vec![],
        current: None,
        manifest: None,
        progress: &opts.progress,
    };
    let streamed: Result<(), JobError> = async {
        while let Some(event) = backup.next().await? {
            sink.take(event).await?;
        }
        sink.finish_part().await?;
        Ok(())
    }
    .await;
    if let Err(e) = streamed {
        sink.abort().await;
        return Err(e);
    }
    let (end_lsn, end_timeline) = backup.end().ok_or_else(|| {
        JobError::Internal("the server ended the base backup without its end position".into())
    })?;
    let backup_manifest = match sink.manifest.take() {
        Some(w) => Some(w.finish(BACKUP_MANIFEST_OBJECT).await?),
        None => None,
    };
    if !sink.archives.iter().any(|a| a.name == "base") {
        return Err(JobError::Internal(
            "the server's base backup held no base archive".into(),
        ));
    }
    let m = Manifest {
        format: manifest::FORMAT.into(),
        id,
        source: opts.source.clone(),
        kind: "physical".into(),
        // A physical copy restores only on the same major: recorded for
        // the restore to pick its server by.
        postgres: crate::servers::pg::server_major(&server_version).map(|major| {
            manifest::PgVersions {
                server_major: major,
                pg_dump: "none (a physical backup)".into(),
            }
        }),
        server_version,
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
        redis: None,
        encryption,
        physical: Some(PhysicalEntry {
            system_id: system.system_id,
            timeline: start_timeline,
            start_lsn,
            end_lsn,
            end_timeline,
            segment_size,
            superuser,
            wal_included: true,
            archives: sink.archives,
            backup_manifest,
        }),
        signature: None,
    };
    commit(store, &m, opts.guard.as_ref(), &opts.progress).await
}

/// Where the server's stream goes: the archive being written and its part
/// in flight, or the server's manifest.
struct Sink<'a> {
    store: &'a Store,
    dir: &'a str,
    level: i32,
    part_bytes: u64,
    archives: Vec<TarArchive>,
    /// The part being written, of the last archive.
    current: Option<ObjectWriter>,
    manifest: Option<ObjectWriter>,
    progress: &'a Progress,
}

impl Sink<'_> {
    async fn take(&mut self, event: BackupEvent) -> Result<(), JobError> {
        match event {
            BackupEvent::Archive { name, location } => {
                self.finish_part().await?;
                if self.manifest.is_some() {
                    return Err(JobError::Internal(
                        "the server sent an archive after its backup manifest".into(),
                    ));
                }
                if name != "base" && !name.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(JobError::Internal(format!(
                        "the server sent an archive named {name:?}: expected base or a tablespace OID"
                    )));
                }
                self.archives.push(TarArchive {
                    name,
                    location,
                    parts: vec![],
                    raw_bytes: 0,
                });
            }
            BackupEvent::Data(bytes) => {
                let Some(archive) = self.archives.last() else {
                    return Err(JobError::Internal(
                        "the server sent data before naming its archive".into(),
                    ));
                };
                if self.current.is_none() {
                    let path = part_path(&archive.name, archive.parts.len());
                    self.current = Some(
                        ObjectWriter::create(
                            self.store,
                            &format!("{}{path}", self.dir),
                            self.level,
                        )
                        .await?,
                    );
                }
                let w = self.current.as_mut().expect("opened above");
                w.write(&bytes).await?;
                self.progress.add_bytes(bytes.len() as u64);
                if w.raw >= self.part_bytes {
                    self.finish_part().await?;
                }
            }
            BackupEvent::Manifest => {
                self.finish_part().await?;
                self.manifest = Some(
                    ObjectWriter::create(
                        self.store,
                        &format!("{}{BACKUP_MANIFEST_OBJECT}", self.dir),
                        self.level,
                    )
                    .await?,
                );
            }
            BackupEvent::ManifestData(bytes) => match &mut self.manifest {
                Some(w) => w.write(&bytes).await?,
                None => {
                    return Err(JobError::Internal(
                        "the server sent manifest data before the manifest".into(),
                    ))
                }
            },
            BackupEvent::Progress(_) => {}
        }
        Ok(())
    }

    async fn finish_part(&mut self) -> Result<(), JobError> {
        let Some(w) = self.current.take() else {
            return Ok(());
        };
        let archive = self
            .archives
            .last_mut()
            .expect("a part belongs to an archive");
        let raw = w.raw;
        let object: ObjectRef = w
            .finish(&part_path(&archive.name, archive.parts.len()))
            .await?;
        archive.raw_bytes += raw;
        archive.parts.push(object);
        Ok(())
    }

    async fn abort(&mut self) {
        if let Some(w) = self.current.take() {
            w.abort().await;
        }
        if let Some(w) = self.manifest.take() {
            w.abort().await;
        }
    }
}
