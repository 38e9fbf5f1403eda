//! Policy files: `<name>.toml` next to its `.wasm`, saying which world the
//! plugin implements, which wasm (optionally pinned by sha256), what it is
//! granted, its limits and its config.
//!
//! ```toml
//! world = "verifier"
//! wasm = "verifier_sql.wasm"        # relative to this file, or "builtin:verifier_sql.wasm"
//! sha256 = "9f2c..."                # optional pin
//!
//! [limits]
//! memory = "64MiB"                  # linear memory
//! deadline = "30s"                  # wall clock per call
//! fuel = 5_000_000_000              # optional instruction budget
//! output = "4MiB"                   # size of what a call returns
//!
//! [grants]
//! logging = true
//! config = true
//! sql = { database = "drill" }      # read-only unless write = true; also
//!                                   # max_rows (100000), max_bytes ("16MiB"), and for
//!                                   # "source" allow_superuser (default false)
//!
//! [config]
//! "assert.orders-fresh" = "SELECT max(created_at) > now() - interval '1 day' FROM orders"
//! ```
//!
//! Invariant: parsing reads the TOML only; the wasm is opened by the runtime.

use super::worlds::World;
use crate::caps::config::PluginConfig;
use crate::caps::Grants;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A problem with one policy file, naming the file and, where there is one, the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {}{message}", file.display(), field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct PolicyError {
    pub file: PathBuf,
    pub field: Option<String>,
    pub message: String,
}

