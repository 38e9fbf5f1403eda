//! Signed plugins: `<wasm>.sig` next to a plugin's wasm, an Ed25519
//! signature over its sha256 by a key the agent trusts.
//!
//! ```toml
//! # firedrill plugin signature (firedrill plugin sign)
//! sha256 = "9f2c..."              # of the wasm it signs
//! key = "base64 public key"
//! signature = "base64"
//! ```
//!
//! The signed message is a fixed context string followed by the wasm's
//! sha256, so a plugin signature can never be replayed as a manifest
//! signature made with the same key, nor the other way round.
//!
//! Invariants: when signatures are required, a plugin whose signature is
//! missing, by an untrusted key, or for other bytes is refused before its
//! wasm is compiled; trust settings come from the operator's configuration,
//! never from the policies directory.

use crate::archive::keys::{key_id, KeyError, KeySettings, Keys};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const CONTEXT: &[u8] = b"firedrill plugin signature v1\0";

/// Which keys may sign plugins, and whether a signature is required.
#[derive(Debug, Clone, Default)]
pub struct PluginTrust {
    keys: Vec<ed25519_dalek::VerifyingKey>,
    required: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    sha256: String,
    key: String,
    signature: String,
}

/// Who signed a plugin, as `plugin check` and the load log show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signed {
    Unsigned,
    /// By this key (base64), trusted by this agent.
    Trusted(String),
    /// A valid signature by a key this agent does not list.
    Untrusted(String),
    /// Embedded in the binary (`builtin:`): as trusted as the binary.
    BuiltIn,
}

impl PluginTrust {
    /// `keys` are base64 Ed25519 public keys (`firedrill keygen signing`
    /// prints one). `required` defaults to "when any key is trusted".
    pub fn new(keys: &[String], required: Option<bool>) -> Result<PluginTrust, KeyError> {
        let loaded = Keys::load(&KeySettings {
            verify_keys: keys.to_vec(),
            ..Default::default()
        })?;
        Ok(PluginTrust {
            required: required.unwrap_or(!loaded.trusted.is_empty()),
            keys: loaded.trusted,
        })
    }

