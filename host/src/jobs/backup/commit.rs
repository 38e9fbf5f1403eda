//! The end of every backup, Postgres or Redis: the sealing set up at the
//! start (the backup's key, its header stored first) and the commit, the
//! manifest's write.
//!
//! Invariants: the manifest is written last, and only while the lease is
//! still held when there is one: until it exists the backup does not (a
//! failure leaves no manifest, so nothing half-written is ever listed); with
//! recipients configured, every object of the backup is sealed.

use super::BackupSummary;
use crate::archive::manifest::{self, Manifest};
use crate::archive::Store;
use crate::coord::CommitGuard;
use crate::jobs::JobError;
use crate::telemetry::progress::Progress;
use std::time::SystemTime;

/// When the store has recipients: the backup's key, its header stored
/// first, and the store sealing every object under it.
pub(crate) async fn sealing(
    store: &Store,
    dir: &str,
) -> Result<(Option<manifest::Encryption>, Store), JobError> {
    Ok(match crate::archive::new_backup_key(store, dir).await? {
        Some((enc, key)) => (Some(enc), store.sealing(Some(key))),
        None => (None, store.clone()),
    })
}

/// Writes the manifest, the commit: until it exists the backup does not.
/// Only while the lease is still held, when there is one.
pub(crate) async fn commit(
    store: &Store,
    m: &Manifest,
    guard: Option<&CommitGuard>,
    progress: &Progress,
) -> Result<BackupSummary, JobError> {
    progress.phase("committing");
    if let Some(guard) = guard {
        guard.check().await?;
    }
    crate::archive::put_manifest(store, m).await?;
    let summary = BackupSummary {
        id: m.id.clone(),
        source: m.source.clone(),
        store: store.display().to_string(),
        databases: m.databases.iter().map(|d| d.name.clone()).collect(),
        tables: m.table_count(),
        rows: m.rows(),
        keys: m.keys(),
        bytes: m.size(),
        raw_bytes: m.raw_bytes(),
        seconds: m.timings.seconds,
        parent: m.physical.as_ref().and_then(|p| p.parent.clone()),
        full_because: None,
    };
    tracing::info!(backup = %summary.id, bytes = summary.bytes, tables = summary.tables, seconds = summary.seconds, "backup committed");
    Ok(summary)
}

pub(crate) fn to_unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
