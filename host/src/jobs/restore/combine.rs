//! Restoring an incremental physical backup (PostgreSQL 17+): its chain,
//! the full backup first, opened and checked link by link; each member
//! unpacked through the strict extractor into a private directory next to
//! the data directory and verified against its own `backup_manifest`
//! (pg_verifybackup); then pg_combinebackup of the backup's major writes
//! the data directory from them, and the members' directories go.
//!
//! Invariants: nothing is unpacked before every member's manifest checked
//! out (signature, cluster, links) and pg_combinebackup was found; a member
//! that is missing, foreign or damaged is named; the members' directories
//! are removed on every exit path.

use super::physical::{prepare_dir, run_tool, unpack, Unpacked};
use crate::archive::manifest::{is_backup_id, PhysicalEntry};
use crate::archive::{open_backup, ArchiveError, Backup, Store};
use crate::jobs::JobError;
use crate::servers::pg::{find_tools, FoundTool};
use crate::telemetry::progress::Progress;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One backup of a chain and what it added to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainMember {
    pub id: String,
    /// Bytes stored (compressed): what this member cost.
    pub stored_bytes: u64,
    /// Bytes of its tar streams: a full backup's whole cluster, an
    /// incremental one's changed blocks (and every small file).
    pub raw_bytes: u64,
}

impl ChainMember {
    fn of(b: &Backup) -> ChainMember {
        ChainMember {
            id: b.manifest.id.clone(),
            stored_bytes: b.manifest.size(),
            raw_bytes: b.manifest.raw_bytes(),
        }
    }
}

/// The backups an incremental `backup` needs, the full one first and
/// `backup`'s parent last, each opened (its signature checked) and checked
/// to be the link its successor names.
pub async fn open_chain(store: &Store, backup: &Backup) -> Result<Vec<Backup>, JobError> {
    let m = &backup.manifest;
    let entry = entry_of(backup)?;
    let broken = |reason: String| -> JobError {
        ArchiveError::Corrupt {
            object: format!("{}/{}/manifest.json", m.source, m.id),
            reason,
        }
        .into()
    };
    if entry.chain.last() != entry.parent.as_ref() || entry.chain.is_empty() {
        return Err(broken(format!(
            "its parent {:?} is not the last of its chain {:?}",
            entry.parent, entry.chain
        )));
    }
    // Ids from a manifest become store paths: only the shape of an id, each
    // once, never the backup itself. (Their order is the LSNs', below: ids
    // of one second sort by their random tail, and clocks differ.)
    let mut seen = std::collections::HashSet::new();
    for id in &entry.chain {
        if !is_backup_id(id) || !seen.insert(id.as_str()) || *id == m.id {
            return Err(broken(format!(
                "its chain names {id:?}, which is not another backup's id (ids look like 20261122T210000Z-k3x9qa, each once)"
            )));
        }
    }
    let mut members: Vec<Backup> = Vec::with_capacity(entry.chain.len());
    for (i, id) in entry.chain.iter().enumerate() {
        let member = open_backup(store, &m.source, id).await.map_err(|e| {
            let role = if i == 0 { "the full backup" } else { "the incremental backup" };
            let what = match &e {
                ArchiveError::Missing { .. } | ArchiveError::NoSuchBackup(_) => {
                    "is missing from the store".to_string()
                }
                other => format!("cannot be opened: {other}"),
            };
            JobError::Config(format!(
                "backup {} is incremental and needs {role} {id} (its chain: {}), which {what}: the chain cannot be restored; restore a backup of another chain",
                m.id,
                entry.chain.join(" <- "),
            ))
        })?;
        let p = entry_of(&member)?;
        let problem = if p.system_id != entry.system_id {
            Some(format!("is of another cluster (system {})", p.system_id))
        } else if member.manifest.server_major() != m.server_major() {
            Some(format!(
                "is of PostgreSQL {:?}, not {:?}",
                member.manifest.server_major(),
                m.server_major()
            ))
        } else if p.chain[..] != entry.chain[..i] {
            Some(format!(
                "records the chain {:?}, not {:?}",
                p.chain,
                &entry.chain[..i]
            ))
        } else if i > 0 && p.parent.as_deref() != Some(entry.chain[i - 1].as_str()) {
            Some(format!("records the parent {:?}", p.parent))
        } else if members
            .last()
            .and_then(|prev| prev.manifest.physical.as_ref())
            .is_some_and(|prev| prev.start_lsn >= p.start_lsn)
        {
            Some("starts no later than its parent".into())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(broken(format!(
                "chain member {id} {problem}: the chain does not hold together"
            )));
        }
        members.push(member);
    }
    if members
        .last()
        .and_then(|prev| prev.manifest.physical.as_ref())
        .is_some_and(|prev| prev.start_lsn >= entry.start_lsn)
    {
        return Err(broken(
            "it starts no later than its parent: the chain does not hold together".into(),
        ));
    }
    Ok(members)
}

