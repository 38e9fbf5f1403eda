//! `firedrill agent` and `firedrill config check`.

use firedrill::config::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The configuration file (TOML); the environment overrides it.
    #[arg(long, env = "FIREDRILL_CONFIG")]
    config: Option<PathBuf>,
}

fn load(file: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(file, |k| std::env::var(k).ok()).map_err(|e| {
        eprintln!("firedrill: invalid configuration: {e}");
        ExitCode::from(1)
    })
}

pub fn check(args: Args) -> anyhow::Result<ExitCode> {
    match load(args.config.as_deref()) {
        Ok(c) => {
            print!("{}", c.describe());
            for w in c.keys.warnings() {
                eprintln!("firedrill: warning: {w}");
            }
            println!("configuration valid");
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = match load(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    eprint!("{}", config.describe());
    super::runtime(4)?.block_on(async move {
        let running = firedrill::launch::start(config).await?;
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        let which = tokio::select! { _ = term.recv() => "SIGTERM", _ = int.recv() => "SIGINT" };
        tracing::info!("{which}: finishing");
        running.stop().await;
        eprintln!("firedrill agent: stopped on {which}");
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}
