//! Built-in authorizer: one static bearer token from config.
//!
//! Config: `token` (required; better given as `{ env = "NAME" }` in the
//! policy), `principal` (default `static-token`), `role` (viewer, operator or
//! admin; default viewer).

use firedrill_plugin_sdk::authorizer::{
    export, Config, Decision, Grant, Guest, Refusal, RequestFacts, Role,
};

struct StaticToken;

fn deny(status: u16, reason: &str) -> Decision {
    Decision::Deny(Refusal {
        status,
        reason: reason.to_string(),
        retry_after: None,
    })
}

/// Compares without an early exit, so timing does not tell how much matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Guest for StaticToken {
    fn authorize(facts: RequestFacts) -> Decision {
        let Some(expected) = Config::get("token").filter(|t| !t.is_empty()) else {
            return deny(503, "authorizer has no token configured");
        };
        let role = match Config::get("role").as_deref().unwrap_or("viewer") {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => {
                return deny(
                    503,
                    "authorizer config `role` must be viewer, operator or admin",
                )
            }
        };
        let presented = facts
            .headers
            .iter()
            .find(|h| h.name == "authorization")
            .and_then(|h| h.value.strip_prefix("Bearer "));
        match presented {
            None => deny(401, "missing bearer token"),
            Some(t) if same(t.trim().as_bytes(), expected.as_bytes()) => Decision::Allow(Grant {
                principal: Config::get("principal").unwrap_or_else(|| "static-token".to_string()),
                role,
                credential_id: None,
            }),
            Some(_) => deny(401, "invalid bearer token"),
        }
    }
}

export!(StaticToken);
