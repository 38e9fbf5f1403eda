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
//!   keys/<generation>.age                  encrypted backups: the age header (file key
//!                                          wrapped per recipient); every other object is
//!                                          an age payload under that key
//! ```
//!
//! Invariants: nothing is listed as a backup unless its manifest exists; every
//! object read back is checked against the manifest's size and sha256, and a
//! mismatch names the object; store URLs shown to people carry no credentials;
//! a backup is read (drill, restore, rekey) only through [`open_backup`], which
//! checks the signature and unwraps the key before any data is touched.

pub mod age;
pub mod chunk;
pub mod keys;
pub mod manifest;
pub mod store;

pub use chunk::{ObjectReader, ObjectWriter};
pub use keys::{KeySettings, Keys};
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
    #[error("{object}: {reason}")]
    Signature { object: String, reason: String },
    #[error("{0}")]
    Key(String),
}

/// How the flags and settings that give identities are named in messages.
const IDENTITY_HINT: &str = "--identity FILE, FIREDRILL_AGE_IDENTITY or [store] identity_files";

/// The directory of a backup, relative to the store's root.
pub fn backup_dir(source: &str, id: &str) -> String {
    format!("{source}/{id}/")
}

/// Reads and checks a backup's manifest (its form, not its signature: that
/// is [`open_backup`]'s).
pub async fn read_manifest(
    store: &Store,
    source: &str,
    id: &str,
) -> Result<Manifest, ArchiveError> {
    let path = format!("{}{}", backup_dir(source, id), manifest::MANIFEST);
    let bytes = store.get(&path).await?;
    parse_manifest(&path, &bytes, source, id)
}

