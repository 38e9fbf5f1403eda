//! `firedrill drill`.

use super::StoreArgs;
use anyhow::Context;
use firedrill::jobs::drill::{
    self, DrillOptions, DrillReport, DrillSession, DrillTarget, Pick, Status,
};
use firedrill::runtime::{PluginSet, World};
use firedrill::servers::pg::PgUrl;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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
    store: StoreArgs,
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
    /// Parallel COPY connections for the restore.
    #[arg(long, short = 'j', default_value_t = 4)]
    jobs: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pick = match (&args.backup_id, args.latest_unverified) {
        (Some(id), _) => Pick::Id(id.clone()),
        (None, true) => Pick::LatestUnverified,
        (None, false) => Pick::Latest,
    };
    let target = match &args.drill_url {
        Some(u) => DrillTarget::Server(PgUrl::parse(u)?),
        None => DrillTarget::Local(std::env::temp_dir()),
    };
    let verifiers = match &args.policies {
        None => vec![],
        Some(dir) => {
            let runtime = super::plugin_runtime()?;
            let set = PluginSet::load_dir(&runtime, dir).map_err(|e| anyhow::anyhow!("{e}"))?;
            set.of_world(World::Verifier).cloned().collect()
        }
    };
    let assertions = match &args.assertions {
        None => vec![],
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            drill::parse_assertions(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
        }
    };
    let store = args.store.open()?;
    let opts = DrillOptions {
        target,
        jobs: args.jobs.max(1),
        source: args.source.clone(),
        verifiers,
        assertions,
        guard: None,
        progress: Default::default(),
    };
    let session = DrillSession::new();
    let rt = super::runtime(args.jobs)?;
    let outcome = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // On a signal the drill is dropped where it stands (its client
        // processes die with it) and what it created is removed.
        tokio::select! {
            r = drill::run(&store, &pick, &opts, &session) => Ok(Ok(r)),
            _ = term.recv() => { interrupted(&session, "SIGTERM").await; Ok::<_, anyhow::Error>(Err(143)) }
            _ = int.recv() => { interrupted(&session, "SIGINT").await; Ok(Err(130)) }
        }
    })?;
    let report = match outcome {
        Ok(r) => r.context("drill")?,
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

async fn interrupted(session: &Arc<DrillSession>, signal: &str) {
    eprintln!("firedrill: {signal}: stopping the drill and dropping its database");
    session.cleanup().await;
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
