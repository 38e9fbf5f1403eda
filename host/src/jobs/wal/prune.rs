//! WAL retention: what of a source's WAL archive no kept base backup can
//! use. Recovery from a base backup replays the WAL from the segment its
//! start lies in, on its timeline, and then the timelines that follow; so
//! the oldest physical backup kept bounds the archive: below its start
//! segment on its timeline, and on the timelines its own history says
//! ended before that segment, nothing can be replayed any more.
//!
//! Invariants: a segment's record goes before its object, so a half-deleted
//! segment is never counted as archived (verify and fetch need both); a
//! history file is never deleted (they are small, and recovery follows them
//! to any later timeline); a name that does not parse is not WAL and is
//! left alone; with no physical backup kept, nothing goes (a configuration
//! mistake must not cost the archive).

use crate::archive::manifest::PhysicalEntry;
use crate::archive::wal::{self, Lsn, Segment};
use crate::archive::{ArchiveError, Store};
use crate::jobs::JobError;
use serde::Serialize;
use std::collections::BTreeMap;

/// The biggest history file read (they hold a line per timeline switch).
const HISTORY_MAX: u64 = 16 << 20;

/// What a prune does (or, in a dry run, would do) to one source's WAL.
#[derive(Debug, Clone, Serialize)]
pub struct WalPrune {
    pub source: String,
    /// The oldest physical backup kept: its start bounds the deletion.
    pub oldest_backup: Option<String>,
    /// The first segment kept on that backup's timeline; everything from it
    /// on, and every timeline not named in its history, is kept.
    pub keep_from: Option<String>,
    /// The objects that go (segments and partial ones, each with its record),
    /// as paths in the store, oldest first.
    pub segments: Vec<String>,
    /// Segments below the bound kept because they were archived inside the
    /// pitr window (or their record could not be read to tell).
    pub kept_in_window: usize,
    /// Why nothing, or less than the bound allows, goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The oldest physical backup a prune keeps of a source.
#[derive(Debug, Clone, Copy)]
pub struct Oldest<'a> {
    pub id: &'a str,
    pub physical: &'a PhysicalEntry,
}

impl WalPrune {
    /// Nothing pruned, and why.
    pub fn failed(source: &str, note: String) -> WalPrune {
        WalPrune {
            source: source.into(),
            oldest_backup: None,
            keep_from: None,
            segments: vec![],
            kept_in_window: 0,
            note: Some(note),
        }
    }
}

/// Plans the WAL deletion of `source`: below the start segment of `oldest`,
/// the oldest physical backup kept (or, when there is a reason instead,
/// nothing: it is logged as a warning and noted), and with
/// `archived_before` only what was archived before that moment. None when
/// the source has no WAL archive.
pub async fn plan(
    store: &Store,
    source: &str,
    oldest: Result<Oldest<'_>, String>,
    archived_before: Option<i64>,
) -> Result<Option<WalPrune>, JobError> {
    let dir = wal::wal_dir(source);
    let listed = store.list_recursive(&dir).await?;
    if listed.is_empty() {
        return Ok(None);
    }
    let oldest = match oldest {
        Ok(o) => o,
        Err(why) => {
            tracing::warn!(source, "WAL archive {dir} not pruned: {why}");
            return Ok(Some(WalPrune::failed(source, why)));
        }
    };
    let mut out = WalPrune::failed(source, String::new());
    out.note = None;
    let p = oldest.physical;
    let size = wal::check_segment_size(p.segment_size).map_err(JobError::Config)?;
    let bound = Segment::of(p.timeline, p.start_lsn, size);
    out.oldest_backup = Some(oldest.id.into());
    out.keep_from = Some(bound.file_name(size));
    let ancestors = if p.timeline > 1 {
        let object = wal::history_path(source, p.timeline);
        match wal::get(store, &object, HISTORY_MAX).await {
            Ok((_, bytes)) => parse_history(&String::from_utf8_lossy(&bytes)),
            Err(e) => {
                tracing::warn!(source, timeline = p.timeline, error = %e, "the history of the oldest kept backup's timeline cannot be read: the WAL of older timelines is kept");
                out.note = Some(format!(
                    "the history of timeline {} cannot be read ({e}): older timelines are kept",
                    p.timeline
                ));
                BTreeMap::new()
            }
        }
    } else {
        BTreeMap::new()
    };
    let names: Vec<&str> = listed
        .iter()
        .filter_map(|(path, _)| path.strip_prefix(&dir))
        .collect();
    for (tli, name) in doomed(&names, bound, size, &ancestors) {
        let object = format!("{}{name}", wal::timeline_dir(source, tli));
        if let Some(before) = archived_before {
            match wal::read_record(store, &object).await {
                // A record deleted before its object: a prune interrupted
                // half-way; the rest goes now.
                Err(ArchiveError::Missing { .. }) => {}
                Ok(r) if r.archived_at < before => {}
                Ok(_) => {
                    out.kept_in_window += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(source, object, error = %e, "a WAL record below the kept backup cannot be read to tell when it was archived: kept");
                    out.kept_in_window += 1;
                    continue;
                }
            }
        }
        out.segments.push(object);
    }
    Ok(Some(out))
}

