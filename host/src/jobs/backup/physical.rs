//! A physical base backup of a whole PostgreSQL cluster over the
//! replication protocol: `BASE_BACKUP` with the WAL it needs and the
//! server's `backup_manifest`; each tar stream (base, then one per
//! tablespace) -> zstd -> (age) -> sha256 -> the store, cut into parts while
//! the server streams; firedrill's manifest last.
//!
//! Incremental (PostgreSQL 17+, `summarize_wal = on`): the newest complete
//! backup of the same cluster, timeline and major is the parent; its
//! `backup_manifest` goes to the server (`UPLOAD_MANIFEST`) and
//! `BASE_BACKUP (INCREMENTAL)` sends only the blocks changed since. The
//! manifest records the parent and the whole chain. Whenever that cannot be
//! done (an older server, summaries off or not reaching back, no parent, a
//! chain at `max_chain`) the backup is full and says why, not a failure.
//! It fails only where a full backup would too, or where committing would
//! store a chain without its start (the parent deleted meanwhile) or of
//! another cluster (a reconnect that reached one).
//!
//! Invariants (as for logical backups): no temporary files, memory bounded
//! by one part's buffers whatever the cluster's size (and, for an
//! incremental backup, its parent's `backup_manifest`, which grows with the
//! cluster's file count, not its bytes); the manifest is
//! written last and only while the lease is held; a failure aborts the
//! upload in flight and leaves no manifest.

