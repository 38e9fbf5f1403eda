//! `firedrill wal push %p`: the `archive_command` route into the same
//! archive the streamer writes, for operators who prefer it (or whose
//! servers cannot be reached by a replication connection). PostgreSQL
//! runs it on the database host for each completed segment and each
//! timeline history file; exit 0 tells it the file is safely stored.
//!
//! Invariants: a segment is stored only after its first page says which
//! database system and position it holds (never a file of another
//! cluster under this source); a segment already in the archive with other
//! content is never overwritten (PostgreSQL's rule for archive_command: two
//! different files of one name mean two clusters share an archive).

use crate::archive::wal::{self, Segment, SegmentRecord};
use crate::archive::{ArchiveError, Store};
use crate::jobs::JobError;
use std::path::Path;

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    /// The archive already holds exactly this file.
    AlreadyThere,
    /// A backup history file (`<segment>.<offset>.backup`): recovery never
    /// reads one; firedrill's manifests hold what it says.
    NotNeeded,
}

pub async fn push(
    store: &Store,
    source: &str,
    file: &Path,
    level: i32,
) -> Result<Pushed, JobError> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| JobError::Config(format!("{}: not a WAL file name", file.display())))?;
    if is_backup_history(name) {
        return Ok(Pushed::NotNeeded);
    }
    // A server that was promoted archives its old timeline's last segment
    // as `<segment>.partial` (whole size, zeros after the switch).
    let (name, partial) = match name.strip_suffix(".partial") {
        Some(base) => (base, true),
        None => (name, false),
    };
    let data = std::fs::read(file)
        .map_err(|e| JobError::Config(format!("cannot read {}: {e}", file.display())))?;
    let (object, record) = if let Some(tli) = wal::parse_history_name(name) {
        let record = SegmentRecord::history(source, "", tli);
        (wal::history_path(source, tli), record)
    } else {
        let size = wal::check_segment_size(data.len() as u64).map_err(|e| {
            JobError::Config(format!(
                "{}: {} bytes is not a whole WAL segment ({e})",
                file.display(),
                data.len()
            ))
        })?;
        let seg = Segment::parse(name, size).ok_or_else(|| {
            JobError::Config(format!(
                "{}: {name:?} is neither a WAL segment nor a history file name",
                file.display()
            ))
        })?;
        if data.len() < 32 {
            return Err(JobError::Config(format!("{}: too short", file.display())));
        }
        let system_id = u64::from_le_bytes(data[24..32].try_into().expect("8 bytes")).to_string();
        wal::check_segment_header(&data, seg.start(size), &system_id, size)
            .map_err(|e| JobError::Config(format!("{}: {e}", file.display())))?;
        let mut record = SegmentRecord::segment(source, &system_id, &seg, size, seg.end(size));
        record.partial = partial;
        (wal::segment_path(source, &seg, size, partial), record)
    };
    match wal::get(store, &object, data.len() as u64).await {
        Ok((_, stored)) if stored == data => return Ok(Pushed::AlreadyThere),
        Ok(_) => {
            return Err(JobError::Config(format!(
                "{object} is already in the archive with other content: two clusters archive into source {source}? (nothing was overwritten)"
            )))
        }
        Err(ArchiveError::Missing { .. }) => {}
        // Encrypted, and this host has recipients only (as it should): the
        // record names this file with this size, so PostgreSQL archiving it
        // again (after a crash) must not fail forever.
        Err(ArchiveError::Key(_)) => {
            let stored = wal::read_record(store, &object).await?;
            let same = stored.segment == record.segment
                && stored.end.0 - stored.start.0 == record.end.0 - record.start.0
                && stored.system_id == record.system_id;
            if same {
                return Ok(Pushed::AlreadyThere);
            }
            return Err(JobError::Config(format!(
                "{object} is already in the archive for another range or system: two clusters archive into source {source}? (nothing was overwritten)"
            )));
        }
        // An unreadable leftover (an interrupted push: object without its
        // record) is replaced.
        Err(ArchiveError::Corrupt { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    wal::put(store, &object, &data, level, record).await?;
    Ok(Pushed::Stored)
}

/// `000000010000000000000002.00000028.backup`.
fn is_backup_history(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".backup") else {
        return false;
    };
    let Some((seg, offset)) = stem.split_once('.') else {
        return false;
    };
    seg.len() == 24 && offset.len() == 8 && stem.bytes().all(|b| b == b'.' || b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    #[test]
    fn backup_history_files_are_told_apart() {
        assert!(super::is_backup_history(
            "000000010000000000000002.00000028.backup"
        ));
        assert!(!super::is_backup_history("000000010000000000000002"));
        assert!(!super::is_backup_history("x.backup"));
        assert!(!super::is_backup_history("00000002.history"));
    }
}
