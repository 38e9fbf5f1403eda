//! Built-in retention: keep the newest `keep` complete backups of each source
//! (config `keep`, default 7). Incomplete backups are left alone: the host
//! decides about those.

use firedrill_plugin_sdk::retention::{
    export, Action, BackupInfo, Config, Guest, RetentionDecision, Timestamp,
};
use std::collections::HashMap;

struct NewestN;

impl Guest for NewestN {
    fn plan(backups: Vec<BackupInfo>, _now: Timestamp) -> Vec<RetentionDecision> {
        let keep: usize = match Config::parse_or("keep", 7usize) {
            Ok(n) => n,
            // A bad setting must not delete anything.
            Err(e) => {
                return backups
                    .into_iter()
                    .map(|b| RetentionDecision {
                        id: b.id,
                        action: Action::Keep,
                        reason: e.clone(),
                    })
                    .collect()
            }
        };
        let mut by_source: HashMap<&str, Vec<&BackupInfo>> = HashMap::new();
        for b in backups.iter().filter(|b| b.complete) {
            by_source.entry(b.source.as_str()).or_default().push(b);
        }
        let mut rank: HashMap<&str, usize> = HashMap::new();
        for list in by_source.values_mut() {
            list.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
            for (i, b) in list.iter().enumerate() {
                rank.insert(b.id.as_str(), i);
            }
        }
        backups
            .iter()
            .map(|b| {
                let (action, reason) = match rank.get(b.id.as_str()) {
                    None => (
                        Action::Keep,
                        "incomplete: not for retention to decide".to_string(),
                    ),
                    Some(&i) if i < keep => (
                        Action::Keep,
                        format!("newest {} of {} (keep {keep})", i + 1, b.source),
                    ),
                    Some(&i) => (
                        Action::Delete,
                        format!("number {} of {}, beyond keep {keep}", i + 1, b.source),
                    ),
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

export!(NewestN);
