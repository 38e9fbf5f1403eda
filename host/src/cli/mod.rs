//! One file per command group; each returns the process exit code.

pub mod agent;
pub mod backup;
pub mod catalog;
pub mod demo;
pub mod drill;
pub mod keys;
pub mod list;
pub mod plugin;
pub mod policy;
pub mod prune;
pub mod restore;
pub mod status;
pub mod token;
pub mod wal;

use firedrill::agent::{JobRequest, JobResult};
use firedrill::archive::{
    AzureOptions, GcsOptions, KeySettings, Keys, S3Options, Store, StoreOptions,
};
use firedrill::config::Config;
use firedrill::jobs::drill::{DrillSession, Pick};
use firedrill::jobs::status::Kind;
use firedrill::telemetry::otlp::{Otlp, Settings};
use std::path::PathBuf;

/// Where backups live, for every command that reads or writes them. The S3
/// settings take the environment names of the common backup templates.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// file:///absolute/path, s3://bucket/prefix, gs://bucket/prefix or
    /// azblob://container/prefix (default: s3://$S3_BUCKET/$BACKUP_PREFIX).
    #[arg(long, env = "FIREDRILL_STORE")]
    store: Option<String>,
    #[arg(long, env = "S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    #[arg(long, env = "S3_REGION")]
    s3_region: Option<String>,
    #[arg(long, env = "S3_ACCESS_KEY_ID", hide_env_values = true)]
    s3_access_key_id: Option<String>,
    #[arg(long, env = "S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    s3_secret_access_key: Option<String>,
    /// A Google service account JSON key file, for gs:// stores.
    #[arg(long, env = "GOOGLE_APPLICATION_CREDENTIALS")]
    gcs_credentials_file: Option<PathBuf>,
    /// Another GCS endpoint (with credentials); an emulator is
    /// STORAGE_EMULATOR_HOST, as for every Google client.
    #[arg(long)]
    gcs_endpoint: Option<String>,
    /// The Azure storage account, for azblob:// stores; its key comes from
    /// AZURE_STORAGE_KEY (or AZURE_STORAGE_SAS_TOKEN), or the whole
    /// connection from AZURE_STORAGE_CONNECTION_STRING.
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT")]
    azure_account: Option<String>,
    /// The blob endpoint (Azurite, another cloud).
    #[arg(long, env = "AZURE_STORAGE_SERVICE_ENDPOINT")]
    azure_endpoint: Option<String>,
    /// Encrypt new backups to this age recipient (age1...), or to the
    /// recipients in this file; repeat for several (an operator, an escrow).
    #[arg(
        long = "recipient",
        env = "FIREDRILL_AGE_RECIPIENTS",
        value_delimiter = ','
    )]
    recipients: Vec<String>,
    /// An age identity file, to read encrypted backups (drill, restore, rekey).
    #[arg(
        long = "identity",
        env = "FIREDRILL_AGE_IDENTITY",
        value_delimiter = ','
    )]
    identities: Vec<PathBuf>,
    /// An Ed25519 private key file (`firedrill keygen signing`): signs the
    /// manifests written, and makes signed manifests required when reading.
    #[arg(long, env = "FIREDRILL_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// An Ed25519 public key (base64) whose manifest signatures are accepted;
    /// once any is given, unsigned manifests are refused.
    #[arg(
        long = "verify-key",
        env = "FIREDRILL_VERIFY_KEYS",
        value_delimiter = ','
    )]
    verify_keys: Vec<String>,
}

impl StoreArgs {
    pub fn open(&self) -> anyhow::Result<Store> {
        let (url, opts, keys) = self.settings()?;
        Ok(Store::open(&url, &opts)?.with_keys(Keys::load(&keys)?))
    }