    /// From `FIREDRILL_TRUSTED_PLUGIN_KEYS` (comma-separated), for the
    /// commands that load policies without an agent configuration.
    pub fn from_env() -> Result<PluginTrust, KeyError> {
        let keys: Vec<String> = std::env::var("FIREDRILL_TRUSTED_PLUGIN_KEYS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect();
        PluginTrust::new(&keys, None)
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// Checks the signature of `wasm` (read from `path`). With signatures
    /// required, anything but a trusted signature is an error saying what to
    /// do; otherwise a signature that is present must still be valid.
    pub fn check(&self, path: &Path, wasm: &[u8]) -> Result<Signed, String> {
        let signed = match read_signature(path, wasm)? {
            None => Signed::Unsigned,
            Some(k) if self.keys.iter().any(|t| key_id(t) == k) => Signed::Trusted(k),
            Some(k) => Signed::Untrusted(k),
        };
        match &signed {
            Signed::Unsigned if self.required => Err(format!(
                "{} is not signed and this agent requires signed plugins: sign it with `firedrill plugin sign --key KEYFILE {}` (writes {})",
                path.display(),
                path.display(),
                sig_path(path).display()
            )),
            // With no keys listed, a valid signature is information only.
            Signed::Untrusted(k) if !self.keys.is_empty() => Err(format!(
                "{} is signed by {k}, which is not a trusted plugin key (agent.trusted_plugin_keys)",
                path.display()
            )),
            _ => Ok(signed),
        }
    }
}

/// Where the signature of the wasm at `path` lives.
pub fn sig_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

fn message(sha256: &[u8]) -> Vec<u8> {
    [CONTEXT, sha256].concat()
}

/// Signs `wasm` with the key in `key_file`; returns the signature file's
/// text and the signing key's public half.
pub fn sign(key_file: &Path, wasm: &[u8]) -> Result<(String, String), KeyError> {
    let keys = Keys::load(&KeySettings {
        signing_key_file: Some(key_file.to_path_buf()),
        ..Default::default()
    })?;
    let digest = Sha256::digest(wasm);
    let (key, signature) = keys
        .sign(&message(&digest))
        .expect("a signing key was loaded");
    let file = SignatureFile {
        sha256: hex::encode(digest),
        key: key.clone(),
        signature,
    };
    let text = format!(
        "# firedrill plugin signature (firedrill plugin sign)\n{}",
        toml::to_string(&file).expect("plain strings serialise")
    );
    Ok((text, key))
}

/// The key whose valid signature `wasm` carries, if it is signed; a
/// signature file that is malformed, for other bytes, or does not verify is
/// an error. Whether the key is trusted is the caller's question.
fn read_signature(path: &Path, wasm: &[u8]) -> Result<Option<String>, String> {
    let sig = sig_path(path);
    let text = match std::fs::read_to_string(&sig) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", sig.display())),
    };
    let file: SignatureFile = toml::from_str(&text).map_err(|e| {
        format!(
            "{} is not a plugin signature: {}",
            sig.display(),
            e.message()
        )
    })?;
    let digest = Sha256::digest(wasm);
    if !file.sha256.eq_ignore_ascii_case(&hex::encode(digest)) {
        return Err(format!(
            "{} signs other bytes (sha256 {}) than {} (sha256 {}): the wasm was changed after signing; sign the new build",
            sig.display(),
            file.sha256,
            path.display(),
            hex::encode(digest)
        ));
    }
    let named = Keys::load(&KeySettings {
        verify_keys: vec![file.key.clone()],
        ..Default::default()
    })
    .map_err(|e| format!("{}: key: {e}", sig.display()))?;
    if !named.verify(&file.key, &message(&digest), &file.signature) {
        return Err(format!(
            "{}: the signature does not verify with the key it names: the file was tampered with or damaged",
            sig.display()
        ));
    }
    Ok(Some(file.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        key_file: PathBuf,
        public: String,
        wasm: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = crate::archive::keys::signing_pair();
        let key_file = dir.path().join("signing.key");
        std::fs::write(&key_file, private).unwrap();
        let wasm = dir.path().join("p.wasm");
        std::fs::write(&wasm, b"\0asm pretend component").unwrap();
        Fixture {
            dir,
            key_file,
            public,
            wasm,
        }
    }

    fn sign_file(f: &Fixture, key_file: &Path) {
        let bytes = std::fs::read(&f.wasm).unwrap();
        let (text, _) = sign(key_file, &bytes).unwrap();
        std::fs::write(sig_path(&f.wasm), text).unwrap();
    }

    fn check(trust: &PluginTrust, f: &Fixture) -> Result<Signed, String> {
        trust.check(&f.wasm, &std::fs::read(&f.wasm).unwrap())
    }

    #[test]
    fn a_trusted_signature_passes_and_everything_else_is_refused_when_required() {
        let f = fixture();
        let trust = PluginTrust::new(std::slice::from_ref(&f.public), None).unwrap();
        assert!(trust.required());

        let e = check(&trust, &f).unwrap_err();
        assert!(
            e.contains("not signed") && e.contains("firedrill plugin sign"),
            "{e}"
        );

        sign_file(&f, &f.key_file);
        assert_eq!(
            check(&trust, &f).unwrap(),
            Signed::Trusted(f.public.clone())
        );

        // Changed after signing.
        std::fs::write(&f.wasm, b"\0asm pretend component, patched").unwrap();
        let e = check(&trust, &f).unwrap_err();
        assert!(e.contains("signs other bytes"), "{e}");

        // A stranger's valid signature.
        let (private, stranger) = crate::archive::keys::signing_pair();
        let other = f.dir.path().join("other.key");
        std::fs::write(&other, private).unwrap();
        sign_file(&f, &other);
        let e = check(&trust, &f).unwrap_err();
        assert!(e.contains(&stranger) && e.contains("not a trusted"), "{e}");

        // A forged signature: right sha256 and key, wrong bytes.
        sign_file(&f, &f.key_file);
        let sig = sig_path(&f.wasm);
        let text = std::fs::read_to_string(&sig).unwrap();
        let forged: String = {
            let mut file: SignatureFile = toml::from_str(&text).unwrap();
            let mut s = file.signature.into_bytes();
            s[5] = if s[5] == b'A' { b'B' } else { b'A' };
            file.signature = String::from_utf8(s).unwrap();
            toml::to_string(&file).unwrap()
        };
        std::fs::write(&sig, forged).unwrap();
        let e = check(&trust, &f).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");

        std::fs::write(&sig, "not = [toml").unwrap();
        let e = check(&trust, &f).unwrap_err();
        assert!(e.contains("not a plugin signature"), "{e}");
    }

    #[test]
    fn without_trusted_keys_unsigned_plugins_load_but_bad_signatures_do_not() {
        let f = fixture();
        let open = PluginTrust::default();
        assert!(!open.required());
        assert_eq!(check(&open, &f).unwrap(), Signed::Unsigned);
        sign_file(&f, &f.key_file);
        assert_eq!(
            check(&open, &f).unwrap(),
            Signed::Untrusted(f.public.clone())
        );
        std::fs::write(&f.wasm, b"changed").unwrap();
        assert!(check(&open, &f).is_err());
        // Keys listed but not required: unsigned passes, strangers do not.
        let lenient = PluginTrust::new(std::slice::from_ref(&f.public), Some(false)).unwrap();
        std::fs::remove_file(sig_path(&f.wasm)).unwrap();
        assert_eq!(check(&lenient, &f).unwrap(), Signed::Unsigned);
    }

    #[test]
    fn a_bad_trusted_key_is_named() {
        let e = PluginTrust::new(&["not-a-key".into()], None).unwrap_err();
        assert!(e.to_string().contains("not-a-key"), "{e}");
    }
}
