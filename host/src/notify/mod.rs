//! Notifications: after each backup, drill and prune of the agent, the
//! notifier plugin (if a policy has one) maps the event to messages, each
//! naming a destination its policy declares; the host redacts each message
//! and hands it to the outbox, which delivers it with retries off the job's
//! path (`deliver`).
//!
//! - `mod.rs`: [`Notifier`]: the event, the previous outcome of the same
//!   kind (so a plugin can tell a recovery), the plugin call.
//! - `deliver.rs`: [`deliver::Outbox`]: a bounded queue, retries with
//!   backoff, webhook / Slack / SMTP delivery, counted per destination.
//!
//! Invariants: a notification never delays or fails a job (the plugin runs
//! in a task of its own, delivery in the outbox's, a full queue drops and
//! counts); a message names a destination of the plugin's own policy or is
//! refused; the plugin sees the event redacted, and nothing leaves without
//! passing the redactor again.

pub mod deliver;

use crate::caps::types::{Event, EventKind};
use crate::caps::CallContext;
use crate::runtime::{Plugin, Policies, World};
use deliver::{Item, Outbox};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What one job came to, as notifications see it.
pub struct Outcome<'a> {
    /// `backup`, `drill` or `prune`; other jobs notify nothing.
    pub job: &'a str,
    pub source: &'a str,
    pub failed: bool,
    pub backup: Option<String>,
    pub detail: String,
    pub failed_checks: Vec<String>,
}

pub struct Notifier {
    policies: Arc<Policies>,
    outbox: Outbox,
    /// (source, job) -> the last one failed.
    last: Mutex<HashMap<(String, String), bool>>,
}

impl Notifier {
    /// Each destination's worker starts with its first message.
    pub fn new(policies: Arc<Policies>) -> Notifier {
        Notifier {
            policies,
            outbox: Outbox::new(deliver::Options::default()),
            last: Mutex::default(),
        }
    }

    /// What the store says of a job kind's last outcome, before this agent
    /// has run one (a drill that failed before a restart: its next pass is
    /// a recovery).
    pub fn remember(&self, source: &str, job: &str, failed: bool) {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((source.to_string(), job.to_string()), failed);
    }

    /// Calls the notifier plugin on `outcome` and queues what it returns,
    /// in a task of its own: returns at once, whatever the plugin or the
    /// destinations do.
    pub fn notify(&self, outcome: Outcome<'_>) {
        let kind = match (outcome.job, outcome.failed) {
            ("backup", false) => EventKind::BackupSucceeded,
            ("backup", true) => EventKind::BackupFailed,
            ("drill", false) => EventKind::DrillPassed,
            ("drill", true) => EventKind::DrillFailed,
            ("prune", false) => EventKind::PruneSucceeded,
            ("prune", true) => EventKind::PruneFailed,
            _ => return,
        };
        let previous = self.last.lock().unwrap_or_else(|e| e.into_inner()).insert(
            (outcome.source.to_string(), outcome.job.to_string()),
            outcome.failed,
        );
        let Some(plugin) = self
            .policies
            .current()
            .of_world(World::Notifier)
            .next()
            .cloned()
        else {
            return;
        };
        let (source, backup) = (outcome.source.to_string(), outcome.backup);
        let (detail, checks) = (outcome.detail, outcome.failed_checks);
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            // The plugin and the redactor are wasm calls: off the async workers.
            let work = move || {
                // The plugin is untrusted: it never sees what the redactor
                // would scrub (it could re-encode a secret past the
                // scrubbing of its output).
                let mut lines = vec![detail];
                lines.extend(checks);
                let mut lines = crate::telemetry::redactor().redact_lines(lines).into_iter();
                let event = Event {
                    kind,
                    source,
                    backup_id: backup,
                    detail: lines.next().unwrap_or_default(),
                    time: crate::archive::manifest::unix_now(),
                    previous_failed: previous,
                    failed_checks: lines.collect(),
                };
                messages(&plugin, &event)
            };
            match tokio::task::spawn_blocking(work).await {
                Ok(items) => items.into_iter().for_each(|i| outbox.send(i)),
                Err(e) => tracing::error!("the notifier task failed: {e}"),
            }
        });
    }
}

/// The plugin's messages for `event`, each checked against its policy's
/// destinations and redacted.
fn messages(plugin: &Plugin, event: &Event) -> Vec<Item> {
    let out = match plugin.notify(&CallContext::default(), event) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(
                plugin = plugin.name(),
                "the notifier failed, nothing is sent for this event: {e}"
            );
            return vec![];
        }
    };
    let redactor = crate::telemetry::redactor();
    let mut items = Vec::new();
    for m in out {
        let Some((name, target)) = plugin
            .policy()
            .destinations
            .iter()
            .find(|(n, _)| *n == m.destination)
        else {
            let declared: Vec<&str> = plugin
                .policy()
                .destinations
                .iter()
                .map(|(n, _)| n.as_str())
                .collect();
            tracing::warn!(plugin = plugin.name(), destination = %m.destination, "a message to a destination the policy does not declare is dropped (declared: {})", declared.join(", "));
            continue;
        };
        // One call for the subject and every line of the text.
        let mut lines = vec![m.subject];
        lines.extend(m.text.lines().map(str::to_string));
        let mut lines = redactor.redact_lines(lines).into_iter();
        items.push(Item {
            destination: name.clone(),
            target: target.clone(),
            source: event.source.clone(),
            event: event_name(event.kind),
            backup: event.backup_id.clone(),
            time: event.time,
            subject: lines.next().unwrap_or_default(),
            text: lines.collect::<Vec<_>>().join("\n"),
        });
    }
    items
}

/// The event kind as the WIT spells it.
pub fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::BackupSucceeded => "backup-succeeded",
        EventKind::BackupFailed => "backup-failed",
        EventKind::DrillPassed => "drill-passed",
        EventKind::DrillFailed => "drill-failed",
        EventKind::PruneSucceeded => "prune-succeeded",
        EventKind::PruneFailed => "prune-failed",
    }
}