    /// The configuration a job command runs under without `--config`: the
    /// store and keys of these flags, the rest from the environment as the
    /// agent reads it (FIREDRILL_REDIS_URL, FIREDRILL_CATALOG_URL,
    /// FIREDRILL_LOCK_DIR ...). The command adds its source.
    pub fn adhoc_config(&self) -> anyhow::Result<Config> {
        let (url, opts, keys) = self.settings()?;
        Ok(Config::adhoc(&url, opts, keys, |k| std::env::var(k).ok())?)
    }

    /// The store URL, its cloud settings and the keys these flags name.
    fn settings(&self) -> anyhow::Result<(String, StoreOptions, KeySettings)> {
        let url = match &self.store {
            Some(s) => s.clone(),
            None => match std::env::var("S3_BUCKET") {
                Ok(bucket) => format!(
                    "s3://{bucket}/{}",
                    std::env::var("BACKUP_PREFIX").unwrap_or_default()
                ),
                Err(_) => anyhow::bail!(
                    "no store: pass --store {} (or set S3_BUCKET)",
                    firedrill::archive::store::STORE_URL_FORMS
                ),
            },
        };
        // Secrets of the other clouds come from the environment only (a
        // command line is visible to every user of the machine).
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let opts = StoreOptions {
            s3: S3Options {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                access_key_id: self.s3_access_key_id.clone(),
                secret_access_key: self.s3_secret_access_key.clone(),
            },
            gcs: GcsOptions {
                credentials_file: self.gcs_credentials_file.clone(),
                emulator_host: env("STORAGE_EMULATOR_HOST"),
                endpoint: self.gcs_endpoint.clone(),
            },
            azure: AzureOptions {
                connection_string: env("AZURE_STORAGE_CONNECTION_STRING"),
                account: self.azure_account.clone(),
                key: env("AZURE_STORAGE_KEY"),
                sas_token: env("AZURE_STORAGE_SAS_TOKEN"),
                endpoint: self.azure_endpoint.clone(),
            },
        };
        let keys = KeySettings {
            recipients: self.recipients.clone(),
            identity_files: self.identities.clone(),
            signing_key_file: self.signing_key.clone(),
            verify_keys: self.verify_keys.clone(),
        };
        Ok((url, opts, keys))
    }
}

/// How a job command (backup, drill) runs: through the agent's one job
/// path (`Agent::execute`), so it takes the same lease as an agent on the
/// same source and store, and is counted, published and recorded as the
/// agent's jobs are.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The agent's configuration file: run the job as that agent would (its
    /// store, keys, coordination, catalog and policies; the store flags are
    /// then not used) and pick the source with --source.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How long to wait while another run of the same job on the same source
    /// (an agent's, another command's) holds its lease.
    #[arg(long, default_value = "10m", value_parser = firedrill::runtime::policy::parse_duration)]
    wait: std::time::Duration,
}

impl RunArgs {
    /// The agent's configuration file, when given.
    pub fn config_file(&self) -> anyhow::Result<Option<Config>> {
        self.config
            .as_deref()
            .map(|f| {
                Config::load(Some(f), |k| std::env::var(k).ok())
                    .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
            })
            .transpose()
    }

    /// How long to wait for a lease another run holds.
    pub fn wait(&self) -> std::time::Duration {
        self.wait
    }

    /// The configuration the job runs under: the agent's file, else one
    /// made of the store flags and the environment.
    pub fn config(&self) -> anyhow::Result<Config> {
        match self.config_file()? {
            Some(c) => Ok(c),
            None => self.store.adhoc_config(),
        }
    }

    /// Assembles the agent `config` describes and runs `req` through it;
    /// on SIGTERM or SIGINT the job is dropped where it stands and what its
    /// drill created is removed. `Err(code)`: interrupted.
    pub fn run(
        &self,
        config: Config,
        req: JobRequest,
        threads: usize,
    ) -> anyhow::Result<Result<JobResult, u8>> {
        Ok(self
            .run_all(config, req, threads)?
            .map(|mut r| r.pop().expect("one job, one result")))
    }

