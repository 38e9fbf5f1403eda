//! @NAME@: a firedrill notifier. After each backup, drill and prune it sees
//! what happened (the source, the backup, a one-line detail, a failed
//! drill's failing checks, and whether the previous job of the same kind
//! failed) and returns the messages to send, each naming a destination the
//! policy declares under `[destinations.<name>]`. The host delivers them,
//! through the redactor; the plugin never sees an address or a credential.
//!
//! As scaffolded it tells each of the comma-separated `destinations` of the
//! policy's config about every failure and every recovery (a success after
//! a failure), and stays quiet otherwise. Replace `notify` with your rules.

wit_bindgen::generate!({ path: "wit", world: "firedrill:plugin/notifier", generate_all });

use firedrill::plugin::types::EventKind;
use wasi::config::store as config;
use wasi::logging::logging::{log, Level};

struct Plugin;

impl Guest for Plugin {
    fn notify(event: Event) -> Vec<Message> {
        let destinations: Vec<String> = config::get("destinations")
            .ok()
            .flatten()
            .unwrap_or_default()
            .split(',')
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect();
        if destinations.is_empty() {
            log(
                Level::Warn,
                "",
                "config `destinations` is empty: nothing is sent",
            );
            return vec![];
        }
        let (job, failed) = match event.kind {
            EventKind::BackupSucceeded => ("backup", false),
            EventKind::BackupFailed => ("backup", true),
            EventKind::DrillPassed => ("drill", false),
            EventKind::DrillFailed => ("drill", true),
            EventKind::PruneSucceeded => ("prune", false),
            EventKind::PruneFailed => ("prune", true),
        };
        let subject = if failed {
            format!("firedrill: {job} failed for source {}", event.source)
        } else if event.previous_failed == Some(true) {
            format!("firedrill: {job} recovered for source {}", event.source)
        } else {
            // A success after a success is no news.
            return vec![];
        };
        let mut text = event.detail.clone();
        if let Some(id) = &event.backup_id {
            text += &format!("\nbackup: {id}");
        }
        for check in &event.failed_checks {
            text += &format!("\n- {check}");
        }
        destinations
            .into_iter()
            .map(|destination| Message {
                destination,
                subject: subject.clone(),
                text: text.clone(),
            })
            .collect()
    }
}

export!(Plugin);
