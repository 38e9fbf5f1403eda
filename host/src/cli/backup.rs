//! `firedrill backup`.

use super::StoreArgs;
use anyhow::{bail, Context};
use firedrill::jobs::backup::redis::{self as backup_redis, RedisBackupOptions};
use firedrill::jobs::backup::{self, BackupOptions};
use firedrill::runtime::{PluginSet, World};
use firedrill::servers::pg::PgUrl;
use firedrill::servers::redis::RedisUrl;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The database to back up (repeat for several databases of one server).
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true,
        required_unless_present = "redis_url",
        value_delimiter = ','
    )]
    database_urls: Vec<String>,
    /// Back up a Redis server instead (its RDB snapshot, over the replication
    /// protocol): redis://[user:password@]host:port.
    #[arg(long)]
    redis_url: Option<String>,
    /// Every database of the server the first URL points at (except templates).
    #[arg(long)]
    all_databases: bool,
    /// The name backups of this server are filed under (default: host-port).
    #[arg(long)]
    source: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Parallel COPY connections.
    #[arg(long, short = 'j', default_value_t = 4)]
    jobs: usize,
    /// zstd level, 1 (fast) to 19 (small).
    #[arg(long, env = "COMPRESSION_LEVEL", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    compression_level: i32,
    /// Cut tables into objects of about this many uncompressed bytes, for parallel restore.
    #[arg(long, default_value = "64MiB", value_parser = firedrill::runtime::policy::parse_size)]
    chunk_size: u64,
    /// Skip roles and tablespaces.
    #[arg(long)]
    no_globals: bool,
    /// Include role passwords in the globals.
    #[arg(long)]
    role_passwords: bool,
    /// A policies directory whose dump-planner decides what to dump.
    #[arg(long, env = "FIREDRILL_POLICIES")]
    policies: Option<PathBuf>,
    /// The role a dump planner's `source` sql grant connects as (not the
    /// backup role); its database is swapped for each one dumped.
    #[arg(long, env = "FIREDRILL_PLUGIN_SQL_URL", hide_env_values = true)]
    plugin_sql_url: Option<String>,
    /// Print one JSON object (id, bytes, tables, seconds ...).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(url) = &args.redis_url {
        return redis(&args, url);
    }
    let mut urls = args
        .database_urls
        .iter()
        .map(|u| PgUrl::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let rt = super::runtime(args.jobs)?;
    if args.all_databases {
        let first = urls[0].clone();
        let names = rt.block_on(first.list_databases())?;
        urls = names.iter().map(|n| first.with_database(n)).collect();
    }
    let planner = match &args.policies {
        None => None,
        Some(dir) => {
            let runtime = super::plugin_runtime()?;
            let set = PluginSet::load_dir(&runtime, dir).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut planners = set.of_world(World::DumpPlanner);
            let p = planners.next().cloned();
            if let Some(extra) = planners.next() {
                bail!(
                    "{}: more than one dump-planner policy ({} and {}); keep one",
                    dir.display(),
                    p.unwrap().name(),
                    extra.name()
                );
            }
            p
        }
    };
    let store = args.store.open()?;
    let source = match args.source {
        Some(s) => s,
        None => urls[0].server(),
    };
    check_source_name(&source)?;
    let opts = BackupOptions {
        source,
        databases: urls,
        jobs: args.jobs.max(1),
        compression_level: args.compression_level,
        chunk_bytes: args.chunk_size.max(1),
        globals: !args.no_globals,
        role_passwords: args.role_passwords,
        planner,
        plugin_sql: args
            .plugin_sql_url
            .as_deref()
            .map(PgUrl::parse)
            .transpose()?,
        guard: None,
        progress: Default::default(),
    };
    let summary = rt
        .block_on(backup::run(&store, &opts))
        .context("backup failed; nothing was committed")?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "backup {} of {} ({}): {} tables, {} rows, {} stored ({} raw) in {:.1}s",
            summary.id,
            summary.source,
            summary.databases.join(", "),
            summary.tables,
            summary.rows,
            super::human_bytes(summary.bytes),
            super::human_bytes(summary.raw_bytes),
            summary.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn redis(args: &Args, url: &str) -> anyhow::Result<ExitCode> {
    let url = RedisUrl::parse(url).map_err(|e| anyhow::anyhow!("--redis-url: {e}"))?;
    let source = args.source.clone().unwrap_or_else(|| url.server());
    check_source_name(&source)?;
    let store = args.store.open()?;
    let opts = RedisBackupOptions {
        source,
        url,
        compression_level: args.compression_level,
        guard: None,
        progress: Default::default(),
    };
    let summary = super::runtime(2)?
        .block_on(backup_redis::run(&store, &opts))
        .context("backup failed; nothing was committed")?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "backup {} of {}: {} keys, {} stored ({} raw) in {:.1}s",
            summary.id,
            summary.source,
            summary.keys,
            super::human_bytes(summary.bytes),
            super::human_bytes(summary.raw_bytes),
            summary.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check_source_name(source: &str) -> anyhow::Result<()> {
    if source.is_empty()
        || !source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("--source {source:?}: use letters, digits, '-', '_' and '.'");
    }
    Ok(())
}
