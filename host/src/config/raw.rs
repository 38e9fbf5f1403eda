//! The configuration file as written: one serde struct per TOML table,
//! every field optional, parsed before the environment or any check.
//!
//! Invariants: every struct denies unknown fields, so a misspelt key stops
//! the agent with its line number instead of being ignored; nothing here
//! validates a value (that is `validate`'s job, naming each setting).
//! tests/deploy/check.py reads these structs for the file's keys.

use super::{bad, ConfigError};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) agent: RawAgent,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) drill: RawDrill,
    #[serde(default)]
    pub(super) retention: RawRetention,
    #[serde(default)]
    pub(super) coordination: RawCoordination,
    #[serde(default)]
    pub(super) api: RawApi,
    #[serde(default)]
    pub(super) catalog: RawCatalog,
    #[serde(default, rename = "source")]
    pub(super) sources: Vec<RawSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) listen: Option<String>,
    pub(super) policies: Option<PathBuf>,
    pub(super) reload_debounce: Option<String>,
    #[serde(default)]
    pub(super) trusted_plugin_keys: Vec<String>,
    pub(super) require_signed_plugins: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) url: Option<String>,
    pub(super) s3_endpoint: Option<String>,
    pub(super) s3_region: Option<String>,
    pub(super) s3_access_key_id: Option<String>,
    pub(super) s3_secret_access_key: Option<String>,
    pub(super) gcs_credentials_file: Option<PathBuf>,
    pub(super) gcs_endpoint: Option<String>,
    pub(super) azure_account: Option<String>,
    pub(super) azure_endpoint: Option<String>,
    #[serde(default)]
    pub(super) recipients: Vec<String>,
    #[serde(default)]
    pub(super) identity_files: Vec<PathBuf>,
    pub(super) signing_key_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) verify_keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrill {
    pub(super) target: Option<String>,
    pub(super) jobs: Option<usize>,
    pub(super) pick: Option<String>,
    pub(super) assertions: Option<PathBuf>,
    pub(super) quota: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCoordination {
    pub(super) redis_url: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) lease: Option<String>,
    pub(super) stream_len: Option<usize>,
    pub(super) lock_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) audit_log: Option<PathBuf>,
    pub(super) max_event_streams: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCatalog {
    pub(super) url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) min_age: Option<String>,
    pub(super) abandon_after: Option<String>,
    pub(super) max_deletions: Option<usize>,
    pub(super) days: Option<u32>,
    pub(super) pitr_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) urls: Vec<String>,
    pub(super) plugin_sql_url: Option<String>,
    pub(super) backup: Option<String>,
    pub(super) drill: Option<String>,
    pub(super) prune: Option<String>,
    /// The recovery point objective (`15m`, `1d`): exported for the alert rules.
    pub(super) rpo_target: Option<String>,
    pub(super) jobs: Option<usize>,
    pub(super) compression_level: Option<i32>,
    pub(super) chunk_size: Option<String>,
    pub(super) globals: Option<bool>,
    pub(super) role_passwords: Option<bool>,
    /// `logical` (the default) or `physical`.
    pub(super) kind: Option<String>,
    pub(super) slot: Option<String>,
    /// Physical only: the incremental backups' schedule (`backup` is then
    /// the full backups').
    pub(super) incremental: Option<String>,
    pub(super) max_chain: Option<usize>,
    pub(super) wal_stream: Option<bool>,
    /// `10s`, or `off`.
    pub(super) heartbeat: Option<String>,
    pub(super) wal_partial_every: Option<String>,
    pub(super) wal_warn_retained: Option<String>,
}

impl RawConfig {
    /// A configuration file's text; `name` is how the error calls the file,
    /// with the line of the mistake when TOML knows it.
    pub(super) fn parse(name: &str, text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            bad(
                name,
                format!(
                    "{}{}",
                    e.message().trim(),
                    line.map(|l| format!(" (line {l})")).unwrap_or_default()
                ),
            )
        })
    }
}
