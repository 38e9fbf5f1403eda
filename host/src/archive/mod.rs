//! The archive: how a backup is laid out in the store, written and read back.
//!
//! ```text
//! <source>/<backup-id>/
//!   manifest.json                          written LAST: its presence is the commit
//!   globals.sql.zst                        roles and tablespaces (optional)
//!   <database>/schema/pre-data.sql.zst
//!   <database>/schema/post-data.sql.zst
//!   <database>/data/<schema>.<table>/<nnnnn>.copy.zst   COPY text, chunked
//!   <database>/large-objects/<nnnnn>.lo.zst   large objects' bytes, COPY text, chunked
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
//! checks the signature and unwraps the key before any data is touched; with
//! keys trusted, what is listed (and so drilled, pruned, shown) is only what
//! they vouch for, manifests and drill reports alike ([`scan_backups`]).

pub mod age;
pub mod chunk;
pub mod health;
pub mod keys;
pub mod manifest;
pub mod signed;
pub mod store;
pub mod untar;
pub mod wal;

pub use chunk::{ObjectReader, ObjectWriter};
pub use keys::{KeySettings, Keys};
pub use manifest::{Manifest, ObjectRef};
pub use store::{AzureOptions, GcsOptions, S3Options, Store, StoreOptions};

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
    let (path, manifest, signed) = read_signed_manifest(store, source, id).await?;
    let signed_by = signed.map_err(|p| ArchiveError::Signature {
        object: path,
        reason: p.explain("manifest"),
    })?;
    Ok((manifest, signed_by))
}

/// A backup's manifest (its path, its form checked) and what its signature
/// says: the signer when keys trust any, or why it does not count.
async fn read_signed_manifest(
    store: &Store,
    source: &str,
    id: &str,
) -> Result<(String, Manifest, Result<Option<String>, signed::Problem>), ArchiveError> {
    let path = format!("{}{}", backup_dir(source, id), manifest::MANIFEST);
    let bytes = store.get(&path).await?;
    let manifest = parse_manifest(&path, &bytes, source, id)?;
    let signed = signed::check(store.keys(), &bytes, manifest.signature.as_ref());
    Ok((path, manifest, signed))
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
        raw: None,
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
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    /// The key that signed the manifest, when this store's keys trust any
    /// signer (then every complete backup listed has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// The newest drill of this backup, if any (whose report this store's
    /// keys accept).
    pub last_drill: Option<DrillSeen>,
    /// An incremental physical backup: the backup it builds on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// A drill's outcome as `list` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DrillSeen {
    pub report: String,
    pub passed: bool,
    /// When it ended (seconds since the epoch; 0 when the report predates it).
    #[serde(default)]
    pub finished: i64,
    /// How long its restore took.
    #[serde(default)]
    pub rto_seconds: f64,
}

/// A stored manifest or drill report that no decision counts: with keys
/// trusted, it is unsigned, signed by a stranger or badly signed.
#[derive(Debug, Clone, Serialize)]
pub struct Ignored {
    /// `manifest` or `report`.
    pub kind: &'static str,
    /// Its path in the store.
    pub object: String,
    /// `unsigned`, `signature by an untrusted key`, `bad signature`, `unreadable`.
    pub reason: &'static str,
}

/// What the store holds that its keys vouch for, and what they do not.
#[derive(Debug, Default)]
pub struct Scan {
    /// Oldest first.
    pub listings: Vec<Listing>,
    pub ignored: Vec<Ignored>,
}

/// Says once per object (per process) that it is ignored and why, and
/// counts it: a planted object shows up in the log and on `/metrics`
/// without flooding either at every listing.
fn ignore(kind: &'static str, object: &str, what: &str, problem: &signed::Problem) -> Ignored {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    // Bounded: past this many objects, start over (and say it again).
    const REMEMBERED: usize = 100_000;
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let first = {
        let mut seen = SEEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(format!("{object}\n{}", problem.short()))
    };
    if first {
        tracing::warn!(
            object,
            kind,
            reason = problem.short(),
            "ignored by list, drill and prune: {}",
            problem.explain(what)
        );
        crate::telemetry::metrics::global().add(
            crate::telemetry::metrics::UNTRUSTED_IGNORED,
            &[("kind", kind)],
            1.0,
        );
    }
    Ignored {
        kind,
        object: object.to_string(),
        reason: problem.short(),
    }
}

/// A drill report's stored bytes, checked: when this store's keys trust any
/// signer, it must be signed by one of them and describe `source`/`id`.
pub fn check_report(
    keys: &Keys,
    stored: &[u8],
    source: &str,
    id: &str,
) -> Result<Option<String>, signed::Problem> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(default)]
        signature: Option<signed::Signature>,
        #[serde(default)]
        backup_id: String,
        #[serde(default)]
        source: String,
    }
    let e: Envelope = serde_json::from_slice(stored)
        .map_err(|e| signed::Problem::Unreadable(format!("is not a drill report: {e}")))?;
    let signer = signed::check(keys, stored, e.signature.as_ref())?;
    // A genuine report copied next to another backup would vouch for it.
    if signer.is_some() && (e.backup_id != id || e.source != source) {
        return Err(signed::Problem::Unreadable(format!(
            "describes {}/{}, not the backup it is stored with",
            e.source, e.backup_id
        )));
    }
    Ok(signer)
}

