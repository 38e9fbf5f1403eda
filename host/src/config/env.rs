//! The environment over the file: every environment name the configuration
//! reads is in [`overlay`], and nowhere else in `config`.
//!
//! Names: the pg_dump-to-S3 templates' DATABASE_URL, S3_ENDPOINT,
//! S3_REGION, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_BUCKET,
//! BACKUP_PREFIX, BACKUP_INTERVAL, VERIFY_INTERVAL, COMPRESSION_LEVEL,
//! BACKUP_RETENTION_DAYS, VERIFY_LATEST, VERIFY_BACKUP_FILE; the clouds'
//! own GOOGLE_APPLICATION_CREDENTIALS, STORAGE_EMULATOR_HOST,
//! AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_SERVICE_ENDPOINT,
//! AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY,
//! AZURE_STORAGE_SAS_TOKEN; and FIREDRILL_* for the rest.
//!
//! Invariants: a name set to an empty (or blank) value counts as unset; a
//! set name wins over the file's key, except FIREDRILL_LOCK_DIR, which only
//! stands in for a missing `coordination.lock_dir`; a value that must be a
//! number or a yes/no is checked here, the error naming the variable (not
//! a file key), before any check of the file's values. The cloud secrets
//! have no file key at all: they are carried in [`EnvOnly`].

use super::raw::{RawConfig, RawSource};
use super::{bad, ConfigError};
use std::path::PathBuf;

/// What only the environment says: the settings with no key in the file.
#[derive(Debug, Default)]
pub(super) struct EnvOnly {
    /// VERIFY_BACKUP_FILE: drill this backup id (over `drill.pick`).
    pub(super) backup_id: Option<String>,
    /// FIREDRILL_LOCK_DIR, else the per-user default: where this node takes
    /// its leases when `coordination.lock_dir` is not set.
    pub(super) lock_dir: PathBuf,
    /// STORAGE_EMULATOR_HOST.
    pub(super) gcs_emulator_host: Option<String>,
    /// AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY,
    /// AZURE_STORAGE_SAS_TOKEN: secrets, never read from the file.
    pub(super) azure_connection_string: Option<String>,
    pub(super) azure_key: Option<String>,
    pub(super) azure_sas_token: Option<String>,
}

/// Applies the environment `env` onto the file's `raw` settings and returns
/// what has no place in the file.
pub(super) fn overlay(
    raw: &mut RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<EnvOnly, ConfigError> {
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if let Some(url) = var("DATABASE_URL") {
        match raw.sources.first_mut() {
            Some(s) => s.urls = vec![url],
            None => raw.sources.push(RawSource {
                name: Some("default".into()),
                urls: vec![url],
                ..Default::default()
            }),
        }
    }
    if let Some(url) = var("FIREDRILL_PLUGIN_SQL_URL") {
        if let Some(s) = raw.sources.first_mut() {
            s.plugin_sql_url = Some(url);
        }
    }
    for (k, slot) in [
        ("S3_ENDPOINT", &mut raw.store.s3_endpoint),
        ("S3_REGION", &mut raw.store.s3_region),
        ("S3_ACCESS_KEY_ID", &mut raw.store.s3_access_key_id),
        ("S3_SECRET_ACCESS_KEY", &mut raw.store.s3_secret_access_key),
        ("FIREDRILL_REDIS_URL", &mut raw.coordination.redis_url),
        ("FIREDRILL_CATALOG_URL", &mut raw.catalog.url),
        ("FIREDRILL_LISTEN", &mut raw.agent.listen),
        ("FIREDRILL_DRILL_URL", &mut raw.drill.target),
        // Each cloud's own names.
        ("AZURE_STORAGE_ACCOUNT", &mut raw.store.azure_account),
        (
            "AZURE_STORAGE_SERVICE_ENDPOINT",
            &mut raw.store.azure_endpoint,
        ),
    ] {
        if let Some(v) = var(k) {
            *slot = Some(v);
        }
    }
    for (k, slot) in [
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            &mut raw.store.gcs_credentials_file,
        ),
        ("FIREDRILL_POLICIES", &mut raw.agent.policies),
        ("FIREDRILL_SIGNING_KEY", &mut raw.store.signing_key_file),
    ] {
        if let Some(v) = var(k) {
            *slot = Some(v.into());
        }
    }
    let list = |v: String| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .collect::<Vec<_>>()
    };
    for (k, slot) in [
        ("FIREDRILL_AGE_RECIPIENTS", &mut raw.store.recipients),
        ("FIREDRILL_VERIFY_KEYS", &mut raw.store.verify_keys),
        (
            "FIREDRILL_TRUSTED_PLUGIN_KEYS",
            &mut raw.agent.trusted_plugin_keys,
        ),
    ] {
        if let Some(v) = var(k) {
            *slot = list(v);
        }
    }
    if let Some(v) = var("FIREDRILL_AGE_IDENTITY") {
        raw.store.identity_files = list(v).into_iter().map(PathBuf::from).collect();
    }
    if let Some(bucket) = var("S3_BUCKET") {
        raw.store.url = Some(format!(
            "s3://{bucket}/{}",
            var("BACKUP_PREFIX").unwrap_or_default()
        ));
    }
    // Every source: the templates know one database.
    for s in &mut raw.sources {
        if let Some(v) = var("BACKUP_INTERVAL") {
            s.backup = Some(v);
        }
        if let Some(v) = var("VERIFY_INTERVAL") {
            s.drill = Some(v);
        }
        if let Some(v) = var("COMPRESSION_LEVEL") {
            s.compression_level = Some(
                v.trim()
                    .parse()
                    .map_err(|_| bad("COMPRESSION_LEVEL", format!("{v:?} is not a number")))?,
            );
        }
    }
    if let Some(v) = var("BACKUP_RETENTION_DAYS") {
        raw.retention.days = Some(v.trim().parse().map_err(|_| {
            bad(
                "BACKUP_RETENTION_DAYS",
                format!("{v:?} is not a number of days"),
            )
        })?);
    }
    let backup_id = var("VERIFY_BACKUP_FILE");
    // A backup id makes the pick moot: VERIFY_LATEST is not even read then.
    if backup_id.is_none() {
        match var("VERIFY_LATEST").as_deref().map(str::trim) {
            None => {}
            Some("true" | "1" | "yes") => raw.drill.pick = Some("latest".into()),
            Some("false" | "0" | "no") => raw.drill.pick = Some("latest-unverified".into()),
            Some(v) => return Err(bad("VERIFY_LATEST", format!("{v:?}: use true or false"))),
        }
    }
    if let Some(v) = var("FIREDRILL_MAX_EVENT_STREAMS") {
        raw.api.max_event_streams = Some(v.trim().parse().map_err(|_| {
            bad(
                "FIREDRILL_MAX_EVENT_STREAMS",
                format!("{v:?} is not a number of streams"),
            )
        })?);
    }
    Ok(EnvOnly {
        backup_id,
        lock_dir: crate::coord::default_lock_dir(&var),
        gcs_emulator_host: var("STORAGE_EMULATOR_HOST"),
        azure_connection_string: var("AZURE_STORAGE_CONNECTION_STRING"),
        azure_key: var("AZURE_STORAGE_KEY"),
        azure_sas_token: var("AZURE_STORAGE_SAS_TOKEN"),
    })
}
