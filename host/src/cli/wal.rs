//! `firedrill wal stream | fetch | verify`: the WAL archive of physical
//! sources.

use super::{RunArgs, StoreArgs};
use anyhow::{bail, Context};
use firedrill::config::{Config, SourceConfig};
use firedrill::jobs::wal::fetch;
use firedrill::servers::pg::PgUrl;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Archive a server's WAL continuously over the replication protocol
    /// (a physical slot; each 16 MiB segment stored as it completes) until
    /// SIGINT or SIGTERM, which store the segment in progress as .partial.
    Stream(StreamArgs),
    /// restore_command: copy WAL file %f of the archive to %p, verified
    /// (exit 1: not in the archive; 126: refused, which stops recovery).
    Fetch(FetchArgs),
    /// archive_command: store WAL file %p in the archive (the route for
    /// servers a replication connection cannot reach); exit 0 once stored.
    Push(PushArgs),
    /// Check that a source's WAL archive is whole: gaps per timeline named,
    /// and whether each physical backup is continued without one.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
pub struct StreamArgs {
    /// The server (the role needs REPLICATION and a `replication` pg_hba line).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The name the archive is filed under (default: host-port).
    #[arg(long)]
    source: Option<String>,
    /// The physical replication slot (default firedrill_<source>; created
    /// when missing).
    #[arg(long)]
    slot: Option<String>,
    /// Write a heartbeat into the source this often (what point-in-time
    /// drills prove the replay by), or "off" (default 10s, or the configured source's).
    #[arg(long)]
    heartbeat: Option<String>,
    /// Store the segment in progress as .partial this often while WAL
    /// arrives (default 60s, or the configured source's): the archive's lag.
    #[arg(long, value_parser = firedrill::runtime::policy::parse_duration)]
    partial_every: Option<std::time::Duration>,
    /// zstd level (default 3, or the configured source's).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=19))]
    compression_level: Option<i32>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// The WAL file recovery asks for (%f).
    name: String,
    /// Where to write it (%p).
    dest: PathBuf,
    /// Ask the restoring firedrill on this Unix socket (what firedrill's own
    /// restores and drills set up; no store settings are needed then).
    #[arg(long)]
    via: Option<PathBuf>,
    /// The source whose archive to read (with the store flags).
    #[arg(long)]
    source: Option<String>,
    /// Refuse WAL of any other database system than this one.
    #[arg(long)]
    system_id: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// The WAL file to store (%p).
    file: PathBuf,
    /// The source whose archive it goes into.
    #[arg(long)]
    source: String,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    compression_level: i32,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[arg(long)]
    source: String,
    /// Also read every segment and check its checksum.
    #[arg(long)]
    deep: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Stream(a) => stream(a),
        Command::Fetch(a) => fetch_one(a),
        Command::Push(a) => push(a),
        Command::Verify(a) => verify(a),
    }
}

fn stream(args: StreamArgs) -> anyhow::Result<ExitCode> {
    let (config, source) = match args.run.config_file()? {
        Some(config) => {
            if args.database_url.is_some()
                && std::env::var("DATABASE_URL").ok() != args.database_url
            {
                bail!("--config names the sources: drop --database-url and pick one with --source");
            }
            configured(config, args.source.as_deref())?
        }
        None => {
            let Some(url) = &args.database_url else {
                bail!(
                    "no server: pass --database-url (or --config with the agent's configuration)"
                );
            };
            let url = PgUrl::parse(url)?;
            let mut config = args.run.store.adhoc_config()?;
            let name = args.source.clone().unwrap_or_else(|| url.server());
            firedrill::config::check_source_name(&name)
                .map_err(|m| anyhow::anyhow!("--source {m}"))?;
            let mut s = SourceConfig::new(&name, vec![url], None);
            s.physical = true;
            s.wal_stream = true;
            config.sources = vec![s.clone()];
            (config, s)
        }
    };
    let mut source = source;
    if let Some(slot) = &args.slot {
        firedrill::config::check_slot_name(slot).map_err(|m| anyhow::anyhow!("--slot {m}"))?;
        source.slot = Some(slot.clone());
    }
    if let Some(l) = args.compression_level {
        source.compression_level = l;
    }
    if let Some(p) = args.partial_every {
        source.wal_partial_every = p.max(std::time::Duration::from_secs(1));
    }
    match args.heartbeat.as_deref() {
        None => {}
        Some("off") => source.heartbeat = None,
        Some(h) => {
            source.heartbeat = Some(
                firedrill::runtime::policy::parse_duration(h)
                    .map_err(|e| anyhow::anyhow!("--heartbeat: {e} (or \"off\")"))?,
            )
        }
    }
    let wait = args.run.wait();
    super::runtime(2)?.block_on(async move {
        let agent =
            firedrill::agent::assemble(config, firedrill::agent::Purpose::Command).await?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("firedrill: stopping: storing the segment in progress");
            let _ = tx.send(true);
        });
        match agent.stream_wal(&source, rx, wait).await? {
            Some(s) => {
                println!(
                    "WAL of {} archived: {} segments, stopped at {} on timeline {}",
                    s.source, s.segments, s.stopped_at, s.timeline
                );
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!(
                    "firedrill: another streamer of source {:?} holds its lease (an agent's or another command's); nothing was done",
                    source.name
                );
                Ok(ExitCode::from(75))
            }
        }
    })
}