use crate::archive::manifest::{self, Compression, Manifest, PhysicalEntry, TarArchive, Timings};
use crate::archive::{ObjectRef, ObjectWriter, Store};
use crate::coord::CommitGuard;
use crate::jobs::backup::{commit, sealing, to_unix, BackupSummary};
use crate::jobs::JobError;
use crate::servers::pg::PgUrl;
use crate::servers::replication::{BackupEvent, BaseBackupOptions, ReplicationConn, SystemInfo};
use crate::telemetry::progress::Progress;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// An incremental backup's marker while it runs: its parent's id.
const IN_PROGRESS: &str = "in-progress.parent";

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
    /// Take an incremental backup (PostgreSQL 17+ with `summarize_wal`)
    /// against the newest complete backup of the same cluster and timeline;
    /// a full one, with the reason logged, when that cannot be done.
    pub incremental: bool,
    /// Incremental backups after a full one, at most: past it, the next
    /// backup is full.
    pub max_chain: usize,
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
    let summarize_wal = if opts.incremental {
        // Absent before 17: the server says no, and that is the answer.
        sql.query_one("SELECT current_setting('summarize_wal', true)", &[])
            .await
            .ok()
            .and_then(|r| r.get::<_, Option<String>>(0))
    } else {
        None
    };
    drop(sql);

    let mut conn = ReplicationConn::connect(&opts.url).await?;
    let system = conn.identify_system().await?;
    let segment_size = conn.segment_size().await?;

    // The parent is read before this backup's sealing replaces the store.
    let mut full_because = None;
    let mut parent = None;
    let mut expected_full = false;
    if opts.incremental {
        let asked = Ask {
            system: &system,
            server_major: crate::servers::pg::server_major(&server_version),
            summarize_wal: summarize_wal.as_deref(),
        };
        match choose_parent(store, opts, &asked).await {
            Ok(p) => parent = Some(p),
            Err(Full::Expected(why)) => {
                expected_full = true;
                full_because = Some(why)
            }
            Err(Full::Because(why)) => full_because = Some(why),
        }
    }
    if let Some(p) = &parent {
        if let Err(e) = conn.upload_manifest(&p.backup_manifest).await {
            full_because = Some(format!(
                "sending backup {}'s backup_manifest failed: {e}",
                p.id
            ));
            parent = None;
            if !conn.is_ready() {
                // One walsender at a time (max_wal_senders may allow no more).
                drop(conn);
                conn = reconnect(&opts.url, &system).await?;
            }
        }
    }
    // Visible at once as a backup in progress (a part may take the whole
    // run to appear): prune keeps the chain it builds on meanwhile.
    let marker = format!("{dir}{IN_PROGRESS}");
    let marked = parent.is_some();
    if let Some(p) = &parent {
        store.put(&marker, p.id.clone().into_bytes()).await?;
    }
    let plain = store;
    let (encryption, store) = sealing(store, &dir).await?;
    let store = &store;

    opts.progress.phase("streaming the base backup");
    let options = |incremental: bool| BaseBackupOptions {
        label: format!("firedrill {id}"),
        fast_checkpoint: opts.fast_checkpoint,
        wal: true,
        manifest: true,
        max_rate_kib: None,
        incremental,
    };
    let begun = match conn.start_base_backup(&options(parent.is_some())).await {
        Ok(s) => s,
        // Refused before any data (WAL summaries that do not reach back to
        // the parent: summarize_wal turned on since, or summaries removed by
        // wal_summary_keep_time): the same connection takes a full one.
        Err(e) if parent.is_some() => {
            let p = parent.take().expect("checked");
            if conn.is_ready() {
                full_because = Some(format!(
                    "the server refused an incremental backup on {}: {e}",
                    p.id
                ));
            } else {
                full_because = Some(format!(
                    "the connection failed asking for an incremental backup on {}: {e}",
                    p.id
                ));
                drop(conn);
                conn = reconnect(&opts.url, &system).await?;
            }
            conn.start_base_backup(&options(false)).await?
        }
        Err(e) => return Err(e.into()),
    };
    let mut backup = conn.stream_base_backup(begun)?;
    if let Some(why) = &full_because {
        if expected_full {
            tracing::info!(source = %opts.source, "{why}");
        } else {
            tracing::warn!(source = %opts.source, "incremental backup not possible: {why}; taking a full backup");
        }
    }
    if let Some(p) = &parent {
        tracing::info!(source = %opts.source, parent = %p.id, chain = p.chain.len() + 1, "incremental backup on {}", p.id);
    }
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
            parent: parent.as_ref().map(|p| p.id.clone()),
            chain: parent
                .map(|p| {
                    let mut chain = p.chain;
                    chain.push(p.id);
                    chain
                })
                .unwrap_or_default(),
        }),
        signature: None,
    };
    // A prune may have deleted the parent while the server streamed: then
    // this backup would be a chain without its start. Nothing is committed.
    if let Some(parent) = m.physical.as_ref().and_then(|p| p.parent.as_deref()) {
        match crate::archive::read_manifest(store, &opts.source, parent).await {
            Err(e @ crate::archive::ArchiveError::Missing { .. }) => {
                return Err(JobError::Config(format!(
                    "the parent of this incremental backup, {parent}, is gone from the store ({e}): a prune deleted it while the backup ran? Nothing was committed; the next backup builds on what is there"
                )));
            }
            // Read once already; a passing store error is not a deletion.
            Err(e) => {
                tracing::warn!(parent, "cannot check the parent before the commit: {e}")
            }
            Ok(_) => {}
        }
    }
    let mut summary = commit(store, &m, opts.guard.as_ref(), &opts.progress).await?;
    // The window between that check and the commit: said loudly, since the
    // newest backup would not restore (a drill of it fails and names it).
    if let Some(parent) = m.physical.as_ref().and_then(|p| p.parent.as_deref()) {
        if let Err(crate::archive::ArchiveError::Missing { .. }) =
            crate::archive::read_manifest(store, &opts.source, parent).await
        {
            tracing::error!(backup = %m.id, parent, "the parent of this incremental backup was deleted while it was committed: it cannot be restored; take a full backup");
        }
    }
    if marked {
        if let Err(e) = plain.delete(&marker).await {
            tracing::warn!(object = %marker, "cannot remove the in-progress marker: {e}");
        }
    }
    summary.full_because = full_because;
    Ok(summary)
}

/// A new replication connection for the same backup: it must reach the
/// same cluster on the same timeline (a multi-host URL or a failover may
/// lead elsewhere).
async fn reconnect(url: &PgUrl, system: &SystemInfo) -> Result<ReplicationConn, JobError> {
    let mut conn = ReplicationConn::connect(url).await?;
    let now = conn.identify_system().await?;
    if now.system_id != system.system_id || now.timeline != system.timeline {
        return Err(JobError::Config(format!(
            "reconnected to cluster {} on timeline {}, not {} on timeline {} as at the backup's start (a failover?): nothing was stored; the next backup starts over",
            now.system_id, now.timeline, system.system_id, system.timeline
        )));
    }
    Ok(conn)
}

/// What the server says about itself, for choosing a parent.
struct Ask<'a> {
    system: &'a SystemInfo,
    server_major: Option<u32>,
    /// `summarize_wal` (None: the server has no such setting).
    summarize_wal: Option<&'a str>,
}

/// Why a backup asked to be incremental is full.
enum Full {
    /// What the schedule expects: the first of a chain, or a chain that is
    /// as long as `max_chain` allows.
    Expected(String),
    /// Something an operator may want to change.
    Because(String),
}

/// The backup an incremental one builds on.
struct Parent {
    id: String,
    /// Its own chain: the full backup first.
    chain: Vec<String>,
    /// The server's `backup_manifest` of it, checked against its checksum.
    backup_manifest: Vec<u8>,
}

