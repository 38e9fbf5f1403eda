//! The one place an [`Agent`] is put together from a [`Config`]: the plugin
//! runtime and the policies (the directory's and the built-ins), the
//! drill assertions, the store with its keys, coordination and the catalog.
//! The agent's start-up (`crate::launch`) and every CLI job command use it,
//! so a hand-run job is configured exactly as a scheduled one.
//!
//! Invariant: everything that can be wrong is found here, before the first
//! job runs; an error names the setting to fix.

use super::Agent;
use crate::archive::{Keys, Store};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::coord::Coordinator;
use crate::jobs::drill;
use crate::runtime::{Policies, Runtime, RuntimeOptions, World};
use std::sync::Arc;

/// A setting the agent cannot start with: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct StartError {
    pub setting: String,
    pub message: String,
}

impl StartError {
    pub fn new(setting: &str, message: impl std::fmt::Display) -> StartError {
        StartError {
            setting: setting.into(),
            message: message.to_string(),
        }
    }
}

fn bad(setting: &str, e: impl std::fmt::Display) -> StartError {
    StartError::new(setting, e)
}

/// What an assembled agent is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The long-running agent: every part must be there.
    Agent,
    /// One job by hand (a restore in a disaster among them): a catalog that
    /// cannot be reached is a warning, its history is not worth the job.
    Command,
}

/// The agent `config` describes, connected (coordination, catalog) and
/// checked, with its policies loaded (not yet watched).
pub async fn assemble(config: Config, purpose: Purpose) -> Result<Agent, StartError> {
    crate::telemetry::redactor().add_known(config.secrets());
    for w in config.keys.warnings() {
        tracing::warn!("{w}");
    }
    let runtime = Runtime::new(RuntimeOptions {
        trust: config.plugin_trust.clone(),
        ..Default::default()
    })
    .map_err(|e| bad("agent", e))?;
    if !crate::runtime::builtin::embedded() {
        tracing::warn!("this firedrill was built without its built-in plugins: worlds the policies directory leaves empty have no plugin (run scripts/build-plugins, then build it again)");
    }
    let defaults = crate::runtime::Defaults {
        retention_days: config.retention_days,
    };
    let policies = Policies::load(&runtime, config.policies.as_deref(), defaults)
        .map_err(|e| bad("agent.policies", e))?;
    {
        // The live set: a reload swaps the redactor at the next batch.
        let p = policies.clone();
        crate::telemetry::redactor()
            .set_plugin_source(move || p.current().of_world(World::Redactor).next().cloned());
    }
    let assertions = match &config.assertions {
        None => vec![],
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| {
                bad(
                    "drill.assertions",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            drill::parse_assertions(&text)
                .map_err(|e| bad("drill.assertions", format!("{}: {e}", f.display())))?
        }
    };
    let keys = Keys::load(&config.keys).map_err(|e| bad(e.setting(), &e))?;
    let store = Store::open(&config.store_url, &config.store)
        .map_err(|e| bad("store", e))?
        .with_keys(keys);
    let coord = Coordinator::new(config.coordination.clone())
        .await
        .map_err(|e| bad("coordination.redis_url", e))?;
    let catalog = match &config.catalog {
        None => None,
        Some(url) => {
            let connected = match Catalog::connect(url).await {
                Ok(c) => c.check_version().await.map(|()| c),
                Err(e) => Err(e),
            };
            match (connected, purpose) {
                (Ok(c), _) => Some(Arc::new(c)),
                (Err(e), Purpose::Agent) => return Err(bad("catalog.url", e)),
                (Err(e), Purpose::Command) => {
                    tracing::warn!("catalog.url: {e}; this job is not recorded there");
                    None
                }
            }
        }
    };
    let notifier =
        (purpose == Purpose::Agent).then(|| crate::notify::Notifier::new(policies.clone()));
    Ok(Agent {
        config,
        store,
        policies,
        notifier,
        assertions,
        coord,
        catalog,
        turns: Default::default(),
        stop: tokio::sync::watch::channel(false).0,
        spawned: Default::default(),
        jobs: Default::default(),
    })
}
