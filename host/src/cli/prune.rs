//! `firedrill prune`: through the agent's job path, one source at a time
//! (each under its prune lease), as the agent's scheduled prunes run.

use super::RunArgs;
use anyhow::Context;
use firedrill::agent::{JobRequest, JobResult};
use firedrill::jobs::prune::PruneReport;
use firedrill::jobs::status::Kind;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// The policies directory holding the one retention policy.
    #[arg(long, env = "FIREDRILL_POLICIES", required_unless_present = "config")]
    policies: Option<PathBuf>,
    /// Only this source's backups (default: every source in the store, each
    /// pruned on its own).
    #[arg(long)]
    source: Option<String>,
    /// Print the plan with its reasons; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Never delete a backup younger than this (default: retention.min_age, 1h).
    #[arg(long, value_parser = firedrill::runtime::policy::parse_duration)]
    min_age: Option<Duration>,
    /// An incomplete backup older than this is a leftover and is deleted
    /// (default: retention.abandon_after, 24h).
    #[arg(long, value_parser = firedrill::runtime::policy::parse_duration)]
    abandon_after: Option<Duration>,
    /// Delete at most this many backups in one run, over every source
    /// (default: retention.max_deletions, 10).
    #[arg(long)]
    max_deletions: Option<usize>,
    /// Physical sources: keep what recovery to any moment of this window
    /// needs (default: retention.pitr_window, none).
    #[arg(long, value_parser = firedrill::runtime::policy::parse_duration)]
    pitr_window: Option<Duration>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = args.run.config()?;
    if args.policies.is_some() {
        config.policies = args.policies.clone();
    }
    config.min_age = args.min_age.unwrap_or(config.min_age);
    config.abandon_after = args.abandon_after.unwrap_or(config.abandon_after);
    config.max_deletions = args.max_deletions.unwrap_or(config.max_deletions);
    config.pitr_window = args.pitr_window.or(config.pitr_window);
    let shown = firedrill::archive::Store::open(&config.store_url, &config.store)?
        .display()
        .to_string();
    let mut req = JobRequest::new(Kind::Prune, args.source.as_deref().unwrap_or(""), "cli");
    req.dry_run = args.dry_run;
    let results = match args.run.run_all(config, req, 2).context("prune")? {
        Ok(r) => r,
        Err(code) => return Ok(ExitCode::from(code)),
    };
    let mut report: Option<PruneReport> = None;
    for r in results {
        let JobResult::Prune(p) = r else {
            anyhow::bail!("internal error: a prune produced {r:?}")
        };
        match &mut report {
            None => report = Some(p),
            Some(all) => {
                all.decisions.extend(p.decisions);
                all.deleted.extend(p.deleted);
                all.wal.extend(p.wal);
                all.wal_deleted.extend(p.wal_deleted);
            }
        }
    }
    let Some(report) = report else {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"dry_run": args.dry_run, "decisions": [], "deleted": [], "wal": [], "wal_deleted": []})
            );
        } else {
            println!("{shown}: no backups");
        }
        return Ok(ExitCode::SUCCESS);
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    for d in &report.decisions {
        let what = match (d.delete, report.dry_run) {
            (true, true) => "would delete",
            (true, false) => "deleted",
            (false, _) if d.guarded => "kept (guard)",
            (false, _) => "kept",
        };
        println!("{:<24} {:<16} {:<13} {}", d.id, d.source, what, d.reason);
    }
    println!(
        "{}: policy {}, {} {} of {} backups",
        shown,
        report.policy,
        if report.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        report.decisions.iter().filter(|d| d.delete).count(),
        report.decisions.len()
    );
    for w in &report.wal {
        println!(
            "{}: WAL: {} {} objects below {}{}",
            w.source,
            if report.dry_run {
                "would delete"
            } else {
                "deleted"
            },
            w.segments.len(),
            w.keep_from.as_deref().unwrap_or("-"),
            w.note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
