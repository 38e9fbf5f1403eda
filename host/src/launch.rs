//! A running agent: the composition root. [`start`] assembles the agent
//! (`agent::assemble`), watches the policies directory, serves the API with
//! the authorizer in front, and runs every schedule; [`Running::stop`]
//! finishes. The binary's `agent` command, the fuzz target, the benches and
//! the tests all start an agent here, so none of them wires parts by hand.
//!
//! Invariant: nothing listens before every part has been checked; readiness
//! turns true only once the schedules run, and false before shutdown starts.

use crate::agent::{assemble, Agent, Purpose, StartError};
use crate::api::{ApiState, Audit, Authorization, Readiness};
use crate::caps::keyvalue::KvTarget;
use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;

/// What [`start`] left running.
pub struct Running {
    pub agent: Arc<Agent>,
    pub state: Arc<ApiState>,
    /// Where the API listens (the configured port may be 0).
    pub addr: SocketAddr,
    ready: Arc<Readiness>,
    server: tokio::task::JoinHandle<()>,
    schedules: tokio::task::JoinHandle<()>,
    _watch: Option<crate::runtime::WatchHandle>,
}

/// The pieces of the API an agent serves, without listening: for [`start`],
/// and for the fuzz target and the benches that drive connections by hand.
pub async fn api_state(
    agent: Arc<Agent>,
    ready: Arc<Readiness>,
    authorization: Authorization,
) -> Result<Arc<ApiState>, StartError> {
    let config = agent.config();
    let keyvalue = match &config.coordination.redis_url {
        Some(url) => Some(
            KvTarget::new(url, &format!("{}plugin:", config.coordination.namespace))
                .map_err(|e| StartError::new("coordination.redis_url", e))?,
        ),
        None => None,
    };
    let audit = Audit::open(config.audit_log.as_deref())
        .map_err(|e| {
            StartError::new(
                "api.audit_log",
                format!("cannot open {:?} for appending: {e}", config.audit_log),
            )
        })?
        .with_catalog(agent.catalog().cloned());
    Ok(ApiState::new(agent, ready, authorization, keyvalue, audit))
}

/// Assembles the agent `config` describes and starts it.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let listen = config.listen;
    let debounce = config.reload_debounce;
    let agent = Arc::new(assemble(config, Purpose::Agent).await?);
    let watch = agent.policies().watch(debounce).map_err(|e| {
        StartError::new("agent.policies", format!("cannot watch the directory: {e}"))
    })?;
    let ready = Arc::new(Readiness::default());
    let state = api_state(agent.clone(), ready.clone(), Authorization::Plugins).await?;
    let (addr, server) = crate::api::serve(listen, state.clone())
        .await
        .map_err(|e| StartError::new("agent.listen", format!("cannot listen on {listen}: {e}")))?;
    tracing::info!(%addr, sources = agent.config().sources.len(), "agent started");
    agent.publish_store_state().await;
    let schedules = tokio::spawn(agent.clone().run());
    ready.set(true);
    Ok(Running {
        agent,
        state,
        addr,
        ready,
        server,
        schedules,
        _watch: watch,
    })
}

impl Running {
    /// Stops taking work (not ready), drops the steps in progress where they
    /// stand, waits for the schedules to return, and closes the API.
    pub async fn stop(self) {
        self.ready.set(false);
        self.agent.shutdown();
        let _ = self.schedules.await;
        self.server.abort();
    }
}
