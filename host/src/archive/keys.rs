//! The keys a store is used with: age recipients (new backups are encrypted
//! to all of them; a node that only backs up needs nothing more), age
//! identities (to read encrypted backups: drills, restores, rekey), an
//! Ed25519 key that signs manifests, and the public keys trusted to have
//! signed them.
//!
//! Invariants: private keys are read from files, never from arguments or the
//! environment's values, and never shown (`Debug` names public parts only);
//! once any key is trusted, an unsigned or badly signed manifest is refused,
//! and neither it nor such a drill report counts for any decision.

use super::age::{AgeError, Identity, Recipient};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, Verifier};
use std::path::PathBuf;

/// Where the keys come from: the `[store]` settings or the CLI's flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeySettings {
    /// `age1...` public keys, or files of them (one per line, as `age -R` reads).
    pub recipients: Vec<String>,
    /// Files of age identities (as age-keygen writes them).
    pub identity_files: Vec<PathBuf>,
    /// A file holding an Ed25519 private key (base64 of its 32-byte seed).
    pub signing_key_file: Option<PathBuf>,
    /// Ed25519 public keys (base64) whose manifest signatures are accepted.
    pub verify_keys: Vec<String>,
}

impl KeySettings {
    /// What an operator must hear once (at `config check` and at start-up)
    /// about how far the store's contents can be trusted with these keys.
    pub fn warnings(&self) -> Vec<String> {
        match (&self.signing_key_file, self.verify_keys.is_empty()) {
            (None, true) => vec![
                "backups and drill reports are neither signed nor verified: anyone who can write \
                 the store can add backups and drill reports that list, drill and prune will count \
                 (and so steer retention into deleting genuine backups); set [store] signing_key_file \
                 (FIREDRILL_SIGNING_KEY) where backups and drills run, and [store] verify_keys \
                 (FIREDRILL_VERIFY_KEYS) on nodes that only read"
                    .into(),
            ],
            (None, false) => vec![
                "[store] verify_keys is set but signing_key_file is not: the backups and drill \
                 reports this node writes are unsigned, so list, drill and prune here will ignore \
                 them; set [store] signing_key_file (FIREDRILL_SIGNING_KEY) if this node backs up \
                 or drills"
                    .into(),
            ],
            (Some(_), _) => vec![],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error(transparent)]
    Age(#[from] AgeError),
    #[error("{0:?} is not an Ed25519 public key (base64 of 32 bytes, as `firedrill keygen signing` prints)")]
    BadVerifyKey(String),
}

impl KeyError {
    /// The `[store]` setting the problem is in.
    pub fn setting(&self) -> &'static str {
        match self {
            KeyError::File {
                what: "identity file",
                ..
            }
            | KeyError::Age(AgeError::BadIdentity(_)) => "store.identity_files",
            KeyError::File {
                what: "signing key file",
                ..
            } => "store.signing_key_file",
            KeyError::BadVerifyKey(_) => "store.verify_keys",
            _ => "store.recipients",
        }
    }
}

#[derive(Default)]
pub struct Keys {
    pub recipients: Vec<Recipient>,
    pub identities: Vec<Identity>,
    pub signing: Option<ed25519_dalek::SigningKey>,
    /// Includes the signing key's own public key.
    pub trusted: Vec<ed25519_dalek::VerifyingKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("recipients", &self.recipients)
            .field("identities", &self.identities.len())
            .field(
                "signing",
                &self.signing.as_ref().map(|k| key_id(&k.verifying_key())),
            )
            .field(
                "trusted",
                &self.trusted.iter().map(key_id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn read(what: &'static str, path: &std::path::Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|e| KeyError::File {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// How a signature names its key: the public key, base64.
pub fn key_id(k: &ed25519_dalek::VerifyingKey) -> String {
    B64.encode(k.as_bytes())
}

impl Keys {
    pub fn load(s: &KeySettings) -> Result<Keys, KeyError> {
        let mut keys = Keys::default();
        for r in &s.recipients {
            if r.trim_start().starts_with("age1") {
                keys.recipients.push(Recipient::parse(r)?);
                continue;
            }
            let text = read("recipients file", std::path::Path::new(r))?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    keys.recipients.push(Recipient::parse(line)?);
                }
            }
        }
        for f in &s.identity_files {
            let text = read("identity file", f)?;
            keys.identities
                .extend(Identity::parse_file(&text, &f.display().to_string())?);
        }
        if let Some(f) = &s.signing_key_file {
            let text = read("signing key file", f)?;
            let seed: [u8; 32] = B64
                .decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| KeyError::File {
                    what: "signing key file",
                    path: f.display().to_string(),
                    message: "not an Ed25519 private key (base64 of 32 bytes, as `firedrill keygen signing` writes)".into(),
                })?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            keys.trusted.push(key.verifying_key());
            keys.signing = Some(key);
        }
        for v in &s.verify_keys {
            let bytes: [u8; 32] = B64
                .decode(v.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| KeyError::BadVerifyKey(v.chars().take(60).collect()))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|_| KeyError::BadVerifyKey(v.chars().take(60).collect()))?;
            keys.trusted.push(key);
        }
        Ok(keys)
    }