/// Deletes what `plan` chose: each record, then its object; each object
/// deleted is added to `deleted` as it goes.
pub async fn apply(
    store: &Store,
    plan: &WalPrune,
    deleted: &mut Vec<String>,
) -> Result<(), JobError> {
    for object in &plan.segments {
        store.delete(&format!("{object}.json")).await?;
        store.delete(object).await?;
        deleted.push(object.clone());
    }
    if !plan.segments.is_empty() {
        tracing::info!(
            source = %plan.source,
            segments = plan.segments.len(),
            keep_from = plan.keep_from.as_deref().unwrap_or(""),
            "WAL below the oldest kept physical backup deleted"
        );
    }
    Ok(())
}

/// Each ancestor timeline a history file names, and where it ended (the
/// switch point). Lines: `<parent tli> <switch lsn> <reason>`.
fn parse_history(text: &str) -> BTreeMap<u32, Lsn> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (f.next(), f.next()) else {
            continue;
        };
        if let (Ok(tli), Ok(lsn)) = (tli.parse::<u32>(), lsn.parse::<Lsn>()) {
            out.insert(tli, lsn);
        }
    }
    out
}

/// The stored objects (names relative to the WAL directory, records
/// included) that lie below `bound`: on its timeline, and on the ancestor
/// timelines that ended at or before its start. Each object once, as
/// `(timeline, object name)`, in order.
fn doomed(
    names: &[&str],
    bound: Segment,
    size: u64,
    ancestors: &BTreeMap<u32, Lsn>,
) -> Vec<(u32, String)> {
    let mut out = std::collections::BTreeSet::new();
    for rel in names {
        let Some((dir, name)) = rel.split_once('/') else {
            // `<TLI>.history` and its record: never.
            continue;
        };
        let object = name.strip_suffix(".json").unwrap_or(name);
        let segment = object.strip_suffix(".partial").unwrap_or(object);
        let Some(seg) = Segment::parse(segment, size) else {
            continue;
        };
        if format!("{:08X}", seg.timeline) != dir || seg.number >= bound.number {
            continue;
        }
        let below = seg.timeline == bound.timeline
            || ancestors
                .get(&seg.timeline)
                .is_some_and(|end| *end <= bound.start(size));
        if below {
            out.insert((seg.timeline, seg.number, object.to_string()));
        }
    }
    out.into_iter().map(|(t, _, o)| (t, o)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = wal::DEFAULT_SEGMENT_SIZE;

    fn seg(tli: u32, n: u64) -> String {
        let s = Segment {
            timeline: tli,
            number: n,
        };
        format!("{tli:08X}/{}", s.file_name(SIZE))
    }

    #[test]
    fn below_the_bound_on_its_timeline_and_ended_ancestors_only() {
        let mut names: Vec<String> = vec![];
        for n in 1..=6 {
            names.push(seg(1, n));
            names.push(format!("{}.json", seg(1, n)));
        }
        names.push(format!("{}.partial", seg(1, 7)));
        names.push(format!("{}.partial.json", seg(1, 7)));
        for n in 7..=9 {
            names.push(seg(2, n));
            names.push(format!("{}.json", seg(2, n)));
        }
        // A sibling timeline the history does not name, a record without
        // its object, history files, and things that are not WAL.
        names.push(seg(3, 7));
        names.push(format!("{}.json", seg(2, 5)));
        names.push("00000002.history".into());
        names.push("00000002.history.json".into());
        names.push("00000001/notes.txt".into());
        names.push(format!(
            "00000001/{}",
            Segment {
                timeline: 2,
                number: 1
            }
            .file_name(SIZE)
        ));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        // Timeline 2 branched from 1 at 0/7000100; the backup starts in 2's segment 8.
        let ancestors = parse_history("1\t0/7000100\tno recovery target specified\n");
        assert_eq!(ancestors.get(&1), Some(&Lsn(0x700_0100)));
        let bound = Segment {
            timeline: 2,
            number: 8,
        };
        let got: Vec<String> = doomed(&names, bound, SIZE, &ancestors)
            .into_iter()
            .map(|(t, o)| format!("{t:08X}/{o}"))
            .collect();
        let mut want: Vec<String> = (1..=6).map(|n| seg(1, n)).collect();
        want.push(format!("{}.partial", seg(1, 7)));
        want.push(seg(2, 5));
        want.push(seg(2, 7));
        assert_eq!(got, want);

        // Without the history, timeline 1 is kept.
        let got = doomed(&names, bound, SIZE, &BTreeMap::new());
        assert_eq!(got.len(), 2, "{got:?}");
        // An ancestor that ended after the backup's start is not older.
        let late = parse_history("1\t0/9000000\tx\n");
        assert!(doomed(&names, bound, SIZE, &late)
            .iter()
            .all(|(t, _)| *t == 2));
        // Nothing below the first segment.
        let first = Segment {
            timeline: 1,
            number: 1,
        };
        assert!(doomed(&names, first, SIZE, &BTreeMap::new()).is_empty());
    }
}
