//! Capabilities the host grants to plugins.
//!
//! One file per capability, each with the same shape: its grant type (what a
//! policy's `[grants]` table says), its per-call state with the host side of
//! the WIT interface, `add_to_linker`, and its tests.
//!
//! Invariants:
//! - Nothing here decides *whether* a plugin may import a capability: the
//!   runtime refuses ungranted imports at load time ([`Capability::of_import`]).
//!   What happens here is the scoping inside a grant (which database, which
//!   key prefixes) and the bounds of each call (deadline, sizes).
//! - No state outlives a call: every `CapState` belongs to one `Store`.

pub mod config;
pub mod keyvalue;
pub mod logging;
pub mod sql;
pub mod wasi;

use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Linker;

/// Host-side bindings of every interface a plugin may import, generated once
/// from the `host` world of `wit/`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "firedrill:plugin/host",
        imports: { default: trappable },
        with: { "wasi:keyvalue/store.bucket": super::keyvalue::Bucket },
        additional_derives: [serde::Serialize, serde::Deserialize],
    });
}

pub use bindings::firedrill::plugin::types;

/// What a policy grants, from its `[grants]` table. Absent means denied.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// `wasi:logging/logging`: records go to the agent's log, tagged with the plugin.
    #[serde(default)]
    pub logging: bool,
    /// `wasi:config/store`: the policy's `[config]` table.
    #[serde(default)]
    pub config: bool,
    /// `firedrill:plugin/sql`.
    pub sql: Option<sql::SqlGrant>,
    /// `wasi:keyvalue/store` and `wasi:keyvalue/atomics`.
    pub keyvalue: Option<keyvalue::KeyvalueGrant>,
}

/// What an import of a component asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// The WASI 0.2 base (clocks, random, streams, and the std library's
    /// files, environment and sockets): linked for every plugin, with nothing
    /// behind it (no directories, no variables, no network).
    Wasi,
    /// Type-only interfaces: nothing to grant.
    Types,
    Logging,
    Config,
    Sql,
    Keyvalue,
}

impl Capability {
    /// The capability an import (e.g. `wasi:keyvalue/store@0.2.0-draft`)
    /// belongs to; `None` when the host offers no such interface at all.
    pub fn of_import(import: &str) -> Option<Capability> {
        let (name, version) = import.split_once('@').unwrap_or((import, ""));
        let cap = match name {
            "wasi:logging/logging" if version == "0.1.0-draft" => Capability::Logging,
            "wasi:config/store" if version == "0.2.0-draft" => Capability::Config,
            "wasi:keyvalue/store" | "wasi:keyvalue/atomics" if version == "0.2.0-draft" => {
                Capability::Keyvalue
            }
            "firedrill:plugin/sql" if version == "0.1.0" => Capability::Sql,
            "firedrill:plugin/types" if version == "0.1.0" => Capability::Types,
            _ if version.starts_with("0.2.")
                && [
                    "wasi:cli/",
                    "wasi:io/",
                    "wasi:clocks/",
                    "wasi:random/",
                    "wasi:filesystem/",
                    "wasi:sockets/",
                ]
                .iter()
                .any(|p| name.starts_with(p)) =>
            {
                Capability::Wasi
            }
            _ => return None,
        };
        Some(cap)
    }

    /// The key under `[grants]` that grants it; `None` when nothing is needed.
    pub fn grant_key(self) -> Option<&'static str> {
        match self {
            Capability::Wasi | Capability::Types => None,
            Capability::Logging => Some("logging"),
            Capability::Config => Some("config"),
            Capability::Sql => Some("sql"),
            Capability::Keyvalue => Some("keyvalue"),
        }
    }

    pub fn granted_by(self, grants: &Grants) -> bool {
        match self {
            Capability::Wasi | Capability::Types => true,
            Capability::Logging => grants.logging,
            Capability::Config => grants.config,
            Capability::Sql => grants.sql.is_some(),
            Capability::Keyvalue => grants.keyvalue.is_some(),
        }
    }

    /// What to write under `[grants]` to grant it, for error messages.
    pub fn grant_example(self) -> &'static str {
        match self {
            Capability::Wasi | Capability::Types => "",
            Capability::Logging => "logging = true",
            Capability::Config => "config = true",
            Capability::Sql => "sql = { database = \"drill\" }",
            Capability::Keyvalue => "keyvalue = { prefixes = [\"myplugin:\"] }",
        }
    }
}

