//! `firedrill drill`.

use super::RunArgs;
use anyhow::Context;
use firedrill::agent::{JobRequest, JobResult};
use firedrill::config::DrillTargetConfig;
use firedrill::jobs::drill::{DrillReport, Pick, Status};
use firedrill::jobs::status::Kind;
use firedrill::servers::pg::PgUrl;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The backup to drill (see `firedrill list`).
    #[arg(conflicts_with_all = ["latest", "latest_unverified"])]
    backup_id: Option<String>,
    /// The newest complete backup.
    #[arg(long)]
    latest: bool,
    /// The newest complete backup that has never been drilled.
    #[arg(long, conflicts_with = "latest")]
    latest_unverified: bool,
    /// Only backups of this source.
    #[arg(long)]
    source: Option<String>,
    #[command(flatten)]
    run: RunArgs,
    /// A drill server; the drill creates (and drops) its own database there.
    #[arg(
        long,
        env = "FIREDRILL_DRILL_URL",
        hide_env_values = true,
        conflicts_with = "local"
    )]
    drill_url: Option<String>,
    /// Restore into a throwaway local cluster started from the installed
    /// server binaries (the default without --drill-url).
    #[arg(long)]
    local: bool,
    /// A policies directory: its verifier plugins check the restored database.
    #[arg(long, env = "FIREDRILL_POLICIES")]
    policies: Option<PathBuf>,
    /// SQL assertions: statements ending with `;`, each true or empty to pass.
    #[arg(long)]
    assertions: Option<PathBuf>,
    /// Parallel COPY connections for the restore (default: the
    /// configuration's drill.jobs, else 4).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pick = match (&args.backup_id, args.latest_unverified) {
        (Some(id), _) => Pick::Id(id.clone()),
        (None, true) => Pick::LatestUnverified,
        (None, false) => Pick::Latest,
    };
    let mut config = args.run.config()?;
    // The flags say more than the configuration.
    if let Some(u) = &args.drill_url {
        config.drill_target = DrillTargetConfig::Server(PgUrl::parse(u)?);
    } else if args.local {
        config.drill_target = DrillTargetConfig::Local;
    }
    if args.policies.is_some() {
        config.policies = args.policies.clone();
    }
    if args.assertions.is_some() {
        config.assertions = args.assertions.clone();
    }
    if let Some(j) = args.jobs {
        config.drill_jobs = j.max(1);
    }
    let threads = config.drill_jobs;
    let mut req = JobRequest::new(Kind::Drill, args.source.as_deref().unwrap_or(""), "cli");
    req.pick = Some(pick);
    let report = match args.run.run(config, req, threads).context("drill")? {
        Ok(JobResult::Drill(r)) => r,
        Ok(other) => anyhow::bail!("internal error: a drill produced {other:?}"),
        Err(code) => return Ok(ExitCode::from(code)),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn print_report(r: &DrillReport) {
    println!(
        "drill of {} ({}): {} — restore {:.1}s (RTO), backup age {} (RPO)",
        r.backup_id,
        r.source,
        if r.passed { "PASSED" } else { "FAILED" },
        r.rto_seconds,
        humantime::format_duration(std::time::Duration::from_secs(r.rpo_seconds.max(0) as u64))
    );
    for c in &r.checks {
        let mark = match c.status {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Warn => "warn",
            Status::Skip => "skip",
        };
        println!("  {mark}  {:<40} {}", c.name, c.detail);
    }
    println!("report: {}", r.report);
}
