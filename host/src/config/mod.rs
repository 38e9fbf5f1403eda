//! The agent's configuration: a TOML file, overridden by environment
//! variables, validated whole before anything starts.
//!
//! ```toml
//! [agent]
//! listen = "127.0.0.1:9187"          # /health and /ready
//! policies = "/etc/firedrill/policies"
//! trusted_plugin_keys = ["base64 Ed25519 public key"]  # FIREDRILL_TRUSTED_PLUGIN_KEYS
//! require_signed_plugins = true      # the default once any key is trusted
//!
//! [store]
//! url = "s3://backups/pg"            # or file:///var/backups/pg, gs://bucket/prefix,
//!                                    # azblob://container/prefix
//! s3_endpoint = "https://s3.example.net"
//! s3_access_key_id = "..."           # better: S3_ACCESS_KEY_ID in the environment
//! gcs_credentials_file = "/etc/firedrill/gcs.json"  # GOOGLE_APPLICATION_CREDENTIALS
//! gcs_endpoint = "https://storage.example.net"      # STORAGE_EMULATOR_HOST for an emulator
//! azure_account = "backupsacct"      # AZURE_STORAGE_ACCOUNT; the key only in the
//!                                    # environment: AZURE_STORAGE_KEY, or
//!                                    # AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_SAS_TOKEN
//! azure_endpoint = "http://127.0.0.1:10000/devstoreaccount1"  # AZURE_STORAGE_SERVICE_ENDPOINT
//! recipients = ["age1..."]           # encrypt backups to these (FIREDRILL_AGE_RECIPIENTS)
//! identity_files = ["/etc/firedrill/age.key"]   # to drill them (FIREDRILL_AGE_IDENTITY)
//! signing_key_file = "/etc/firedrill/signing.key"  # sign manifests (FIREDRILL_SIGNING_KEY)
//! verify_keys = ["base64 Ed25519 public key"]      # accept their signatures too
//!
//! [drill]
//! target = "local"                   # or a drill server's URL
//! quota = 2                          # drills at once across the fleet
//!
//! [coordination]                     # omit for a single node
//! redis_url = "redis://:password@redis:6379/0"   # or FIREDRILL_REDIS_URL
//! namespace = "firedrill:"
//! lease = "30s"
//! lock_dir = "/run/firedrill"        # without redis_url: where this node's agent and
//!                                    # CLI runs take their leases (FIREDRILL_LOCK_DIR;
//!                                    # default /run/firedrill for root, else /tmp/firedrill-<uid>)
//!
//! [api]
//! audit_log = "/var/log/firedrill/audit.jsonl"   # default: the log, target "audit"
//! max_event_streams = 64             # /v1/events open at once, 429 past it (FIREDRILL_MAX_EVENT_STREAMS)
//!
//! [catalog]                          # optional: history in Postgres (FIREDRILL_CATALOG_URL)
//! url = "postgres://firedrill@catalog-db/firedrill"   # `firedrill catalog migrate` first
//!
//! [retention]
//! min_age = "1h"
//! max_deletions = 10
//!
//! [[source]]
//! name = "app"
//! urls = ["postgres://backup@db/app", "postgres://backup@db/auth"]   # or one redis://
//! plugin_sql_url = "postgres://planner@db/app"  # the role a dump planner's `source` sql
//!                                    # grant runs as (never the backup role); the
//!                                    # database is swapped per dumped database
//!                                    # (FIREDRILL_PLUGIN_SQL_URL, first source)
//! backup = "1h"                      # or "cron: 0 3 * * *"
//! drill = "6h"
//! prune = "1d"
//! globals = true                     # roles and tablespaces; role_passwords = false
//! ```
//!
//! The environment names of the common pg_dump-to-S3 templates work as they
//! are: DATABASE_URL (a source named `default`, or the first source's URL),
//! S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_REGION,
//! BACKUP_PREFIX, BACKUP_INTERVAL and VERIFY_INTERVAL (seconds or "1h"),
//! BACKUP_RETENTION_DAYS (prune backups older than that, through the built-in
//! age policy when the policies directory has no retention policy),
//! COMPRESSION_LEVEL, VERIFY_LATEST (drill the latest rather than the latest
//! undrilled) and VERIFY_BACKUP_FILE (drill that backup id).
//!
//! For containers, every setting a deployment varies has an environment
//! name too: FIREDRILL_LISTEN, FIREDRILL_POLICIES, FIREDRILL_DRILL_URL
//! (`local` or a drill server), FIREDRILL_REDIS_URL, FIREDRILL_CATALOG_URL,
//! FIREDRILL_TRUSTED_PLUGIN_KEYS and the key settings above.
//!
//! Invariants: an invalid setting is an error that names it, before anything
//! starts; secret values (passwords in URLs, keys) never appear in messages
//! or in [`Config::describe`].

