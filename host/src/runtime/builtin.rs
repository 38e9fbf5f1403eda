//! The built-in plugins, embedded in the binary at build time (`host/build.rs`
//! takes what `scripts/build-plugins` built), and the defaults that make a
//! bare agent work with the templates' environment alone: retention by age
//! under BACKUP_RETENTION_DAYS, and the signed-token authorizer once
//! FIREDRILL_TOKEN_KEY is set. Nothing else stands in by default: with no
//! planner every table is dumped, the host counts every table's rows in a
//! drill, and the host scrubs the secrets it knows from every log line.
//!
//! A built-in is loaded through the same path as a file (`Policy`, then
//! `Plugin::load`); only its bytes come from here. A policy file may name
//! any of them (`wasm = "builtin:retention_count.wasm"`) to run it with a
//! config of its own.
//!
//! Invariants: the authorizer's default is the repository's
//! `policies/authorizer-signed.toml` (one text for the file and the
//! default); a default never runs beside a directory's plugin of its world
//! (BACKUP_RETENTION_DAYS replaces the directory's retention policy, the
//! directory's authorizer replaces the built-in).

use super::policy::{Policy, PolicyError};
use std::path::{Path, PathBuf};

/// `(file name, component)` of every built-in this binary was built with.
static WASM: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The prefix of a `wasm` path that names an embedded component.
pub const PREFIX: &str = "builtin:";

/// The default authorizer's policy.
const AUTHORIZER: &str = include_str!("../../../policies/authorizer-signed.toml");

/// The environment variable the built-in authorizer's HMAC key comes from.
pub const TOKEN_KEY_ENV: &str = "FIREDRILL_TOKEN_KEY";

/// The embedded component `wasm` names, when it names one
/// (`builtin:<file>`): its bytes, or why there are none.
pub fn wasm(wasm: &Path) -> Option<Result<&'static [u8], String>> {
    let name = wasm.to_str()?.strip_prefix(PREFIX)?;
    Some(
        WASM.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, bytes)| *bytes)
            .ok_or_else(|| {
                if WASM.is_empty() {
                    format!("no built-in plugin {name:?}: this firedrill was built without its built-in plugins; run scripts/build-plugins, then build it again")
                } else {
                    let names: Vec<&str> = WASM.iter().map(|(n, _)| *n).collect();
                    format!("no built-in plugin {name:?}; the built-ins are {}", names.join(", "))
                }
            }),
    )
}

/// Whether this binary carries its built-in plugins.
pub fn embedded() -> bool {
    !WASM.is_empty()
}

/// What chooses among the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// BACKUP_RETENTION_DAYS: retention by age instead of grandfather-father-son.
    pub retention_days: Option<u32>,
}

impl Defaults {
    /// The default policies, as files would give them: retention by age
    /// when BACKUP_RETENTION_DAYS is set, the authorizer when `env` has
    /// FIREDRILL_TOKEN_KEY (without it the API refuses `/v1` and says so).
    /// Only what this binary carries; start-up warns when it carries none.
    pub fn policies(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<Policy>, PolicyError> {
        let mut texts = vec![];
        if let Some(days) = self.retention_days {
            texts.push((
                "retention-age",
                format!("world = \"retention\"\nwasm = \"retention_age.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ndays = {days}\n"),
            ));
        }
        if env(TOKEN_KEY_ENV).is_some_and(|v| !v.trim().is_empty()) {
            texts.push(("authorizer-signed", AUTHORIZER.to_string()));
        }
        let mut out = Vec::new();
        for (name, text) in texts {
            let mut policy = Policy::parse(Path::new(&format!("{name}.toml")), &text, env)?;
            let wasm = policy.wasm.to_string_lossy().into_owned();
            if WASM.iter().any(|(n, _)| *n == wasm) {
                policy.file = PathBuf::from(format!("{PREFIX}{name}.toml"));
                policy.wasm = PathBuf::from(format!("{PREFIX}{wasm}"));
                out.push(policy);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::World;

    #[test]
    fn a_name_outside_the_prefix_is_a_file() {
        assert!(wasm(Path::new("/p/retention_age.wasm")).is_none());
        let e = wasm(Path::new("builtin:nothing.wasm"))
            .unwrap()
            .unwrap_err();
        assert!(e.contains("nothing.wasm") && e.contains("built"), "{e}");
    }

    #[test]
    fn the_defaults_follow_retention_days_and_the_token_key() {
        let carried = |w: &str| WASM.iter().any(|(n, _)| *n == w);
        if !carried("retention_age.wasm") || !carried("authorizer_signed.wasm") {
            return;
        }
        let worlds = |d: &Defaults, env: &dyn Fn(&str) -> Option<String>| -> Vec<(World, String)> {
            d.policies(env)
                .unwrap()
                .into_iter()
                .map(|p| (p.world, p.wasm.display().to_string()))
                .collect()
        };
        assert_eq!(worlds(&Defaults::default(), &|_| None), vec![]);
        let keyed = |k: &str| {
            (k == TOKEN_KEY_ENV).then(|| "a key of thirty-two bytes or more!".to_string())
        };
        assert_eq!(
            worlds(
                &Defaults {
                    retention_days: Some(9)
                },
                &keyed
            ),
            vec![
                (World::Retention, "builtin:retention_age.wasm".to_string()),
                (
                    World::Authorizer,
                    "builtin:authorizer_signed.wasm".to_string()
                ),
            ]
        );
    }
}
