//! `firedrill list`.

use super::StoreArgs;
use firedrill::archive;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let scan = super::runtime(1)?.block_on(archive::scan_backups(&store))?;
    let listings = scan.listings;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listings)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<16} {:<20} {:>10} {:>7} {:<11} {:<8} databases",
        "backup", "source", "time (UTC)", "size", "tables", "state", "drill"
    );
    for l in &listings {
        let time = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(l.created.max(0) as u64),
        )
        .to_string();
        println!(
            "{:<24} {:<16} {:<20} {:>10} {:>7} {:<11} {:<8} {}",
            l.id,
            l.source,
            time.trim_end_matches('Z').replace('T', " "),
            super::human_bytes(l.size),
            l.tables,
            if l.complete { "complete" } else { "incomplete" },
            match &l.last_drill {
                None => "never",
                Some(d) if d.passed => "passed",
                Some(_) => "FAILED",
            },
            match &l.parent {
                Some(p) => format!("incremental on {p}"),
                None => l.databases.join(", "),
            }
        );
    }
    println!("{}: {} backups", store.display(), listings.len());
    if !scan.ignored.is_empty() {
        // Named one by one in the log; this says they exist.
        println!(
            "{} manifest(s) and {} drill report(s) ignored: not signed by a trusted key (see the warnings)",
            scan.ignored.iter().filter(|i| i.kind == "manifest").count(),
            scan.ignored.iter().filter(|i| i.kind == "report").count(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
