//! Authorization of `/v1` requests: the request's facts go to the
//! authorizer plugin, its decision is compared with the route's role, and
//! the outcome is written to the audit log, allowed or not.

use super::{ApiError, ApiState, Authorization};
use crate::caps::types::{Decision, Header, RequestFacts, Role};
use crate::caps::CallContext;
use crate::runtime::World;
use crate::telemetry::metrics;
use hyper::HeaderMap;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The headers an authorizer sees; the rest never leave the host.
const FACT_HEADERS: [&str; 6] = [
    "authorization",
    "user-agent",
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x-request-id",
];

/// Counts one decision: `allow`, `deny`, or `error` (the authorizer trapped,
/// overran its deadline, could not decide, or none was loaded: a 503).
fn count(decision: &'static str) {
    metrics::global().add(metrics::API_AUTHORIZATIONS, &[("decision", decision)], 1.0);
}

/// Who is calling, once allowed.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

pub fn rank(role: Role) -> u8 {
    match role {
        Role::Viewer => 0,
        Role::Operator => 1,
        Role::Admin => 2,
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

/// Where decisions are written: a JSON-lines file, or the log (target
/// `audit`); and the catalog's `firedrill.audit` table when there is one.
pub struct Audit {
    sink: AuditSink,
    catalog: Option<Arc<crate::catalog::Catalog>>,
}

enum AuditSink {
    Log,
    File(Mutex<std::fs::File>),
}

impl Audit {
    pub fn open(path: Option<&Path>) -> std::io::Result<Audit> {
        let sink = match path {
            None => AuditSink::Log,
            Some(p) => AuditSink::File(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
        };
        Ok(Audit {
            sink,
            catalog: None,
        })
    }

    pub fn with_catalog(mut self, catalog: Option<Arc<crate::catalog::Catalog>>) -> Audit {
        self.catalog = catalog;
        self
    }

    fn write(&self, entry: &AuditEntry) {
        let line = serde_json::to_string(entry).expect("audit entries serialize");
        // It leaves the process (the log path would redact it too).
        let line = crate::telemetry::redactor().redact(&line);
        if let Some(c) = &self.catalog {
            let (c, line) = (c.clone(), line.clone());
            tokio::spawn(async move {
                if let Err(e) = c.record_audit(&line).await {
                    tracing::warn!("audit entry not written to the catalog: {e}");
                }
            });
        }
        match &self.sink {
            AuditSink::Log => tracing::info!(target: "audit", "{line}"),
            AuditSink::File(f) => {
                let mut f = f.lock().unwrap();
                if let Err(e) = writeln!(f, "{line}") {
                    tracing::error!("cannot append to the audit log: {e}");
                }
            }
        }
    }
}

#[derive(Serialize)]
struct AuditEntry<'a> {
    time: i64,
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    peer: String,
    /// allow or deny.
    decision: &'static str,
    status: u16,
    principal: Option<&'a str>,
    role: Option<&'static str>,
    credential_id: Option<&'a str>,
    required_role: &'static str,
    reason: Option<&'a str>,
    authorizer: Option<&'a str>,
}

/// Asks the authorizer about a request that needs `required`.
pub async fn authorize(
    state: &ApiState,
    peer: SocketAddr,
    request_id: &str,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    required: Role,
) -> Result<Principal, ApiError> {
    if matches!(state.authorization, Authorization::Disabled) {
        return Ok(Principal {
            name: "anonymous".into(),
            role: Role::Admin,
        });
    }
    let clock = Instant::now();
    let facts = RequestFacts {
        method: method.into(),
        path: path.into(),
        query: query.map(str::to_string),
        headers: FACT_HEADERS
            .iter()
            .filter_map(|&name| {
                let value = headers.get(name)?.to_str().ok()?;
                Some(Header {
                    name: name.into(),
                    value: value.into(),
                })
            })
            .collect(),
        peer: peer.ip().to_canonical().to_string(),
        time: crate::archive::manifest::unix_now(),
        request_id: request_id.into(),
    };
    let plugin = state
        .agent
        .policies()
        .current()
        .of_world(World::Authorizer)
        .next()
        .cloned();
    let mut entry = AuditEntry {
        time: facts.time,
        request_id,
        method,
        path,
        peer: facts.peer.clone(),
        decision: "deny",
        status: 503,
        principal: None,
        role: None,
        credential_id: None,
        required_role: role_name(required),
        reason: None,
        authorizer: None,
    };
    let Some(plugin) = plugin else {
        count("error");
        let reason = "no authorizer policy is loaded, so every /v1 request is refused: set FIREDRILL_TOKEN_KEY (the built-in authorizer's key; `firedrill token issue` makes tokens with it) or add an authorizer policy to agent.policies";
        entry.reason = Some(reason);
        state.audit.write(&entry);
        return Err(ApiError::new(503, reason));
    };
    let ctx = CallContext {
        keyvalue: state.keyvalue.clone(),
        ..Default::default()
    };
    let name = plugin.name().to_string();
    entry.authorizer = Some(&name);
    let decided = tokio::task::spawn_blocking(move || plugin.authorize(&ctx, &facts)).await;
    // Summed, for the mean decision time with the decisions' count.
    metrics::global().add(
        metrics::API_AUTHORIZER_TIME,
        &[],
        clock.elapsed().as_secs_f64(),
    );
    let decision = match decided {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            count("error");
            let reason = format!("the authorizer failed, so the request is refused: {e}");
            entry.reason = Some(&reason);
            state.audit.write(&entry);
            return Err(ApiError::new(503, reason));
        }
        Err(e) => {
            count("error");
            return Err(ApiError::new(
                503,
                format!("the authorizer task failed: {e}"),
            ));
        }
    };
    match decision {
        Decision::Allow(grant) => {
            entry.principal = Some(&grant.principal);
            entry.role = Some(role_name(grant.role));
            entry.credential_id = grant.credential_id.as_deref();
            if rank(grant.role) < rank(required) {
                count("deny");
                let reason = format!(
                    "{} has role {}; {method} {path} needs {}",
                    grant.principal,
                    role_name(grant.role),
                    role_name(required)
                );
                entry.status = 403;
                entry.reason = Some(&reason);
                state.audit.write(&entry);
                return Err(ApiError::new(403, reason));
            }
            count("allow");
            entry.decision = "allow";
            entry.status = 200;
            state.audit.write(&entry);
            Ok(Principal {
                name: grant.principal.clone(),
                role: grant.role,
            })
        }
        Decision::Deny(refusal) => {
            // A 503 is the authorizer saying it cannot decide (its Redis is down, say).
            count(match refusal.status {
                503 => "error",
                _ => "deny",
            });
            // An authorizer may only refuse: a "deny" with a success status is a 403.
            let status = match refusal.status {
                s @ 400..=599 => s,
                _ => 403,
            };
            entry.status = status;
            entry.reason = Some(&refusal.reason);
            state.audit.write(&entry);
            let mut e = ApiError::new(status, refusal.reason.clone());
            e.retry_after = refusal.retry_after.filter(|_| status == 429);
            Err(e)
        }
    }
}