fn entry_of(b: &Backup) -> Result<&PhysicalEntry, JobError> {
    b.manifest.physical.as_ref().ok_or_else(|| {
        JobError::Config(format!(
            "backup {} is not a physical backup: it cannot be part of a chain",
            b.manifest.id
        ))
    })
}

/// pg_combinebackup of exactly `major` (its backups' format is its own).
pub fn combine_tool(id: &str, major: u32) -> Result<FoundTool, JobError> {
    find_tools("pg_combinebackup")
        .into_iter()
        .find(|f| f.major == major)
        .ok_or_else(|| {
            JobError::Config(format!(
                "backup {id} is an incremental backup of PostgreSQL {major}: restoring it needs pg_combinebackup of PostgreSQL {major}, which is not installed: install the PostgreSQL {major} client tools (e.g. postgresql-client-{major}) or point FIREDRILL_PG_BIN at their bin directory"
            ))
        })
}

/// A new private directory next to the data directory (likely the same
/// filesystem: pg_combinebackup can then link or copy in the kernel),
/// never one that existed before, removed when dropped however the restore
/// ends.
fn chain_dir(data_dir: &Path) -> Result<tempfile::TempDir, JobError> {
    let parent = data_dir.parent().unwrap_or(Path::new("/"));
    tempfile::Builder::new()
        .prefix(".firedrill-chain-")
        .tempdir_in(parent)
        .map_err(|e| {
            JobError::Config(format!(
                "cannot make a directory for the chain's members in {}: {e}",
                parent.display()
            ))
        })
}

/// How pg_combinebackup writes the data directory: linking (18+) or an
/// in-kernel copy spares a second pass of the whole cluster through user
/// space, but both need the members on the data directory's filesystem.
fn copy_mode(major: u32, members: &Path, outputs: &[&Path]) -> &'static str {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let same = dev(members).is_some() && outputs.iter().all(|o| dev(o) == dev(members));
    match (same, major >= 18) {
        (true, true) => "--link",
        (true, false) => "--copy-file-range",
        (false, _) => "--copy",
    }
}

