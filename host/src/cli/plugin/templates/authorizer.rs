//! @NAME@: a firedrill authorizer. Every `/v1` API request is put to it
//! (method, path, query, the relevant headers, the peer's address); it
//! allows with a principal and a role (viewer < operator < admin; the host
//! maps each route to the role it needs) or denies with a status and reason.
//!
//! As scaffolded it accepts one bearer token from the policy's config
//! (`token`, best given as `{ env = "MY_TOKEN" }`), as `principal` with
//! `role`. Replace `authorize` with your rules.

wit_bindgen::generate!({ path: "wit", world: "firedrill:plugin/authorizer", generate_all });

use firedrill::plugin::types::{Grant, Refusal, Role};
use wasi::config::store as config;

struct Plugin;

impl Guest for Plugin {
    fn authorize(facts: RequestFacts) -> Decision {
        let Some(expected) = get("token").filter(|t| !t.is_empty()) else {
            return deny(503, "the authorizer's policy sets no `token`");
        };
        let presented = facts
            .headers
            .iter()
            .find(|h| h.name == "authorization")
            .and_then(|h| h.value.strip_prefix("Bearer "));
        let Some(presented) = presented else {
            return deny(401, "send Authorization: Bearer <token>");
        };
        if !same(presented.as_bytes(), expected.as_bytes()) {
            return deny(401, "unknown token");
        }
        let role = match get("role").as_deref().unwrap_or("viewer") {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            _ => Role::Viewer,
        };
        Decision::Allow(Grant {
            principal: get("principal").unwrap_or_else(|| "token".into()),
            role,
            credential_id: None,
        })
    }
}

fn get(key: &str) -> Option<String> {
    config::get(key).ok().flatten()
}

fn deny(status: u16, reason: &str) -> Decision {
    Decision::Deny(Refusal {
        status,
        reason: reason.into(),
        retry_after: None,
    })
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

export!(Plugin);
