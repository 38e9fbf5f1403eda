//! Built-in notifier: no spam. Each event that is news becomes one message
//! to each destination named in `destinations` (config, comma-separated
//! names of the policy's `[destinations.<name>]` tables; required). With
//! `on` = `failures` (the default) the news is every failure (backup, drill,
//! prune) and every recovery (a success whose previous job of the same kind
//! failed); with `on` = `all`, every event. The host delivers, through the
//! redactor, and drops a message to a destination the policy does not
//! declare.

use firedrill_plugin_sdk::notifier::{export, Config, Event, EventKind, Guest, Log, Message};

/// A failed drill's message lists at most this many failing checks.
const MAX_CHECKS: usize = 50;

/// Which events are news.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    /// Failures and recoveries only.
    Failures,
    /// Every event.
    All,
}

impl On {
    /// The config value `on`: unset means `failures`.
    pub fn parse(value: Option<&str>) -> Result<On, String> {
        match value.map(str::trim) {
            None | Some("") | Some("failures") => Ok(On::Failures),
            Some("all") => Ok(On::All),
            Some(other) => Err(format!(
                "config `on` = {other:?}: use \"failures\" or \"all\""
            )),
        }
    }
}

/// What the policy's config says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Destination names, each once, in the order listed.
    pub destinations: Vec<String>,
    pub on: On,
}

/// The config value `destinations`: names trimmed, empty ones skipped, a
/// repeated name kept once. None at all is an error.
pub fn destinations(value: Option<&str>) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in value.unwrap_or_default().split(',').map(str::trim) {
        if !name.is_empty() && !out.iter().any(|d| d == name) {
            out.push(name.to_string());
        }
    }
    if out.is_empty() {
        return Err(
            "config `destinations` is missing or empty: list the destinations to notify, comma-separated (e.g. \"ops, chat\")"
                .into(),
        );
    }
    Ok(out)
}

/// The job an event is about, whether it failed, and what a success of it
/// is called.
fn job(kind: EventKind) -> (&'static str, bool, &'static str) {
    match kind {
        EventKind::BackupSucceeded => ("backup", false, "succeeded"),
        EventKind::BackupFailed => ("backup", true, "succeeded"),
        EventKind::DrillPassed => ("drill", false, "passed"),
        EventKind::DrillFailed => ("drill", true, "passed"),
        EventKind::PruneSucceeded => ("prune", false, "succeeded"),
        EventKind::PruneFailed => ("prune", true, "succeeded"),
    }
}

/// The subject of `event`'s message, or none when under `on` it is no news.
pub fn subject(event: &Event, on: On) -> Option<String> {
    let (job, failed, success) = job(event.kind);
    let source = &event.source;
    if failed {
        // A failed drill is the one a restore would have hit: it shouts.
        let word = if job == "drill" { "FAILED" } else { "failed" };
        return Some(format!("firedrill: {job} {word} for source {source}"));
    }
    if event.previous_failed == Some(true) {
        return Some(format!(
            "firedrill: {job} {success} again for source {source} (recovered)"
        ));
    }
    match on {
        On::All => Some(format!("firedrill: {job} {success} for source {source}")),
        On::Failures => None,
    }
}

/// The body: the detail, the backup, and a failed drill's failing checks,
/// one a line.
pub fn text(event: &Event) -> String {
    let mut lines: Vec<String> = Vec::new();
    let detail = event.detail.trim();
    if !detail.is_empty() {
        lines.push(detail.to_string());
    }
    if let Some(id) = &event.backup_id {
        lines.push(format!("backup: {id}"));
    }
    if event.kind == EventKind::DrillFailed && !event.failed_checks.is_empty() {
        lines.push("failing checks:".to_string());
        for check in event.failed_checks.iter().take(MAX_CHECKS) {
            lines.push(format!("- {check}"));
        }
        if event.failed_checks.len() > MAX_CHECKS {
            lines.push(format!(
                "... and {} more",
                event.failed_checks.len() - MAX_CHECKS
            ));
        }
    }
    lines.join("\n")
}

/// The messages `event` calls for: one per destination, or none.
pub fn messages(event: &Event, settings: &Settings) -> Vec<Message> {
    let Some(subject) = subject(event, settings.on) else {
        return vec![];
    };
    let text = text(event);
    settings
        .destinations
        .iter()
        .map(|d| Message {
            destination: d.clone(),
            subject: subject.clone(),
            text: text.clone(),
        })
        .collect()
}

struct NoSpam;

impl Guest for NoSpam {
    fn notify(event: Event) -> Vec<Message> {
        let destinations = match destinations(Config::get("destinations").as_deref()) {
            Ok(d) => d,
            Err(e) => {
                Log::warn(&format!("{e}; nothing is sent"));
                return vec![];
            }
        };
        // A bad `on` must not silence failures: fall back to the default.
        let on = On::parse(Config::get("on").as_deref()).unwrap_or_else(|e| {
            Log::warn(&format!("{e}; notifying failures and recoveries only"));
            On::Failures
        });
        messages(&event, &Settings { destinations, on })
    }
}

