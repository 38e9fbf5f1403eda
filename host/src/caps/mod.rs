//! Capabilities the host grants to plugins.
//!
//! One file per capability, each with the same shape: its grant type (what a
//! policy's `[grants]` table says), and its per-call state, which holds the
//! host side of the WIT interfaces and implements [`Capability`] (the
//! interfaces it provides, how it is built for a call, how it is linked),
//! and its tests. One list, the `capabilities!` invocation below, names each
//! capability once with its key under `[grants]`; `Grants`, `CapState`, the
//! import table and linking are generated from it. The WASI base (`wasi.rs`)
//! is not in the list: nothing grants it, every plugin links it.
//!
//! Invariants:
//! - Nothing here decides *whether* a plugin may import a capability: the
//!   runtime refuses ungranted imports at load time ([`Import::of`]).
//!   What happens here is the scoping inside a grant (which database, which
//!   key prefixes) and the bounds of each call (deadline, sizes).
//! - No state outlives a call: every `CapState` belongs to one `Store`.

pub mod config;
pub mod keyvalue;
pub mod logging;
pub mod sql;
pub mod wasi;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::fmt;
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

/// One capability a policy may grant: implemented by its per-call state
/// (the host side of its WIT interfaces), in its own file, and named once in
/// the `capabilities!` list below under its key in `[grants]`.
pub trait Capability {
    /// What the policy writes under `[grants]` for it; the default (the key
    /// absent) grants nothing.
    type Grant: DeserializeOwned + Default + Clone + fmt::Debug;
    /// The WIT interfaces it provides, `name@version` as a component
    /// imports them. Any other version is not offered.
    const IMPORTS: &'static [&'static str];
    /// What to write under `[grants]` to grant it, for error messages.
    const EXAMPLE: &'static str;

    fn granted(grant: &Self::Grant) -> bool;

    /// A problem with the grant itself, for the policy loader (which names
    /// the file and `grants.<key>`).
    fn problem(_grant: &Self::Grant) -> Option<String> {
        None
    }

    /// What `firedrill policy` shows after the key, e.g. `Drill, read-only`.
    fn detail(_grant: &Self::Grant) -> Option<String> {
        None
    }

    /// The state for one call. Built for every call whether granted or not:
    /// an ungranted import was refused at load, and the state itself refuses
    /// what its grant does not cover.
    fn for_call(grant: &Self::Grant, call: &Call<'_>) -> Self;

    /// Links its interfaces; `get` finds its state in a call's [`CapState`].
    fn add_to_linker(
        linker: &mut Linker<CapState>,
        get: fn(&mut CapState) -> &mut Self,
    ) -> wasmtime::Result<()>;
}

/// What a call's capability states are built from.
pub struct Call<'a> {
    pub plugin: &'a Arc<str>,
    /// The policy's `[config]` table.
    pub config: &'a Arc<config::PluginConfig>,
    pub context: &'a CallContext,
    pub deadline: Instant,
}

/// Generates, from one list of `key: Type`, everything that has one entry
/// per capability: `Grants` (one field per key), `CapState` (one field per
/// key beside the WASI base and the memory limit), the key → interfaces
/// table, and linking. The order of the list is the order of fields, of
/// grant checks and of `firedrill policy`'s output.
macro_rules! capabilities {
    ($($key:ident: $cap:ty),* $(,)?) => {
        /// What a policy grants, from its `[grants]` table. Absent means denied.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Grants {
            $(
                #[serde(default)]
                pub $key: <$cap as Capability>::Grant,
            )*
        }

        impl Grants {
            /// The first problem with a grant, as (field, message).
            pub fn problem(&self) -> Option<(String, String)> {
                $(
                    if let Some(p) = <$cap as Capability>::problem(&self.$key) {
                        return Some((concat!("grants.", stringify!($key)).to_string(), p));
                    }
                )*
                None
            }

            /// What is granted, one entry per capability: `logging`,
            /// `sql(Drill, read-only)`.
            pub fn summary(&self) -> Vec<String> {
                let mut out = Vec::new();
                $(
                    if <$cap as Capability>::granted(&self.$key) {
                        out.push(match <$cap as Capability>::detail(&self.$key) {
                            Some(d) => format!("{}({d})", stringify!($key)),
                            None => stringify!($key).to_string(),
                        });
                    }
                )*
                out
            }
        }

        const CAPABILITIES: &[Entry] = &[
            $(Entry {
                key: stringify!($key),
                imports: <$cap as Capability>::IMPORTS,
                example: <$cap as Capability>::EXAMPLE,
                granted: |g| <$cap as Capability>::granted(&g.$key),
            }),*
        ];

        /// The state of one plugin call: the `T` of its `Store`.
        pub struct CapState {
            pub(crate) wasi: wasi::WasiState,
            pub(crate) memory: MemoryLimit,
            $(pub(crate) $key: $cap,)*
        }

        impl CapState {
            pub(crate) fn new(grants: &Grants, call: &Call<'_>, memory_limit: usize) -> CapState {
                CapState {
                    wasi: wasi::WasiState::sandboxed(),
                    memory: MemoryLimit {
                        max: memory_limit,
                        hit: false,
                    },
                    $($key: <$cap as Capability>::for_call(&grants.$key, call),)*
                }
            }
        }

        /// Links the WASI base and every capability; which ones a plugin
        /// may use was settled at load.
        pub(crate) fn add_to_linker(linker: &mut Linker<CapState>) -> wasmtime::Result<()> {
            wasi::add_to_linker(linker)?;
            $(<$cap as Capability>::add_to_linker(linker, |s| &mut s.$key)?;)*
            Ok(())
        }
    };
}

