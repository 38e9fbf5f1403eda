//! The archive: how a backup is laid out in the store, written and read back.
//!
//! ```text
//! <source>/<backup-id>/
//!   manifest.json                          written LAST: its presence is the commit
//!   globals.sql.zst                        roles and tablespaces (optional)
//!   <database>/schema/pre-data.sql.zst
//!   <database>/schema/post-data.sql.zst
//!   <database>/data/<schema>.<table>/<nnnnn>.copy.zst   COPY text, chunked
//!   drills/<timestamp>.json                one report per drill (written after the manifest)
//! ```
//!
//! Invariants: nothing is listed as a backup unless its manifest exists; every
//! object read back is checked against the manifest's size and sha256, and a
//! mismatch names the object; store URLs shown to people carry no credentials.

pub mod chunk;
pub mod manifest;
pub mod store;

pub use chunk::{ObjectReader, ObjectWriter};
pub use manifest::{Manifest, ObjectRef};
pub use store::{S3Options, Store};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("store: {0}")]
    StoreUrl(String),
    #[error("store {store}: {object}: {message}")]
    Store {
        store: String,
        object: String,
        message: String,
    },
    #[error("{object} is missing from the store")]
    Missing { object: String },
    #[error("{object} is corrupt: {reason}")]
    Corrupt { object: String, reason: String },
    #[error("{object}: not a firedrill manifest: {reason}")]
    BadManifest { object: String, reason: String },
    #[error("no backup {0} in the store (see `firedrill list`)")]
    NoSuchBackup(String),
    #[error("the store holds no complete backup{0}")]
    NoBackups(String),
    #[error("compression: {0}")]
    Compression(String),
}

/// The directory of a backup, relative to the store's root.
pub fn backup_dir(source: &str, id: &str) -> String {
    format!("{source}/{id}/")
}

/// Reads and checks a backup's manifest.
pub async fn read_manifest(
    store: &Store,
    source: &str,
    id: &str,
) -> Result<Manifest, ArchiveError> {
    let path = format!("{}{}", backup_dir(source, id), manifest::MANIFEST);
    let bytes = store.get(&path).await?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ArchiveError::BadManifest {
        object: path.clone(),
        reason: e.to_string(),
    })?;
    if m.format != manifest::FORMAT {
        return Err(ArchiveError::BadManifest {
            object: path,
            reason: format!("format {:?}, expected {:?}", m.format, manifest::FORMAT),
        });
    }
    if m.id != id || m.source != source {
        return Err(ArchiveError::BadManifest {
            object: path,
            reason: format!(
                "it describes {}/{}, not the backup it is stored with",
                m.source, m.id
            ),
        });
    }
    Ok(m)
}

/// One backup as `firedrill list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub id: String,
    pub source: String,
    /// Seconds since the epoch, from the id.
    pub created: i64,
    /// The manifest exists.
    pub complete: bool,
    pub size: u64,
    pub databases: Vec<String>,
    pub tables: usize,
    pub seconds: Option<f64>,
    /// The newest drill of this backup, if any.
    pub last_drill: Option<DrillSeen>,
}

/// A drill's outcome as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DrillSeen {
    pub report: String,
    pub passed: bool,
}

/// The newest drill report of a backup, as stored.
pub async fn last_drill_report(store: &Store, source: &str, id: &str) -> Option<Vec<u8>> {
    let dir = format!("{}drills/", backup_dir(source, id));
    let mut reports: Vec<String> = store
        .list(&dir)
        .await
        .ok()?
        .into_iter()
        .filter(|n| n.ends_with(".json"))
        .collect();
    reports.sort();
    store.get(&format!("{dir}{}", reports.pop()?)).await.ok()
}

async fn last_drill(store: &Store, source: &str, id: &str) -> Option<DrillSeen> {
    #[derive(serde::Deserialize)]
    struct Outcome {
        passed: bool,
        #[serde(default)]
        report: String,
    }
    let bytes = last_drill_report(store, source, id).await?;
    let o: Outcome = serde_json::from_slice(&bytes).ok()?;
    Some(DrillSeen {
        report: o.report,
        passed: o.passed,
    })
}

/// Every backup in the store, oldest first; incomplete ones (no manifest:
/// in progress or abandoned) are listed as such, never as complete.
pub async fn list_backups(store: &Store) -> Result<Vec<Listing>, ArchiveError> {
    let mut out = Vec::new();
    for source in store.list("").await? {
        let Some(source) = source.strip_suffix('/') else {
            continue;
        };
        for id in store.list(&format!("{source}/")).await? {
            let Some(id) = id.strip_suffix('/') else {
                continue;
            };
            if !manifest::is_backup_id(id) {
                continue;
            }
            let created = manifest::id_time(id).unwrap_or(0);
            let listing = match read_manifest(store, source, id).await {
                Ok(m) => Listing {
                    id: id.into(),
                    source: source.into(),
                    created,
                    complete: true,
                    size: m.size(),
                    databases: m.databases.iter().map(|d| d.name.clone()).collect(),
                    tables: m.table_count(),
                    seconds: Some(m.timings.seconds),
                    last_drill: last_drill(store, source, id).await,
                },
                Err(ArchiveError::Missing { .. }) => {
                    let objects = store.list_recursive(&backup_dir(source, id)).await?;
                    Listing {
                        id: id.into(),
                        source: source.into(),
                        created,
                        complete: false,
                        size: objects.iter().map(|(_, s)| s).sum(),
                        databases: vec![],
                        tables: 0,
                        seconds: None,
                        last_drill: None,
                    }
                }
                Err(e) => return Err(e),
            };
            out.push(listing);
        }
    }
    out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(out)
}

/// Finds a complete backup by id, or the newest complete one (of `source`, if given).
pub async fn find_backup(
    store: &Store,
    id: Option<&str>,
    source: Option<&str>,
) -> Result<(String, String), ArchiveError> {
    if let Some(id) = id {
        if !manifest::is_backup_id(id) {
            return Err(ArchiveError::NoSuchBackup(format!(
                "{id:?} (ids look like 20261122T210000Z-k3x9qa)"
            )));
        }
    }
    let all = list_backups(store).await?;
    let found = all
        .iter()
        .rev()
        .filter(|l| l.complete)
        .filter(|l| source.is_none_or(|s| l.source == s))
        .find(|l| id.is_none_or(|i| l.id == i));
    match (found, id) {
        (Some(l), _) => Ok((l.source.clone(), l.id.clone())),
        (None, Some(id)) => Err(ArchiveError::NoSuchBackup(id.to_string())),
        (None, None) => Err(ArchiveError::NoBackups(
            source
                .map(|s| format!(" of source {s}"))
                .unwrap_or_default(),
        )),
    }
}