    /// As [`RunArgs::run`]; a prune of no source in particular runs once
    /// per source in the store, each under its own lease.
    pub fn run_all(
        &self,
        config: Config,
        req: JobRequest,
        threads: usize,
    ) -> anyhow::Result<Result<Vec<JobResult>, u8>> {
        let (wait, mut req) = (self.wait, req);
        // On a worker thread, as the agent runs its jobs: the main thread
        // only waits. A job's streams then run beside their connections'
        // tasks instead of waking the main thread for every read.
        let rt = runtime(threads)?;
        let job: tokio::task::JoinHandle<anyhow::Result<Result<Vec<JobResult>, u8>>> = rt.spawn(async move {
            let agent = firedrill::agent::assemble(config, firedrill::agent::Purpose::Command).await?;
            let sources: Vec<String> = match req.kind {
                Kind::Drill | Kind::Restore => {
                    // The lease is the backup's source's: find it first.
                    let pick = match (&req.backup, &req.pick, req.kind) {
                        (Some(id), _, _) => Pick::Id(id.clone()),
                        (None, Some(p), _) => p.clone(),
                        (None, None, Kind::Restore) => Pick::Latest,
                        (None, None, _) => agent.config().drill_pick.clone(),
                    };
                    let source = Some(req.source.as_str()).filter(|s| !s.is_empty());
                    let (source, id) = agent.pick_backup(&pick, source).await?;
                    req.backup = Some(id);
                    vec![source]
                }
                Kind::Prune if req.source.is_empty() => {
                    let mut all: Vec<String> = firedrill::archive::list_backups(agent.store())
                        .await?
                        .into_iter()
                        .map(|b| b.source)
                        .collect();
                    all.sort();
                    all.dedup();
                    all
                }
                _ => vec![req.source.clone()],
            };
            let session = DrillSession::new();
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let mut results = Vec::new();
            // One prune of several sources keeps one deletion budget.
            let mut budget = agent.config().max_deletions;
            for source in sources {
                req.source = source;
                if req.kind == Kind::Prune {
                    req.max_deletions = Some(budget);
                }
                let record = agent.jobs.create(req.kind, &req.source, &req.trigger);
                let (code, name) = tokio::select! {
                    r = agent.execute(&req, &record, &session, wait) => {
                        match r? {
                            Some(result) => {
                                if let JobResult::Prune(p) = &result {
                                    let used = p.decisions.iter().filter(|d| d.delete).count();
                                    budget = budget.saturating_sub(used);
                                }
                                results.push(result);
                                continue;
                            }
                            None => {
                                eprintln!(
                                    "firedrill: another {} of source {:?} held its lease for {} (an agent's or another command's); nothing was done: try again later or pass a longer --wait",
                                    req.kind.as_str(),
                                    req.source,
                                    humantime::format_duration(wait)
                                );
                                // EX_TEMPFAIL: try again later.
                                return Ok(Err(75));
                            }
                        }
                    }
                    _ = term.recv() => (143, "SIGTERM"),
                    _ = int.recv() => (130, "SIGINT"),
                };
                eprintln!(
                    "firedrill: {name}: the {} is stopped where it stood{}",
                    req.kind.as_str(),
                    if req.kind == Kind::Drill { "; its databases are removed" } else { "" }
                );
                session.cleanup().await;
                return Ok(Err(code));
            }
            Ok(Ok(results))
        });
        rt.block_on(job)?
    }
}

/// A tokio runtime sized for `jobs` parallel streams.
pub fn runtime(jobs: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(jobs.clamp(2, 64))
        .enable_all()
        .build()?)
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The plugin runtime of a command, trusting the plugin signing keys in
/// `FIREDRILL_TRUSTED_PLUGIN_KEYS` (the agent takes them from its config).
pub fn plugin_runtime() -> anyhow::Result<firedrill::runtime::Runtime> {
    let trust = firedrill::runtime::PluginTrust::from_env()
        .map_err(|e| anyhow::anyhow!("FIREDRILL_TRUSTED_PLUGIN_KEYS: {e}"))?;
    Ok(firedrill::runtime::Runtime::new(
        firedrill::runtime::RuntimeOptions {
            trust,
            ..Default::default()
        },
    )?)
}

