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
//!                                    # default /run/firedrill if it exists or for root,
//!                                    # else /tmp/firedrill-<uid>)
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
//! pitr_window = "7d"                 # physical sources: recovery to any moment of the last 7 days
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
//! rpo_target = "2h"                  # alert when its newest recovery point is older
//! globals = true                     # roles and tablespaces; role_passwords = false
//!
//! [[source]]                         # point-in-time recovery (docs/PITR.md)
//! name = "main"
//! kind = "physical"                  # base backups + streamed WAL; one URL, the whole cluster
//! urls = ["postgres://repl@db/postgres"]   # a role with REPLICATION
//! backup = "cron: 0 3 * * 0"         # a full base backup each Sunday
//! incremental = "cron: 0 3 * * *"    # PostgreSQL 17+ (summarize_wal = on): an incremental
//!                                    # one on the latest the other nights; a slot the
//!                                    # full schedule also has is the full backup's
//! # max_chain = 14                   # incrementals after a full one before the next is full
//! drill = "cron: 0 5 * * *"          # restore to a random moment and prove it
//! # slot = "firedrill_main", wal_stream = true, wal_partial_every = "60s",
//! # heartbeat = "10s" (or "off"), wal_warn_retained = "1GiB"
//! ```
//!
//! The environment names of the common pg_dump-to-S3 templates work as they
//! are: DATABASE_URL (a source named `default`, or the first source's URL),
//! S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_REGION,
//! BACKUP_PREFIX, BACKUP_INTERVAL and VERIFY_INTERVAL (seconds or "1h"),
//! BACKUP_RETENTION_DAYS (prune backups older than that through the built-in
//! age policy, over any retention policy of the directory, after each
//! backup unless a source has a `prune` schedule of its own),
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
//!
//! One way through, in files: `raw.rs` parses the text into the file's
//! tables (unknown keys refused with their line), `env.rs` lays the
//! environment over them (every environment name is read there and only
//! there; `Config::adhoc` only hides two), `validate.rs` checks the result
//! whole into a [`Config`]; this file holds the types, the defaults,
//! loading, `describe` and `secrets`.

mod env;
mod raw;
pub mod schedule;
mod validate;

pub use schedule::Schedule;

use crate::servers::pg::PgUrl;
use crate::servers::redis::RedisUrl;
use crate::telemetry::redact::redact_url;
use raw::RawConfig;
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
/// How often a physical source's heartbeat is written.
pub const DEFAULT_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);
/// More WAL held back on a server than this is warned about.
pub const DEFAULT_WAL_WARN_RETAINED: u64 = 1 << 30;
/// Incremental backups after a full one before the next is full: two
/// weeks of dailies; every member adds to a restore's time and is one more
/// object that must be intact.
pub const DEFAULT_MAX_CHAIN: usize = 14;
/// How often the WAL segment in progress is archived as `.partial`.
pub const DEFAULT_WAL_PARTIAL_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

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

/// A physical replication slot's name, as PostgreSQL allows it.
pub fn check_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    {
        return Err(format!(
            "{name:?}: a slot name has 1 to 63 lower-case letters, digits and '_'"
        ));
    }
    Ok(())
}

