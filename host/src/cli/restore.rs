//! `firedrill restore`.

use super::StoreArgs;
use anyhow::Context;
use firedrill::archive;
use firedrill::jobs::restore::{self, RestoreOptions};
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
    store: StoreArgs,
    /// The database to restore into; created when missing.
    #[arg(long, hide_env_values = true, env = "FIREDRILL_TARGET_URL")]
    target_url: String,
    /// Which database of the backup, when it holds several.
    #[arg(long)]
    database: Option<String>,
    /// Parallel COPY connections.
    #[arg(long, short = 'j', default_value_t = 4)]
    jobs: usize,
    /// Replace the target database if it exists and is not empty.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let opts = RestoreOptions {
        target: PgUrl::parse(&args.target_url)?,
        jobs: args.jobs.max(1),
        force: args.force,
        database: args.database,
        comment: None,
        progress: Default::default(),
        create_missing_roles: false,
    };
    let rt = super::runtime(args.jobs)?;
    let summary = rt.block_on(async {
        let (source, id) =
            archive::find_backup(&store, args.backup_id.as_deref(), args.source.as_deref()).await?;
        let backup = archive::open_backup(&store, &source, &id).await?;
        restore::run(&store, &backup, &opts).await
    });
    let summary = summary.context("restore failed")?;
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
