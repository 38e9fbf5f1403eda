//! Restores a physical (base) backup: unpack its tar streams into a new data
//! directory, check them against the server's own backup_manifest, configure
//! recovery to a target, start PostgreSQL of the backup's major on it, wait
//! until the target is reached and the server promoted, and say what was
//! reached.
//!
//! Invariants: the backup is untrusted input. Its tar streams go through the
//! strict extractor (`archive::untar`: files and directories only, nothing
//! outside the data directory, nothing followed); nothing of it reaches
//! anything that runs commands: its configuration files (where
//! `archive_command`, `restore_command`, `shared_preload_libraries` and
//! the like live) are renamed `*.from-backup` and never loaded, and the
//! server runs with firedrill's settings only, on a private socket, no TCP.
//! Physical restores need exactly the backup's major version of the server.

use super::combine::{self, ChainMember};
use crate::archive::manifest::{Manifest, PhysicalEntry};
use crate::archive::untar::{Extracted, Extractor, Limits, Options as UntarOptions, UntarError};
use crate::archive::wal::Lsn;
use crate::archive::{ArchiveError, Backup, Store};
use crate::jobs::JobError;
use crate::servers::local_pg::LocalCluster;
use crate::servers::pg::find_tools;
use crate::telemetry::progress::Progress;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where recovery stops (then the server is promoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the base backup: the earliest consistent state.
    Immediate,
    /// As far as the WAL goes.
    Latest,
    /// A moment as PostgreSQL reads it, e.g. `2026-12-02 10:00:00+00`.
    Time(String),
    Lsn(Lsn),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
}

#[derive(Clone)]
pub struct PhysicalRestoreOptions {
    /// The new data directory: must not exist, or be empty, unless `force`
    /// (then its contents are removed). Tablespaces go next to it, in
    /// `<data_dir>.tablespaces/<oid>`.
    pub data_dir: PathBuf,
    pub force: bool,
    pub target: RecoveryTarget,
    /// The server's restore_command, built by the caller; secrets go in
    /// `env`, never here. None: only the WAL inside the backup (the target
    /// must then be `Immediate` or `Latest`).
    pub restore_command: Option<String>,
    /// Added to the server's environment (restore_command inherits it).
    pub env: Vec<(String, String)>,
    pub progress: Arc<Progress>,
    /// Return the running, promoted server instead of stopping it.
    pub keep_running: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhysicalRestoreSummary {
    pub id: String,
    pub source: String,
    pub data_dir: PathBuf,
    /// `pg_last_wal_replay_lsn()`: the end of the last record replayed.
    pub reached_lsn: Lsn,
    /// `pg_last_xact_replay_timestamp()` (UTC): the commit time of the last
    /// transaction replayed; none when recovery replayed no commit.
    pub reached_time: Option<String>,
    /// The timeline the promoted server writes on.
    pub timeline: u32,
    pub unpack_seconds: f64,
    pub replay_seconds: f64,
    /// Bytes of tar streams unpacked.
    pub bytes_unpacked: u64,
    /// Each tablespace's OID and where it was unpacked.
    pub tablespaces: Vec<(String, PathBuf)>,
    /// `pg_verifybackup: ok (...)`, or why it did not run (`not checked by
    /// pg_verifybackup: ...`); a mismatch fails the restore.
    pub verified: String,
    /// An incremental backup: every member combined, the full backup first
    /// and this one last, with what each stored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ChainMember>,
}

/// What [`unpack`] did.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub bytes: u64,
    pub files: u64,
    pub tablespaces: Vec<(String, PathBuf)>,
    pub verified: String,
}

/// Entries one tar stream may hold: far more than a data directory of a
/// very large catalog has files, far less than fills a filesystem's inodes.
const MAX_ENTRIES: u64 = 20_000_000;
/// Lines of the server's log an error carries.
const LOG_LINES: usize = 15;
/// How long a fast shutdown may take (a checkpoint) before an immediate one.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(600);