    /// `(key id, signature)` of `bytes`, when there is a signing key.
    pub fn sign(&self, bytes: &[u8]) -> Option<(String, String)> {
        let k = self.signing.as_ref()?;
        Some((
            key_id(&k.verifying_key()),
            B64.encode(k.sign(bytes).to_bytes()),
        ))
    }

    /// Whether `signature` (base64) over `bytes` is by the trusted key `key`.
    pub fn verify(&self, key: &str, bytes: &[u8], signature: &str) -> bool {
        let Some(k) = self.trusted.iter().find(|k| key_id(k) == key) else {
            return false;
        };
        let Some(sig) = B64
            .decode(signature)
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
        else {
            return false;
        };
        k.verify(bytes, &sig).is_ok()
    }
}

/// A new Ed25519 key pair: (private seed, public key), base64.
pub fn signing_pair() -> (String, String) {
    let k = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    (B64.encode(k.to_bytes()), key_id(&k.verifying_key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_load_from_files_and_sign() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate();
        let id_file = dir.path().join("age.key");
        std::fs::write(&id_file, id.to_file()).unwrap();
        let other = Identity::generate().recipient().to_string();
        let rec_file = dir.path().join("recipients.txt");
        std::fs::write(&rec_file, format!("# escrow\n{other}\n")).unwrap();
        let (private, public) = signing_pair();
        let sk_file = dir.path().join("signing.key");
        std::fs::write(&sk_file, format!("{private}\n")).unwrap();
        let keys = Keys::load(&KeySettings {
            recipients: vec![id.recipient().to_string(), rec_file.display().to_string()],
            identity_files: vec![id_file],
            signing_key_file: Some(sk_file.clone()),
            verify_keys: vec![],
        })
        .unwrap();
        assert_eq!(keys.recipients.len(), 2);
        assert_eq!(keys.recipients[1].to_string(), other);
        let (kid, sig) = keys.sign(b"manifest").unwrap();
        assert_eq!(kid, public);
        assert!(keys.verify(&kid, b"manifest", &sig));
        assert!(!keys.verify(&kid, b"manifesto", &sig));
        // A verifier that trusts only another key refuses the signature.
        let (_, stranger) = signing_pair();
        let only = Keys::load(&KeySettings {
            verify_keys: vec![stranger],
            ..Default::default()
        })
        .unwrap();
        assert!(!only.verify(&kid, b"manifest", &sig));
        let shown = format!("{keys:?}");
        assert!(
            !shown.contains(&private) && !shown.contains("AGE-SECRET"),
            "{shown}"
        );
        std::fs::write(&sk_file, "not a key").unwrap();
        let e = Keys::load(&KeySettings {
            signing_key_file: Some(sk_file),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("signing.key") && e.contains("Ed25519"), "{e}");
    }
}