pub mod schedule;

pub use schedule::Schedule;

use crate::servers::pg::PgUrl;
use crate::servers::redis::RedisUrl;
use crate::telemetry::redact::redact_url;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A setting that is wrong: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

/// `/v1/events` streams open at once unless `api.max_event_streams` says.
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 64;
/// Parallel COPY connections of a backup or a drill's restore.
pub const DEFAULT_JOBS: usize = 4;
/// zstd's level unless a source (or COMPRESSION_LEVEL) says.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// Tables are cut into objects of about this many uncompressed bytes.
pub const DEFAULT_CHUNK_SIZE: &str = "64MiB";
/// Retention never deletes a backup younger than this.
pub const DEFAULT_MIN_AGE: &str = "1h";
/// An unfinished backup older than this is abandoned (deletable).
pub const DEFAULT_ABANDON_AFTER: &str = "24h";
/// Deletions one prune may make.
pub const DEFAULT_MAX_DELETIONS: usize = 10;

/// A source's name files its backups (`<source>/<backup-id>/`) and names its
/// leases: letters, digits, '-', '_' and '.'.
pub fn check_source_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!("{name:?}: use letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

fn bad(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        message: message.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    drill: RawDrill,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    coordination: RawCoordination,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    catalog: RawCatalog,
    #[serde(default, rename = "source")]
    sources: Vec<RawSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    listen: Option<String>,
    policies: Option<PathBuf>,
    reload_debounce: Option<String>,
    #[serde(default)]
    trusted_plugin_keys: Vec<String>,
    require_signed_plugins: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    gcs_credentials_file: Option<PathBuf>,
    gcs_endpoint: Option<String>,
    azure_account: Option<String>,
    azure_endpoint: Option<String>,
    #[serde(default)]
    recipients: Vec<String>,
    #[serde(default)]
    identity_files: Vec<PathBuf>,
    signing_key_file: Option<PathBuf>,
    #[serde(default)]
    verify_keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    target: Option<String>,
    jobs: Option<usize>,
    pick: Option<String>,
    assertions: Option<PathBuf>,
    quota: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordination {
    redis_url: Option<String>,
    namespace: Option<String>,
    lease: Option<String>,
    stream_len: Option<usize>,
    lock_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    audit_log: Option<PathBuf>,
    max_event_streams: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    min_age: Option<String>,
    abandon_after: Option<String>,
    max_deletions: Option<usize>,
    days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
    plugin_sql_url: Option<String>,
    backup: Option<String>,
    drill: Option<String>,
    prune: Option<String>,
    jobs: Option<usize>,
    compression_level: Option<i32>,
    chunk_size: Option<String>,
    globals: Option<bool>,
    role_passwords: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: std::net::SocketAddr,
    pub policies: Option<PathBuf>,
    pub reload_debounce: Duration,
    /// Which keys may sign plugins; whether every plugin must be signed.
    pub plugin_trust: crate::runtime::PluginTrust,
    pub store_url: String,
    /// Endpoints and credentials of the S3, GCS and Azure stores.
    pub store: crate::archive::StoreOptions,
    /// Encryption and signing keys (checked to load when the config is).
    pub keys: crate::archive::KeySettings,
    pub drill_target: DrillTargetConfig,
    pub drill_jobs: usize,
    pub drill_pick: crate::jobs::drill::Pick,
    pub assertions: Option<PathBuf>,
    pub min_age: Duration,
    pub abandon_after: Duration,
    pub max_deletions: usize,
    /// Prune by age with the built-in policy (BACKUP_RETENTION_DAYS).
    pub retention_days: Option<u32>,
    /// Locks, quota and events; single-node when `redis_url` is none.
    pub coordination: crate::coord::CoordOptions,
    /// Where each API authorization decision is appended (JSON lines).
    pub audit_log: Option<PathBuf>,
    /// `/v1/events` streams open at once; past it the API answers 429.
    pub max_event_streams: usize,
    /// Job history, drill results and the audit log, in schema `firedrill`.
    pub catalog: Option<PgUrl>,
    pub sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone)]
pub enum DrillTargetConfig {
    Local,
    Server(PgUrl),
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    /// PostgreSQL databases of one server (empty for a Redis source).
    pub urls: Vec<PgUrl>,
    /// A Redis server, backed up whole.
    pub redis: Option<RedisUrl>,
    /// The role a dump planner's `source` sql grant connects as.
    pub plugin_sql: Option<PgUrl>,
    /// None only for the sources a CLI command makes from its flags.
    pub backup: Option<Schedule>,
    pub drill: Option<Schedule>,
    pub prune: Option<Schedule>,
    pub jobs: usize,
    pub compression_level: i32,
    pub chunk_bytes: u64,
    /// Roles and tablespaces in each backup.
    pub globals: bool,
    /// Role passwords in the globals (off: a backup then holds no hashes).
    pub role_passwords: bool,
}

impl SourceConfig {
    /// A source with every default and no schedule.
    pub fn new(name: &str, urls: Vec<PgUrl>, redis: Option<RedisUrl>) -> SourceConfig {
        SourceConfig {
            name: name.into(),
            urls,
            redis,
            plugin_sql: None,
            backup: None,
            drill: None,
            prune: None,
            jobs: DEFAULT_JOBS,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            chunk_bytes: crate::runtime::policy::parse_size(DEFAULT_CHUNK_SIZE)
                .expect("the default chunk size parses"),
            globals: true,
            role_passwords: false,
        }
    }
}

impl Config {
    /// Reads `file` (if any) and applies the environment `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            None => String::new(),
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| bad(f.display().to_string(), format!("cannot read: {e}")))?,
        };
        let name = file.map(|f| f.display().to_string()).unwrap_or_default();
        Config::parse(&name, &text, env)
    }

    /// A configuration file's text (`name` is how errors call it), with the
    /// environment `env` applied.
    pub fn parse(
        name: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
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
        })?;
        let c = Config::build(raw, &env)?;
        if c.sources.is_empty() {
            return Err(bad(
                "source",
                "no sources: add a [[source]] with urls, or set DATABASE_URL",
            ));
        }
        Ok(c)
    }

    /// The configuration a CLI command runs its job under when no file is
    /// given: every default, the environment applied (coordination,
    /// catalog, drill target, policies, keys), the store `store_url`, and
    /// the sources the command adds from its flags.
    pub fn adhoc(
        store_url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::default();
        raw.store.url = Some(store_url.into());
        let mut c = Config::build(raw, &|k| match k {
            // The command's own flags say these.
            "DATABASE_URL" | "S3_BUCKET" => None,
            _ => env(k),
        })?;
        c.sources.clear();
        Ok(c)
    }

    fn build(
        mut raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        // The template environment, over the file.
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
        ] {
            if let Some(v) = var(k) {
                *slot = Some(v);
            }
        }
        // Each cloud's own names; the secrets are read from the
        // environment only, never from the file.
        if let Some(v) = var("GOOGLE_APPLICATION_CREDENTIALS") {
            raw.store.gcs_credentials_file = Some(v.into());
        }
        if let Some(v) = var("AZURE_STORAGE_ACCOUNT") {
            raw.store.azure_account = Some(v);
        }
        if let Some(v) = var("AZURE_STORAGE_SERVICE_ENDPOINT") {
            raw.store.azure_endpoint = Some(v);
        }
        if let Some(v) = var("FIREDRILL_POLICIES") {
            raw.agent.policies = Some(v.into());
        }
        let list = |v: String| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        };
        if let Some(v) = var("FIREDRILL_AGE_RECIPIENTS") {
            raw.store.recipients = list(v);
        }
        if let Some(v) = var("FIREDRILL_AGE_IDENTITY") {
            raw.store.identity_files = list(v).into_iter().map(PathBuf::from).collect();
        }
        if let Some(v) = var("FIREDRILL_SIGNING_KEY") {
            raw.store.signing_key_file = Some(v.into());
        }
        if let Some(v) = var("FIREDRILL_VERIFY_KEYS") {
            raw.store.verify_keys = list(v);
        }
        if let Some(v) = var("FIREDRILL_TRUSTED_PLUGIN_KEYS") {
            raw.agent.trusted_plugin_keys = list(v);
        }
        if let Some(bucket) = var("S3_BUCKET") {
            raw.store.url = Some(format!(
                "s3://{bucket}/{}",
                var("BACKUP_PREFIX").unwrap_or_default()
            ));
        }
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
        let pick = match var("VERIFY_BACKUP_FILE") {
            Some(id) => crate::jobs::drill::Pick::Id(id),
            None => {
                let latest = match var("VERIFY_LATEST").as_deref().map(str::trim) {
                    None => None,
                    Some("true" | "1" | "yes") => Some(true),
                    Some("false" | "0" | "no") => Some(false),
                    Some(v) => {
                        return Err(bad("VERIFY_LATEST", format!("{v:?}: use true or false")))
                    }
                };
                match (latest, raw.drill.pick.as_deref()) {
                    (Some(true), _) | (None, Some("latest")) => crate::jobs::drill::Pick::Latest,
                    (Some(false), _) | (None, None | Some("latest-unverified")) => {
                        crate::jobs::drill::Pick::LatestUnverified
                    }
                    (None, Some(p)) => {
                        return Err(bad(
                            "drill.pick",
                            format!("{p:?}: use \"latest\" or \"latest-unverified\""),
                        ))
                    }
                }
            }
        };

        let duration = |setting: &str,
                        v: Option<String>,
                        default: Duration|
         -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) => humantime::parse_duration(s.trim())
                    .map_err(|_| bad(setting, format!("{s:?} is not a duration (e.g. 30m, 1h)"))),
            }
        };
        let listen = raw.agent.listen.unwrap_or_else(|| "127.0.0.1:9187".into());
        let listen = listen.parse().map_err(|_| {
            bad(
                "agent.listen",
                format!("{listen:?} is not an address (e.g. 127.0.0.1:9187)"),
            )
        })?;
        let store_url = raw.store.url.ok_or_else(|| {
            bad(
                "store.url",
                format!(
                    "no store: set store.url ({}) or S3_BUCKET",
                    crate::archive::store::STORE_URL_FORMS
                ),
            )
        })?;
        crate::archive::store::check_url(&store_url)
            .map_err(|m| bad("store.url", format!("{:?}: {m}", redact_url(&store_url))))?;
        let drill_target = match raw.drill.target.as_deref() {
            None | Some("local") => DrillTargetConfig::Local,
            Some(u) => DrillTargetConfig::Server(
                PgUrl::parse(u).map_err(|e| bad("drill.target", format!("{e} (or \"local\")")))?,
            ),
        };
        let mut sources = Vec::new();
        for (i, s) in raw.sources.into_iter().enumerate() {
            let at = |k: &str| format!("source[{i}].{k}");
            let name = s.name.unwrap_or_else(|| format!("source{i}"));
            check_source_name(&name).map_err(|m| bad(at("name"), m))?;
            if sources.iter().any(|o: &SourceConfig| o.name == name) {
                return Err(bad(at("name"), format!("{name:?} is used twice")));
            }
            if s.urls.is_empty() {
                return Err(bad(at("urls"), "no database URL"));
            }
            // A Redis source is one server: its snapshot holds every database.
            let redis = match s.urls.iter().filter(|u| RedisUrl::is_redis(u)).count() {
                0 => None,
                1 if s.urls.len() == 1 => Some(RedisUrl::parse(&s.urls[0]).map_err(|e| bad(at("urls"), e))?),
                _ => {
                    return Err(bad(
                        at("urls"),
                        "a Redis source has exactly one redis:// URL (its snapshot holds every database); put PostgreSQL servers in sources of their own",
                    ))
                }
            };
            let urls = s
                .urls
                .iter()
                .filter(|_| redis.is_none())
                .map(|u| PgUrl::parse(u).map_err(|e| bad(at("urls"), e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let plugin_sql = match s.plugin_sql_url.as_deref().filter(|u| !u.trim().is_empty()) {
                None => None,
                Some(_) if redis.is_some() => {
                    return Err(bad(
                        at("plugin_sql_url"),
                        "a Redis source has no SQL: remove the setting",
                    ))
                }
                Some(u) => {
                    let p =
                        PgUrl::parse(u).map_err(|e| bad(at("plugin_sql_url"), e.to_string()))?;
                    // Plugins must never act as the backup role.
                    if let Some(same) = urls.iter().find(|b| b.user() == p.user()) {
                        return Err(bad(
                            at("plugin_sql_url"),
                            format!(
                                "connects as {:?}, the role the backups run as ({}): create a role of its own for plugins (e.g. CREATE ROLE planner LOGIN; GRANT pg_read_all_stats TO planner)",
                                p.user(),
                                same.redacted()
                            ),
                        ));
                    }
                    Some(p)
                }
            };
            let schedule = |k: &str, v: Option<String>| {
                v.map(|v| Schedule::parse(&v).map_err(|e| bad(at(k), e)))
                    .transpose()
            };
            let backup = schedule("backup", s.backup)?.ok_or_else(|| bad(at("backup"), "no backup schedule (an interval such as 1h, or \"cron: 0 3 * * *\"; or BACKUP_INTERVAL)"))?;
            let level = s.compression_level.unwrap_or(DEFAULT_COMPRESSION_LEVEL);
            if !(1..=19).contains(&level) {
                return Err(bad(
                    at("compression_level"),
                    format!("{level}: zstd levels are 1 to 19"),
                ));
            }
            let mut source = SourceConfig::new(&name, urls, redis);
            source.plugin_sql = plugin_sql;
            source.backup = Some(backup);
            source.drill = schedule("drill", s.drill)?;
            source.prune = schedule("prune", s.prune)?;
            source.jobs = s.jobs.unwrap_or(DEFAULT_JOBS).max(1);
            source.compression_level = level;
            if let Some(c) = s.chunk_size {
                source.chunk_bytes = crate::runtime::policy::parse_size(&c)
                    .map_err(|e| bad(at("chunk_size"), e))?
                    .max(1);
            }
            source.globals = s.globals.unwrap_or(true);
            source.role_passwords = s.role_passwords.unwrap_or(false);
            sources.push(source);
        }
        let mut coordination = crate::coord::CoordOptions::default();
        if let Some(url) = raw.coordination.redis_url.filter(|u| !u.is_empty()) {
            let parsed = url::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "redis" | "rediss"));
            if parsed.is_none() {
                return Err(bad(
                    "coordination.redis_url",
                    format!(
                        "{:?}: expected redis://[user:password@]host:port/db",
                        redact_url(&url)
                    ),
                ));
            }
            coordination.redis_url = Some(url);
        }
        if let Some(ns) = raw.coordination.namespace {
            if ns.is_empty() || ns.contains(char::is_whitespace) {
                return Err(bad(
                    "coordination.namespace",
                    format!("{ns:?}: a non-empty prefix without spaces, e.g. \"firedrill:\""),
                ));
            }
            coordination.namespace = ns;
        }
        coordination.lease = duration(
            "coordination.lease",
            raw.coordination.lease,
            coordination.lease,
        )?;
        if coordination.lease < Duration::from_secs(1) {
            return Err(bad(
                "coordination.lease",
                "at least 1s: renewals run every third of it",
            ));
        }
        coordination.lock_dir = Some(
            raw.coordination
                .lock_dir
                .unwrap_or_else(|| crate::coord::default_lock_dir(&|k| var(k))),
        );
        coordination.scope = store_url.clone();
        if let Some(n) = raw.coordination.stream_len {
            coordination.stream_len = n.max(1);
        }
        if let Some(q) = raw.drill.quota {
            if q == 0 {
                return Err(bad("drill.quota", "0 would never drill; at least 1"));
            }
            coordination.drill_quota = q;
        }
        let catalog = match raw.catalog.url {
            None => None,
            Some(u) => Some(PgUrl::parse(&u).map_err(|e| bad("catalog.url", e.to_string()))?),
        };
        let keys = crate::archive::KeySettings {
            recipients: raw.store.recipients,
            identity_files: raw.store.identity_files,
            signing_key_file: raw.store.signing_key_file,
            verify_keys: raw.store.verify_keys,
        };
        crate::archive::Keys::load(&keys).map_err(|e| bad(e.setting(), e.to_string()))?;
        let plugin_trust = crate::runtime::PluginTrust::new(
            &raw.agent.trusted_plugin_keys,
            raw.agent.require_signed_plugins,
        )
        .map_err(|e| bad("agent.trusted_plugin_keys", e.to_string()))?;
        if raw.agent.require_signed_plugins == Some(true)
            && raw.agent.trusted_plugin_keys.is_empty()
        {
            return Err(bad(
                "agent.require_signed_plugins",
                "no plugin could load: list the keys that sign plugins in agent.trusted_plugin_keys",
            ));
        }
        let max_event_streams = match var("FIREDRILL_MAX_EVENT_STREAMS") {
            Some(v) => v.trim().parse().map_err(|_| {
                bad(
                    "FIREDRILL_MAX_EVENT_STREAMS",
                    format!("{v:?} is not a number of streams"),
                )
            })?,
            None => raw
                .api
                .max_event_streams
                .unwrap_or(DEFAULT_MAX_EVENT_STREAMS),
        };
        if !(1..=100_000).contains(&max_event_streams) {
            return Err(bad(
                "api.max_event_streams",
                format!("{max_event_streams}: use 1 to 100000 (each stream holds a connection and a task)"),
            ));
        }
        let store = crate::archive::StoreOptions {
            s3: crate::archive::S3Options {
                endpoint: raw.store.s3_endpoint,
                region: raw.store.s3_region,
                access_key_id: raw.store.s3_access_key_id,
                secret_access_key: raw.store.s3_secret_access_key,
            },
            gcs: crate::archive::GcsOptions {
                credentials_file: raw.store.gcs_credentials_file,
                emulator_host: var("STORAGE_EMULATOR_HOST"),
                endpoint: raw.store.gcs_endpoint,
            },
            azure: crate::archive::AzureOptions {
                connection_string: var("AZURE_STORAGE_CONNECTION_STRING"),
                account: raw.store.azure_account,
                key: var("AZURE_STORAGE_KEY"),
                sas_token: var("AZURE_STORAGE_SAS_TOKEN"),
                endpoint: raw.store.azure_endpoint,
            },
        };
        // A cloud store's credentials are checked now (present, well formed;
        // nothing is sent): opening one builds its client and no more.
        if store_url.starts_with("gs://") || store_url.starts_with("azblob://") {
            crate::archive::Store::open(&store_url, &store).map_err(|e| {
                bad(
                    "store",
                    e.to_string().trim_start_matches("store: ").to_string(),
                )
            })?;
        }
        Ok(Config {
            listen,
            policies: raw.agent.policies,
            reload_debounce: duration(
                "agent.reload_debounce",
                raw.agent.reload_debounce,
                Duration::from_millis(200),
            )?,
            plugin_trust,
            store_url,
            store,
            keys,
            drill_target,
            drill_jobs: raw.drill.jobs.unwrap_or(DEFAULT_JOBS).max(1),
            drill_pick: pick,
            assertions: raw.drill.assertions,
            min_age: duration(
                "retention.min_age",
                raw.retention.min_age,
                humantime::parse_duration(DEFAULT_MIN_AGE).expect("a duration"),
            )?,
            abandon_after: duration(
                "retention.abandon_after",
                raw.retention.abandon_after,
                humantime::parse_duration(DEFAULT_ABANDON_AFTER).expect("a duration"),
            )?,
            max_deletions: raw
                .retention
                .max_deletions
                .unwrap_or(DEFAULT_MAX_DELETIONS),
            retention_days: raw.retention.days,
            coordination,
            audit_log: raw.api.audit_log,
            max_event_streams,
            catalog,
            sources,
        })
    }

    /// Every secret value this configuration holds: the host scrubs them
    /// from all output before the redactor plugin sees it.
    pub fn secrets(&self) -> Vec<String> {
        use crate::telemetry::redact::url_password;
        let mut out: Vec<String> = self
            .sources
            .iter()
            .flat_map(|s| {
                s.urls
                    .iter()
                    .filter_map(|u| u.password())
                    .chain(s.redis.iter().filter_map(|r| url_password(r.secret_url())))
                    .chain(s.plugin_sql.iter().filter_map(|u| u.password()))
            })
            .collect();
        out.extend(
            self.coordination
                .redis_url
                .as_deref()
                .and_then(url_password),
        );
        if let DrillTargetConfig::Server(u) = &self.drill_target {
            out.extend(u.password());
        }
        out.extend(url_password(&self.store_url));
        out.extend(self.store.s3.secret_access_key.clone());
        out.extend(self.store.s3.access_key_id.clone());
        out.extend(self.store.azure.secrets());
        out.extend(self.catalog.as_ref().and_then(|c| c.password()));
        out
    }

    /// A summary for people: every secret left out.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "store      {}\ndrill      {}\npolicies   {}\nlisten     {}\nretention  min age {}, at most {} deletions per run{}\n",
            redact_url(&self.store_url),
            match &self.drill_target {
                DrillTargetConfig::Local => "a local throwaway cluster".to_string(),
                DrillTargetConfig::Server(u) => u.redacted(),
            },
            self.policies.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into()),
            self.listen,
            humantime::format_duration(self.min_age),
            self.max_deletions,
            self.retention_days.map(|d| format!(", older than {d} days")).unwrap_or_default()
        );
        let k = &self.keys;
        out.push_str(&format!(
            "keys       {}; {} identity file(s); manifests {}{}\n",
            match k.recipients.len() {
                0 => "backups not encrypted".to_string(),
                n => format!(
                    "backups encrypted (age) to {n} recipient entr{}",
                    if n == 1 { "y" } else { "ies" }
                ),
            },
            k.identity_files.len(),
            if k.signing_key_file.is_some() {
                "signed"
            } else {
                "not signed"
            },
            match k.verify_keys.len() {
                0 => String::new(),
                n => format!(", {n} more trusted signer(s)"),
            }
        ));
        let c = &self.coordination;
        out.push_str(&match &c.redis_url {
            None => "coord      single node (in-process locks)\n".to_string(),
            Some(u) => format!(
                "coord      {} namespace {:?}, lease {}, {} drills at once\n",
                redact_url(u),
                c.namespace,
                humantime::format_duration(c.lease),
                c.drill_quota
            ),
        });
        for s in &self.sources {
            out.push_str(&format!(
                "source     {}: {}{} (backup {:?}, drill {:?}, prune {:?})\n",
                s.name,
                s.urls
                    .iter()
                    .map(|u| u.redacted())
                    .chain(s.redis.iter().map(|r| r.redacted()))
                    .collect::<Vec<_>>()
                    .join(", "),
                s.plugin_sql
                    .as_ref()
                    .map(|u| format!("; plugin sql as {}", u.user()))
                    .unwrap_or_default(),
                s.backup,
                s.drill,
                s.prune
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse("test.toml", toml, |k| env.get(k).cloned())
    }

    #[test]
    fn plugin_sql_is_a_role_of_its_own_and_never_shown() {
        let base = "[store]\nurl = \"file:///b\"\n[[source]]\nname = \"app\"\nurls = [\"postgres://backup:b4ck@db/app\"]\nbackup = \"1h\"\n";
        let c = load(
            &format!("{base}plugin_sql_url = \"postgres://planner:pl4n@db/app\"\n"),
            &[],
        )
        .unwrap();
        let p = c.sources[0].plugin_sql.as_ref().unwrap();
        assert_eq!(p.user(), "planner");
        assert!(c.secrets().contains(&"pl4n".to_string()));
        let shown = c.describe();
        assert!(
            shown.contains("plugin sql as planner") && !shown.contains("pl4n"),
            "{shown}"
        );
        // From the environment, for the first source.
        let c = load(
            base,
            &[("FIREDRILL_PLUGIN_SQL_URL", "postgres://env@db/app")],
        )
        .unwrap();
        assert_eq!(c.sources[0].plugin_sql.as_ref().unwrap().user(), "env");
        // The backup role is refused, naming the setting and without its password.
        let e = load(
            &format!("{base}plugin_sql_url = \"postgres://backup:b4ck@db/app\"\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.setting, "source[0].plugin_sql_url");
        assert!(
            e.message.contains("backups run as") && !e.to_string().contains("b4ck"),
            "{e}"
        );
    }

    #[test]
    fn a_container_sets_listen_policies_drill_target_and_plugin_trust_by_environment() {
        let (_, public) = crate::archive::keys::signing_pair();
        let c = load(
            "[agent]\nlisten = \"127.0.0.1:1\"\n[drill]\ntarget = \"local\"\n",
            &[
                ("DATABASE_URL", "postgres://app@db/app"),
                ("S3_BUCKET", "b"),
                ("BACKUP_INTERVAL", "1h"),
                ("FIREDRILL_LISTEN", "0.0.0.0:9187"),
                ("FIREDRILL_POLICIES", "/etc/firedrill/policies"),
                ("FIREDRILL_DRILL_URL", "postgres://drill@drills/postgres"),
                ("FIREDRILL_TRUSTED_PLUGIN_KEYS", &public),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9187");
        assert_eq!(
            c.policies.as_deref(),
            Some(Path::new("/etc/firedrill/policies"))
        );
        assert!(
            matches!(c.drill_target, DrillTargetConfig::Server(_)),
            "{:?}",
            c.drill_target
        );
        assert!(c.plugin_trust.required());
        let e = load(
            "",
            &[
                ("DATABASE_URL", "postgres://app@db/app"),
                ("S3_BUCKET", "b"),
                ("BACKUP_INTERVAL", "1h"),
                ("FIREDRILL_TRUSTED_PLUGIN_KEYS", "nope"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.setting, "agent.trusted_plugin_keys");
    }

    #[test]
    fn the_template_environment_alone_is_a_configuration() {
        let c = load(
            "",
            &[
                ("DATABASE_URL", "postgres://app:pw@db/app"),
                ("S3_BUCKET", "backups"),
                ("BACKUP_PREFIX", "postgres-backups"),
                ("S3_SECRET_ACCESS_KEY", "very-secret-key"),
                ("BACKUP_INTERVAL", "3600"),
                ("VERIFY_INTERVAL", "86400"),
                ("BACKUP_RETENTION_DAYS", "7"),
                ("COMPRESSION_LEVEL", "6"),
                ("VERIFY_LATEST", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.store_url, "s3://backups/postgres-backups");
        assert_eq!(c.sources[0].name, "default");
        assert_eq!(
            c.sources[0].backup,
            Some(Schedule::Every(Duration::from_secs(3600)))
        );
        assert_eq!(
            c.sources[0].drill,
            Some(Schedule::Every(Duration::from_secs(86400)))
        );
        assert_eq!(c.sources[0].compression_level, 6);
        assert_eq!(c.retention_days, Some(7));
        assert!(matches!(c.drill_pick, crate::jobs::drill::Pick::Latest));
        let shown = c.describe();
        assert!(
            !shown.contains("very-secret-key") && !shown.contains(":pw@"),
            "{shown}"
        );
    }

    #[test]
    fn redis_sources_and_coordination() {
        let toml = "[store]\nurl = \"file:///b\"\n[coordination]\nredis_url = \"redis://:coord-pw@r:6379/\"\nlease = \"10s\"\n[drill]\nquota = 1\n[[source]]\nname = \"cache\"\nurls = [\"redis://:cache-pw@cache:6380\"]\nbackup = \"1h\"\n";
        let c = load(toml, &[]).unwrap();
        assert!(c.sources[0].redis.is_some() && c.sources[0].urls.is_empty());
        assert_eq!(c.coordination.lease, Duration::from_secs(10));
        assert_eq!(c.coordination.drill_quota, 1);
        let shown = c.describe();
        assert!(
            shown.contains("redis://:***@cache:6380") && !shown.contains("pw@"),
            "{shown}"
        );
        let mixed = toml.replace(
            "[\"redis://:cache-pw@cache:6380\"]",
            "[\"redis://cache\", \"postgres://db/a\"]",
        );
        let e = load(&mixed, &[]).unwrap_err();
        assert_eq!(e.setting, "source[0].urls");
        let e = load(&toml.replace("10s", "0s"), &[]).unwrap_err();
        assert_eq!(e.setting, "coordination.lease");
        let e = load(
            &toml.replace("redis://:coord-pw@r:6379/", "http://:coord-pw@r/"),
            &[],
        )
        .unwrap_err();
        assert!(
            e.setting == "coordination.redis_url" && !e.message.contains("coord-pw"),
            "{e}"
        );
    }

    #[test]
    fn event_streams_are_capped_by_file_or_environment() {
        let base = "[store]\nurl = \"file:///b\"\n[[source]]\nname = \"a\"\nurls = [\"postgres://db/a\"]\nbackup = \"1h\"\n";
        assert_eq!(
            load(base, &[]).unwrap().max_event_streams,
            DEFAULT_MAX_EVENT_STREAMS
        );
        let toml = format!("[api]\nmax_event_streams = 5\n{base}");
        assert_eq!(load(&toml, &[]).unwrap().max_event_streams, 5);
        let c = load(&toml, &[("FIREDRILL_MAX_EVENT_STREAMS", "7")]).unwrap();
        assert_eq!(c.max_event_streams, 7);
        let e = load(&format!("[api]\nmax_event_streams = 0\n{base}"), &[]).unwrap_err();
        assert_eq!(e.setting, "api.max_event_streams", "{e}");
        let e = load(base, &[("FIREDRILL_MAX_EVENT_STREAMS", "many")]).unwrap_err();
        assert_eq!(e.setting, "FIREDRILL_MAX_EVENT_STREAMS", "{e}");
    }

    #[test]
    fn every_mistake_names_its_setting() {
        let base = "[store]\nurl = \"file:///b\"\n[[source]]\nname = \"a\"\nurls = [\"postgres://db/a\"]\nbackup = \"1h\"\n";
        let cases = [
            (base.replace("1h", "sometimes"), vec![], "source[0].backup"),
            (base.replace("file:///b", "ftp://x"), vec![], "store.url"),
            (
                base.replace("postgres://db/a", "mysql://db/a"),
                vec![],
                "source[0].urls",
            ),
            (
                format!("{base}compression_level = 40\n"),
                vec![],
                "source[0].compression_level",
            ),
            (
                format!("[agent]\nlisten = \"everywhere\"\n{base}"),
                vec![],
                "agent.listen",
            ),
            (
                base.to_string(),
                vec![("BACKUP_RETENTION_DAYS", "a week")],
                "BACKUP_RETENTION_DAYS",
            ),
            (
                base.to_string(),
                vec![("VERIFY_LATEST", "maybe")],
                "VERIFY_LATEST",
            ),
            (
                "[store]\nurl = \"file:///b\"\n".to_string(),
                vec![],
                "source",
            ),
            (
                base.replace("[store]\nurl = \"file:///b\"\n", ""),
                vec![],
                "store.url",
            ),
            (
                base.replace("file:///b\"", "file:///b\"\nrecipients = [\"age1notakey\"]"),
                vec![],
                "store.recipients",
            ),
            (
                base.to_string(),
                vec![("FIREDRILL_AGE_IDENTITY", "/nonexistent/age.key")],
                "store.identity_files",
            ),
            (
                base.replace(
                    "file:///b\"",
                    "file:///b\"\nsigning_key_file = \"/nonexistent/s.key\"",
                ),
                vec![],
                "store.signing_key_file",
            ),
            (
                base.to_string(),
                vec![("FIREDRILL_VERIFY_KEYS", "c2hvcnQ=")],
                "store.verify_keys",
            ),
        ];
        for (toml, env, setting) in cases {
            let e = load(&toml, &env)
                .err()
                .unwrap_or_else(|| panic!("{setting}: accepted"));
            assert_eq!(e.setting, setting, "{e}");
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_named_with_their_line() {
        let dir = std::env::temp_dir().join(format!("fd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("firedrill.toml");
        std::fs::write(
            &f,
            "[store]\nurl = \"file:///b\"\n[[source]]\nname = \"a\"\nurl = \"postgres://db/a\"\n",
        )
        .unwrap();
        let e = Config::load(Some(&f), |_| None).unwrap_err();
        assert!(
            e.message.contains("url") && e.message.contains("line 5"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