#[tracing::instrument(name = "restore_physical", skip_all, fields(backup = %backup.manifest.id))]
pub async fn run(
    store: &Store,
    backup: &Backup,
    opts: &PhysicalRestoreOptions,
) -> Result<(PhysicalRestoreSummary, Option<LocalCluster>), JobError> {
    let manifest = &backup.manifest;
    let entry = physical_entry(manifest)?;
    check_target(manifest, entry, opts)?;
    let major = manifest.server_major().ok_or_else(|| {
        JobError::Config(format!(
            "backup {} does not record its server's major version",
            manifest.id
        ))
    })?;
    // Before a byte is unpacked: without the server (and for a chain, its
    // every member and pg_combinebackup), nothing can be done.
    let bin = server_bin(manifest, major)?;
    let chain = match &entry.parent {
        Some(_) => {
            combine::combine_tool(&manifest.id, major)?;
            combine::open_chain(store, backup).await?
        }
        None => vec![],
    };
    let data_dir = absolute(&opts.data_dir)?;
    let tablespaces_dir = tablespaces_dir(&data_dir);
    prepare_dir(&data_dir, opts.force)?;
    if entry.archives.len() > 1 {
        prepare_dir(&tablespaces_dir, opts.force)?;
    }

    let clock = Instant::now();
    let unpacked = if entry.parent.is_some() {
        combine::unpack_chain(
            store,
            &chain,
            backup,
            &data_dir,
            &tablespaces_dir,
            &opts.progress,
        )
        .await
    } else {
        unpack(
            store,
            backup,
            entry,
            &data_dir,
            &tablespaces_dir,
            &opts.progress,
        )
        .await
        .map(|u| (u, vec![]))
    };
    let (unpacked, chain) = unpacked.inspect_err(|_| {
            tracing::warn!(data_dir = %data_dir.display(), "the data directory holds a partial restore: remove it, or restore again with --force");
        })?;
    let unpack_seconds = clock.elapsed().as_secs_f64();

    opts.progress.phase("configuring recovery");
    let run_dir = LocalCluster::private_run_dir(&std::env::temp_dir())?;
    let limits = control_settings(&bin, &data_dir).await;
    let settings = Settings {
        backup_id: &manifest.id,
        run_dir: &run_dir,
        major,
        restore_command: opts
            .restore_command
            .as_deref()
            // PostgreSQL refuses archive recovery without one; `false`
            // (firedrill's, not the backup's) finds nothing in any archive,
            // so recovery reads the backup's own pg_wal.
            .unwrap_or("false"),
        target: &opts.target,
        control: &limits,
    };
    if let Err(e) = configure(&data_dir, &settings) {
        let _ = std::fs::remove_dir_all(&run_dir);
        return Err(e);
    }

    opts.progress.phase("recovering");
    let clock = Instant::now();
    let mut owned = vec![data_dir.clone()];
    if !unpacked.tablespaces.is_empty() {
        owned.push(tablespaces_dir.clone());
    }
    let owned_refs: Vec<&Path> = owned.iter().map(PathBuf::as_path).collect();
    let started =
        LocalCluster::start_restored(&bin, run_dir.clone(), &data_dir, &owned_refs, &opts.env);
    let mut cluster = match started {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&run_dir);
            return Err(e.into());
        }
    };
    let reached = match wait_promoted(&mut cluster, &entry.superuser, major).await {
        Ok(r) => r,
        Err(e) => {
            // An exited server's directory is not removed with it (its log
            // was there to read); one still running is stopped on drop.
            if cluster.exited().is_some() {
                let _ = std::fs::remove_dir_all(cluster.dir());
            }
            return Err(e);
        }
    };
    let replay_seconds = clock.elapsed().as_secs_f64();
    tracing::info!(lsn = %reached.lsn, time = ?reached.time, timeline = reached.timeline, "recovery reached its target; promoted");

    let summary = PhysicalRestoreSummary {
        id: manifest.id.clone(),
        source: manifest.source.clone(),
        data_dir: data_dir.clone(),
        reached_lsn: reached.lsn,
        reached_time: reached.time,
        timeline: reached.timeline,
        unpack_seconds,
        replay_seconds,
        bytes_unpacked: unpacked.bytes,
        tablespaces: unpacked.tablespaces,
        verified: unpacked.verified,
        chain,
    };
    if opts.keep_running {
        return Ok((summary, Some(cluster)));
    }
    opts.progress.phase("stopping");
    tokio::task::spawn_blocking(move || cluster.shutdown_fast(SHUTDOWN_PATIENCE))
        .await
        .map_err(|e| JobError::Internal(e.to_string()))??;
    hand_over(&data_dir, &manifest.id)?;
    Ok((summary, None))
}

fn physical_entry(m: &Manifest) -> Result<&PhysicalEntry, JobError> {
    match (&m.physical, m.kind.as_str()) {
        (Some(p), "physical") => Ok(p),
        _ => Err(JobError::Config(format!(
            "backup {} is a {} backup, not a physical one: restore it without --physical",
            m.id, m.kind
        ))),
    }
}

fn check_target(
    m: &Manifest,
    entry: &PhysicalEntry,
    opts: &PhysicalRestoreOptions,
) -> Result<(), JobError> {
    if opts.restore_command.is_none() {
        if !matches!(
            opts.target,
            RecoveryTarget::Immediate | RecoveryTarget::Latest
        ) {
            return Err(JobError::Config(format!(
                "recovery to {:?} needs the WAL archive: give the restore its source's WAL (a restore command), or restore to the end of the backup",
                opts.target
            )));
        }
        if !entry.wal_included {
            return Err(JobError::Config(format!(
                "backup {} holds no WAL of its own: it can only be restored with the WAL archive of source {}",
                m.id, m.source
            )));
        }
    }
    if entry.parent.is_some() == entry.chain.is_empty() {
        return Err(ArchiveError::Corrupt {
            object: crate::archive::manifest::MANIFEST.into(),
            reason: format!(
                "it records the parent {:?} and the chain {:?}: an incremental backup has both, a full one neither",
                entry.parent, entry.chain
            ),
        }
        .into());
    }
    if entry.archives.first().map(|a| a.name.as_str()) != Some("base") {
        return Err(ArchiveError::Corrupt {
            object: crate::archive::manifest::MANIFEST.into(),
            reason: "its first physical archive is not `base`".into(),
        }
        .into());
    }
    Ok(())
}

/// The bin directory of an installed server of exactly `major`: WAL and
/// data files are readable only by the major that wrote them.
fn server_bin(m: &Manifest, major: u32) -> Result<PathBuf, JobError> {
    let found = find_tools("postgres");
    if let Some(f) = found.iter().find(|f| f.major == major) {
        return Ok(f.path.parent().unwrap_or(Path::new("/")).to_path_buf());
    }
    let have = found
        .iter()
        .map(|f| format!("{} ({})", f.major, f.path.display()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(JobError::Config(format!(
        "backup {} is a physical backup of PostgreSQL {major}, which only a PostgreSQL {major} server can restore (a physical backup never loads into another major); found: {}: install the PostgreSQL {major} server (e.g. postgresql-{major}) or point FIREDRILL_PG_BIN at its bin directory",
        m.id,
        if have.is_empty() { "none".into() } else { have }
    )))
}

fn absolute(p: &Path) -> Result<PathBuf, JobError> {
    std::path::absolute(p)
        .map_err(|e| JobError::Config(format!("data directory {}: {e}", p.display())))
}

/// `<data_dir>.tablespaces`, next to the data directory.
fn tablespaces_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".tablespaces");
    data_dir.with_file_name(name)
}

