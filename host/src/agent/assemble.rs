//! The one place an [`Agent`] is put together from a [`Config`]: the plugin
//! runtime and the policies directory, the built-in retention fallback, the
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
use crate::runtime::{Plugin, Policies, Policy, Runtime, RuntimeOptions, World};
use std::path::Path;
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
    let policies = match &config.policies {
        None => None,
        Some(dir) => Some(Policies::load(&runtime, dir).map_err(|e| bad("agent.policies", e))?),
    };
    if let Some(p) = &policies {
        // The live set: a reload swaps the redactor at the next batch.
        let p = p.clone();
        crate::telemetry::redactor()
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
    Ok(Agent {
        config,
        store,
        policies,
        fallback_retention,
        assertions,
        coord,
        catalog,
        turns: Default::default(),
        stop: tokio::sync::watch::channel(false).0,
        spawned: Default::default(),
        jobs: Default::default(),
    })
}

/// The built-in age policy, for BACKUP_RETENTION_DAYS without a retention policy.
fn age_policy(
    runtime: &Runtime,
    policies: Option<&Path>,
    days: u32,
) -> Result<Arc<Plugin>, StartError> {
    let dir = policies.ok_or_else(|| {
        bad(
            "BACKUP_RETENTION_DAYS",
            "needs agent.policies, the directory holding retention_age.wasm",
        )
    })?;
    let file = dir.join("retention-age (BACKUP_RETENTION_DAYS).toml");
    let text = format!("name = \"retention-age\"\nworld = \"retention\"\nwasm = \"retention_age.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ndays = {days}\n");
    let policy =
        Policy::parse(&file, &text, |_| None).map_err(|e| bad("BACKUP_RETENTION_DAYS", e))?;
    Ok(Arc::new(
        Plugin::load(runtime, policy).map_err(|e| bad("BACKUP_RETENTION_DAYS", e))?,
    ))
}