fn bad(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        message: message.into(),
    }
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
    /// Physical sources: keep what recovery to any moment of this window
    /// before now needs (its base backup and its WAL).
    pub pitr_window: Option<Duration>,
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
    /// The most data the source may lose (its RPO): exported as a metric
    /// for the alert rules to compare its newest recovery point with.
    pub rpo_target: Option<Duration>,
    pub jobs: usize,
    pub compression_level: i32,
    pub chunk_bytes: u64,
    /// Roles and tablespaces in each backup.
    pub globals: bool,
    /// Role passwords in the globals (off: a backup then holds no hashes).
    pub role_passwords: bool,
    /// Physical: base backups over the replication protocol (one URL, the
    /// whole cluster) and, with `wal_stream`, continuous WAL archiving.
    pub physical: bool,
    /// The physical replication slot (default `firedrill_<source>`).
    pub slot: Option<String>,
    /// Physical, PostgreSQL 17+: when incremental backups run (`backup` is
    /// then the full backups' schedule).
    pub incremental: Option<Schedule>,
    /// Incremental backups after a full one, at most (the next is full).
    pub max_chain: usize,
    /// A physical source's WAL is streamed into the archive by the agent.
    pub wal_stream: bool,
    /// The streamer writes `firedrill.heartbeat` in the source this often:
    /// what a point-in-time drill proves the replay by (None: off).
    pub heartbeat: Option<std::time::Duration>,
    /// The WAL segment in progress is archived as `.partial` this often.
    pub wal_partial_every: std::time::Duration,
    /// A warning when the server holds more WAL than this that the archive
    /// does not have yet (what the slot keeps on the server's disk).
    pub wal_warn_retained: u64,
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
            rpo_target: None,
            jobs: DEFAULT_JOBS,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            chunk_bytes: crate::runtime::policy::parse_size(DEFAULT_CHUNK_SIZE)
                .expect("the default chunk size parses"),
            globals: true,
            role_passwords: false,
            physical: false,
            slot: None,
            incremental: None,
            max_chain: DEFAULT_MAX_CHAIN,
            wal_stream: false,
            heartbeat: Some(DEFAULT_HEARTBEAT),
            wal_partial_every: DEFAULT_WAL_PARTIAL_EVERY,
            wal_warn_retained: DEFAULT_WAL_WARN_RETAINED,
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
        let raw = RawConfig::parse(name, text)?;
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
        store: crate::archive::StoreOptions,
        keys: crate::archive::KeySettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        crate::archive::store::check_url(store_url)
            .map_err(|m| bad("--store", format!("{:?}: {m}", redact_url(store_url))))?;
        // The store and its keys are the flags'; the rest is checked as the
        // agent's would be (the store and the keys are opened, and so checked,
        // when the agent is assembled).
        let mut raw = RawConfig::default();
        raw.store.url = Some("file:///".into());
        let mut c = Config::build(raw, &|k| match k {
            // The command's own flags say these.
            "DATABASE_URL" | "S3_BUCKET" => None,
            _ => env(k),
        })?;
        c.sources.clear();
        (c.store_url, c.store, c.keys) = (store_url.into(), store, keys);
        c.coordination.scope = store_url.into();
        Ok(c)
    }

    /// The environment over `raw`, then every check.
    fn build(
        mut raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let only = env::overlay(&mut raw, env)?;
        validate::validate(raw, only)
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
                "source     {}: {}{} (backup {:?}{}, drill {:?}, prune {:?})\n",
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
                s.incremental
                    .as_ref()
                    .map(|i| format!(", incremental {i:?}, max_chain {}", s.max_chain))
                    .unwrap_or_default(),
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
    fn the_environment_picks_the_drilled_backup_over_the_file() {
        use crate::jobs::drill::Pick;
        let base = "[store]\nurl = \"file:///b\"\n[[source]]\nname = \"a\"\nurls = [\"postgres://db/a\"]\nbackup = \"1h\"\n";
        let pick = |toml: &str, env: &[(&str, &str)]| load(toml, env).map(|c| c.drill_pick);
        let file = format!("[drill]\npick = \"latest\"\n{base}");
        assert!(matches!(pick(&file, &[]), Ok(Pick::Latest)));
        assert!(matches!(
            pick(&file, &[("VERIFY_LATEST", "no")]),
            Ok(Pick::LatestUnverified)
        ));
        // An environment answer makes a wrong file value moot, as before.
        let wrong = format!("[drill]\npick = \"oldest\"\n{base}");
        assert_eq!(pick(&wrong, &[]).unwrap_err().setting, "drill.pick");
        assert!(matches!(
            pick(&wrong, &[("VERIFY_LATEST", "yes")]),
            Ok(Pick::Latest)
        ));
        // A backup id wins, and VERIFY_LATEST is not read then.
        assert!(matches!(
            pick(&wrong, &[("VERIFY_BACKUP_FILE", "b1"), ("VERIFY_LATEST", "maybe")]),
            Ok(Pick::Id(id)) if id == "b1"
        ));
    }

    #[test]
    fn a_cli_job_takes_its_database_and_bucket_from_its_flags_only() {
        let env: HashMap<&str, &str> = [
            ("DATABASE_URL", "postgres://app@db/app"),
            ("S3_BUCKET", "elsewhere"),
            ("FIREDRILL_LISTEN", "0.0.0.0:9187"),
        ]
        .into();
        let c = Config::adhoc("file:///b", Default::default(), Default::default(), |k| {
            env.get(k).map(|v| v.to_string())
        })
        .unwrap();
        assert_eq!(c.store_url, "file:///b");
        assert_eq!(c.coordination.scope, "file:///b");
        // A cloud store's settings come from the flags, checked when opened.
        let gcs = crate::archive::StoreOptions {
            gcs: crate::archive::GcsOptions {
                credentials_file: Some("/etc/firedrill/gcs.json".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let cloud = Config::adhoc("gs://bucket/p", gcs, Default::default(), |_| None).unwrap();
        assert!(cloud.store.gcs.credentials_file.is_some());
        assert!(Config::adhoc(
            "gcs://bucket",
            Default::default(),
            Default::default(),
            |_| None
        )
        .is_err_and(|e| e.setting == "--store"));
        assert!(c.sources.is_empty(), "{:?}", c.sources);
        // The rest of the environment still applies.
        assert_eq!(c.listen.to_string(), "0.0.0.0:9187");
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