/// Logs go to stderr (stdout is for results), or to stdout for the agent,
/// as text unless `FIREDRILL_LOG_FORMAT=json`, through the redactor; the
/// level comes from `RUST_LOG` (default warn, and info for coordination). With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans,
/// metrics and the same redacted logs are exported over OTLP; the returned
/// exporter is flushed at exit.
pub fn init_logging(to_stdout: bool) -> Option<Otlp> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // Secrets given on the command line or in the environment are known
    // from the start; records go out through the redactor in batches.
    firedrill::telemetry::redactor().add_known(known_secrets());
    use firedrill::telemetry::logs::{RedactedWriter, Target};
    let writer = RedactedWriter::new(if to_stdout {
        Target::Stdout
    } else {
        Target::Stderr
    });
    let otlp = match Settings::from_env().and_then(|s| s.map(|s| Otlp::start(&s)).transpose()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("firedrill: OTLP export off: {e}");
            None
        }
    };
    // Log records are exported too: the exporters' own chatter below warn
    // would feed itself (each export logs, each log is exported).
    // Waiting for a lease is worth a line by default: a command run beside
    // an agent would otherwise sit silent for up to --wait.
    let mut directives =
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,firedrill::coord=info".into());
    if otlp.is_some() {
        directives.push_str(&format!(",{EXPORTER_TARGETS}").replace("=off", "=warn"));
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Spans are for the trace export; the log lines stay one record each.
    use tracing_subscriber::filter::FilterExt as _;
    let events = filter.and(tracing_subscriber::filter::filter_fn(|m| m.is_event()));
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = if std::env::var("FIREDRILL_LOG_FORMAT").as_deref() == Ok("json") {
        fmt.json().with_filter(events).boxed()
    } else {
        let tty = if to_stdout {
            std::io::stdout().is_terminal()
        } else {
            std::io::stderr().is_terminal()
        };
        fmt.with_ansi(tty).with_filter(events).boxed()
    };
    let spans = otlp.as_ref().map(|o| {
        use opentelemetry::trace::TracerProvider as _;
        // The exporters' own traffic is never traced back into the export.
        tracing_opentelemetry::layer()
            .with_tracer(o.tracer.tracer("firedrill"))
            .with_filter(tracing_subscriber::EnvFilter::new(format!(
                "info,{EXPORTER_TARGETS}"
            )))
    });
    tracing_subscriber::registry().with(fmt).with(spans).init();
    otlp
}

/// The crates an OTLP export runs through: never traced, and logged only
/// from warn up while exporting.
const EXPORTER_TARGETS: &str = "h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// Secret values this process was started with: URL passwords in its
/// arguments and environment, and the environment's keys and tokens.
fn known_secrets() -> Vec<String> {
    use firedrill::telemetry::redact::url_password;
    const SECRET_VARS: &[&str] = &[
        "S3_SECRET_ACCESS_KEY",
        "S3_ACCESS_KEY_ID",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "FIREDRILL_TOKEN_KEY",
        "PGPASSWORD",
        "REDISCLI_AUTH",
    ];
    let mut out: Vec<String> = std::env::args()
        .chain(std::env::vars().map(|(_, v)| v))
        .flat_map(|v| v.split(',').filter_map(url_password).collect::<Vec<_>>())
        .collect();
    out.extend(SECRET_VARS.iter().filter_map(|k| std::env::var(k).ok()));
    out.extend(
        AzureOptions {
            connection_string: std::env::var("AZURE_STORAGE_CONNECTION_STRING").ok(),
            ..Default::default()
        }
        .secrets(),
    );
    out
}
