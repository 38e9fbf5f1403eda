//! `firedrill wal verify`: is the WAL archive of a source whole? Per
//! timeline, the stored segments from the oldest to the newest with every
//! gap named; per physical backup, whether the archive continues it without
//! a gap (what recovery to any later moment needs).
//!
//! Reads the listing and one record per timeline (the segment size);
//! `deep` also reads every record and object and checks its checksum.
//!
//! Invariant: a missing segment is reported, never assumed; a segment whose
//! object or record is missing counts as missing.

use crate::archive::manifest::Manifest;
use crate::archive::wal::{self, Segment};
use crate::archive::Store;
use crate::jobs::JobError;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Serialize)]
pub struct TimelineSummary {
    pub timeline: u32,
    pub segment_size: u64,
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// `<first missing>..<last missing>` for each hole.
    pub gaps: Vec<String>,
    /// The newest segment stored as a partial one (a stopped streamer's).
    pub partial: Option<String>,
    pub history: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupCoverage {
    pub id: String,
    pub timeline: u32,
    pub start: String,
    /// The archive continues this backup without a gap up to its newest
    /// segment on the backup's timeline.
    pub continuous: bool,
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WalReport {
    pub source: String,
    pub timelines: Vec<TimelineSummary>,
    pub backups: Vec<BackupCoverage>,
    /// Checksums were checked (`deep`): how many objects.
    pub checked: u64,
    pub problems: Vec<String>,
    pub ok: bool,
}

/// Per timeline: segment numbers stored whole (object and record), partial
/// ones, and whether its history is stored.
#[derive(Default)]
struct Seen {
    objects: BTreeSet<String>,
    records: BTreeSet<String>,
}

pub async fn verify(
    store: &Store,
    source: &str,
    backups: &[Manifest],
    deep: bool,
) -> Result<WalReport, JobError> {
    let dir = wal::wal_dir(source);
    let listed = store.list_recursive(&dir).await?;
    let mut per_tli: BTreeMap<u32, Seen> = BTreeMap::new();
    let mut histories = BTreeSet::new();
    for (path, _) in &listed {
        let rel = path.strip_prefix(&dir).unwrap_or(path);
        if let Some(name) = rel.strip_suffix(".json") {
            if let Some(t) = wal::parse_history_name(name) {
                histories.insert(t);
            } else if let Some((tli, name)) = name.split_once('/') {
                if let Some(t) = tli_of(tli) {
                    per_tli
                        .entry(t)
                        .or_default()
                        .records
                        .insert(name.to_string());
                }
            }
        } else if let Some((tli, name)) = rel.split_once('/') {
            if let Some(t) = tli_of(tli) {
                per_tli
                    .entry(t)
                    .or_default()
                    .objects
                    .insert(name.to_string());
            }
        }
    }
    let mut report = WalReport {
        source: source.into(),
        timelines: vec![],
        backups: vec![],
        checked: 0,
        problems: vec![],
        ok: true,
    };
    let mut numbers: BTreeMap<u32, (u64, BTreeSet<u64>)> = BTreeMap::new();
    for (tli, seen) in &per_tli {
        let whole: Vec<&String> = seen
            .records
            .iter()
            .filter(|n| !n.ends_with(".partial") && seen.objects.contains(*n))
            .collect();
        for n in seen.records.iter().filter(|n| !seen.objects.contains(*n)) {
            report.problems.push(format!(
                "timeline {tli}: {n} has a record but its object is missing"
            ));
        }
        let Some(sample) = whole.first() else {
            continue;
        };
        let record = wal::read_record(
            store,
            &format!("{}{sample}", wal::timeline_dir(source, *tli)),
        )
        .await?;
        let size = wal::check_segment_size(record.segment_size).map_err(JobError::Config)?;
        let mut nums = BTreeSet::new();
        for name in &whole {
            match Segment::parse(name, size) {
                Some(s) if s.timeline == *tli => {
                    nums.insert(s.number);
                }
                _ => report.problems.push(format!(
                    "timeline {tli}: {name} is not a segment name of this timeline"
                )),
            }
            if deep {
                let object = format!("{}{name}", wal::timeline_dir(source, *tli));
                match wal::get(store, &object, size).await {
                    // What restore's fetch refuses, verify must not call whole.
                    Ok((r, _))
                        if r.source != source || r.segment != **name || r.timeline != *tli =>
                    {
                        report.problems.push(format!(
                            "{object}: its record names {} of source {} on timeline {}: a record copied from elsewhere",
                            r.segment, r.source, r.timeline
                        ))
                    }
                    Ok(_) => report.checked += 1,
                    Err(e) => report.problems.push(e.to_string()),
                }
            }
        }
        let (Some(first), Some(last)) = (nums.first().copied(), nums.last().copied()) else {
            continue;
        };
        let mut gaps = vec![];
        let mut prev = first;
        for n in nums.iter().skip(1) {
            if *n > prev + 1 {
                let a = Segment {
                    timeline: *tli,
                    number: prev + 1,
                }
                .file_name(size);
                let b = Segment {
                    timeline: *tli,
                    number: n - 1,
                }
                .file_name(size);
                gaps.push(if a == b { a } else { format!("{a}..{b}") });
            }
            prev = *n;
        }
        for g in &gaps {
            report
                .problems
                .push(format!("timeline {tli}: segments missing: {g}"));
        }
        let partial = seen
            .records
            .iter()
            .filter_map(|n| n.strip_suffix(".partial"))
            .max()
            .map(str::to_string);
        if *tli > 1 && !histories.contains(tli) {
            report.problems.push(format!(
                "timeline {tli}: its history file {} is missing (recovery cannot follow the switch to it)",
                wal::history_name(*tli)
            ));
        }
        report.timelines.push(TimelineSummary {
            timeline: *tli,
            segment_size: size,
            first: Segment {
                timeline: *tli,
                number: first,
            }
            .file_name(size),
            last: Segment {
                timeline: *tli,
                number: last,
            }
            .file_name(size),
            segments: nums.len() as u64,
            gaps,
            partial,
            history: histories.contains(tli),
        });
        numbers.insert(*tli, (size, nums));
    }
    for m in backups {
        let Some(p) = &m.physical else { continue };
        let start = Segment::of(p.timeline, p.start_lsn, p.segment_size);
        let end = Segment::of(p.end_timeline, p.end_lsn, p.segment_size);
        let problem = match numbers.get(&p.end_timeline) {
            None => Some(format!(
                "no WAL archived on timeline {} after it: it restores only to its own end",
                p.end_timeline
            )),
            Some((_, nums)) => {
                // The backup holds its own WAL up to `end_lsn`, not to the
                // end of that segment: the archive must go on from the
                // segment holding it without a hole.
                let from = if p.wal_included {
                    end.number
                } else {
                    start.number
                };
                let newest = nums.last().copied().unwrap_or(0);
                let missing: Vec<u64> = (from..=newest).filter(|n| !nums.contains(n)).collect();
                match missing.first() {
                    None if newest + 1 >= from => None,
                    None => Some("the archive ends before it".into()),
                    Some(n) => Some(format!(
                        "segment {} is missing after it",
                        Segment {
                            timeline: p.end_timeline,
                            number: *n
                        }
                        .file_name(p.segment_size)
                    )),
                }
            }
        };
        if let Some(pr) = &problem {
            report.problems.push(format!("backup {}: {pr}", m.id));
        }
        report.backups.push(BackupCoverage {
            id: m.id.clone(),
            timeline: p.timeline,
            start: start.file_name(p.segment_size),
            continuous: problem.is_none(),
            problem,
        });
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

fn tli_of(dir: &str) -> Option<u32> {
    (dir.len() == 8 && dir.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(dir, 16).ok())
        .flatten()
        .filter(|t| *t > 0)
}