// The list: a new capability is a file in this directory and a line here.
capabilities! {
    logging: logging::LoggingCap,
    config: config::ConfigCap,
    sql: sql::SqlCap,
    keyvalue: keyvalue::KeyvalueCap,
}

/// A capability as the load-time import check sees it.
struct Entry {
    key: &'static str,
    imports: &'static [&'static str],
    example: &'static str,
    granted: fn(&Grants) -> bool,
}

fn entry(key: &str) -> Option<&'static Entry> {
    CAPABILITIES.iter().find(|e| e.key == key)
}

/// What one import of a component needs from its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Import {
    /// The WASI 0.2 base (clocks, random, streams, and the std library's
    /// files, environment and sockets): linked for every plugin, with nothing
    /// behind it (no directories, no variables, no network).
    Wasi,
    /// Type-only interfaces: nothing to grant.
    Types,
    /// The capability granted under this key of `[grants]`.
    Grant(&'static str),
}

impl Import {
    /// What an import (e.g. `wasi:keyvalue/store@0.2.0-draft`) needs;
    /// `None` when the host offers no such interface at all.
    pub fn of(import: &str) -> Option<Import> {
        if let Some(e) = CAPABILITIES.iter().find(|e| e.imports.contains(&import)) {
            return Some(Import::Grant(e.key));
        }
        if import == "firedrill:plugin/types@0.1.0" {
            return Some(Import::Types);
        }
        let (name, version) = import.split_once('@').unwrap_or((import, ""));
        let wasi_base = [
            "wasi:cli/",
            "wasi:io/",
            "wasi:clocks/",
            "wasi:random/",
            "wasi:filesystem/",
            "wasi:sockets/",
        ];
        if version.starts_with("0.2.") && wasi_base.iter().any(|p| name.starts_with(p)) {
            return Some(Import::Wasi);
        }
        None
    }

    /// The key under `[grants]` that grants it; `None` when nothing is needed.
    pub fn grant_key(self) -> Option<&'static str> {
        match self {
            Import::Wasi | Import::Types => None,
            Import::Grant(key) => Some(key),
        }
    }

    pub fn granted_by(self, grants: &Grants) -> bool {
        match self {
            Import::Wasi | Import::Types => true,
            Import::Grant(key) => entry(key).is_some_and(|e| (e.granted)(grants)),
        }
    }

    /// What to write under `[grants]` to grant it, for error messages.
    pub fn grant_example(self) -> &'static str {
        match self {
            Import::Wasi | Import::Types => "",
            Import::Grant(key) => entry(key).map_or("", |e| e.example),
        }
    }
}

/// The resources behind a call's grants: which database a sql grant reaches,
/// which Redis a keyvalue grant reaches. Empty means none for this call.
/// Only a capability that reaches something that differs from call to call
/// has a field here (the caller, which knows that resource, sets it).
#[derive(Clone, Default)]
pub struct CallContext {
    pub sql: Option<sql::SqlTarget>,
    pub keyvalue: Option<keyvalue::KvTarget>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_map_to_capabilities() {
        assert_eq!(
            Import::of("wasi:logging/logging@0.1.0-draft"),
            Some(Import::Grant("logging"))
        );
        assert_eq!(
            Import::of("wasi:keyvalue/atomics@0.2.0-draft"),
            Some(Import::Grant("keyvalue"))
        );
        assert_eq!(
            Import::of("firedrill:plugin/sql@0.1.0"),
            Some(Import::Grant("sql"))
        );
        assert_eq!(
            Import::of("firedrill:plugin/types@0.1.0"),
            Some(Import::Types)
        );
        assert_eq!(Import::of("wasi:cli/environment@0.2.6"), Some(Import::Wasi));
        // Versions the host does not implement are not offered.
        assert_eq!(Import::of("firedrill:plugin/sql@0.2.0"), None);
        assert_eq!(Import::of("firedrill:plugin/sql"), None);
        assert_eq!(Import::of("wasi:http/outgoing-handler@0.2.0"), None);
        assert_eq!(Import::of("wasi:cli/environment@0.3.0"), None);
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let g = Grants::default();
        for e in CAPABILITIES {
            for name in e.imports {
                let import = Import::of(name).unwrap();
                assert_eq!(import, Import::Grant(e.key));
                assert!(!import.granted_by(&g), "{name}");
            }
            assert!(
                e.example.starts_with(&format!("{} = ", e.key)),
                "{}",
                e.example
            );
        }
        assert!(Import::Wasi.granted_by(&g));
        assert!(g.summary().is_empty() && g.problem().is_none());
    }

    #[test]
    fn grants_parse_check_and_summarise_through_the_list() {
        let g: Grants = toml::from_str(
            "logging = true\nsql = { database = \"drill\" }\nkeyvalue = { prefixes = [\"a:\", \"b:\"] }",
        )
        .unwrap();
        assert!(Import::of("wasi:logging/logging@0.1.0-draft")
            .unwrap()
            .granted_by(&g));
        assert!(!Import::of("wasi:config/store@0.2.0-draft")
            .unwrap()
            .granted_by(&g));
        assert_eq!(
            g.summary(),
            ["logging", "sql(Drill, read-only)", "keyvalue(a: b:)"]
        );
        let bad: Grants = toml::from_str("keyvalue = { prefixes = [] }").unwrap();
        let (field, message) = bad.problem().unwrap();
        assert_eq!(field, "grants.keyvalue");
        assert!(message.contains("empty"), "{message}");
        let e = toml::from_str::<Grants>("http = true").unwrap_err();
        assert!(
            e.message()
                .contains("expected one of `logging`, `config`, `sql`, `keyvalue`"),
            "{e}"
        );
    }
}
