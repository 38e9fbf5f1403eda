//! `firedrill status`: each source's verdict, newest backup, recovery point
//! and newest drill, from a store (this node's, or the fleet's shared one)
//! or through an agent's API (`--api`, as a viewer). Colours only on a
//! terminal.

use super::StoreArgs;
use anyhow::Context;
use firedrill::archive::health::{self, SourceHealth, Verdict};
use firedrill::archive::{self, Listing};
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// An agent's API (http(s)://host:port): the fleet's backups as that
    /// agent sees them, instead of reading a store.
    #[arg(long, env = "FIREDRILL_API")]
    api: Option<String>,
    /// A file holding the API token (or FIREDRILL_API_TOKEN): never on the
    /// command line, where every user of the machine could read it.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let listings = match &args.api {
        Some(api) => super::runtime(1)?.block_on(through_api(api, token(&args)?))?,
        None => {
            let store = args.store.open()?;
            super::runtime(1)?
                .block_on(archive::scan_backups(&store))?
                .listings
        }
    };
    let now = firedrill::archive::manifest::unix_now();
    let sources = health::summarize(&listings, now);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&sources)?);
    } else {
        print!("{}", table(&sources, now, std::io::stdout().is_terminal()));
    }
    // A script can act on it: 2 when any source's newest drill failed (1 is
    // any error: the status could not be read).
    Ok(
        match sources.iter().any(|s| s.verdict == Verdict::DrillFailed) {
            true => ExitCode::from(2),
            false => ExitCode::SUCCESS,
        },
    )
}

fn token(args: &Args) -> anyhow::Result<Option<String>> {
    if let Some(f) = &args.token_file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("reading the API token from {}", f.display()))?;
        return Ok(Some(t.trim().to_string()));
    }
    Ok(std::env::var("FIREDRILL_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty()))
}

async fn through_api(api: &str, token: Option<String>) -> anyhow::Result<Vec<Listing>> {
    let url = format!("{}/v1/backups", api.trim_end_matches('/'));
    // An agent that accepts and never answers must not hang a cron job.
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .context("setting up the HTTP client")?;
    let mut request = client.get(&url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let reply = request
        .send()
        .await
        .with_context(|| format!("asking {url} for the backups"))?;
    let status = reply.status();
    let body = reply.bytes().await.context("reading the API's answer")?;
    if !status.is_success() {
        anyhow::bail!(
            "{url} answered {status}: {} (a viewer's token goes in --token-file or FIREDRILL_API_TOKEN)",
            String::from_utf8_lossy(&body).trim()
        );
    }
    #[derive(serde::Deserialize)]
    struct Backups {
        backups: Vec<Listing>,
    }
    let b: Backups = serde_json::from_slice(&body)
        .with_context(|| format!("{url} did not answer with a list of backups"))?;
    Ok(b.backups)
}

fn table(sources: &[SourceHealth], now: i64, colour: bool) -> String {
    let paint = |verdict: Verdict, text: &str| match (colour, verdict) {
        (false, _) => text.to_string(),
        (true, Verdict::Proven) => format!("\x1b[32m{text}\x1b[0m"),
        (true, Verdict::DrillFailed) => format!("\x1b[1;31m{text}\x1b[0m"),
        (true, _) => format!("\x1b[33m{text}\x1b[0m"),
    };
    let ago = |t: i64| format!("{} ago", age((now - t).max(0)));
    let mut out = format!(
        "{:<16} {:<14} {:>7} {:<30} {:>10} {:<36} {:>9}\n",
        "source", "verdict", "backups", "newest backup", "RPO now", "newest drill", "30 days"
    );
    for s in sources {
        let backup = s
            .last_backup
            .as_ref()
            .map(|b| format!("{} ({})", ago(b.created), super::human_bytes(b.size)))
            .unwrap_or_else(|| "none".into());
        let drill = s
            .last_drill
            .as_ref()
            .map(|d| {
                format!(
                    "{} {}, restore {:.0} s",
                    if d.passed { "passed" } else { "FAILED" },
                    ago(d.finished),
                    d.rto_seconds
                )
            })
            .unwrap_or_else(|| "none".into());
        // Padded before painting: escape codes have no width.
        let verdict = paint(s.verdict, &format!("{:<14}", s.verdict.as_str()));
        out.push_str(&format!(
            "{:<16} {verdict} {:>7} {:<30} {:>10} {:<36} {:>9}\n",
            s.source,
            s.backups,
            backup,
            s.rpo_seconds.map(age).unwrap_or_else(|| "-".into()),
            drill,
            format!("{}/{}", s.drills_passed, s.drills_passed + s.drills_failed),
        ));
    }
    if sources.is_empty() {
        out.push_str("no backups\n");
    }
    out
}

/// Two units at most: "3h 12m", "2d 4h", "45s".
fn age(seconds: i64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut left = seconds;
    let mut parts = Vec::new();
    for (size, name) in units {
        if left >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{name}", left / size));
            left %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_two_units() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(45), "45s");
        assert_eq!(age(3 * 3600 + 12 * 60 + 5), "3h 12m");
        assert_eq!(age(2 * 86_400 + 4 * 3600), "2d 4h");
        assert_eq!(age(86_400 + 30), "1d 30s");
    }
}