/// The resources behind a call's grants: which database a sql grant reaches,
/// which Redis a keyvalue grant reaches. Empty means none for this call.
#[derive(Clone, Default)]
pub struct CallContext {
    pub sql: Option<sql::SqlTarget>,
    pub keyvalue: Option<keyvalue::KvTarget>,
}

/// The state of one plugin call: the `T` of its `Store`.
pub struct CapState {
    pub(crate) wasi: wasi::WasiState,
    pub(crate) logging: logging::LoggingCap,
    pub(crate) config: config::ConfigCap,
    pub(crate) sql: sql::SqlCap,
    pub(crate) keyvalue: keyvalue::KeyvalueCap,
    pub(crate) memory: MemoryLimit,
}

impl CapState {
    pub(crate) fn new(
        plugin: Arc<str>,
        grants: &Grants,
        config: Arc<config::PluginConfig>,
        ctx: &CallContext,
        memory_limit: usize,
        deadline: Instant,
    ) -> CapState {
        CapState {
            wasi: wasi::WasiState::sandboxed(),
            logging: logging::LoggingCap::new(plugin),
            config: config::ConfigCap::new(config),
            sql: sql::SqlCap::new(grants.sql.clone(), ctx.sql.clone(), deadline),
            keyvalue: keyvalue::KeyvalueCap::new(
                grants.keyvalue.clone(),
                ctx.keyvalue.clone(),
                deadline,
            ),
            memory: MemoryLimit {
                max: memory_limit,
                hit: false,
            },
        }
    }
}

/// Caps linear memory per call and remembers whether the cap was reached, so
/// the trap that follows is reported as out-of-memory rather than a crash.
pub(crate) struct MemoryLimit {
    pub(crate) max: usize,
    pub(crate) hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Links every capability; which ones a plugin may use was settled at load.
pub(crate) fn add_to_linker(linker: &mut Linker<CapState>) -> wasmtime::Result<()> {
    wasi::add_to_linker(linker)?;
    logging::add_to_linker(linker)?;
    config::add_to_linker(linker)?;
    sql::add_to_linker(linker)?;
    keyvalue::add_to_linker(linker)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_map_to_capabilities() {
        assert_eq!(
            Capability::of_import("wasi:logging/logging@0.1.0-draft"),
            Some(Capability::Logging)
        );
        assert_eq!(
            Capability::of_import("wasi:keyvalue/atomics@0.2.0-draft"),
            Some(Capability::Keyvalue)
        );
        assert_eq!(
            Capability::of_import("firedrill:plugin/sql@0.1.0"),
            Some(Capability::Sql)
        );
        assert_eq!(
            Capability::of_import("wasi:cli/environment@0.2.6"),
            Some(Capability::Wasi)
        );
        // Versions the host does not implement are not offered.
        assert_eq!(Capability::of_import("firedrill:plugin/sql@0.2.0"), None);
        assert_eq!(
            Capability::of_import("wasi:http/outgoing-handler@0.2.0"),
            None
        );
        assert_eq!(Capability::of_import("wasi:cli/environment@0.3.0"), None);
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let g = Grants::default();
        for c in [
            Capability::Logging,
            Capability::Config,
            Capability::Sql,
            Capability::Keyvalue,
        ] {
            assert!(!c.granted_by(&g), "{c:?}");
        }
        assert!(Capability::Wasi.granted_by(&g));
    }
}
