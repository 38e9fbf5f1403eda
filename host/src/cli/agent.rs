//! `firedrill agent` and `firedrill config check`.

use anyhow::Context;
use firedrill::agent::Agent;
use firedrill::api::{ApiState, Audit, Authorization, Readiness};
use firedrill::archive::Store;
use firedrill::caps::keyvalue::KvTarget;
use firedrill::config::Config;
use firedrill::jobs::drill;
use firedrill::runtime::{Plugin, Policies, Policy, Runtime, RuntimeOptions, World};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

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
    firedrill::telemetry::redactor().add_known(config.secrets());
    // Everything that can be wrong is found before the first job runs.
    let runtime = Runtime::new(RuntimeOptions {
        trust: config.plugin_trust.clone(),
        ..Default::default()
    })?;
    let policies = match &config.policies {
        None => None,
        Some(dir) => Some(
            Policies::load(&runtime, dir)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("invalid policies")?,
        ),
    };
    if let Some(p) = &policies {
        // The live set: a reload swaps the redactor at the next batch.
        let p = p.clone();
        firedrill::telemetry::redactor()
            .set_plugin_source(move || p.current().of_world(World::Redactor).next().cloned());
    }
    let fallback_retention = match (config.retention_days, &policies) {
        (Some(days), p)
            if p.as_ref()
                .is_none_or(|p| p.current().of_world(World::Retention).next().is_none()) =>
        {
            Some(age_policy(&runtime, config.policies.as_deref(), days)?)
        }
        _ => None,
    };
    let assertions = match &config.assertions {
        None => vec![],
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("drill.assertions: cannot read {}", f.display()))?;
            drill::parse_assertions(&text)
                .map_err(|e| anyhow::anyhow!("drill.assertions: {}: {e}", f.display()))?
        }
    };
    let store = Store::open(&config.store_url, &config.store)?
        .with_keys(firedrill::archive::Keys::load(&config.keys)?);
    let rt = super::runtime(4)?;
    rt.block_on(async move {
        let coord = firedrill::coord::Coordinator::new(config.coordination.clone())
            .await
            .context("coordination.redis_url")?;
        let keyvalue = match &config.coordination.redis_url {
            Some(url) => Some(
                KvTarget::new(url, &format!("{}plugin:", config.coordination.namespace))
                    .context("coordination.redis_url")?,
            ),
            None => None,
        };
        let catalog = match &config.catalog {
            None => None,
            Some(url) => {
                let c = firedrill::catalog::Catalog::connect(url)
                    .await
                    .context("catalog.url")?;
                c.check_version().await.context("catalog.url")?;
                Some(Arc::new(c))
            }
        };
        let audit = Audit::open(config.audit_log.as_deref())
            .with_context(|| {
                format!(
                    "api.audit_log: cannot open {:?} for appending",
                    config.audit_log
                )
            })?
            .with_catalog(catalog.clone());
        let _watch = match &policies {
            Some(p) => Some(
                p.watch(config.reload_debounce)
                    .context("cannot watch the policies directory")?,
            ),
            None => None,
        };
        eprint!("{}", config.describe());
        for w in config.keys.warnings() {
            tracing::warn!("{w}");
        }
        let listen = config.listen;
        let agent = Arc::new(
            Agent::new(
                config,
                store,
                policies,
                fallback_retention,
                assertions,
                coord,
            )
            .with_catalog(catalog),
        );
        let ready = Arc::new(Readiness::default());
        let state = ApiState::new(
            agent.clone(),
            ready.clone(),
            Authorization::Plugins,
            keyvalue,
            audit,
        );
        let (addr, server) = firedrill::api::serve(listen, state)
            .await
            .with_context(|| format!("agent.listen: cannot listen on {listen}"))?;
        tracing::info!(%addr, sources = agent.config().sources.len(), "agent started");
        let running = tokio::spawn(agent.clone().run());
        ready.set(true);
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        let which = tokio::select! { _ = term.recv() => "SIGTERM", _ = int.recv() => "SIGINT" };
        tracing::info!("{which}: finishing");
        ready.set(false);
        agent.shutdown();
        let _ = running.await;
        server.abort();
        eprintln!("firedrill agent: stopped on {which}");
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

/// The built-in age policy, for BACKUP_RETENTION_DAYS without a retention policy.
fn age_policy(
    runtime: &Runtime,
    policies: Option<&Path>,
    days: u32,
) -> anyhow::Result<Arc<Plugin>> {
    let dir = policies.context(
        "BACKUP_RETENTION_DAYS: needs agent.policies, the directory holding retention_age.wasm",
    )?;
    let file = dir.join("retention-age (BACKUP_RETENTION_DAYS).toml");
    let text = format!("name = \"retention-age\"\nworld = \"retention\"\nwasm = \"retention_age.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ndays = {days}\n");
    let policy = Policy::parse(&file, &text, |_| None)?;
    Ok(Arc::new(
        Plugin::load(runtime, policy).context("BACKUP_RETENTION_DAYS")?,
    ))
}
