//! `firedrill rekey` and `firedrill keygen`: the keys backups are encrypted
//! to and manifests are signed with.

use super::StoreArgs;
use anyhow::Context;
use firedrill::archive::age::{Identity, Recipient};
use firedrill::jobs::rekey::{self, RekeyOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RekeyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// A recipient (age1...) to add to every encrypted backup.
    #[arg(long = "add-recipient")]
    add: Vec<String>,
    /// A recipient (age1...) to remove: it can no longer read the backups.
    #[arg(long = "remove-recipient")]
    remove: Vec<String>,
    /// Only backups of this source.
    #[arg(long)]
    source: Option<String>,
    /// Say what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

pub fn rekey(args: RekeyArgs) -> anyhow::Result<ExitCode> {
    let parse = |keys: &[String], flag: &str| {
        keys.iter()
            .map(|k| Recipient::parse(k).with_context(|| format!("--{flag}")))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let opts = RekeyOptions {
        add: parse(&args.add, "add-recipient")?,
        remove: parse(&args.remove, "remove-recipient")?,
        source: args.source.clone(),
        dry_run: args.dry_run,
    };
    let store = args.store.open()?;
    let done = super::runtime(2)?
        .block_on(rekey::run(&store, &opts))
        .context(
        "rekey stopped; backups already rekeyed stay so, and running it again finishes the rest",
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &done {
        println!(
            "{:<24} {:<16} {:<13} generation {} recipients {}{}",
            r.id,
            r.source,
            r.action,
            r.generation,
            r.recipients.join(", "),
            match r.stale_removed {
                0 => String::new(),
                n => format!(" ({n} stale header(s) removed)"),
            }
        );
    }
    let changed = done.iter().filter(|r| r.action == "rekeyed").count();
    println!(
        "{}: {changed} of {} backups rekeyed",
        store.display(),
        done.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand)]
pub enum KeygenCommand {
    /// An age identity (X25519): its recipient (age1...) encrypts backups.
    Age {
        /// Write the identity here (mode 0600) instead of to stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// An Ed25519 key that signs manifests; its public key verifies them.
    Signing {
        /// Write the private key here (mode 0600) instead of to stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

pub fn keygen(command: KeygenCommand) -> anyhow::Result<ExitCode> {
    let (private, public, out) = match command {
        KeygenCommand::Age { out } => {
            let id = Identity::generate();
            (id.to_file(), id.recipient().to_string(), out)
        }
        KeygenCommand::Signing { out } => {
            let (private, public) = firedrill::archive::keys::signing_pair();
            (format!("{private}\n"), public, out)
        }
    };
    match out {
        Some(path) => {
            write_private(&path, &private)?;
            println!("{public}");
        }
        None => {
            // As age-keygen: the private key on stdout, the public one on stderr.
            print!("{private}");
            eprintln!("public key: {public}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "{}: cannot create it (an existing key is never overwritten)",
                path.display()
            )
        })?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
