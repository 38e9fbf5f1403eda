//! The `firedrill` command. Library errors become `anyhow` here, at the edge;
//! a command that finds a problem prints it and exits 1.

mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "firedrill",
    version,
    about = "Backs up PostgreSQL and Redis and proves every backup restores."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a daemon: every source's backups, drills and prunes on schedule.
    Agent(cli::agent::Args),
    /// Check the agent's configuration without running anything.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Back up PostgreSQL databases into a store (manifest written last).
    Backup(cli::backup::Args),
    /// Restore one database of a backup into a new database.
    Restore(cli::restore::Args),
    /// The backups in a store, with their last drill.
    List(cli::list::Args),
    /// Each source's verdict, newest backup, recovery point and newest drill
    /// (from a store, or the fleet's through an agent's API); exits 2 when a
    /// source's newest drill failed, 1 when the status could not be read.
    Status(cli::status::Args),
    /// Restore a backup into a throwaway database and prove it (a fire drill).
    Drill(cli::drill::Args),
    /// Delete old backups as the retention policy decides, within the host's guards.
    Prune(cli::prune::Args),
    /// Start a throwaway Postgres, back it up, drill the backup, print a report.
    Demo,
    /// Plugins: check, sign, scaffold a new one, test one on a fixture.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Inspect policy directories.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Rotate the age recipients of encrypted backups (rewrites headers, not data).
    Rekey(cli::keys::RekeyArgs),
    /// Make an age identity (to encrypt backups) or an Ed25519 key (to sign manifests).
    Keygen {
        #[command(subcommand)]
        command: cli::keys::KeygenCommand,
    },
    /// The optional history database: migrate, status, rollback, sync.
    Catalog {
        #[command(subcommand)]
        command: cli::catalog::Command,
    },
    /// The WAL archive of physical sources: stream, fetch (restore_command), verify.
    Wal {
        #[command(subcommand)]
        command: cli::wal::Command,
    },
    /// Signed API tokens: issue, revoke, make a key pair.
    Token {
        #[command(subcommand)]
        command: cli::token::Command,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (file and environment); exit 1 naming the bad setting.
    Check(cli::agent::Args),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Which world a component implements, what it imports and exports, its
    /// size and compile time; exit 1 with the reason if the agent could not load it.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Scaffold a plugin crate for a world: source, policy, fixture, WIT.
    New(cli::plugin::new::Args),
    /// Run a policy's plugin on a fixture (a recorded input, or for a
    /// verifier a .sql file loaded into a throwaway database) and print its decisions.
    Test(cli::plugin::fixture::Args),
    /// Sign a plugin's wasm with an Ed25519 key (`firedrill keygen signing`):
    /// writes FILE.wasm.sig, which agents that trust the key require.
    Sign {
        /// The private key file.
        #[arg(long)]
        key: PathBuf,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load every policy of a directory as the agent would; exit 1 listing
    /// every problem, each naming its file and field.
    Check {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // `wal fetch` is a restore_command: PostgreSQL reads exit 1 or 2
            // as "not archived" and would end recovery early; a mistyped
            // command line must stop it instead (above 125).
            let argv: Vec<String> = std::env::args().skip(1).take(2).collect();
            if argv == ["wal", "fetch"] && e.use_stderr() {
                let _ = e.print();
                return ExitCode::from(126);
            }
            e.exit()
        }
    };
    // The agent's stdout is its log; a command's stdout is its result.
    let otlp = cli::init_logging(matches!(args.command, Command::Agent(_)));
    let result = match args.command {
        Command::Agent(a) => cli::agent::run(a),
        Command::Config {
            command: ConfigCommand::Check(a),
        } => cli::agent::check(a),
        Command::Backup(a) => cli::backup::run(a),
        Command::Restore(a) => cli::restore::run(a),
        Command::List(a) => cli::list::run(a),
        Command::Status(a) => cli::status::run(a),
        Command::Drill(a) => cli::drill::run(a),
        Command::Prune(a) => cli::prune::run(a),
        Command::Demo => cli::demo::run(),
        Command::Plugin { command } => match command {
            PluginCommand::Check { file, json } => cli::plugin::check(&file, json),
            PluginCommand::New(a) => cli::plugin::new::run(a),
            PluginCommand::Test(a) => cli::plugin::fixture::run(a),
            PluginCommand::Sign { key, file } => cli::plugin::sign(&key, &file),
        },
        Command::Policy {
            command: PolicyCommand::Check { dir, json },
        } => cli::policy::check(&dir, json),
        Command::Token { command } => cli::token::run(command),
        Command::Wal { command } => cli::wal::run(command),
        Command::Rekey(a) => cli::keys::rekey(a),
        Command::Catalog { command } => cli::catalog::run(command),
        Command::Keygen { command } => cli::keys::keygen(command),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            let message = firedrill::telemetry::redactor().redact(&format!("{e:#}"));
            eprintln!("firedrill: {message}");
            ExitCode::from(1)
        }
    };
    firedrill::telemetry::logs::flush();
    if let Some(o) = otlp {
        o.shutdown();
    }
    code
}
