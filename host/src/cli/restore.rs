//! `firedrill restore`.

use super::RunArgs;
use anyhow::Context;
use firedrill::agent::{JobRequest, JobResult};
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
    #[arg(long, hide_env_values = true, env = "FIREDRILL_TARGET_URL")]
    target_url: String,
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
    req.target = Some(PgUrl::parse(&args.target_url)?);
    req.database = args.database.clone();
    req.force = args.force;
    let summary = match args
        .run
        .run(config, req, threads)
        .context("restore failed")?
    {
        Ok(JobResult::Restore(s)) => s,
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
