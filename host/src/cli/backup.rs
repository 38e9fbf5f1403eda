//! `firedrill backup`.

use super::RunArgs;
use anyhow::{bail, Context};
use firedrill::agent::{JobRequest, JobResult};
use firedrill::config::{Config, SourceConfig};
use firedrill::jobs::status::Kind;
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
        required_unless_present_any = ["redis_url", "config"],
        value_delimiter = ','
    )]
    database_urls: Vec<String>,
    /// Back up a Redis server instead (its RDB snapshot, over the replication
    /// protocol): redis://[user:password@]host:port.
    #[arg(long)]
    redis_url: Option<String>,
    /// A physical base backup of the whole cluster over the replication
    /// protocol (the role needs REPLICATION), for point-in-time recovery
    /// with the WAL archive (`firedrill wal stream`).
    #[arg(long, conflicts_with_all = ["redis_url", "all_databases"])]
    physical: bool,
    /// Physical, PostgreSQL 17+ (summarize_wal = on): an incremental backup
    /// on the source's latest; a full one when there is none to build on or
    /// the chain is --max-chain long (the output says why). With --physical,
    /// or --config and a physical source.
    #[arg(long)]
    incremental: bool,
    /// With --incremental: incrementals after a full backup before the next
    /// is full (default 14, or the configured source's max_chain).
    #[arg(long, requires = "incremental", value_parser = clap::value_parser!(u64).range(1..))]
    max_chain: Option<u64>,
    /// Every database of the server the first URL points at (except templates).
    #[arg(long)]
    all_databases: bool,
    /// The name backups of this server are filed under (default: host-port).
    #[arg(long)]
    source: Option<String>,
    #[command(flatten)]
    run: RunArgs,
    /// Parallel COPY connections.
    /// (default 4, or the configured source's).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// zstd level, 1 (fast) to 19 (small) (default 3, or the configured source's).
    #[arg(long, env = "COMPRESSION_LEVEL", value_parser = clap::value_parser!(i32).range(1..=19))]
    compression_level: Option<i32>,
    /// Cut tables into objects of about this many uncompressed bytes, for
    /// parallel restore (default 64MiB, or the configured source's).
    #[arg(long, value_parser = firedrill::runtime::policy::parse_size)]
    chunk_size: Option<u64>,
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
    let (config, source) = match args.run.config_file()? {
        Some(config) => configured(&args, config)?,
        None => from_flags(&args)?,
    };
    let mut req = JobRequest::new(Kind::Backup, &source, "cli");
    req.incremental = args.incremental;
    let chosen = config.sources.iter().find(|s| s.name == source);
    let threads = chosen.map_or(2, |s| s.jobs);
    let physical = chosen.is_some_and(|s| s.physical);
    let outcome = args
        .run
        .run(config, req, threads)
        .context("backup failed; nothing was committed")?;
    let summary = match outcome {
        Ok(JobResult::Backup(s)) => s,
        Ok(other) => anyhow::bail!("internal error: a backup produced {other:?}"),
        Err(code) => return Ok(ExitCode::from(code)),
    };
    // Whether an incremental was asked for and what came of it.
    let chain = match (&summary.parent, &summary.full_because) {
        (Some(parent), _) => format!("; incremental on {parent}"),
        (None, Some(why)) => format!("; full ({why})"),
        (None, None) => String::new(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if physical {
        println!(
            "physical backup {} of {}: {} stored ({} raw) in {:.1}s{chain}",
            summary.id,
            summary.source,
            super::human_bytes(summary.bytes),
            super::human_bytes(summary.raw_bytes),
            summary.seconds
        );
    } else if summary.databases.is_empty() {
        println!(
            "backup {} of {}: {} keys, {} stored ({} raw) in {:.1}s",
            summary.id,
            summary.source,
            summary.keys,
            super::human_bytes(summary.bytes),
            super::human_bytes(summary.raw_bytes),
            summary.seconds
        );
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

/// A source of the agent's configuration file, run as the agent runs it.
fn configured(args: &Args, mut config: Config) -> anyhow::Result<(Config, String)> {
    // DATABASE_URL in the environment (an env file sourced for its other
    // settings) is the configuration's business, not a flag given here.
    let from_env = std::env::var("DATABASE_URL").is_ok_and(|v| {
        v.split(',')
            .eq(args.database_urls.iter().map(String::as_str))
    });
    if (!args.database_urls.is_empty() && !from_env)
        || args.redis_url.is_some()
        || args.all_databases
        || args.physical
    {
        bail!("--config names the sources: drop --database-url, --redis-url, --all-databases and --physical (a source's kind is configured), and pick a source with --source");
    }
    let names: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
    let source = match (&args.source, names.as_slice()) {
        (Some(s), _) if names.contains(&s.as_str()) => s.clone(),
        (Some(s), _) => bail!("--source {s:?}: the configuration has {}", names.join(", ")),
        (None, [one]) => one.to_string(),
        (None, _) => bail!(
            "the configuration has several sources ({}): pick one with --source",
            names.join(", ")
        ),
    };
    let chosen = config
        .sources
        .iter_mut()
        .find(|s| s.name == source)
        .expect("a configured source");
    if args.incremental && !chosen.physical {
        let what = if chosen.redis.is_some() {
            "a Redis source (its backups are whole snapshots)"
        } else {
            "logical (pg_dump-compatible, per database)"
        };
        bail!("--incremental: source {source:?} is {what}; incremental backups are physical (kind = \"physical\", PostgreSQL 17+): drop --incremental");
    }
    tune(args, chosen, &mut config.policies)?;
    Ok((config, source))
}

/// The flags that tune a backup, over the source's settings.
fn tune(
    args: &Args,
    source: &mut SourceConfig,
    policies: &mut Option<PathBuf>,
) -> anyhow::Result<()> {
    source.jobs = args.jobs.unwrap_or(source.jobs).max(1);
    source.compression_level = args.compression_level.unwrap_or(source.compression_level);
    source.chunk_bytes = args.chunk_size.unwrap_or(source.chunk_bytes).max(1);
    source.globals &= !args.no_globals;
    source.role_passwords |= args.role_passwords;
    if let Some(n) = args.max_chain {
        source.max_chain = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(u) = &args.plugin_sql_url {
        source.plugin_sql = Some(PgUrl::parse(u)?);
    }
    if args.policies.is_some() {
        *policies = args.policies.clone();
    }
    Ok(())
}

/// A source made of this command's flags, under the environment's settings.
fn from_flags(args: &Args) -> anyhow::Result<(Config, String)> {
    // Before anything connects (--all-databases lists the server's).
    if args.incremental && !args.physical {
        if args.redis_url.is_some() {
            bail!("--incremental: a Redis backup is a whole snapshot, never incremental: drop --incremental");
        }
        bail!("--incremental: incremental backups are physical (PostgreSQL 17+): add --physical (a base backup of the whole cluster; the role needs REPLICATION)");
    }
    let mut config = args.run.store.adhoc_config()?;
    let mut source = match &args.redis_url {
        Some(url) => {
            let url = RedisUrl::parse(url).map_err(|e| anyhow::anyhow!("--redis-url: {e}"))?;
            SourceConfig::new(
                &args.source.clone().unwrap_or_else(|| url.server()),
                vec![],
                Some(url),
            )
        }
        None => {
            if args.database_urls.is_empty() {
                bail!("no source: pass --database-url (or --redis-url, or --config with the agent's configuration)");
            }
            let mut urls = args
                .database_urls
                .iter()
                .map(|u| PgUrl::parse(u))
                .collect::<Result<Vec<_>, _>>()?;
            if args.all_databases {
                let first = urls[0].clone();
                let names = super::runtime(2)?.block_on(first.list_databases())?;
                urls = names.iter().map(|n| first.with_database(n)).collect();
            }
            if args.physical && urls.len() > 1 {
                bail!("--physical backs up the whole cluster: give one --database-url");
            }
            let name = args.source.clone().unwrap_or_else(|| urls[0].server());
            let mut s = SourceConfig::new(&name, urls, None);
            s.physical = args.physical;
            s
        }
    };
    firedrill::config::check_source_name(&source.name)
        .map_err(|m| anyhow::anyhow!("--source {m}"))?;
    tune(args, &mut source, &mut config.policies)?;
    let name = source.name.clone();
    config.sources = vec![source];
    Ok((config, name))
}