impl PolicyError {
    pub(crate) fn new(file: &Path, field: Option<&str>, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: file.to_path_buf(),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory, bytes.
    pub memory: u64,
    pub deadline: Duration,
    pub fuel: Option<u64>,
    /// Bytes a call may return.
    pub output: u64,
}

impl Limits {
    /// Defaults sized to each decision: an authorizer sits on every request.
    pub fn default_for(world: World) -> Limits {
        let deadline = match world {
            World::Authorizer | World::Redactor => Duration::from_millis(250),
            World::Retention => Duration::from_secs(2),
            World::DumpPlanner => Duration::from_secs(30),
            World::Verifier => Duration::from_secs(300),
            World::Notifier => Duration::from_secs(2),
        };
        Limits {
            memory: 64 << 20,
            deadline,
            fuel: None,
            output: 4 << 20,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// The policy file.
    pub file: PathBuf,
    pub world: World,
    /// The wasm, resolved against the policy file's directory.
    pub wasm: PathBuf,
    pub sha256: Option<String>,
    pub limits: Limits,
    pub grants: Grants,
    pub config: PluginConfig,
    /// A notifier's destinations, by name (`runtime::destination`).
    pub destinations: Vec<(String, super::destination::Destination)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<String>,
    world: String,
    wasm: PathBuf,
    sha256: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    grants: Grants,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    destinations: toml::Table,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<String>,
    deadline: Option<String>,
    fuel: Option<u64>,
    output: Option<String>,
}

impl Policy {
    /// Whether this is a built-in default (`runtime::builtin`), not a file.
    pub fn builtin(&self) -> bool {
        self.file
            .to_str()
            .is_some_and(|f| f.starts_with(super::builtin::PREFIX))
    }

    pub fn load(file: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| PolicyError::new(file, None, format!("cannot read: {e}")))?;
        Policy::parse(file, &text, |v| std::env::var(v).ok())
    }

    /// `env` resolves `{ env = "NAME" }` config values.
    pub fn parse(
        file: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| line_of(text, s.start))
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            PolicyError::new(file, None, format!("{}{at}", e.message().trim()))
        })?;
        let world = World::parse(&raw.world).ok_or_else(|| {
            let names: Vec<&str> = World::ALL.iter().map(|w| w.name()).collect();
            PolicyError::new(
                file,
                Some("world"),
                format!(
                    "unknown world {:?}; expected one of {}",
                    raw.world,
                    names.join(", ")
                ),
            )
        })?;
        let name = match raw.name {
            Some(n) => n,
            None => file
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(PolicyError::new(
                file,
                Some("name"),
                format!("{name:?}: use letters, digits, '-', '_' and '.'"),
            ));
        }
        if let Some(sha) = &raw.sha256 {
            if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(PolicyError::new(
                    file,
                    Some("sha256"),
                    "must be 64 hexadecimal digits",
                ));
            }
        }
        let defaults = Limits::default_for(world);
        let limits = Limits {
            memory: opt(file, "limits.memory", raw.limits.memory, parse_size)?
                .unwrap_or(defaults.memory),
            deadline: opt(file, "limits.deadline", raw.limits.deadline, parse_duration)?
                .unwrap_or(defaults.deadline),
            fuel: raw.limits.fuel,
            output: opt(file, "limits.output", raw.limits.output, parse_size)?
                .unwrap_or(defaults.output),
        };
        if limits.deadline.is_zero() {
            return Err(PolicyError::new(
                file,
                Some("limits.deadline"),
                "must be more than zero",
            ));
        }
        if limits.memory < 1 << 20 {
            return Err(PolicyError::new(
                file,
                Some("limits.memory"),
                "must be at least 1MiB",
            ));
        }
        if let Some((field, p)) = raw.grants.problem() {
            return Err(PolicyError::new(file, Some(&field), p));
        }
        let config = PluginConfig::from_toml(&raw.config, &env)
            .map_err(|(field, m)| PolicyError::new(file, Some(&field), m))?;
        let destinations = super::destination::parse(&raw.destinations, &env)
            .map_err(|(field, m)| PolicyError::new(file, Some(&field), m))?;
        match (world, destinations.is_empty()) {
            (World::Notifier, true) => {
                return Err(PolicyError::new(
                    file,
                    Some("destinations"),
                    "a notifier needs at least one [destinations.<name>] (kind = \"webhook\", \"slack\" or \"email\")",
                ))
            }
            (World::Notifier, false) | (_, true) => {}
            (_, false) => {
                return Err(PolicyError::new(
                    file,
                    Some("destinations"),
                    format!("only a notifier has destinations, not a {}", world.name()),
                ))
            }
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        Ok(Policy {
            name,
            file: file.to_path_buf(),
            world,
            // `builtin:<file>` names a component embedded in the binary.
            wasm: if raw
                .wasm
                .to_str()
                .is_some_and(|w| w.starts_with(super::builtin::PREFIX))
            {
                raw.wasm
            } else {
                dir.join(&raw.wasm)
            },
            sha256: raw.sha256.map(|s| s.to_ascii_lowercase()),
            limits,
            grants: raw.grants,
            config,
            destinations,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn opt<T>(
    file: &Path,
    field: &str,
    v: Option<String>,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, PolicyError> {
    v.map(|s| parse(&s).map_err(|m| PolicyError::new(file, Some(field), m)))
        .transpose()
}

/// "64MiB", "512KiB", "1GiB", "4096" (bytes); KB/MB/GB are decimal.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// "250ms", "2s", "5m", "1h 30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration (e.g. 500ms, 2s): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(Path::new("/p/check.toml"), text, |_| None)
    }

    #[test]
    fn a_full_policy() {
        let p = parse(
            r#"
            world = "verifier"
            wasm = "v.wasm"
            sha256 = "AB7f0000000000000000000000000000000000000000000000000000000000ff"
            [limits]
            memory = "32MiB"
            deadline = "1500ms"
            fuel = 1000
            [grants]
            logging = true
            sql = { database = "drill" }
            [config]
            keep = 3
            "#,
        )
        .unwrap();
        assert_eq!(p.name, "check");
        assert_eq!(p.world, World::Verifier);
        assert_eq!(p.wasm, Path::new("/p/v.wasm"));
        assert_eq!(p.limits.memory, 32 << 20);
        assert_eq!(p.limits.deadline, Duration::from_millis(1500));
        assert_eq!(p.limits.fuel, Some(1000));
        assert!(p.sha256.unwrap().starts_with("ab7f"));
        assert!(p.grants.logging && !p.grants.config);
        assert!(!p.grants.sql.unwrap().write);
        assert_eq!(p.config.get("keep"), Some("3"));
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            (
                "world = \"verfier\"\nwasm = \"x\"",
                "world",
                "unknown world \"verfier\"",
            ),
            (
                "world = \"verifier\"\nwasm = \"x\"\n[limits]\nmemory = \"64XB\"",
                "limits.memory",
                "unknown unit",
            ),
            (
                "world = \"verifier\"\nwasm = \"x\"\n[limits]\ndeadline = \"soon\"",
                "limits.deadline",
                "not a duration",
            ),
            (
                "world = \"verifier\"\nwasm = \"x\"\nsha256 = \"abc\"",
                "sha256",
                "64 hexadecimal",
            ),
            (
                "world = \"authorizer\"\nwasm = \"x\"\n[grants]\nkeyvalue = { prefixes = [] }",
                "grants.keyvalue",
                "empty",
            ),
        ];
        for (text, field, needle) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with("/p/check.toml: ") && shown.contains(needle),
                "{shown}"
            );
        }
    }

    #[test]
    fn unknown_and_missing_keys_are_named_with_their_line() {
        let e = parse("world = \"verifier\"\nwasm = \"x\"\n[grants]\nsql = { database = \"drill\", writable = true }").unwrap_err();
        assert!(
            e.message.contains("writable") && e.message.contains("line 4"),
            "{e}"
        );
        let e = parse("world = \"verifier\"").unwrap_err();
        assert!(e.message.contains("wasm"), "{e}");
        let e =
            parse("world = \"verifier\"\nwasm = \"x\"\n[grants]\nsql = { database = \"prod\" }")
                .unwrap_err();
        assert!(e.message.contains("prod"), "{e}");
    }

    #[test]
    fn a_builtin_wasm_is_not_a_file_of_the_directory() {
        let p = parse("world = \"retention\"\nwasm = \"builtin:retention_count.wasm\"").unwrap();
        assert_eq!(p.wasm, Path::new("builtin:retention_count.wasm"));
        assert!(!p.builtin(), "the policy itself is a file");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("5 MB").unwrap(), 5_000_000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
    }
}
