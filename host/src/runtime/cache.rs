//! Compiled code on disk, keyed by the wasm's sha256 and the engine's
//! compatibility hash (wasmtime version, target, settings), so a restart does
//! not recompile and an upgraded agent never loads stale code.
//!
//! A `.cwasm` is native code, loaded as is: whoever can plant one runs code
//! in the agent. So each entry carries an HMAC-SHA256 tag (over its name and
//! bytes) under a random per-cache key kept in `cache.key` (mode 0600, owned
//! by the agent's user), and an entry is read through one open handle that
//! must be a regular file of ours that no one else can write. That holds
//! even when the directory is shared or its mode is wrong: another user can
//! delete or add files there, never make one that passes.
//!
//! Invariant: only files this module wrote, under this cache's key, are
//! ever deserialized; any other entry is refused with a warning naming it,
//! recompiled and replaced.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

const KEY_FILE: &str = "cache.key";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 32;

pub(crate) struct CodeCache {
    dir: PathBuf,
    engine_key: String,
    key: [u8; KEY_LEN],
}

/// Opens `path` without following a symlink and checks, on the open handle,
/// that it is a regular file owned by this process's user that neither
/// group nor others can write (`private`: nor read). Why not, when not.
fn open_own(path: &Path, private: bool) -> Result<std::fs::File, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let forbidden = if private { 0o077 } else { 0o022 };
    if !meta.is_file() {
        Err("not a regular file".into())
    } else if meta.uid() != euid {
        Err(format!(
            "owned by uid {}, not this agent's uid {euid}",
            meta.uid()
        ))
    } else if meta.mode() & forbidden != 0 {
        Err(format!(
            "mode {:o}: group or others may {}",
            meta.mode() & 0o777,
            if private {
                "read or write it"
            } else {
                "write it"
            }
        ))
    } else {
        Ok(file)
    }
}

impl CodeCache {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> std::io::Result<CodeCache> {
        std::fs::create_dir_all(dir)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(CodeCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", h.finish()),
            key: Self::key(dir)?,
        })
    }

    /// The cache's key: read, or made once (a racing agent's key wins).
    fn key(dir: &Path) -> std::io::Result<[u8; KEY_LEN]> {
        let path = dir.join(KEY_FILE);
        if !path.exists() {
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            std::io::Write::write_all(&mut tmp, &rand::random::<[u8; KEY_LEN]>())?;
            tmp.as_file().sync_all()?;
            // NamedTempFile makes 0600 files; a key that exists already stays.
            let _ = tmp.persist_noclobber(&path);
        }
        let unusable = |why: String| {
            std::io::Error::other(format!(
                "{}: {why} (remove it: a new key is made, and entries are recompiled)",
                path.display()
            ))
        };
        let mut file = open_own(&path, true).map_err(unusable)?;
        let mut key = Vec::new();
        file.read_to_end(&mut key)?;
        key.try_into()
            .map_err(|k: Vec<u8>| unusable(format!("{} bytes, not {KEY_LEN}", k.len())))
    }

    fn name(&self, sha256: &str) -> String {
        format!("{sha256}-{}.cwasm", self.engine_key)
    }

    fn tag(&self, name: &str, code: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(code);
        mac
    }

    /// The cached component, if there is a valid one.
    pub(crate) fn get(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let name = self.name(sha256);
        let path = self.dir.join(&name);
        if !path.exists() {
            return None;
        }
        let refuse = |why: String| {
            tracing::warn!(path = %path.display(), "refusing cached code, recompiling: {why}");
            None
        };
        let mut file = match open_own(&path, false) {
            Ok(f) => f,
            Err(why) => return refuse(why),
        };
        let mut bytes = Vec::new();
        if let Err(e) = file.read_to_end(&mut bytes) {
            return refuse(e.to_string());
        }
        if bytes.len() < TAG_LEN {
            return refuse("too short to be an entry of this cache".into());
        }
        let (tag, code) = bytes.split_at(TAG_LEN);
        if self.tag(&name, code).verify_slice(tag).is_err() {
            return refuse(format!(
                "its tag does not match this cache's key ({KEY_FILE}): not written by this agent"
            ));
        }
        // SAFETY: the bytes are what `put` serialized for this engine
        // configuration (the name holds its compatibility hash), as the tag
        // under this cache's private key proves; wasmtime checks the header.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(c) => Some(c),
            Err(e) => refuse(format!("unusable: {e}")),
        }
    }

    /// Stores compiled code; failures only cost a recompile next time.
    pub(crate) fn put(&self, sha256: &str, component: &Component) {
        let write = || -> anyhow::Result<()> {
            let name = self.name(sha256);
            let code = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
            let tag = self.tag(&name, &code).finalize().into_bytes();
            // A 0600 file, renamed over whatever was there.
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            std::io::Write::write_all(&mut tmp, &tag)?;
            std::io::Write::write_all(&mut tmp, &code)?;
            tmp.persist(self.dir.join(name))?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %self.dir.display(), "cannot cache compiled code: {e}");
        }
    }
}