/// A directory to restore into: created 0700, or an existing empty one
/// (emptied with `force`); never a symlink.
pub(super) fn prepare_dir(dir: &Path, force: bool) -> Result<(), JobError> {
    let fail = |e: std::io::Error| JobError::Config(format!("{}: {e}", dir.display()));
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(fail)?;
            }
            std::fs::create_dir(dir).map_err(fail)?;
        }
        Err(e) => return Err(fail(e)),
        Ok(m) if !m.is_dir() => {
            return Err(JobError::Config(format!(
                "{} exists and is not a directory: restore into a new or empty directory",
                dir.display()
            )))
        }
        Ok(_) => {
            if std::fs::symlink_metadata(dir.join("postmaster.pid")).is_ok() {
                return Err(JobError::Config(format!(
                    "{} holds a postmaster.pid: a server may be running on it; stop it (and remove the file if none runs), or restore elsewhere",
                    dir.display()
                )));
            }
            let entries: Vec<_> = std::fs::read_dir(dir)
                .map_err(fail)?
                .collect::<Result<_, _>>()
                .map_err(fail)?;
            if !entries.is_empty() {
                if !force {
                    return Err(JobError::Config(format!(
                        "{} is not empty ({} entries): restore into a new or empty directory, or pass --force to replace its contents",
                        dir.display(),
                        entries.len()
                    )));
                }
                tracing::warn!(dir = %dir.display(), "--force: removing the directory's contents");
                for e in entries {
                    remove_any(&e.path()).map_err(fail)?;
                }
            }
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)
}

/// Removes a file, symlink or directory tree (links are removed, not followed).
fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
    }
}

fn untar_error(e: UntarError) -> JobError {
    match e {
        UntarError::Refused {
            object,
            entry,
            reason,
        } => ArchiveError::Corrupt {
            object,
            reason: match entry {
                Some(entry) => format!(
                    "tar entry {entry:?}: {reason} (a damaged or tampered backup: restore another one)"
                ),
                None => format!("{reason} (a damaged or tampered backup: restore another one)"),
            },
        }
        .into(),
        UntarError::Write { path, message } => {
            JobError::Config(format!("cannot write {path}: {message}"))
        }
        UntarError::Internal(m) => JobError::Internal(m),
    }
}

/// One tar stream of the backup into `dest`: its parts, each checked whole
/// against the manifest as it is read, in order.
async fn unpack_archive(
    store: &Store,
    backup: &Backup,
    archive: &crate::archive::manifest::TarArchive,
    dest: &Path,
    base: bool,
    progress: &Progress,
) -> Result<Extracted, JobError> {
    let mut x = Extractor::start(
        dest,
        UntarOptions {
            limits: Limits {
                max_bytes: archive.raw_bytes,
                max_entries: MAX_ENTRIES,
            },
            tablespace_links: base,
        },
    )
    .map_err(untar_error)?;
    let fed: Result<(), JobError> = async {
        for part in &archive.parts {
            let object: Arc<str> = Arc::from(part.path.as_str());
            let mut reader = backup.reader(store, part).await?;
            while let Some(piece) = reader.next().await? {
                progress.add_bytes(piece.len() as u64);
                x.feed(&object, piece).await.map_err(untar_error)?;
            }
            progress.add_done(1);
        }
        Ok(())
    }
    .await;
    match fed {
        Ok(()) => x.finish().await.map_err(untar_error),
        Err(e) => {
            // The extracting thread is done writing before the caller
            // removes what it wrote (its own refusal, if any, came first).
            let _ = x.finish().await;
            Err(e)
        }
    }
}

/// Unpacks every archive of the backup: `base` into `data_dir`, each
/// tablespace into `<tablespaces_dir>/<oid>` with `data_dir/pg_tblspc/<oid>`
/// pointing at it; then checks the result with the backup's major's
/// pg_verifybackup (skipped, and said, when it is not installed).
pub async fn unpack(
    store: &Store,
    backup: &Backup,
    entry: &PhysicalEntry,
    data_dir: &Path,
    tablespaces_dir: &Path,
    progress: &Progress,
) -> Result<Unpacked, JobError> {
    let manifest = &backup.manifest;
    progress.phase("unpacking");
    progress.add_total(entry.archives.iter().map(|a| a.parts.len() as u64).sum());
    let mut bytes = 0;
    let mut files = 0;
    let mut links = Vec::new();
    let mut tablespaces = Vec::new();
    for (i, archive) in entry.archives.iter().enumerate() {
        let base = i == 0;
        let dest = if base {
            if archive.name != "base" {
                return Err(JobError::Config(format!(
                    "backup {}: its first archive is {:?}, not base",
                    manifest.id, archive.name
                )));
            }
            data_dir.to_path_buf()
        } else {
            let oid = &archive.name;
            if !(1..=10).contains(&oid.len()) || !oid.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ArchiveError::Corrupt {
                    object: crate::archive::manifest::MANIFEST.into(),
                    reason: format!("a tablespace archive named {oid:?}, not an OID"),
                }
                .into());
            }
            if tablespaces.iter().any(|(o, _)| o == oid) {
                return Err(ArchiveError::Corrupt {
                    object: crate::archive::manifest::MANIFEST.into(),
                    reason: format!("tablespace {oid} is listed twice"),
                }
                .into());
            }
            let dest = tablespaces_dir.join(oid);
            if !tablespaces_dir.exists() {
                prepare_dir(tablespaces_dir, false)?;
            }
            std::fs::create_dir(&dest)
                .map_err(|e| JobError::Config(format!("{}: {e}", dest.display())))?;
            tablespaces.push((oid.clone(), dest.clone()));
            dest
        };
        let got = unpack_archive(store, backup, archive, &dest, base, progress).await?;
        tracing::info!(archive = %archive.name, files = got.files, bytes = got.stream_bytes, "unpacked");
        bytes += got.stream_bytes;
        files += got.files;
        if base {
            links = got.tablespace_links;
        }
    }
    if std::fs::symlink_metadata(data_dir.join("backup_label")).is_err() {
        return Err(ArchiveError::Corrupt {
            object: entry.archives[0]
                .parts
                .first()
                .map(|p| p.path.clone())
                .unwrap_or_default(),
            reason: "the base archive holds no backup_label: it is not a base backup".into(),
        }
        .into());
    }
    link_tablespaces(data_dir, &tablespaces, &links)?;
    let verified = verify(store, backup, entry, data_dir).await?;
    // Honoured (every tablespace it names is linked above); left in place,
    // the server would point the links back at the source's directories.
    remove_any(&data_dir.join("tablespace_map"))
        .map_err(|e| JobError::Config(format!("{}: {e}", data_dir.display())))?;
    Ok(Unpacked {
        bytes,
        files,
        tablespaces,
        verified,
    })
}

