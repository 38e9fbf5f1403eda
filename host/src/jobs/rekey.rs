//! Key rotation without re-encrypting data: for each encrypted backup, the
//! file key is unwrapped with one of the store's identities and wrapped for
//! the new recipients in a new header (the next generation); the manifest is
//! rewritten (and signed) to name it, and only then is the old header
//! deleted. Data objects are never read or written.
//!
//! Invariants: a manifest names a header only once that header is stored, so
//! a crash at any point leaves every backup readable with either its old or
//! its new recipients; running again finishes the work (a backup already at
//! its new recipients is left alone, and stale headers are removed); a
//! signed manifest is never rewritten unsigned.

use super::JobError;
use crate::archive::age::Recipient;
use crate::archive::manifest::{self, Manifest};
use crate::archive::{self as arch, Store};
use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct RekeyOptions {
    pub add: Vec<Recipient>,
    pub remove: Vec<Recipient>,
    /// Only backups of this source.
    pub source: Option<String>,
    /// Say what would change, change nothing.
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rekeyed {
    pub source: String,
    pub id: String,
    /// `rekeyed`, `would rekey`, `unchanged` or `not encrypted`.
    pub action: &'static str,
    /// Fingerprints of the recipients after this run.
    pub recipients: Vec<String>,
    pub generation: u32,
    /// Headers of earlier generations removed (left by an interrupted run).
    pub stale_removed: usize,
}

pub async fn run(store: &Store, opts: &RekeyOptions) -> Result<Vec<Rekeyed>, JobError> {
    if opts.add.is_empty() && opts.remove.is_empty() {
        return Err(JobError::Config(
            "nothing to do: name keys with --add-recipient and/or --remove-recipient".into(),
        ));
    }
    let mut out = Vec::new();
    for l in arch::list_backups(store).await? {
        if !l.complete || opts.source.as_ref().is_some_and(|s| *s != l.source) {
            continue;
        }
        out.push(rekey_one(store, &l.source, &l.id, opts).await?);
    }
    Ok(out)
}

async fn rekey_one(
    store: &Store,
    source: &str,
    id: &str,
    opts: &RekeyOptions,
) -> Result<Rekeyed, JobError> {
    // A tampered manifest is refused before anything is written.
    let (m, _) = arch::verified_manifest(store, source, id).await?;
    let Some(enc) = &m.encryption else {
        return Ok(Rekeyed {
            source: source.into(),
            id: id.into(),
            action: "not encrypted",
            recipients: vec![],
            generation: 0,
            stale_removed: 0,
        });
    };
    let current = enc
        .recipients
        .iter()
        .map(|r| Recipient::parse(&r.key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| JobError::Config(format!("backup {id}: its manifest lists {e}")))?;
    let mut wanted: Vec<Recipient> = current
        .iter()
        .filter(|r| !opts.remove.contains(r))
        .cloned()
        .collect();
    for r in &opts.add {
        if !wanted.contains(r) {
            wanted.push(r.clone());
        }
    }
    if wanted.is_empty() {
        return Err(JobError::Config(format!(
            "backup {id}: removing these recipients would leave nobody able to read it; add one with --add-recipient"
        )));
    }
    let dir = arch::backup_dir(source, id);
    let same = wanted.len() == current.len() && wanted.iter().all(|r| current.contains(r));
    let fingerprints = |rs: &[Recipient]| rs.iter().map(Recipient::fingerprint).collect();
    if same || opts.dry_run {
        let stale_removed = if opts.dry_run {
            0
        } else {
            remove_stale_headers(store, &dir, &enc.header.path).await?
        };
        return Ok(Rekeyed {
            source: source.into(),
            id: id.into(),
            action: if same { "unchanged" } else { "would rekey" },
            recipients: fingerprints(if same { &current } else { &wanted }),
            generation: enc.generation,
            stale_removed,
        });
    }
    let keys = store.keys();
    if keys.signing.is_none() && (m.signature.is_some() || !keys.trusted.is_empty()) {
        return Err(JobError::Config(format!(
            "backup {id}: its manifest is signed and rekey rewrites it; pass --signing-key FILE \
             (or set [store] signing_key_file) so the new one is signed too"
        )));
    }
    // Needed only now: a run resumed with an identity it already removed
    // skips the backups it finished.
    let key = arch::unwrap_key(store, &m, enc).await?;
    let generation = enc.generation + 1;
    let new_enc = arch::write_header(store, &dir, &key, &wanted, generation).await?;
    let rewritten = Manifest {
        encryption: Some(new_enc),
        ..m.clone()
    };
    arch::put_manifest(store, &rewritten).await?;
    tracing::info!(backup = %id, source = %source, generation, "rekeyed");
    let stale_removed =
        remove_stale_headers(store, &dir, &manifest::header_path(generation)).await?;
    Ok(Rekeyed {
        source: source.into(),
        id: id.into(),
        action: "rekeyed",
        recipients: fingerprints(&wanted),
        generation,
        stale_removed,
    })
}

/// Deletes every header of the backup but `keep`: a removed recipient must
/// not find its old header still in the store.
async fn remove_stale_headers(store: &Store, dir: &str, keep: &str) -> Result<usize, JobError> {
    let mut removed = 0;
    for name in store.list(&format!("{dir}keys/")).await.unwrap_or_default() {
        let rel = format!("keys/{name}");
        if rel != keep && name.ends_with(".age") {
            store.delete(&format!("{dir}{rel}")).await?;
            removed += 1;
        }
    }
    Ok(removed)
}
