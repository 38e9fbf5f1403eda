//! `firedrill prune`.

use super::StoreArgs;
use anyhow::{bail, Context};
use firedrill::jobs::prune::{self, PruneOptions};
use firedrill::runtime::{PluginSet, World};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// The policies directory holding the one retention policy.
    #[arg(long, env = "FIREDRILL_POLICIES")]
    policies: PathBuf,
    /// Only this source's backups.
    #[arg(long)]
    source: Option<String>,
    /// Print the plan with its reasons; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Never delete a backup younger than this.
    #[arg(long, default_value = "1h", value_parser = firedrill::runtime::policy::parse_duration)]
    min_age: Duration,
    /// An incomplete backup older than this is a leftover and is deleted.
    #[arg(long, default_value = "24h", value_parser = firedrill::runtime::policy::parse_duration)]
    abandon_after: Duration,
    /// Delete at most this many backups in one run.
    #[arg(long, default_value_t = 10)]
    max_deletions: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = super::plugin_runtime()?;
    let set = PluginSet::load_dir(&runtime, &args.policies).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut policies = set.of_world(World::Retention);
    let Some(policy) = policies.next().cloned() else {
        bail!(
            "{}: no retention policy (world = \"retention\"); prune decides nothing without one",
            args.policies.display()
        );
    };
    if let Some(other) = policies.next() {
        bail!(
            "{}: two retention policies ({} and {}); keep one",
            args.policies.display(),
            policy.name(),
            other.name()
        );
    }
    let store = args.store.open()?;
    let opts = PruneOptions {
        policy,
        min_age: args.min_age,
        abandon_after: args.abandon_after,
        max_deletions: args.max_deletions,
        dry_run: args.dry_run,
        source: args.source,
    };
    let report = super::runtime(2)?
        .block_on(prune::run(&store, &opts))
        .context("prune")?;
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
        store.display(),
        report.policy,
        if report.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        report.decisions.iter().filter(|d| d.delete).count(),
        report.decisions.len()
    );
    Ok(ExitCode::SUCCESS)
}