/// `pg_tblspc/<oid>` -> where each tablespace was unpacked. Every tablespace
/// the base archive (as a link) or its tablespace_map names must have an
/// archive of its own.
fn link_tablespaces(
    data_dir: &Path,
    tablespaces: &[(String, PathBuf)],
    links: &[crate::archive::untar::TablespaceLink],
) -> Result<(), JobError> {
    let map = std::fs::symlink_metadata(data_dir.join("tablespace_map"))
        .ok()
        .filter(|m| m.is_file())
        .and_then(|_| std::fs::read(data_dir.join("tablespace_map")).ok())
        .unwrap_or_default();
    let mapped = String::from_utf8_lossy(&map)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect::<Vec<_>>();
    for oid in links.iter().map(|l| &l.oid).chain(&mapped) {
        if !tablespaces.iter().any(|(o, _)| o == oid) {
            return Err(ArchiveError::Corrupt {
                object: crate::archive::manifest::MANIFEST.into(),
                reason: format!(
                    "the data directory uses tablespace {oid}, and the backup holds no archive of it: the backup is incomplete"
                ),
            }
            .into());
        }
    }
    if tablespaces.is_empty() {
        return Ok(());
    }
    let dir = data_dir.join("pg_tblspc");
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        _ => std::fs::create_dir(&dir)
            .map_err(|e| JobError::Config(format!("{}: {e}", dir.display())))?,
    }
    for (oid, path) in tablespaces {
        let link = dir.join(oid);
        std::os::unix::fs::symlink(path, &link)
            .map_err(|e| JobError::Config(format!("{}: {e}", link.display())))?;
    }
    Ok(())
}

/// pg_verifybackup of the backup's major against the backup's own
/// backup_manifest (written to a private directory): every file's size and
/// checksum, and the WAL when the backup holds it.
async fn verify(
    store: &Store,
    backup: &Backup,
    entry: &PhysicalEntry,
    data_dir: &Path,
) -> Result<String, JobError> {
    let Some(object) = &entry.backup_manifest else {
        let why = "not checked by pg_verifybackup: the backup holds no backup_manifest";
        tracing::warn!("{why}");
        return Ok(why.into());
    };
    let major = backup.manifest.server_major().unwrap_or(0);
    let Some(tool) = find_tools("pg_verifybackup")
        .into_iter()
        .find(|f| f.major == major)
    else {
        let why = format!(
            "not checked by pg_verifybackup: PostgreSQL {major}'s is not installed (install postgresql-client-{major}, or point FIREDRILL_PG_BIN at its bin directory)"
        );
        tracing::warn!("{why}");
        return Ok(why);
    };
    let bytes = backup.reader(store, object).await?.read_all().await?;
    let dir = tempfile::Builder::new()
        .prefix("firedrill-verify-")
        .tempdir()
        .map_err(|e| JobError::Internal(format!("a temporary directory: {e}")))?;
    let path = dir.path().join("backup_manifest");
    std::fs::write(&path, &bytes)
        .map_err(|e| JobError::Internal(format!("{}: {e}", path.display())))?;
    let mut cmd = tokio::process::Command::new(&tool.path);
    cmd.env("LC_ALL", "C")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&path);
    if !entry.wal_included {
        cmd.arg("--no-parse-wal");
    }
    cmd.arg(data_dir);
    run_tool(&mut cmd, "pg_verifybackup", |said| {
        format!(
            "the unpacked backup does not match its backup_manifest ({}): {said}; the backup is damaged or tampered with: restore another one",
            object.path
        )
    })
    .await?;
    Ok(format!(
        "pg_verifybackup: ok ({}{})",
        tool.version,
        if entry.wal_included {
            ", WAL included"
        } else {
            ""
        }
    ))
}