/// The newest complete physical backup of this source taken of the same
/// cluster on the same timeline and major, whose chain has room for one
/// more; or why the backup must be full (said, never an error: a full
/// backup is always right).
async fn choose_parent(
    store: &Store,
    opts: &PhysicalBackupOptions,
    ask: &Ask<'_>,
) -> Result<Parent, Full> {
    use Full::Because;
    match ask.server_major {
        Some(m) if m >= 17 => {}
        Some(m) => {
            return Err(Because(format!(
                "PostgreSQL {m} has no incremental backups (they need 17 or newer)"
            )))
        }
        None => return Err(Because("the server's version is unknown".into())),
    }
    match ask.summarize_wal {
        Some("on") => {}
        _ => {
            return Err(Because(
                "summarize_wal is off on the server: set summarize_wal = on (ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf()) for incremental backups; the next full backup after that starts a chain"
                    .into(),
            ))
        }
    }
    let mut ids: Vec<String> = store
        .list(&format!("{}/", opts.source))
        .await
        .map_err(|e| Because(format!("cannot list the source's backups: {e}")))?
        .into_iter()
        .filter_map(|n| n.strip_suffix('/').map(str::to_string))
        .filter(|n| manifest::is_backup_id(n))
        .collect();
    ids.sort();
    let mut passed_over = Vec::new();
    // Ids name the second a backup started; several backups can start in
    // one second, and their random tails do not order them: within the
    // newest second that holds a candidate, the one that reaches furthest
    // into the WAL is the newest.
    let second = |id: &str| id[..16].to_string();
    let mut best: Option<(crate::archive::wal::Lsn, String, Manifest)> = None;
    for id in ids.iter().rev() {
        if best
            .as_ref()
            .is_some_and(|(_, b, _)| second(id) < second(b))
        {
            break;
        }
        let m = match crate::archive::verified_manifest(store, &opts.source, id).await {
            Ok((m, _)) => m,
            // Incomplete: in progress or abandoned.
            Err(crate::archive::ArchiveError::Missing { .. }) => continue,
            Err(e) => {
                passed_over.push(format!("{id} cannot be built on: {e}"));
                continue;
            }
        };
        let Some(p) = &m.physical else { continue };
        if p.system_id != ask.system.system_id {
            passed_over.push(format!(
                "{id} is of another cluster (system {})",
                p.system_id
            ));
            continue;
        }
        if p.end_timeline != ask.system.timeline {
            passed_over.push(format!(
                "{id} is on timeline {} and the server on {}",
                p.end_timeline, ask.system.timeline
            ));
            continue;
        }
        if m.server_major() != ask.server_major {
            passed_over.push(format!(
                "{id} is of PostgreSQL {}",
                m.server_major().unwrap_or(0)
            ));
            continue;
        }
        // Its ids go into this backup's manifest and become store paths.
        if let Some(bad) = p.chain.iter().find(|c| !manifest::is_backup_id(c)) {
            passed_over.push(format!(
                "{id} records a chain member {bad:?} that is not a backup id"
            ));
            continue;
        }
        if best.as_ref().is_none_or(|(lsn, _, _)| p.end_lsn > *lsn) {
            best = Some((p.end_lsn, id.clone(), m));
        }
    }
    if let Some((_, id, m)) = best {
        let p = m.physical.as_ref().expect("a physical backup was picked");
        if p.chain.len() >= opts.max_chain {
            return Err(Full::Expected(format!(
                "the chain of {} holds {} incremental backups, the most max_chain = {} allows: a full backup starts the next chain",
                p.root(&id),
                p.chain.len(),
                opts.max_chain
            )));
        }
        let Some(object) = &p.backup_manifest else {
            return Err(Because(format!(
                "backup {id} holds no backup_manifest to compare against"
            )));
        };
        let bytes = async {
            let backup = crate::archive::open_backup(store, &opts.source, &id).await?;
            backup.reader(store, object).await?.read_all().await
        }
        .await
        .map_err(|e| Because(format!("cannot read backup {id}'s backup_manifest: {e}")))?;
        return Ok(Parent {
            chain: p.chain.clone(),
            id,
            backup_manifest: bytes,
        });
    }
    Err(if passed_over.is_empty() {
        Full::Expected(
            "no earlier physical backup of this source to build on: the first backup of a chain is full".into(),
        )
    } else {
        Because(format!(
            "no earlier backup of this cluster and timeline to build on ({}): a full backup starts a chain",
            passed_over.join("; ")
        ))
    })
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
