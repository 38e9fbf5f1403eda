//! Signed JSON objects: manifests and drill reports, one format and one
//! check.
//!
//! The signature is an Ed25519 signature over the object's pretty JSON
//! without it, appended as the last member. Checking needs no canonical
//! JSON: cut the signature off the stored bytes and verify exactly what
//! remains; anything added, moved or changed after signing fails.
//!
//! Invariant: once any key is trusted, an object counts only if this check
//! passes; [`Problem`] says why it did not, in words an operator can act on.

use super::keys::{self, Keys};
use serde::{Deserialize, Serialize};

/// An Ed25519 signature over an object's bytes as stored without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub algorithm: String,
    /// The public key, base64.
    pub key: String,
    /// base64.
    pub value: String,
}

/// Where the signature starts in a stored object.
const SIGNATURE_MARK: &[u8] = b",\n  \"signature\": ";

/// `body` (pretty JSON of the object without its signature) as stored:
/// when `sign` gives a (key id, signature) over it, with the signature
/// appended as the last member.
pub fn to_bytes(body: Vec<u8>, sign: impl FnOnce(&[u8]) -> Option<(String, String)>) -> Vec<u8> {
    let Some((key, value)) = sign(&body) else {
        return body;
    };
    let sig = Signature {
        algorithm: "ed25519".into(),
        key,
        value,
    };
    signed_bytes(&body, &sig)
}

/// The bytes a stored object's signature `sig` covers, if the stored bytes
/// are exactly those plus this signature (nothing added, nothing moved).
pub fn unsigned_part(stored: &[u8], sig: &Signature) -> Option<Vec<u8>> {
    let at = stored
        .windows(SIGNATURE_MARK.len())
        .rposition(|w| w == SIGNATURE_MARK)?;
    let mut body = stored[..at].to_vec();
    body.extend_from_slice(b"\n}");
    (signed_bytes(&body, sig) == stored).then_some(body)
}

fn signed_bytes(body: &[u8], sig: &Signature) -> Vec<u8> {
    let mut out = body.strip_suffix(b"\n}").unwrap_or(body).to_vec();
    out.extend_from_slice(SIGNATURE_MARK);
    out.extend(serde_json::to_vec(sig).expect("a signature serializes"));
    out.extend_from_slice(b"\n}");
    out
}

/// Why a stored object's signature does not make it trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No signature, though this store's keys require one.
    Unsigned,
    /// Signed by a key that is not trusted (its id).
    Untrusted(String),
    /// A signature that does not check out.
    Bad(String),
    /// Not the object it claims to be (not JSON, another backup's): its
    /// signature cannot vouch for it here.
    Unreadable(String),
}

impl Problem {
    /// One word or three, for logs and metrics: `unsigned`, `signature by
    /// an untrusted key`, `bad signature`.
    pub fn short(&self) -> &'static str {
        match self {
            Problem::Unsigned => "unsigned",
            Problem::Untrusted(_) => "signature by an untrusted key",
            Problem::Bad(_) => "bad signature",
            Problem::Unreadable(_) => "unreadable",
        }
    }

    /// What is wrong with `what` (`manifest`, `drill report`), and what to do.
    pub fn explain(&self, what: &str) -> String {
        match self {
            Problem::Unsigned => format!(
                "the {what} is not signed, and this store's keys require signatures: \
                 it was written without a signing key (--signing-key, [store] signing_key_file), \
                 or its signature was removed"
            ),
            Problem::Untrusted(key) => format!(
                "signed by {key}, which is not a trusted key (--verify-key, [store] verify_keys)"
            ),
            Problem::Bad(reason) | Problem::Unreadable(reason) => format!("the {what} {reason}"),
        }
    }
}

/// Checks the signature `sig` that the stored bytes carry: `Ok(None)` when
/// `keys` trust no signer (nothing to check), `Ok(Some(key id))` when a
/// trusted key signed exactly these bytes.
pub fn check(
    keys: &Keys,
    stored: &[u8],
    sig: Option<&Signature>,
) -> Result<Option<String>, Problem> {
    if keys.trusted.is_empty() {
        return Ok(None);
    }
    let Some(sig) = sig else {
        return Err(Problem::Unsigned);
    };
    if sig.algorithm != "ed25519" {
        return Err(Problem::Bad(format!(
            "has a signature of unknown algorithm {:?}",
            sig.algorithm
        )));
    }
    let body = unsigned_part(stored, sig).ok_or_else(|| {
        Problem::Bad(
            "was changed after it was signed (the signature is not its last member)".into(),
        )
    })?;
    if !keys.trusted.iter().any(|k| keys::key_id(k) == sig.key) {
        return Err(Problem::Untrusted(sig.key.clone()));
    }
    if !keys.verify(&sig.key, &body, &sig.value) {
        return Err(Problem::Bad(
            "does not match its signature: it was modified after it was signed".into(),
        ));
    }
    Ok(Some(sig.key.clone()))
}