/// The newest drill report of a backup that this store's keys accept, as
/// stored; reports they do not accept are skipped (and named in `ignored`).
async fn newest_report(
    store: &Store,
    source: &str,
    id: &str,
    ignored: &mut Vec<Ignored>,
) -> Option<(String, Vec<u8>)> {
    let dir = format!("{}drills/", backup_dir(source, id));
    let mut reports: Vec<String> = store
        .list(&dir)
        .await
        .ok()?
        .into_iter()
        .filter(|n| n.ends_with(".json"))
        .collect();
    reports.sort();
    while let Some(name) = reports.pop() {
        let path = format!("{dir}{name}");
        let Ok(bytes) = store.get(&path).await else {
            continue;
        };
        match check_report(store.keys(), &bytes, source, id) {
            Ok(_) => return Some((path, bytes)),
            // Without keys, a report that is not even JSON was never counted.
            Err(_) if store.keys().trusted.is_empty() => continue,
            Err(p) => ignored.push(ignore("report", &path, "drill report", &p)),
        }
    }
    None
}

/// The newest drill report of a backup that this store's keys accept, as stored.
pub async fn last_drill_report(store: &Store, source: &str, id: &str) -> Option<Vec<u8>> {
    newest_report(store, source, id, &mut Vec::new())
        .await
        .map(|(_, b)| b)
}

/// A drill report of `source`/`id` stored at `path`, if this store's keys
/// accept it (said and counted when they do not).
pub async fn read_drill_report(
    store: &Store,
    source: &str,
    id: &str,
    path: &str,
) -> Option<Vec<u8>> {
    let bytes = store.get(path).await.ok()?;
    match check_report(store.keys(), &bytes, source, id) {
        Ok(_) => Some(bytes),
        Err(_) if store.keys().trusted.is_empty() => Some(bytes),
        Err(p) => {
            ignore("report", path, "drill report", &p);
            None
        }
    }
}

async fn last_drill(
    store: &Store,
    source: &str,
    id: &str,
    ignored: &mut Vec<Ignored>,
) -> Option<DrillSeen> {
    #[derive(serde::Deserialize)]
    struct Outcome {
        passed: bool,
        #[serde(default)]
        report: String,
        #[serde(default)]
        finished: i64,
        #[serde(default)]
        rto_seconds: f64,
    }
    let (_, bytes) = newest_report(store, source, id, ignored).await?;
    let o: Outcome = serde_json::from_slice(&bytes).ok()?;
    Some(DrillSeen {
        report: o.report,
        passed: o.passed,
        finished: o.finished,
        rto_seconds: o.rto_seconds,
    })
}

/// Every backup in the store that its keys vouch for, oldest first;
/// incomplete ones (no manifest: in progress or abandoned) are listed as
/// such, never as complete.
pub async fn list_backups(store: &Store) -> Result<Vec<Listing>, ArchiveError> {
    Ok(scan_backups(store).await?.listings)
}

/// [`list_backups`], with what was left out and why. When this store's keys
/// trust any signer, a backup whose manifest is unsigned, signed by another
/// key, badly signed or unreadable is not listed (so no drill picks it and
/// no prune deletes it), and a drill report that is not accepted does not
/// count as a drill.
pub async fn scan_backups(store: &Store) -> Result<Scan, ArchiveError> {
    let mut scan = Scan::default();
    let keyed = !store.keys().trusted.is_empty();
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
            let listing = match read_signed_manifest(store, source, id).await {
                Ok((object, _, Err(problem))) => {
                    scan.ignored
                        .push(ignore("manifest", &object, "manifest", &problem));
                    continue;
                }
                Ok((_, m, Ok(signed_by))) => Listing {
                    id: id.into(),
                    source: source.into(),
                    created,
                    complete: true,
                    size: m.size(),
                    databases: m.databases.iter().map(|d| d.name.clone()).collect(),
                    tables: m.table_count(),
                    seconds: Some(m.timings.seconds),
                    signed_by,
                    last_drill: last_drill(store, source, id, &mut scan.ignored).await,
                    parent: m.physical.and_then(|p| p.parent),
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
                        signed_by: None,
                        last_drill: None,
                        parent: None,
                    }
                }
                Err(ArchiveError::BadManifest { object, reason }) if keyed => {
                    let problem = signed::Problem::Unreadable(format!(
                        "is not a firedrill manifest: {reason}"
                    ));
                    scan.ignored
                        .push(ignore("manifest", &object, "manifest", &problem));
                    continue;
                }
                Err(e) => return Err(e),
            };
            scan.listings.push(listing);
        }
    }
    scan.listings
        .sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(scan)
}

/// Finds a complete backup by id, or the newest complete one (of `source`,
/// if given). Only backups this store's keys vouch for are candidates for
/// "the newest"; one named by id whose manifest they refuse is still found,
/// so that opening it says why it is refused.
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
    let scan = scan_backups(store).await?;
    let found = scan
        .listings
        .iter()
        .rev()
        .filter(|l| l.complete)
        .filter(|l| source.is_none_or(|s| l.source == s))
        .find(|l| id.is_none_or(|i| l.id == i))
        .map(|l| (l.source.clone(), l.id.clone()));
    let refused = || {
        let id = id?;
        scan.ignored
            .iter()
            .filter(|i| i.kind == "manifest")
            .find_map(|i| {
                let (src, rest) = i.object.split_once('/')?;
                let this = rest.strip_suffix(&format!("/{}", manifest::MANIFEST))?;
                (this == id && source.is_none_or(|s| s == src))
                    .then(|| (src.to_string(), this.to_string()))
            })
    };
    match (found.or_else(refused), id) {
        (Some(found), _) => Ok(found),
        (None, Some(id)) => Err(ArchiveError::NoSuchBackup(id.to_string())),
        (None, None) => Err(ArchiveError::NoBackups(
            source
                .map(|s| format!(" of source {s}"))
                .unwrap_or_default(),
        )),
    }
}