export!(NoSpam);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, previous_failed: Option<bool>) -> Event {
        Event {
            kind,
            source: "app".into(),
            backup_id: Some("20261118T030000Z-ab12".into()),
            detail: "something happened".into(),
            time: 1_795_000_000,
            previous_failed,
            failed_checks: vec![],
        }
    }

    fn settings(on: On) -> Settings {
        Settings {
            destinations: vec!["ops".into(), "chat".into()],
            on,
        }
    }

    fn subjects(e: &Event, on: On) -> Vec<(String, String)> {
        messages(e, &settings(on))
            .into_iter()
            .map(|m| (m.destination, m.subject))
            .collect()
    }

    #[test]
    fn failures_always_reach_every_destination_once() {
        for kind in [
            EventKind::BackupFailed,
            EventKind::DrillFailed,
            EventKind::PruneFailed,
        ] {
            for previous in [None, Some(false), Some(true)] {
                for on in [On::Failures, On::All] {
                    let m = messages(&event(kind, previous), &settings(on));
                    let to: Vec<&str> = m.iter().map(|m| m.destination.as_str()).collect();
                    assert_eq!(to, ["ops", "chat"], "{kind:?} {previous:?} {on:?}");
                }
            }
        }
        let s = |kind| subjects(&event(kind, None), On::Failures)[0].1.clone();
        assert_eq!(
            s(EventKind::DrillFailed),
            "firedrill: drill FAILED for source app"
        );
        assert_eq!(
            s(EventKind::BackupFailed),
            "firedrill: backup failed for source app"
        );
        assert_eq!(
            s(EventKind::PruneFailed),
            "firedrill: prune failed for source app"
        );
    }

    #[test]
    fn successes_are_news_only_as_recoveries_unless_on_all() {
        for kind in [
            EventKind::BackupSucceeded,
            EventKind::DrillPassed,
            EventKind::PruneSucceeded,
        ] {
            assert!(messages(&event(kind, None), &settings(On::Failures)).is_empty());
            assert!(messages(&event(kind, Some(false)), &settings(On::Failures)).is_empty());
            assert_eq!(
                messages(&event(kind, Some(true)), &settings(On::Failures)).len(),
                2
            );
            assert_eq!(messages(&event(kind, None), &settings(On::All)).len(), 2);
        }
        assert_eq!(
            subjects(&event(EventKind::DrillPassed, Some(true)), On::Failures)[0].1,
            "firedrill: drill passed again for source app (recovered)"
        );
        assert_eq!(
            subjects(&event(EventKind::BackupSucceeded, Some(true)), On::All)[1],
            (
                "chat".to_string(),
                "firedrill: backup succeeded again for source app (recovered)".to_string()
            )
        );
        assert_eq!(
            subjects(&event(EventKind::PruneSucceeded, Some(false)), On::All)[0].1,
            "firedrill: prune succeeded for source app"
        );
    }

    #[test]
    fn text_has_the_detail_the_backup_and_each_failing_check() {
        let mut e = event(EventKind::DrillFailed, Some(false));
        e.detail = "2 of 5 checks failed".into();
        e.failed_checks = vec![
            "rows.public.orders: 0 rows restored, 1000 at backup time".into(),
            "assert.flag: false".into(),
        ];
        assert_eq!(
            text(&e),
            "2 of 5 checks failed\nbackup: 20261118T030000Z-ab12\nfailing checks:\n\
             - rows.public.orders: 0 rows restored, 1000 at backup time\n- assert.flag: false"
        );
        let m = messages(&e, &settings(On::Failures));
        assert!(m.iter().all(|m| m.text == text(&e)));

        // No backup, no checks (a failed backup has no id yet).
        let mut b = event(EventKind::BackupFailed, None);
        b.backup_id = None;
        b.detail = "  connection refused \n".into();
        assert_eq!(text(&b), "connection refused");

        // Checks are listed for a failed drill only, and not without end.
        let mut p = event(EventKind::DrillPassed, Some(true));
        p.failed_checks = vec!["x: y".into()];
        assert!(!text(&p).contains("x: y"));
        e.failed_checks = (0..MAX_CHECKS + 3).map(|i| format!("c{i}: bad")).collect();
        let t = text(&e);
        assert!(t.contains("- c0: bad") && !t.contains(&format!("c{MAX_CHECKS}:")));
        assert!(t.ends_with("... and 3 more"), "{t}");
    }

    #[test]
    fn config_values() {
        assert_eq!(
            destinations(Some(" ops, chat ,,ops, mail ")).unwrap(),
            ["ops", "chat", "mail"]
        );
        assert!(destinations(None).is_err());
        assert!(destinations(Some("")).is_err());
        assert!(destinations(Some(" , ")).is_err());
        assert_eq!(On::parse(None), Ok(On::Failures));
        assert_eq!(On::parse(Some(" failures")), Ok(On::Failures));
        assert_eq!(On::parse(Some("all")), Ok(On::All));
        assert!(On::parse(Some("everything")).is_err());
    }
}