/// A physical source of the agent's configuration.
fn configured(config: Config, name: Option<&str>) -> anyhow::Result<(Config, SourceConfig)> {
    let physical: Vec<&SourceConfig> = config.sources.iter().filter(|s| s.physical).collect();
    let chosen = match (name, physical.as_slice()) {
        (Some(n), _) => physical
            .iter()
            .find(|s| s.name == n)
            .copied()
            .with_context(|| {
                format!(
                    "--source {n:?}: the configuration's physical sources are {}",
                    physical
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
        (None, [one]) => *one,
        (None, []) => bail!("the configuration has no physical source (kind = \"physical\")"),
        (None, _) => {
            bail!("the configuration has several physical sources: pick one with --source")
        }
    };
    let chosen = chosen.clone();
    Ok((config, chosen))
}

fn fetch_one(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let (code, message) = match &args.via {
        Some(socket) => fetch::fetch_via(socket, &args.name, &args.dest),
        // Every failure is a refusal (126, which stops recovery): exit 1
        // would tell PostgreSQL the archive has no such file, and recovery
        // would end early, silently.
        None => match fetch_from_store(&args) {
            Ok(Some(data)) => match fetch::write_dest(&args.dest, &data) {
                Ok(()) => (0, format!("{}: restored", args.name)),
                Err(e) => (fetch::EXIT_REFUSED, format!("{}: {e}", args.dest.display())),
            },
            Ok(None) => (
                fetch::EXIT_MISSING,
                format!("{}: not in the archive", args.name),
            ),
            Err(e) => (fetch::EXIT_REFUSED, format!("{}: {e:#}", args.name)),
        },
    };
    if code != 0 {
        eprintln!("firedrill wal fetch: {message}");
    }
    Ok(ExitCode::from(code as u8))
}

fn fetch_from_store(args: &FetchArgs) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(source) = &args.source else {
        bail!("--source names the archive to read (or --via, from a restoring firedrill)");
    };
    let store = args.store.open()?;
    Ok(super::runtime(2)?.block_on(fetch::fetch(
        &store,
        source,
        &args.name,
        args.system_id.as_deref(),
    ))?)
}

fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    firedrill::config::check_source_name(&args.source)
        .map_err(|m| anyhow::anyhow!("--source {m}"))?;
    let store = args.store.open()?;
    let pushed = super::runtime(2)?.block_on(firedrill::jobs::wal::push::push(
        &store,
        &args.source,
        &args.file,
        args.compression_level,
    ))?;
    use firedrill::jobs::wal::push::Pushed;
    match pushed {
        Pushed::Stored => {}
        Pushed::AlreadyThere => {
            eprintln!("firedrill wal push: {} is already archived", args.file.display())
        }
        Pushed::NotNeeded => eprintln!(
            "firedrill wal push: {} is a backup history file, which recovery does not read: not stored",
            args.file.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let report = super::runtime(2)?.block_on(async {
        let backups = physical_backups(&store, &args.source).await?;
        firedrill::jobs::wal::verify::verify(&store, &args.source, &backups, args.deep)
            .await
            .map_err(anyhow::Error::from)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for t in &report.timelines {
            println!(
                "timeline {}: {} segments, {} .. {}{}",
                t.timeline,
                t.segments,
                t.first,
                t.last,
                t.partial
                    .as_ref()
                    .map(|p| format!(" (+ partial {p})"))
                    .unwrap_or_default()
            );
        }
        for b in &report.backups {
            println!(
                "backup {}: {}",
                b.id,
                b.problem.as_deref().unwrap_or("continued by the archive")
            );
        }
        for p in &report.problems {
            println!("problem: {p}");
        }
        if report.ok {
            println!("the WAL archive of {} is whole", args.source);
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The physical backups of a source that the store's keys vouch for.
pub async fn physical_backups(
    store: &firedrill::archive::Store,
    source: &str,
) -> anyhow::Result<Vec<firedrill::archive::Manifest>> {
    let mut out = vec![];
    for l in firedrill::archive::list_backups(store).await? {
        if l.source != source || !l.complete {
            continue;
        }
        let (m, _) = firedrill::archive::verified_manifest(store, source, &l.id).await?;
        if m.physical.is_some() {
            out.push(m);
        }
    }
    Ok(out)
}
