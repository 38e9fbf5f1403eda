//! `firedrill restore`.

use super::RunArgs;
use anyhow::Context;
use firedrill::agent::{JobRequest, JobResult};
use firedrill::jobs::restore::physical::RecoveryTarget;
use firedrill::jobs::status::Kind;
use firedrill::servers::pg::PgUrl;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The backup to restore (see `firedrill list`).
    #[arg(required_unless_present = "latest", conflicts_with = "latest")]
    backup_id: Option<String>,
    /// The newest complete backup.
    #[arg(long)]
    latest: bool,
    /// With --latest: only backups of this source.
    #[arg(long)]
    source: Option<String>,
    #[command(flatten)]
    run: RunArgs,
    /// The database to restore into; created when missing.
    #[arg(
        long,
        hide_env_values = true,
        env = "FIREDRILL_TARGET_URL",
        required_unless_present = "data_dir",
        conflicts_with = "data_dir"
    )]
    target_url: Option<String>,
    /// Physical backups: the new data directory (never an existing one that
    /// is not empty, unless --force). The backup is unpacked and checked,
    /// WAL replayed from the archive to the target, the server promoted and
    /// stopped: start it with your own configuration (the backup's
    /// configuration files are kept beside, as *.from-backup).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Stop recovery at this moment (e.g. "2026-12-02 10:00:00+00").
    #[arg(long, requires = "data_dir", group = "recovery")]
    target_time: Option<String>,
    /// Stop recovery at this WAL position (e.g. 0/3000028).
    #[arg(long, requires = "data_dir", group = "recovery")]
    target_lsn: Option<String>,
    /// Stop recovery at this restore point (pg_create_restore_point).
    #[arg(long, requires = "data_dir", group = "recovery")]
    target_name: Option<String>,
    /// Stop at the end of the base backup (the earliest consistent moment).
    #[arg(long, requires = "data_dir", group = "recovery")]
    immediate: bool,
    /// Which database of the backup, when it holds several.
    #[arg(long)]
    database: Option<String>,
    /// Parallel COPY connections (default: the configuration's drill.jobs, else 4).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Replace the target database if it exists and is not empty.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = args.run.config()?;
    if let Some(j) = args.jobs {
        config.drill_jobs = j.max(1);
    }
    let threads = config.drill_jobs;
    let mut req = JobRequest::new(Kind::Restore, args.source.as_deref().unwrap_or(""), "cli");
    req.backup = args.backup_id.clone();
    req.target = args.target_url.as_deref().map(PgUrl::parse).transpose()?;
    req.data_dir = args.data_dir.clone();
    req.recovery = Some(if let Some(t) = &args.target_time {
        RecoveryTarget::Time(t.clone())
    } else if let Some(l) = &args.target_lsn {
        RecoveryTarget::Lsn(
            l.parse()
                .map_err(|e| anyhow::anyhow!("--target-lsn: {e}"))?,
        )
    } else if let Some(n) = &args.target_name {
        RecoveryTarget::Name(n.clone())
    } else if args.immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::Latest
    });
    req.database = args.database.clone();
    req.force = args.force;
    let summary = match args
        .run
        .run(config, req, threads)
        .context("restore failed")?
    {
        Ok(JobResult::Restore(s)) => s,
        Ok(JobResult::PhysicalRestore(s)) => {
            if args.json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!(
                    "restored {} of {} into {}: recovered to {}{} on timeline {} (unpacked in {:.1}s, replayed in {:.1}s)",
                    s.id,
                    s.source,
                    s.data_dir.display(),
                    s.reached_lsn,
                    s.reached_time.as_deref().map(|t| format!(" ({t})")).unwrap_or_default(),
                    s.timeline,
                    s.unpack_seconds,
                    s.replay_seconds
                );
                if !s.chain.is_empty() {
                    println!(
                        "incremental: combined the chain {} ({})",
                        s.chain
                            .iter()
                            .map(|c| c.id.as_str())
                            .collect::<Vec<_>>()
                            .join(" <- "),
                        s.verified
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Ok(other) => anyhow::bail!("internal error: a restore produced {other:?}"),
        Err(code) => return Ok(ExitCode::from(code)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "restored {} ({} of {}) into {}: {} tables, {} rows in {:.1}s",
            summary.id,
            summary.database,
            summary.source,
            summary.target,
            summary.tables,
            summary.rows,
            summary.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
