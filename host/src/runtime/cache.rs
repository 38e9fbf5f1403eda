//! Compiled code on disk, keyed by the wasm's sha256 and the engine's
//! compatibility hash (wasmtime version, target, settings), so a restart does
//! not recompile and an upgraded agent never loads stale code.
//!
//! Invariant: only files this module wrote (atomically, in a directory only
//! the agent writes) are ever deserialized; a file that fails to load is
//! recompiled and replaced, never trusted further.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

pub(crate) struct CodeCache {
    dir: PathBuf,
    engine_key: String,
}

impl CodeCache {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> std::io::Result<CodeCache> {
        std::fs::create_dir_all(dir)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(CodeCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", h.finish()),
        })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The cached component, if there is a valid one.
    pub(crate) fn get(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was produced by `put` for this engine configuration
        // (the key includes its compatibility hash), in the agent's own cache
        // directory; wasmtime still checks its header before use.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable cached code: {e}");
                None
            }
        }
    }

    /// Stores compiled code; failures only cost a recompile next time.
    pub(crate) fn put(&self, sha256: &str, component: &Component) {
        let write = || -> anyhow::Result<()> {
            let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            std::io::Write::write_all(&mut tmp, &bytes)?;
            tmp.persist(self.path(sha256))?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %self.dir.display(), "cannot cache compiled code: {e}");
        }
    }
}