/// Runs a client tool (no stdin, killed if dropped); when it fails, the
/// error is `failed` of the first lines it said.
pub(super) async fn run_tool(
    cmd: &mut tokio::process::Command,
    tool: &str,
    failed: impl FnOnce(String) -> String,
) -> Result<(), JobError> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| JobError::tool(tool, format!("cannot run: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said: Vec<&str> = said.lines().take(20).collect();
    Err(JobError::tool(tool, failed(said.join("; "))))
}

/// The settings pg_control records that a hot standby must match or exceed.
#[derive(Debug, Default)]
struct Control {
    settings: Vec<(&'static str, u32)>,
}

/// Read with the server's own pg_controldata; any it cannot tell stay at
/// the defaults (recovery pauses on one too low, which the wait reports).
async fn control_settings(bin: &Path, data_dir: &Path) -> Control {
    const NAMES: [(&str, &str); 5] = [
        ("max_connections setting:", "max_connections"),
        ("max_worker_processes setting:", "max_worker_processes"),
        ("max_wal_senders setting:", "max_wal_senders"),
        ("max_prepared_xacts setting:", "max_prepared_transactions"),
        ("max_locks_per_xact setting:", "max_locks_per_transaction"),
    ];
    let out = tokio::process::Command::new(bin.join("pg_controldata"))
        .env("LC_ALL", "C")
        .arg("-D")
        .arg(data_dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            tracing::warn!(
                "pg_controldata failed, the server's limits stay at their defaults: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return Control::default();
        }
        Err(e) => {
            tracing::warn!(
                "cannot run pg_controldata ({e}), the server's limits stay at their defaults"
            );
            return Control::default();
        }
    };
    let mut settings = Vec::new();
    for line in text.lines() {
        for (label, name) in NAMES {
            if let Some(v) = line.strip_prefix(label) {
                // Bounded as PostgreSQL bounds them: nothing bigger is real.
                if let Ok(v) = v.trim().parse::<u32>() {
                    if (1..=262_143).contains(&v) {
                        settings.push((name, v));
                    }
                }
            }
        }
    }
    Control { settings }
}

struct Settings<'a> {
    backup_id: &'a str,
    run_dir: &'a Path,
    major: u32,
    restore_command: &'a str,
    target: &'a RecoveryTarget,
    control: &'a Control,
}

/// A setting's value as a quoted string: quotes doubled, backslashes
/// doubled (the configuration file reads `\` as an escape), and line
/// breaks refused (a value cannot span lines).
fn quote(name: &str, value: &str) -> Result<String, JobError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(JobError::Config(format!(
            "{name}: a line break in the value (refused): {value:?}"
        )));
    }
    Ok(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

/// Top-level configuration files of the backup, never loaded.
fn set_aside_config(data_dir: &Path) -> Result<Vec<String>, JobError> {
    let fail = |e: std::io::Error| JobError::Config(format!("{}: {e}", data_dir.display()));
    let mut moved = Vec::new();
    for e in std::fs::read_dir(data_dir).map_err(fail)? {
        let name = e.map_err(fail)?.file_name();
        let name = name.to_string_lossy().into_owned();
        if !name.ends_with(".conf") {
            continue;
        }
        let aside = data_dir.join(format!("{name}.from-backup"));
        remove_any(&aside).map_err(fail)?;
        std::fs::rename(data_dir.join(&name), &aside).map_err(fail)?;
        moved.push(name);
    }
    Ok(moved)
}

/// A new file of ours (never through an existing name or a link).
fn write_new(path: &Path, content: &str) -> Result<(), JobError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    remove_any(path).map_err(|e| JobError::Config(format!("{}: {e}", path.display())))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .map_err(|e| JobError::Config(format!("cannot write {}: {e}", path.display())))?;
    // As root, the data directory belongs to postgres (see
    // `LocalCluster::start_restored`): so must what is written into it later.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::fs::MetadataExt;
        if let Some(dir) = path.parent().and_then(|d| std::fs::metadata(d).ok()) {
            std::os::unix::fs::lchown(path, Some(dir.uid()), Some(dir.gid()))
                .map_err(|e| JobError::Config(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// The recovery configuration: only firedrill's settings are loaded.
fn configure(data_dir: &Path, s: &Settings) -> Result<(), JobError> {
    for gone in [
        "postmaster.pid",
        "postmaster.opts",
        "standby.signal",
        "recovery.signal",
    ] {
        remove_any(&data_dir.join(gone))
            .map_err(|e| JobError::Config(format!("{}: {e}", data_dir.display())))?;
    }
    let moved = set_aside_config(data_dir)?;
    if !moved.is_empty() {
        tracing::info!(files = ?moved, "the backup's configuration files are kept as *.from-backup and not loaded");
    }
    let mut conf = format!(
        "# Written by firedrill to recover backup {id}. The backup's own settings are in\n\
         # postgresql.conf.from-backup (and postgresql.auto.conf.from-backup), never loaded.\n\
         listen_addresses = ''\n\
         unix_socket_directories = {socket}\n\
         unix_socket_permissions = 0700\n\
         port = 5432\n\
         hot_standby = on\n\
         archive_mode = off\n\
         shared_preload_libraries = ''\n\
         session_preload_libraries = ''\n\
         local_preload_libraries = ''\n\
         logging_collector = off\n\
         log_destination = 'stderr'\n\
         timezone = 'UTC'\n\
         log_timezone = 'UTC'\n\
         restore_command = {restore}\n\
         recovery_target_timeline = 'latest'\n\
         recovery_target_action = 'promote'\n",
        id = s.backup_id,
        socket = quote("unix_socket_directories", &s.run_dir.to_string_lossy())?,
        restore = quote("restore_command", s.restore_command)?,
    );
    if s.major >= 17 {
        // A login event trigger in the backup would run as whoever connects.
        conf.push_str("event_triggers = off\n");
    }
    for (name, v) in &s.control.settings {
        conf.push_str(&format!("{name} = {v}\n"));
    }
    match s.target {
        RecoveryTarget::Immediate => conf.push_str("recovery_target = 'immediate'\n"),
        RecoveryTarget::Latest => {}
        RecoveryTarget::Time(t) => conf.push_str(&format!(
            "recovery_target_time = {}\n",
            quote("recovery_target_time", t)?
        )),
        RecoveryTarget::Lsn(l) => conf.push_str(&format!("recovery_target_lsn = '{l}'\n")),
        RecoveryTarget::Name(n) => conf.push_str(&format!(
            "recovery_target_name = {}\n",
            quote("recovery_target_name", n)?
        )),
    }
    write_new(&data_dir.join("postgresql.conf"), &conf)?;
    // Only firedrill reaches the socket: its directory is private. A kept
    // copy (promoted, on a new timeline) may be streamed into the archive,
    // which takes a replication connection ("all" does not match those).
    write_new(
        &data_dir.join("pg_hba.conf"),
        "local all all trust\nlocal replication all trust\n",
    )?;
    write_new(&data_dir.join("pg_ident.conf"), "")?;
    write_new(&data_dir.join("recovery.signal"), "")?;
    Ok(())
}

/// After a restore that was not kept running: a configuration the operator
/// can start as it is (a socket in the default directory, peer
/// authentication, no restore_command), to merge with the backup's own.
fn hand_over(data_dir: &Path, id: &str) -> Result<(), JobError> {
    write_new(
        &data_dir.join("postgresql.conf"),
        &format!(
            "# Restored by firedrill from backup {id}, recovered and promoted. The backup's own\n\
             # settings are in postgresql.conf.from-backup (and postgresql.auto.conf.from-backup,\n\
             # pg_hba.conf.from-backup): review and merge them before serving from this directory.\n\
             listen_addresses = ''\n\
             archive_mode = off\n"
        ),
    )?;
    write_new(&data_dir.join("pg_hba.conf"), "local all all peer\n")?;
    remove_any(&data_dir.join("recovery.signal"))
        .map_err(|e| JobError::Config(format!("{}: {e}", data_dir.display())))
}

struct Reached {
    lsn: Lsn,
    time: Option<String>,
    timeline: u32,
}

/// Waits until the server has left recovery (reached its target and been
/// promoted), however long replay takes; fails when the server exits, or
/// when recovery pauses, with the end of its log.
async fn wait_promoted(
    cluster: &mut LocalCluster,
    superuser: &str,
    major: u32,
) -> Result<Reached, JobError> {
    let mut db = "postgres";
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        if let Some(how) = cluster.exited() {
            return Err(server_failed(
                cluster,
                &format!("the restored server stopped ({how})"),
            ));
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = None;
            match connect(cluster, superuser, db, major).await {
                Ok(c) => client = Some(c),
                Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "3D000") => {
                    db = "template1";
                }
                Err(_) => {}
            }
        }
        if let Some(c) = &client {
            if let Ok(row) = c
                .query_one(
                    "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_is_in_recovery() AND pg_catalog.pg_is_wal_replay_paused()",
                    &[],
                )
                .await
            {
                let (recovering, paused): (bool, bool) = (row.get(0), row.get(1));
                if !recovering {
                    return reached(c).await;
                }
                if paused {
                    return Err(server_failed(cluster, "recovery paused before its target"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn connect(
    cluster: &LocalCluster,
    user: &str,
    db: &str,
    major: u32,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    // Settings the backup's catalog may give a role or database that would
    // load code into our session; a client's own settings win over theirs.
    let mut options = "-c session_preload_libraries= -c local_preload_libraries=".to_string();
    if major >= 17 {
        options.push_str(" -c event_triggers=off");
    }
    cfg.host_path(cluster.dir())
        .port(cluster.port())
        .user(user)
        .dbname(db)
        .options(&options)
        .connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn reached(c: &tokio_postgres::Client) -> Result<Reached, JobError> {
    let row = c
        .query_one(
            "SELECT pg_catalog.pg_last_wal_replay_lsn()::text,
                    pg_catalog.pg_last_xact_replay_timestamp()::text,
                    pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn())",
            &[],
        )
        .await
        .map_err(|e| JobError::sql("postgres", "read where recovery stopped", e))?;
    let lsn: Option<String> = row.get(0);
    let time: Option<String> = row.get(1);
    let walfile: String = row.get(2);
    let lsn = lsn
        .as_deref()
        .unwrap_or("0/0")
        .parse::<Lsn>()
        .map_err(JobError::Internal)?;
    let timeline = walfile
        .get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| JobError::Internal(format!("WAL file name {walfile:?}")))?;
    Ok(Reached {
        lsn,
        time,
        timeline,
    })
}

/// The server's failure, its log's last lines, and for the failures an
/// operator can fix, the fix.
fn server_failed(cluster: &LocalCluster, what: &str) -> JobError {
    // Our own attempts to connect while it starts are noise here.
    let tail = cluster.log_tail(LOG_LINES * 20);
    let lines: Vec<&str> = tail
        .lines()
        .filter(|l| {
            !l.contains("the database system is starting up")
                && !l.contains("the database system is not yet accepting connections")
                && !l.contains("consistent recovery state has not been yet reached")
        })
        .collect();
    let tail = lines[lines.len().saturating_sub(LOG_LINES)..].join("\n");
    let hint = if tail.contains("before configured recovery target was reached") {
        "the WAL available ends before the target: choose an earlier target (or the latest), or check that the source's WAL archive reaches it"
    } else if tail.contains("before consistent recovery point") {
        "the target lies before the end of this base backup: restore an older base backup"
    } else if tail.contains("insufficient parameter settings")
        || tail.contains("is a lower setting than on the primary")
    {
        "the source raised a setting during the WAL replayed (max_connections and the like) above what pg_control recorded"
    } else if tail.contains("could not locate required checkpoint record")
        || tail.contains("could not find redo location")
    {
        "the WAL the backup starts with is missing: the backup's WAL or the archive's is incomplete"
    } else if tail.contains("invalid value for parameter") {
        "PostgreSQL refused a setting firedrill wrote from the request: check the target's form (a time as PostgreSQL reads it, e.g. 2026-12-02 10:00:00+00; an LSN as 0/16B3748)"
    } else if tail.contains("Permission denied") && unsafe { libc::geteuid() } == 0 {
        "run as root, the server runs as the postgres user, which must be able to reach the data directory: every directory above it must be searchable by postgres (e.g. not inside a 0700 directory of root's), or restore elsewhere"
    } else {
        "see its log"
    };
    JobError::tool("postgres", format!("{what}: {hint}; its log ends:\n{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_and_line_breaks_refused() {
        assert_eq!(quote("x", "it's").unwrap(), "'it''s'");
        assert_eq!(quote("x", r"a\b").unwrap(), r"'a\\b'");
        assert!(quote("x", "a\nrestore_command = 'rm -rf /'").is_err());
        assert_eq!(
            tablespaces_dir(Path::new("/srv/restore/data")),
            PathBuf::from("/srv/restore/data.tablespaces")
        );
    }
}

#[cfg(test)]
mod end_to_end {
    use super::*;
    use crate::archive::manifest::{Compression, PgVersions, TarArchive, Timings};
    use crate::archive::{ObjectRef, ObjectWriter};

    const ROWS: i64 = 5000;

    /// Stores `bytes` as one object of the backup, in pieces.
    async fn put(store: &Store, dir: &str, rel: &str, bytes: &[u8]) -> ObjectRef {
        let mut w = ObjectWriter::create(store, &format!("{dir}{rel}"), 3)
            .await
            .unwrap();
        for piece in bytes.chunks(100_000) {
            w.write(piece).await.unwrap();
        }
        w.finish(rel).await.unwrap()
    }

    struct Source {
        parent: tempfile::TempDir,
        cluster: LocalCluster,
        major: u32,
        client: tokio_postgres::Client,
    }

    async fn source() -> Source {
        let parent = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        // As root, the servers run as postgres, which must reach what is below.
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = parent.path().to_path_buf();
        let cluster = tokio::task::spawn_blocking(move || {
            // Kept: the PITR test copies the WAL after the backup from pg_wal.
            LocalCluster::start_tcp(&dir, &["wal_level=replica", "wal_keep_size=1GB"]).unwrap()
        })
        .await
        .unwrap();
        let client = cluster.url("postgres").connect().await.unwrap();
        let num: String = client
            .query_one("SHOW server_version_num", &[])
            .await
            .unwrap()
            .get(0);
        let major = crate::servers::pg::major_of_num(num.parse().unwrap());
        client
            .batch_execute(&format!(
                "CREATE TABLE t (id int PRIMARY KEY, v text);
                 INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;"
            ))
            .await
            .unwrap();
        Source {
            parent,
            cluster,
            major,
            client,
        }
    }

    /// `pg_basebackup -Ft -X fetch` of the source, stored as a physical
    /// backup (base.tar cut into two parts at an odd offset).
    async fn store_base_backup(src: &Source, store: &Store) -> Backup {
        let bb = src.parent.path().join("bb");
        let tool = find_tools("pg_basebackup")
            .into_iter()
            .find(|f| f.major == src.major)
            .expect("pg_basebackup of the source's major");
        let out = std::process::Command::new(&tool.path)
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(src.cluster.port().to_string())
            .arg("-D")
            .arg(&bb)
            .args([
                "-Ft",
                "-X",
                "fetch",
                "--manifest-checksums=SHA256",
                "-c",
                "fast",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tar = std::fs::read(bb.join("base.tar")).unwrap();
        let backup_manifest = std::fs::read(bb.join("backup_manifest")).unwrap();
        let now = std::time::SystemTime::now();
        let id = crate::archive::manifest::new_backup_id(now);
        let source = "physical-test";
        let dir = crate::archive::backup_dir(source, &id);
        let cut = 1_000_003.min(tar.len() / 2);
        let parts = vec![
            put(store, &dir, "base/00000.tar.zst", &tar[..cut]).await,
            put(store, &dir, "base/00001.tar.zst", &tar[cut..]).await,
        ];
        let bm = put(store, &dir, "backup_manifest.zst", &backup_manifest).await;
        let mut archives = vec![TarArchive {
            name: "base".into(),
            location: None,
            parts,
            raw_bytes: tar.len() as u64,
        }];
        // pg_basebackup -Ft writes each tablespace as <oid>.tar.
        for e in std::fs::read_dir(&bb).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let Some(oid) = name
                .strip_suffix(".tar")
                .filter(|o| o.parse::<u32>().is_ok())
            else {
                continue;
            };
            let ts = std::fs::read(bb.join(&name)).unwrap();
            archives.push(TarArchive {
                name: oid.into(),
                location: Some(format!("/source/{oid}")),
                parts: vec![put(store, &dir, &format!("{oid}/00000.tar.zst"), &ts).await],
                raw_bytes: ts.len() as u64,
            });
        }
        let m = Manifest {
            format: crate::archive::manifest::FORMAT.into(),
            id: id.clone(),
            source: source.into(),
            kind: "physical".into(),
            server_version: format!("{}.0", src.major),
            tool: tool.version.clone(),
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            globals: None,
            databases: vec![],
            timings: Timings {
                started: 0,
                finished: 0,
                seconds: 0.0,
            },
            plugins: vec![],
            fencing_token: None,
            redis: None,
            encryption: None,
            postgres: Some(PgVersions {
                server_major: src.major,
                pg_dump: String::new(),
            }),
            physical: Some(PhysicalEntry {
                system_id: "0".into(),
                timeline: 1,
                start_lsn: Lsn(0),
                end_lsn: Lsn(0),
                end_timeline: 1,
                segment_size: 16 << 20,
                superuser: "postgres".into(),
                wal_included: true,
                archives,
                backup_manifest: Some(bm),
                parent: None,
                chain: vec![],
            }),
            signature: None,
        };
        crate::archive::put_manifest(store, &m).await.unwrap();
        crate::archive::open_backup(store, source, &id)
            .await
            .unwrap()
    }

    fn options(data_dir: PathBuf, target: RecoveryTarget) -> PhysicalRestoreOptions {
        PhysicalRestoreOptions {
            data_dir,
            force: false,
            target,
            restore_command: None,
            env: vec![],
            progress: Arc::new(Progress::default()),
            keep_running: true,
        }
    }

    async fn count(c: &LocalCluster) -> i64 {
        let client = c.url_as("postgres", "postgres").connect().await.unwrap();
        client
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_base_backup_restores_to_its_end() {
        let src = source().await;
        let store_dir = src.parent.path().join("store");
        let store = Store::open(
            &format!("file://{}", store_dir.display()),
            &Default::default(),
        )
        .unwrap();
        // Settings of the backup that would run a command or load a
        // library in the restored server, were they loaded.
        let marker = src.parent.path().join("pwned");
        src.client
            .batch_execute(&format!(
                "ALTER SYSTEM SET restore_command = 'touch {} %f'",
                marker.display()
            ))
            .await
            .unwrap();
        src.client
            .batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'no_such_library'")
            .await
            .unwrap();
        let backup = store_base_backup(&src, &store).await;
        // After the backup: not in it.
        src.client
            .batch_execute("INSERT INTO t VALUES (-1, 'later')")
            .await
            .unwrap();

        let data = src.parent.path().join("restored/data");
        let opts = options(data.clone(), RecoveryTarget::Immediate);
        let (summary, cluster) = run(&store, &backup, &opts).await.unwrap();
        let cluster = cluster.expect("kept running");
        assert_eq!(count(&cluster).await, ROWS);
        assert!(summary.reached_lsn > Lsn(0), "{summary:?}");
        assert_eq!(summary.timeline, 2, "promoted onto a new timeline");
        assert!(summary.bytes_unpacked > 0);
        assert!(
            summary.verified.starts_with("pg_verifybackup: ok"),
            "{}",
            summary.verified
        );
        // The backup's configuration is set aside, ours is loaded.
        assert!(data.join("postgresql.conf.from-backup").exists());
        assert!(
            std::fs::read_to_string(data.join("postgresql.auto.conf.from-backup"))
                .unwrap()
                .contains("no_such_library")
        );
        assert!(!marker.exists(), "the backup's restore_command ran");
        assert_eq!(
            std::fs::read_to_string(data.join("pg_hba.conf")).unwrap(),
            "local all all trust\nlocal replication all trust\n"
        );
        let client = cluster
            .url_as("postgres", "postgres")
            .connect()
            .await
            .unwrap();
        let listen: String = client
            .query_one("SHOW listen_addresses", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(listen, "");

        // A second restore into the same directory needs --force.
        drop(client);
        drop(cluster);
        let e = run(
            &store,
            &backup,
            &options(data.clone(), RecoveryTarget::Latest),
        )
        .await
        .err()
        .expect("refused");
        assert!(e.to_string().contains("--force"), "{e}");
        let mut again = options(data.clone(), RecoveryTarget::Latest);
        again.force = true;
        again.keep_running = false;
        let (summary, cluster) = run(&store, &backup, &again).await.unwrap();
        assert!(cluster.is_none());
        assert_eq!(summary.timeline, 2);
        assert!(!data.join("postmaster.pid").exists(), "stopped cleanly");
        assert_eq!(
            std::fs::read_to_string(data.join("pg_hba.conf")).unwrap(),
            "local all all peer\n"
        );
        use std::os::unix::fs::MetadataExt;
        let owner = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        assert_eq!(owner(&data.join("postgresql.conf")), owner(&data));
        assert_eq!(owner(&data.join("global/pg_control")), owner(&data));
        // Without a WAL archive, only the two ends of the backup are reachable.
        let mut at = options(
            src.parent.path().join("other"),
            RecoveryTarget::Name("x".into()),
        );
        at.keep_running = false;
        let e = run(&store, &backup, &at).await.err().expect("refused");
        assert!(e.to_string().contains("needs the WAL archive"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_base_backup_and_archived_wal_restore_to_a_moment() {
        let src = source().await;
        let store_dir = src.parent.path().join("store");
        let store = Store::open(
            &format!("file://{}", store_dir.display()),
            &Default::default(),
        )
        .unwrap();
        let backup = store_base_backup(&src, &store).await;
        src.client
            .batch_execute("INSERT INTO t SELECT g, 'before' FROM generate_series(-100, -1) g")
            .await
            .unwrap();
        // Taken after the first batch committed and before the second did.
        let moment: String = src
            .client
            .query_one("SELECT clock_timestamp()::text", &[])
            .await
            .unwrap()
            .get(0);
        src.client
            .batch_execute("INSERT INTO t SELECT g, 'after' FROM generate_series(-200, -101) g")
            .await
            .unwrap();
        let finished: String = src
            .client
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .unwrap()
            .get(0);
        // The WAL archive: every finished segment of the source (the switch
        // finished the one holding the second batch).
        let archive = src.parent.path().join("archive");
        std::fs::create_dir(&archive).unwrap();
        let pg_wal = src.cluster.dir().join("data/pg_wal");
        let mut copied = 0;
        for e in std::fs::read_dir(&pg_wal).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.len() == 24 && name <= finished {
                std::fs::copy(pg_wal.join(&name), archive.join(&name)).unwrap();
                // Readable by the server's user (postgres, when run as root).
                std::fs::set_permissions(
                    archive.join(&name),
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                )
                .unwrap();
                copied += 1;
            }
        }
        assert!(copied > 0);

        let data = src.parent.path().join("pitr/data");
        let mut opts = options(data.clone(), RecoveryTarget::Time(moment.clone()));
        opts.restore_command = Some(format!("cp '{}/%f' '%p'", archive.display()));
        let (summary, cluster) = run(&store, &backup, &opts).await.unwrap();
        let cluster = cluster.expect("kept running");
        let client = cluster
            .url_as("postgres", "postgres")
            .connect()
            .await
            .unwrap();
        let (before, after): (i64, i64) = {
            let r = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE v = 'before'), count(*) FILTER (WHERE v = 'after') FROM t",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((before, after), (100, 0), "{summary:?}");
        assert_eq!(count(&cluster).await, ROWS + 100);
        assert!(summary.reached_time.is_some(), "{summary:?}");
        assert_eq!(summary.timeline, 2);

        // A moment past the end of the archive is never reached: said so.
        let mut late = options(
            src.parent.path().join("late/data"),
            RecoveryTarget::Time("2999-01-01 00:00:00+00".into()),
        );
        late.restore_command = opts.restore_command.clone();
        let e = run(&store, &backup, &late).await.err().expect("refused");
        assert!(e.to_string().contains("ends before the target"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_tablespace_is_restored_next_to_the_data_directory() {
        use std::os::unix::fs::MetadataExt;
        let src = source().await;
        let location = src.parent.path().join("ts");
        std::fs::create_dir(&location).unwrap();
        let server = std::fs::metadata(src.cluster.dir().join("data")).unwrap();
        std::os::unix::fs::chown(&location, Some(server.uid()), Some(server.gid())).unwrap();
        // One statement per call: CREATE TABLESPACE refuses a transaction block.
        src.client
            .batch_execute(&format!(
                "CREATE TABLESPACE ts LOCATION '{}'",
                location.display()
            ))
            .await
            .unwrap();
        src.client
            .batch_execute(
                "CREATE TABLE tt (x int) TABLESPACE ts;
                 INSERT INTO tt SELECT generate_series(1, 10);",
            )
            .await
            .unwrap();
        let store_dir = src.parent.path().join("store");
        let store = Store::open(
            &format!("file://{}", store_dir.display()),
            &Default::default(),
        )
        .unwrap();
        let backup = store_base_backup(&src, &store).await;
        let archives = &backup.manifest.physical.as_ref().unwrap().archives;
        assert_eq!(archives.len(), 2, "a tablespace archive");
        let oid = archives[1].name.clone();

        let data = src.parent.path().join("restored/data");
        let opts = options(data.clone(), RecoveryTarget::Immediate);
        let (summary, cluster) = run(&store, &backup, &opts).await.unwrap();
        let cluster = cluster.expect("kept running");
        let unpacked = src
            .parent
            .path()
            .join("restored/data.tablespaces")
            .join(&oid);
        assert_eq!(summary.tablespaces, vec![(oid.clone(), unpacked.clone())]);
        assert_eq!(
            std::fs::read_link(data.join("pg_tblspc").join(&oid)).unwrap(),
            unpacked
        );
        assert!(!data.join("tablespace_map").exists());
        let client = cluster
            .url_as("postgres", "postgres")
            .connect()
            .await
            .unwrap();
        let n: i64 = client
            .query_one("SELECT count(*) FROM tt", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 10);
        let at: String = client
            .query_one(
                "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(Path::new(&at), unpacked, "not the source's directory");
    }
}
