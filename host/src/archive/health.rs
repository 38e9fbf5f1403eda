//! Each source's state as its backups in the store show it: the newest
//! complete backup and how old it is (the recovery point if the source were
//! lost now), the newest drill and its verdict, and the drills of the last
//! 30 days. What `firedrill status` prints, for one node's store or, through
//! an agent's API, the fleet's.
//!
//! Invariants: computed from listings alone (what the store's keys vouch
//! for), never from the network or the clock but the `now` it is given; an
//! incomplete backup never counts as a recovery point.

use super::Listing;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How far back `drills` looks.
pub const WINDOW_SECONDS: i64 = 30 * 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The newest drill passed.
    Proven,
    /// The newest drill failed: the newest restorable point is unproven.
    DrillFailed,
    /// Backups, but none drilled yet.
    NeverDrilled,
    /// No complete backup.
    NoBackup,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Proven => "proven",
            Verdict::DrillFailed => "drill failed",
            Verdict::NeverDrilled => "never drilled",
            Verdict::NoBackup => "no backup",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceHealth {
    pub source: String,
    pub verdict: Verdict,
    /// Complete backups in the store.
    pub backups: usize,
    /// Backups without a manifest: running now, or abandoned.
    pub incomplete: usize,
    pub last_backup: Option<BackupSeen>,
    /// Seconds from the newest complete backup to `now`.
    pub rpo_seconds: Option<i64>,
    pub last_drill: Option<DrillOf>,
    /// Drills that ended within the window, by verdict (each backup's
    /// newest drill: a backup drilled twice counts once).
    pub drills_passed: usize,
    pub drills_failed: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupSeen {
    pub id: String,
    pub created: i64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillOf {
    pub backup: String,
    pub report: String,
    pub passed: bool,
    pub finished: i64,
    pub rto_seconds: f64,
}

/// One entry per source, by name.
pub fn summarize(listings: &[Listing], now: i64) -> Vec<SourceHealth> {
    let mut by_source: BTreeMap<&str, Vec<&Listing>> = BTreeMap::new();
    for l in listings {
        by_source.entry(l.source.as_str()).or_default().push(l);
    }
    by_source
        .into_iter()
        .map(|(source, ls)| {
            let complete: Vec<&&Listing> = ls.iter().filter(|l| l.complete).collect();
            // Ids order by time; within one second the id's tail decides.
            let newest = complete
                .iter()
                .max_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
            let last_drill = complete
                .iter()
                .filter_map(|l| l.last_drill.as_ref().map(|d| (l, d)))
                .max_by(|(a, x), (b, y)| (x.finished, a.created).cmp(&(y.finished, b.created)))
                .map(|(l, d)| DrillOf {
                    backup: l.id.clone(),
                    report: d.report.clone(),
                    passed: d.passed,
                    finished: d.finished,
                    rto_seconds: d.rto_seconds,
                });
            let recent = |passed: bool| {
                complete
                    .iter()
                    .filter_map(|l| l.last_drill.as_ref())
                    .filter(|d| d.passed == passed && now - d.finished <= WINDOW_SECONDS)
                    .count()
            };
            let verdict = match (&newest, &last_drill) {
                (None, _) => Verdict::NoBackup,
                (Some(_), None) => Verdict::NeverDrilled,
                (Some(_), Some(d)) if d.passed => Verdict::Proven,
                (Some(_), Some(_)) => Verdict::DrillFailed,
            };
            SourceHealth {
                source: source.to_string(),
                verdict,
                backups: complete.len(),
                incomplete: ls.len() - complete.len(),
                last_backup: newest.map(|l| BackupSeen {
                    id: l.id.clone(),
                    created: l.created,
                    size: l.size,
                }),
                rpo_seconds: newest.map(|l| (now - l.created).max(0)),
                last_drill,
                drills_passed: recent(true),
                drills_failed: recent(false),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::DrillSeen;

    fn listing(
        source: &str,
        id: &str,
        created: i64,
        complete: bool,
        drill: Option<(bool, i64)>,
    ) -> Listing {
        Listing {
            id: id.into(),
            source: source.into(),
            created,
            complete,
            size: 100,
            databases: vec![],
            tables: 1,
            seconds: None,
            signed_by: None,
            last_drill: drill.map(|(passed, finished)| DrillSeen {
                report: format!("{id}.json"),
                passed,
                finished,
                rto_seconds: 2.5,
            }),
            parent: None,
        }
    }

    #[test]
    fn each_source_gets_its_newest_backup_newest_drill_and_verdict() {
        let now = 100 * 86_400;
        let listings = vec![
            listing(
                "app",
                "a1",
                now - 40 * 86_400,
                true,
                Some((false, now - 40 * 86_400)),
            ),
            listing(
                "app",
                "a2",
                now - 2 * 86_400,
                true,
                Some((true, now - 2 * 86_400 + 60)),
            ),
            listing("app", "a3", now - 3600, true, None),
            // Running now: never the recovery point.
            listing("app", "a4", now - 10, false, None),
            listing("cache", "c1", now - 7200, true, Some((false, now - 7000))),
            listing("cache", "c0", now - 9000, true, Some((true, now - 8000))),
            listing("new", "n1", now - 5, false, None),
            listing("quiet", "q1", now - 5, true, None),
        ];
        let h = summarize(&listings, now);
        let names: Vec<_> = h.iter().map(|s| s.source.as_str()).collect();
        assert_eq!(names, ["app", "cache", "new", "quiet"]);
        let app = &h[0];
        assert_eq!(app.verdict, Verdict::Proven);
        assert_eq!((app.backups, app.incomplete), (3, 1));
        assert_eq!(app.last_backup.as_ref().unwrap().id, "a3");
        assert_eq!(app.rpo_seconds, Some(3600));
        assert_eq!(app.last_drill.as_ref().unwrap().backup, "a2");
        // The failure 40 days ago is outside the window.
        assert_eq!((app.drills_passed, app.drills_failed), (1, 0));
        let cache = &h[1];
        assert_eq!(cache.verdict, Verdict::DrillFailed);
        assert_eq!((cache.drills_passed, cache.drills_failed), (1, 1));
        assert_eq!(h[2].verdict, Verdict::NoBackup);
        assert_eq!(h[2].rpo_seconds, None);
        assert_eq!(h[3].verdict, Verdict::NeverDrilled);
    }
}