/// Unpacks and verifies every member of `backup`'s chain (and `backup`),
/// then writes `data_dir` (and its tablespaces under `tablespaces_dir`)
/// with pg_combinebackup. `chain` is [`open_chain`]'s.
pub async fn unpack_chain(
    store: &Store,
    chain: &[Backup],
    backup: &Backup,
    data_dir: &Path,
    tablespaces_dir: &Path,
    progress: &Progress,
) -> Result<(Unpacked, Vec<ChainMember>), JobError> {
    let major = backup.manifest.server_major().unwrap_or(0);
    let tool = combine_tool(&backup.manifest.id, major)?;
    let scratch = chain_dir(data_dir)?;
    let work = scratch.path();

    let mut dirs = Vec::new();
    let mut verified = Vec::new();
    let mut bytes = 0;
    let mut files = 0;
    let mut last_tablespaces = Vec::new();
    let members: Vec<&Backup> = chain.iter().chain(std::iter::once(backup)).collect();
    for (i, member) in members.iter().enumerate() {
        let entry = entry_of(member)?;
        let id = &member.manifest.id;
        progress.phase(&format!(
            "unpacking chain member {} of {} ({id})",
            i + 1,
            members.len()
        ));
        // By position, never by a name the manifest gave.
        let dir = work.join(format!("{i:03}"));
        let ts = work.join(format!("{i:03}.tablespaces"));
        prepare_dir(&dir, false)?;
        let got = unpack(store, member, entry, &dir, &ts, progress)
            .await
            .map_err(|e| named(id, e))?;
        // pg_combinebackup reads each member's own manifest (its checksums
        // are reused, its WAL range is checked against the next member's).
        if let Some(object) = &entry.backup_manifest {
            let m = member.reader(store, object).await?.read_all().await?;
            let path = dir.join("backup_manifest");
            std::fs::write(&path, m)
                .map_err(|e| JobError::Config(format!("{}: {e}", path.display())))?;
        } else {
            return Err(JobError::Config(format!(
                "chain member {id} holds no backup_manifest: pg_combinebackup cannot combine it"
            )));
        }
        tracing::info!(member = %id, files = got.files, bytes = got.bytes, verified = %got.verified, "chain member unpacked");
        bytes += got.bytes;
        files += got.files;
        verified.push(got.verified);
        last_tablespaces = got.tablespaces;
        dirs.push(dir);
    }

    progress.phase("combining the chain (pg_combinebackup)");
    let mut tablespaces = Vec::new();
    if !last_tablespaces.is_empty() && !tablespaces_dir.exists() {
        prepare_dir(tablespaces_dir, false)?;
    }
    let mut outputs = vec![data_dir];
    if !last_tablespaces.is_empty() {
        outputs.push(tablespaces_dir);
    }
    let mut cmd = tokio::process::Command::new(&tool.path);
    cmd.env("LC_ALL", "C")
        .arg("--no-sync")
        .arg(copy_mode(major, work, &outputs))
        .arg("-o")
        .arg(data_dir);
    for (oid, from) in &last_tablespaces {
        let to = tablespaces_dir.join(oid);
        cmd.arg("-T").arg(mapping(from, &to)?);
        tablespaces.push((oid.clone(), to));
    }
    cmd.args(&dirs);
    let names = members
        .iter()
        .map(|m| m.manifest.id.as_str())
        .collect::<Vec<_>>()
        .join(" <- ");
    run_tool(&mut cmd, "pg_combinebackup", |said| {
        format!("cannot combine the chain {names}: {said}")
    })
    .await?;
    let all_ok = verified
        .iter()
        .all(|v| v.starts_with("pg_verifybackup: ok"));
    let verified = if all_ok {
        format!(
            "pg_verifybackup: ok for each of the {} members of the chain ({}); combined by {}",
            members.len(),
            verified.first().map(String::as_str).unwrap_or_default(),
            tool.version
        )
    } else {
        format!(
            "not every member checked by pg_verifybackup: {}",
            verified.join("; ")
        )
    };
    Ok((
        Unpacked {
            bytes,
            files,
            tablespaces,
            verified,
        },
        members.iter().map(|m| ChainMember::of(m)).collect(),
    ))
}

/// `OLD=NEW` as pg_combinebackup reads it (`=` in a path doubled as `\=`).
fn mapping(from: &Path, to: &Path) -> Result<std::ffi::OsString, JobError> {
    let text = |p: &Path| {
        p.to_str()
            .map(|s| s.replace('=', "\\="))
            .ok_or_else(|| JobError::Config(format!("{} is not UTF-8", p.display())))
    };
    Ok(format!("{}={}", text(from)?, text(to)?).into())
}

/// An unpack failure, said of the member it happened in.
fn named(id: &str, e: JobError) -> JobError {
    match e {
        JobError::Archive(ArchiveError::Corrupt { object, reason }) => ArchiveError::Corrupt {
            object,
            reason: format!("{reason} (chain member {id})"),
        }
        .into(),
        JobError::Server(crate::servers::ServerError::Tool { tool, message }) => {
            JobError::tool(&tool, format!("chain member {id}: {message}"))
        }
        other => other,
    }
}
