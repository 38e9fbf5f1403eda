//! `firedrill catalog migrate|status|rollback|sync`: the optional history
//! database. Migrations are explicit (the agent never migrates on its own);
//! they are sqlx's, and `migrate`/`rollback` first adopt a catalog made
//! before sqlx (see `catalog::migrations`).

use super::StoreArgs;
use anyhow::Context;
use firedrill::catalog::{Catalog, Step};
use firedrill::servers::pg::PgUrl;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Target {
    /// The catalog database: postgres://user[:password]@host/db, with libpq's
    /// ssl* parameters (and PGSSL* environment) as every other connection.
    #[arg(long, env = "FIREDRILL_CATALOG_URL", hide_env_values = true)]
    catalog_url: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Apply pending migrations (up to --to), each in its own transaction.
    Migrate {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        to: Option<u32>,
        /// Print the SQL that would run; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The schema version, applied and pending migrations.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Undo migrations down to version --to (0 removes every table).
    Rollback {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        to: u32,
        #[arg(long)]
        dry_run: bool,
    },
    /// Rebuild the backups and drills tables from the store.
    Sync {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        store: StoreArgs,
    },
}

async fn open(t: &Target) -> anyhow::Result<Catalog> {
    let url = PgUrl::parse(&t.catalog_url).context("--catalog-url")?;
    Ok(Catalog::connect(&url).await?)
}

fn print_steps(steps: &[Step], dry_run: bool, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(steps)?);
        return Ok(());
    }
    if steps.is_empty() {
        println!("nothing to do");
    }
    for s in steps {
        let verb = match (dry_run, s.direction) {
            (true, "up") => "would apply",
            (true, _) => "would undo",
            (false, "up") => "applied",
            (false, _) => "undid",
        };
        println!("{verb} {} ({})", s.version, s.name);
        if dry_run {
            println!("{}\n", s.sql.trim());
        }
    }
    Ok(())
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let rt = super::runtime(1)?;
    rt.block_on(async {
        match command {
            Command::Migrate { target, to, dry_run } => {
                let steps = open(&target).await?.migrate(to, dry_run).await?;
                print_steps(&steps, dry_run, target.json)?;
            }
            Command::Rollback { target, to, dry_run } => {
                let steps = open(&target).await?.rollback(to, dry_run).await?;
                print_steps(&steps, dry_run, target.json)?;
            }
            Command::Status { target } => {
                let s = open(&target).await?.status().await?;
                if target.json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    println!("schema version {} (this firedrill: {})", s.version, s.latest);
                    for (v, name, at) in &s.applied {
                        println!("  applied {v} ({name}) at {at}");
                    }
                    for (v, name) in &s.pending {
                        println!("  pending {v} ({name})");
                    }
                }
            }
            Command::Sync { target, store } => {
                let store = store.open()?;
                let r = open(&target).await?.sync(&store).await?;
                if target.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "synced {} backups and {} drills from {}; {} rows of pruned backups removed",
                        r.backups,
                        r.drills,
                        store.display(),
                        r.removed
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
