//! @NAME@: a firedrill retention policy. Given every backup in the store
//! and the time, it says which to keep and which to delete, with a reason
//! for each; `firedrill prune --dry-run` shows them. The host still guards
//! the plan (a minimum age, at most N deletions per run, never the last
//! good backup of a source).
//!
//! As scaffolded it keeps the newest `keep` backups of each source and any
//! backup younger than `min-days` days. Replace `plan` with your rules.

wit_bindgen::generate!({ path: "wit", world: "firedrill:plugin/retention", generate_all });

use firedrill::plugin::types::Action;
use std::collections::HashMap;
use wasi::config::store as config;

struct Plugin;

impl Guest for Plugin {
    fn plan(backups: Vec<BackupInfo>, now: Timestamp) -> Vec<RetentionDecision> {
        let keep: usize = setting("keep", 7);
        let min_days: i64 = setting("min-days", 1);
        let mut newest_first: Vec<&BackupInfo> = backups.iter().collect();
        newest_first.sort_by(|a, b| b.created.cmp(&a.created));
        let mut kept: HashMap<&str, usize> = HashMap::new();
        newest_first
            .into_iter()
            .map(|b| {
                let n = kept.entry(b.source.as_str()).or_default();
                let days = (now - b.created) / 86_400;
                let (action, reason) = if *n < keep {
                    *n += 1;
                    (Action::Keep, format!("one of the newest {keep} of {}", b.source))
                } else if days < min_days {
                    (Action::Keep, format!("{days} days old, younger than min-days = {min_days}"))
                } else {
                    (Action::Delete, format!("{days} days old and not among the newest {keep}"))
                };
                RetentionDecision {
                    id: b.id.clone(),
                    action,
                    reason,
                }
            })
            .collect()
    }
}

/// `key` from the policy's `[config]`; `default` when unset or unparsable
/// (a retention policy that cannot read its settings must not delete more).
fn setting<T: std::str::FromStr>(key: &str, default: T) -> T {
    match config::get(key) {
        Ok(Some(v)) => v.trim().parse().unwrap_or(default),
        _ => default,
    }
}

export!(Plugin);
