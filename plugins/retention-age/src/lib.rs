//! Built-in retention: keep complete backups younger than `days` (config,
//! default 30, like BACKUP_RETENTION_DAYS); delete the older ones. The host
//! still guards every plan.

use firedrill_plugin_sdk::retention::{
    export, Action, BackupInfo, Config, Guest, RetentionDecision, Timestamp,
};

struct ByAge;

impl Guest for ByAge {
    fn plan(backups: Vec<BackupInfo>, now: Timestamp) -> Vec<RetentionDecision> {
        let days: i64 = match Config::parse_or("days", 30i64) {
            Ok(d) if d > 0 => d,
            Ok(_) => {
                return keep_all(
                    backups,
                    "config `days` must be at least 1; keeping everything",
                )
            }
            Err(e) => return keep_all(backups, &format!("{e}; keeping everything")),
        };
        backups
            .into_iter()
            .map(|b| {
                let age_days = (now - b.created) / 86_400;
                let (action, reason) = if !b.complete {
                    (
                        Action::Keep,
                        "incomplete: not for retention to decide".to_string(),
                    )
                } else if now - b.created > days * 86_400 {
                    (
                        Action::Delete,
                        format!("{age_days} days old, older than {days} days"),
                    )
                } else {
                    (
                        Action::Keep,
                        format!("{age_days} days old, within {days} days"),
                    )
                };
                RetentionDecision {
                    id: b.id,
                    action,
                    reason,
                }
            })
            .collect()
    }
}

fn keep_all(backups: Vec<BackupInfo>, reason: &str) -> Vec<RetentionDecision> {
    backups
        .into_iter()
        .map(|b| RetentionDecision {
            id: b.id,
            action: Action::Keep,
            reason: reason.to_string(),
        })
        .collect()
}

export!(ByAge);
