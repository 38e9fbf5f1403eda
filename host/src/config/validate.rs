//! The file's settings, the environment applied, checked whole and turned
//! into a [`Config`].
//!
//! Invariants: every error names the setting it is about (the file key,
//! `source[i].key` for a source) and never shows a secret (URLs are
//! redacted); nothing reads the environment here ([`super::env`] did);
//! keys load and a cloud store's credentials are checked (nothing is sent)
//! before the agent starts.

use super::env::EnvOnly;
use super::raw::RawConfig;
use super::{
    bad, check_source_name, Config, ConfigError, DrillTargetConfig, Schedule, SourceConfig,
    DEFAULT_ABANDON_AFTER, DEFAULT_COMPRESSION_LEVEL, DEFAULT_JOBS, DEFAULT_MAX_CHAIN,
    DEFAULT_MAX_DELETIONS, DEFAULT_MAX_EVENT_STREAMS, DEFAULT_MIN_AGE,
};
use crate::jobs::drill::Pick;
use crate::servers::pg::PgUrl;
use crate::servers::redis::RedisUrl;
use crate::telemetry::redact::redact_url;
use std::time::Duration;

/// `raw` (the file with the environment applied) and what only the
/// environment says, as a [`Config`]; the first wrong setting is the error.
pub(super) fn validate(raw: RawConfig, env: EnvOnly) -> Result<Config, ConfigError> {
    let pick = match env.backup_id {
        Some(id) => Pick::Id(id),
        None => match raw.drill.pick.as_deref() {
            Some("latest") => Pick::Latest,
            None | Some("latest-unverified") => Pick::LatestUnverified,
            Some(p) => {
                return Err(bad(
                    "drill.pick",
                    format!("{p:?}: use \"latest\" or \"latest-unverified\""),
                ))
            }
        },
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
                let p = PgUrl::parse(u).map_err(|e| bad(at("plugin_sql_url"), e.to_string()))?;
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
        // Incremental backups are PostgreSQL 17's (BASE_BACKUP INCREMENTAL,
        // over its WAL summaries): only a physical source has them, and each
        // chain starts from a full backup on the `backup` schedule.
        if matches!(s.kind.as_deref(), None | Some("logical")) {
            let key = [
                ("incremental", s.incremental.is_some()),
                ("max_chain", s.max_chain.is_some()),
            ]
            .into_iter()
            .find_map(|(k, set)| set.then_some(k));
            if let Some(key) = key {
                let fix = if redis.is_some() {
                    "a Redis source's backups are whole snapshots: remove it".to_string()
                } else {
                    format!("this source is logical (pg_dump-compatible, per database): add kind = \"physical\" (one URL, the whole cluster), or remove {key}")
                };
                return Err(bad(
                    at(key),
                    format!("incremental backups are physical (PostgreSQL 17+); {fix}"),
                ));
            }
        }
        if s.incremental.is_some() && s.backup.is_none() {
            return Err(bad(
                at("backup"),
                "incremental needs backup, the schedule of the full backups each chain starts from (e.g. backup = \"cron: 0 3 * * 0\" weekly with incremental = \"cron: 0 3 * * *\")",
            ));
        }
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
        source.drill = schedule("drill", s.drill)?;
        // Days to keep and no prune schedule (the templates' way): each
        // backup's round prunes too, as their scripts do after an upload.
        source.prune = match schedule("prune", s.prune)? {
            None if raw.retention.days.is_some() => Some(backup.clone()),
            p => p,
        };
        source.backup = Some(backup);
        if let Some(t) = s.rpo_target {
            let t = duration(&at("rpo_target"), Some(t), Duration::ZERO)?;
            if t.is_zero() {
                return Err(bad(at("rpo_target"), "more than zero, e.g. \"1h\""));
            }
            source.rpo_target = Some(t);
        }
        source.jobs = s.jobs.unwrap_or(DEFAULT_JOBS).max(1);
        source.compression_level = level;
        if let Some(c) = s.chunk_size {
            source.chunk_bytes = crate::runtime::policy::parse_size(&c)
                .map_err(|e| bad(at("chunk_size"), e))?
                .max(1);
        }
        source.globals = s.globals.unwrap_or(true);
        source.role_passwords = s.role_passwords.unwrap_or(false);
        match s.kind.as_deref() {
            None | Some("logical") => {
                if s.slot.is_some()
                    || s.wal_stream.is_some()
                    || s.heartbeat.is_some()
                    || s.wal_partial_every.is_some()
                    || s.wal_warn_retained.is_some()
                {
                    return Err(bad(at("kind"), "slot, wal_stream, heartbeat, wal_partial_every and wal_warn_retained belong to physical sources: add kind = \"physical\""));
                }
            }
            Some("physical") => {
                if source.redis.is_some() {
                    return Err(bad(at("kind"), "a Redis source cannot be physical"));
                }
                if source.urls.len() != 1 {
                    return Err(bad(at("urls"), "a physical source is one server: give exactly one URL (a base backup holds every database)"));
                }
                source.physical = true;
                source.wal_stream = s.wal_stream.unwrap_or(true);
                source.heartbeat = match s.heartbeat.as_deref() {
                    Some("off") => None,
                    None => source.heartbeat,
                    Some(h) => Some(
                        crate::runtime::policy::parse_duration(h)
                            .map_err(|e| bad(at("heartbeat"), format!("{e} (or \"off\")")))?
                            .max(std::time::Duration::from_secs(1)),
                    ),
                };
                if let Some(p) = s.wal_partial_every {
                    source.wal_partial_every = crate::runtime::policy::parse_duration(&p)
                        .map_err(|e| bad(at("wal_partial_every"), e))?
                        .max(std::time::Duration::from_secs(1));
                }
                if let Some(w) = s.wal_warn_retained {
                    source.wal_warn_retained = crate::runtime::policy::parse_size(&w)
                        .map_err(|e| bad(at("wal_warn_retained"), e))?;
                }
                if let Some(slot) = s.slot {
                    crate::config::check_slot_name(&slot).map_err(|m| bad(at("slot"), m))?;
                    source.slot = Some(slot);
                }
                if let Some(n) = s.max_chain {
                    if n == 0 {
                        return Err(bad(at("max_chain"), format!("0 would make every backup full: at least 1 (default {DEFAULT_MAX_CHAIN})")));
                    }
                    source.max_chain = n;
                }
                if let Some(text) = s.incremental {
                    let inc = Schedule::parse(&text).map_err(|e| bad(at("incremental"), e))?;
                    if source.backup.as_ref().is_some_and(|full| never_runs(&inc, full)) {
                        return Err(bad(at("incremental"), format!("{text:?} fires only when backup does, and the full backup takes each such slot: make incremental more frequent than backup (e.g. daily incrementals between weekly full ones)")));
                    }
                    source.incremental = Some(inc);
                }
            }
            Some(other) => {
                return Err(bad(at("kind"), format!("{other:?}: expected \"logical\" (pg_dump-compatible, per database) or \"physical\" (base backups and WAL, point-in-time recovery)")))
            }
        }
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
    coordination.lock_dir = Some(raw.coordination.lock_dir.unwrap_or(env.lock_dir));
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
    if raw.agent.require_signed_plugins == Some(true) && raw.agent.trusted_plugin_keys.is_empty() {
        return Err(bad(
            "agent.require_signed_plugins",
            "no plugin could load: list the keys that sign plugins in agent.trusted_plugin_keys",
        ));
    }
    let max_event_streams = raw
        .api
        .max_event_streams
        .unwrap_or(DEFAULT_MAX_EVENT_STREAMS);
    if !(1..=100_000).contains(&max_event_streams) {
        return Err(bad(
            "api.max_event_streams",
            format!(
                "{max_event_streams}: use 1 to 100000 (each stream holds a connection and a task)"
            ),
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
            emulator_host: env.gcs_emulator_host,
            endpoint: raw.store.gcs_endpoint,
        },
        azure: crate::archive::AzureOptions {
            connection_string: env.azure_connection_string,
            account: raw.store.azure_account,
            key: env.azure_key,
            sas_token: env.azure_sas_token,
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
        max_deletions: raw.retention.max_deletions.unwrap_or(DEFAULT_MAX_DELETIONS),
        pitr_window: raw
            .retention
            .pitr_window
            .map(|w| duration("retention.pitr_window", Some(w), Duration::ZERO))
            .transpose()?,
        retention_days: raw.retention.days,
        coordination,
        audit_log: raw.api.audit_log,
        max_event_streams,
        catalog,
        sources,
    })
}

/// An incremental schedule every slot of which the full one takes (the
/// agent leaves a slot to the full backup when that fires within the
/// slot's window, `Schedule::slot_window`): the same schedule, an interval
/// a multiple of the full backups', or full backups at least as often as
/// that window. Crons are not compared beyond equality.
fn never_runs(incremental: &Schedule, full: &Schedule) -> bool {
    match (incremental, full) {
        (_, Schedule::Every(f)) if f.as_secs() as i64 <= incremental.slot_window() => true,
        (Schedule::Every(i), Schedule::Every(f)) => i.as_secs() % f.as_secs().max(1) == 0,
        (i, f) => i == f,
    }
}

/// A duration setting: `default` when unset.
fn duration(setting: &str, v: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s.trim())
            .map_err(|_| bad(setting, format!("{s:?} is not a duration (e.g. 30m, 1h)"))),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Schedule, DEFAULT_MAX_CHAIN};
    use std::time::Duration;

    fn load(source: &str) -> Result<Config, ConfigError> {
        Config::parse(
            "test.toml",
            &format!("[store]\nurl = \"file:///b\"\n[[source]]\nname = \"main\"\n{source}"),
            |_| None,
        )
    }

    const PHYSICAL: &str = "kind = \"physical\"\nurls = [\"postgres://repl@db/postgres\"]\n";

    #[test]
    fn a_physical_source_takes_an_incremental_schedule_and_a_chain_length() {
        let c = load(&format!(
            "{PHYSICAL}backup = \"cron: 0 3 * * 0\"\nincremental = \"cron: 0 3 * * *\"\nmax_chain = 6\n"
        ))
        .unwrap();
        let s = &c.sources[0];
        assert_eq!(
            s.incremental,
            Some(Schedule::parse("cron: 0 3 * * *").unwrap())
        );
        assert_eq!(s.max_chain, 6);
        // Intervals too; the chain length defaults.
        let c = load(&format!(
            "{PHYSICAL}backup = \"7d\"\nincremental = \"1d\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.sources[0].incremental,
            Some(Schedule::Every(Duration::from_secs(86_400)))
        );
        assert_eq!(c.sources[0].max_chain, DEFAULT_MAX_CHAIN);
        // Without incremental: none, and max_chain still applies to
        // incrementals asked for by hand (CLI, API).
        let c = load(&format!("{PHYSICAL}backup = \"1d\"\nmax_chain = 3\n")).unwrap();
        assert_eq!(c.sources[0].incremental, None);
        assert_eq!(c.sources[0].max_chain, 3);
    }

    #[test]
    fn an_rpo_target_is_a_duration_above_zero() {
        let logical = "urls = [\"postgres://db/app\"]\nbackup = \"1h\"\n";
        let c = load(&format!("{logical}rpo_target = \"2h\"\n")).unwrap();
        assert_eq!(c.sources[0].rpo_target, Some(Duration::from_secs(7200)));
        assert_eq!(load(logical).unwrap().sources[0].rpo_target, None);
        for bad in ["soon", "0s"] {
            let e = load(&format!("{logical}rpo_target = \"{bad}\"\n")).unwrap_err();
            assert_eq!(e.setting, "source[0].rpo_target", "{e}");
        }
    }

    #[test]
    fn incremental_settings_off_a_physical_source_are_refused_with_why() {
        let logical = "urls = [\"postgres://db/app\"]\nbackup = \"1d\"\n";
        for (extra, key) in [
            ("incremental = \"1h\"\n", "incremental"),
            ("max_chain = 3\n", "max_chain"),
        ] {
            for kind in ["", "kind = \"logical\"\n"] {
                let e = load(&format!("{kind}{logical}{extra}")).unwrap_err();
                assert_eq!(e.setting, format!("source[0].{key}"), "{e}");
                assert!(
                    e.message
                        .contains("incremental backups are physical (PostgreSQL 17+)")
                        && e.message.contains("kind = \"physical\""),
                    "{e}"
                );
            }
        }
        let e = load("urls = [\"redis://cache:6379\"]\nbackup = \"1d\"\nincremental = \"1h\"\n")
            .unwrap_err();
        assert_eq!(e.setting, "source[0].incremental", "{e}");
        assert!(
            e.message.contains("physical") && e.message.contains("Redis"),
            "{e}"
        );
        // A logical source without backup hears about the kind first: adding
        // a backup schedule would not help.
        let e = load("urls = [\"postgres://db/app\"]\nincremental = \"1h\"\n").unwrap_err();
        assert_eq!(e.setting, "source[0].incremental", "{e}");
    }

    #[test]
    fn incremental_needs_a_full_schedule_it_does_not_always_yield_to() {
        // Short intervals for tests: every third incremental slot is left
        // to the full backup, the others are the incremental's.
        assert!(load(&format!(
            "{PHYSICAL}backup = \"6s\"\nincremental = \"2s\"\n"
        ))
        .is_ok());
        let e = load(&format!("{PHYSICAL}incremental = \"1d\"\n")).unwrap_err();
        assert_eq!(e.setting, "source[0].backup", "{e}");
        assert!(
            e.message
                .contains("incremental needs backup, the schedule of the full backups"),
            "{e}"
        );
        for (backup, incremental) in [
            ("1d", "1d"),
            ("1d", "7d"),
            ("cron: 0 3 * * *", "cron: 0 3 * * *"),
            // A full backup in every minute leaves no incremental slot.
            ("30s", "cron: */5 * * * *"),
            ("5s", "10s"),
        ] {
            let e = load(&format!(
                "{PHYSICAL}backup = \"{backup}\"\nincremental = \"{incremental}\"\n"
            ))
            .unwrap_err();
            assert_eq!(
                e.setting, "source[0].incremental",
                "{backup} / {incremental}: {e}"
            );
            assert!(e.message.contains("more frequent than backup"), "{e}");
            assert!(
                e.message.contains(incremental),
                "names the value as written: {e}"
            );
        }
        let e = load(&format!(
            "{PHYSICAL}backup = \"1d\"\nincremental = \"now and then\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.setting, "source[0].incremental", "{e}");
        let e = load(&format!("{PHYSICAL}backup = \"1d\"\nmax_chain = 0\n")).unwrap_err();
        assert_eq!(e.setting, "source[0].max_chain", "{e}");
        assert!(e.message.contains("at least 1"), "{e}");
        // A negative length is TOML's business: refused with its line.
        let e = load(&format!("{PHYSICAL}backup = \"1d\"\nmax_chain = -1\n")).unwrap_err();
        assert!(e.message.contains("line 8"), "{e}");
    }
}