/// A manifest's stored bytes, checked for what can be checked without the
/// store: its format, and that it is the manifest of `source`/`id`.
pub fn parse_manifest(
    path: &str,
    bytes: &[u8],
    source: &str,
    id: &str,
) -> Result<Manifest, ArchiveError> {
    let path = path.to_string();
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadManifest {
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

/// A backup opened for reading: its manifest, whose signature checked out
/// (when this store's keys trust any signer), and its data key.
pub struct Backup {
    pub manifest: Manifest,
    key: Option<age::FileKey>,
    /// The signer's key id, when the signature was checked.
    pub signed_by: Option<String>,
}

impl Backup {
    /// A reader of one of this backup's objects, decrypting if need be.
    pub async fn reader(
        &self,
        store: &Store,
        object: &ObjectRef,
    ) -> Result<ObjectReader, ArchiveError> {
        let path = format!(
            "{}{}",
            backup_dir(&self.manifest.source, &self.manifest.id),
            object.path
        );
        ObjectReader::open(store, &path, object, self.key.as_ref()).await
    }
}

/// Reads a backup's manifest, checks its signature and unwraps its data
/// key: everything that can refuse a backup before any data is read.
pub async fn open_backup(store: &Store, source: &str, id: &str) -> Result<Backup, ArchiveError> {
    let (manifest, signed_by) = verified_manifest(store, source, id).await?;
    let key = match &manifest.encryption {
        None => None,
        Some(enc) => Some(unwrap_key(store, &manifest, enc).await?),
    };
    Ok(Backup {
        manifest,
        key,
        signed_by,
    })
}

/// A backup's manifest, with the signer's key id when the store's keys
/// trust any signer (and then only if the signature checks out).
pub async fn verified_manifest(
    store: &Store,
    source: &str,
    id: &str,
) -> Result<(Manifest, Option<String>), ArchiveError> {
    let path = format!("{}{}", backup_dir(source, id), manifest::MANIFEST);
    let bytes = store.get(&path).await?;
    let manifest = parse_manifest(&path, &bytes, source, id)?;
    let signed_by = check_signature(store.keys(), &path, &bytes, &manifest)?;
    Ok((manifest, signed_by))
}

fn check_signature(
    keys: &Keys,
    path: &str,
    stored: &[u8],
    m: &Manifest,
) -> Result<Option<String>, ArchiveError> {
    let refuse = |reason: &str| ArchiveError::Signature {
        object: path.to_string(),
        reason: reason.to_string(),
    };
    if keys.trusted.is_empty() {
        return Ok(None);
    }
    let Some(sig) = &m.signature else {
        return Err(refuse(
            "the manifest is not signed, and this store's keys require signed manifests: \
             it was written without a signing key, or its signature was removed",
        ));
    };
    if sig.algorithm != "ed25519" {
        return Err(refuse(&format!(
            "unknown signature algorithm {:?}",
            sig.algorithm
        )));
    }
    let body = m.unsigned_part(stored).ok_or_else(|| {
        refuse(
            "the manifest was changed after it was signed (the signature is not its last member)",
        )
    })?;
    if !keys.trusted.iter().any(|k| keys::key_id(k) == sig.key) {
        return Err(refuse(&format!(
            "signed by {}, which is not a trusted key (--verify-key, [store] verify_keys)",
            sig.key
        )));
    }
    if !keys.verify(&sig.key, &body, &sig.value) {
        return Err(refuse(
            "the signature does not match: the manifest was modified after it was signed",
        ));
    }
    Ok(Some(sig.key.clone()))
}

/// The backup's file key, unwrapped from its header with the store's identities.
pub async fn unwrap_key(
    store: &Store,
    m: &Manifest,
    enc: &manifest::Encryption,
) -> Result<age::FileKey, ArchiveError> {
    let names = || {
        enc.recipients
            .iter()
            .map(|r| r.fingerprint.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if enc.scheme != manifest::AGE_SCHEME {
        return Err(ArchiveError::Key(format!(
            "backup {} is encrypted with {:?}, which this firedrill does not know",
            m.id, enc.scheme
        )));
    }
    if store.keys().identities.is_empty() {
        return Err(ArchiveError::Key(format!(
            "backup {} is encrypted (recipients {}); reading it needs one of their identities: {IDENTITY_HINT}",
            m.id,
            names()
        )));
    }
    let header = ObjectReader::read_raw(
        store,
        &format!("{}{}", backup_dir(&m.source, &m.id), enc.header.path),
        &enc.header,
    )
    .await?;
    age::unwrap(&header, &store.keys().identities).map_err(|e| match e {
        age::AgeError::NoMatchingIdentity => ArchiveError::Key(format!(
            "backup {} is encrypted for {}; none of the identities given ({IDENTITY_HINT}) is one of them \
             (a recipient removed by rekey can no longer read it)",
            m.id,
            names()
        )),
        e => ArchiveError::Corrupt {
            object: enc.header.path.clone(),
            reason: e.to_string(),
        },
    })
}

/// The encryption of a new backup when the store has recipients: a fresh
/// file key and its header, stored (generation 1) before any data.
pub async fn new_backup_key(
    store: &Store,
    dir: &str,
) -> Result<Option<(manifest::Encryption, age::FileKey)>, ArchiveError> {
    let recipients = &store.keys().recipients;
    if recipients.is_empty() {
        return Ok(None);
    }
    let key = age::FileKey::generate();
    let enc = write_header(store, dir, &key, recipients, 1).await?;
    Ok(Some((enc, key)))
}

/// Stores the header of `generation` wrapping `key` for `recipients`.
pub async fn write_header(
    store: &Store,
    dir: &str,
    key: &age::FileKey,
    recipients: &[age::Recipient],
    generation: u32,
) -> Result<manifest::Encryption, ArchiveError> {
    let header = age::wrap(key, recipients);
    let path = manifest::header_path(generation);
    let object = ObjectRef {
        path: path.clone(),
        size: header.len() as u64,
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&header)),
    };
    store.put(&format!("{dir}{path}"), header).await?;
    Ok(manifest::Encryption {
        scheme: manifest::AGE_SCHEME.into(),
        header: object,
        generation,
        recipients: recipients
            .iter()
            .map(|r| manifest::RecipientEntry {
                fingerprint: r.fingerprint(),
                key: r.to_string(),
            })
            .collect(),
    })
}

/// Writes a manifest, signed when the store has a signing key.
pub async fn put_manifest(store: &Store, m: &Manifest) -> Result<(), ArchiveError> {
    let body = m.to_bytes(|b| store.keys().sign(b));
    store
        .put(
            &format!("{}{}", backup_dir(&m.source, &m.id), manifest::MANIFEST),
            body,
        )
        .await
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
