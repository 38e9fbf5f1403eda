//! Retention: the retention plugin proposes, the host guards, then deletes.
//!
//! Guards, whatever the plugin says: never the newest backup of a source whose
//! last drill passed; never a backup younger than the minimum age; never an
//! incomplete backup that may still be in progress (one older than the
//! abandon age is a leftover and goes); a chain of incremental physical
//! backups is kept or deleted whole (see below); at most so many deletions
//! per run. A deletion removes the manifest first, so a half-deleted backup
//! is never listed as complete.
//!
//! Physical backups: the plugin sees them with the WAL each needs in its
//! labels (`kind=physical`, `timeline`, `start_lsn`, `start_segment`,
//! `end_timeline`, `end_lsn`; logical backups have none) and where each is
//! in its chain (`incremental=true|false`; for an incremental, `parent` and
//! `chain_root`, its full backup). With a pitr window, the physical backup
//! recovery to the window's start begins from is kept whatever the plugin
//! says. After the backups, the WAL no kept physical backup can replay goes
//! (see [`crate::jobs::wal::prune`]).
//!
//! Chains (PostgreSQL 17+ incrementals): a restore of an incremental needs
//! every backup of its chain, so when any member of a chain is kept, for
//! whatever reason (the plugin, another guard), every member is, and the
//! guard's reason names the kept backup that needs it (or, for one that no
//! kept backup builds on, a kept member of its chain). The cap on deletions
//! comes after: it takes a chain that goes from its newest end, and what it
//! leaves goes at a later run. Deletions go incrementals first, deepest
//! first, then newest first, so a prune interrupted part way never leaves an
//! incremental whose parent is gone. While a backup of a source is in
//! progress (incomplete, younger than the abandon age), the newest complete
//! physical backup begun before it, which it may be building on, is kept
//! with its chain; the backup itself checks, before it commits, that its
//! parent is still there. The WAL bound needs nothing more: the
//! oldest kept physical backup is at or below the oldest remaining member of
//! every kept chain (a chain's members stay together, on the timeline of
//! its full backup), and an incremental needs the WAL from its own start
//! only.
//!
//! With keys trusted, the plan is made from what they vouch for only
//! ([`arch::list_backups`]): a backup whose manifest is unsigned or badly
//! signed is neither shown to the plugin nor deleted (a planted one is
//! garbage that is safe to leave; deleting what cannot be verified is not),
//! and a drill report that is not signed by a trusted key does not make a
//! backup "drilled and passed" for the guard.

use super::wal::prune::{self as wal_prune, Oldest, WalPrune};
use super::JobError;
use crate::archive::manifest::PhysicalEntry;
use crate::archive::wal::Segment;
use crate::archive::{self as arch, manifest, Listing, Store};
use crate::caps::types::{Action, BackupInfo, BackupKind, DrillStatus};
use crate::caps::CallContext;
use crate::runtime::Plugin;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct PruneOptions {
    pub policy: Arc<Plugin>,
    /// Backups younger than this are never deleted.
    pub min_age: Duration,
    /// An incomplete backup older than this is a leftover of an interrupted run.
    pub abandon_after: Duration,
    /// Backups deleted per run, at most; WAL segments do not count (they go
    /// only below a backup that is kept, however many there are).
    pub max_deletions: usize,
    pub dry_run: bool,
    /// Only this source's backups (all sources when none).
    pub source: Option<String>,
    /// Physical sources: per source, the physical backup that recovery to
    /// the start of this window before now begins from is never deleted,
    /// and no WAL archived inside the window is.
    pub pitr_window: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub source: String,
    pub delete: bool,
    /// The plugin's reason, or the guard's.
    pub reason: String,
    /// The plugin asked to delete and a guard kept it.
    pub guarded: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub policy: String,
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    pub deleted: Vec<String>,
    /// Per source with a WAL archive: what of it goes (in a dry run, would go).
    pub wal: Vec<WalPrune>,
    /// WAL objects deleted (paths in the store; none in a dry run).
    pub wal_deleted: Vec<String>,
}

#[tracing::instrument(name = "prune", skip_all, fields(source = opts.source.as_deref().unwrap_or("")))]
pub async fn run(store: &Store, opts: &PruneOptions) -> Result<PruneReport, JobError> {
    let pitr_window = opts.pitr_window;
    let mut listings = arch::list_backups(store).await?;
    if let Some(src) = &opts.source {
        listings.retain(|l| &l.source == src);
    }
    let now = manifest::unix_now();
    // Which complete backups are physical, where in the WAL they start, and
    // when they finished: from their manifests, which the listing checked.
    let mut physical: PhysicalMap = HashMap::new();
    for l in listings.iter().filter(|l| l.complete) {
        let (m, _) = arch::verified_manifest(store, &l.source, &l.id).await?;
        if let Some(p) = m.physical {
            physical.insert(key(l), (p, m.timings.finished));
        }
    }
    let infos: Vec<BackupInfo> = listings
        .iter()
        .map(|l| info(l, physical.get(&key(l)).map(|(p, _)| p)))
        .collect();
    let plugin = opts.policy.clone();
    let proposed = tokio::task::spawn_blocking(move || {
        plugin.plan_retention(&CallContext::default(), &infos, now)
    })
    .await
    .map_err(|e| JobError::Internal(e.to_string()))??;
    let mut said: HashMap<String, (Action, String)> = HashMap::new();
    for d in proposed {
        if !listings.iter().any(|l| l.id == d.id) {
            tracing::warn!(policy = opts.policy.name(), id = %d.id, "the retention plugin decided about a backup that does not exist; ignored");
            continue;
        }
        said.insert(d.id.clone(), (d.action, d.reason));
    }
    // Per source, the newest backup whose last drill passed.
    let mut proven: HashMap<&str, &str> = HashMap::new();
    for l in listings
        .iter()
        .filter(|l| l.complete && l.last_drill.as_ref().is_some_and(|d| d.passed))
    {
        proven.insert(&l.source, &l.id);
    }
    let anchors = pitr_window
        .map(|w| window_anchors(&listings, &physical, now, w))
        .unwrap_or_default();
    let mut decisions = Vec::new();
    for l in &listings {
        let age = (now - l.created).max(0) as u64;
        let (action, reason) = said
            .remove(&l.id)
            .unwrap_or((Action::Keep, "the plugin did not decide: kept".into()));
        let anchor = anchors.get(l.source.as_str()).filter(|(id, _)| *id == l.id);
        // The cap on deletions comes after the chains (see `cap_deletions`).
        let guard = if !l.complete {
            (age < opts.abandon_after.as_secs()).then(|| {
                format!(
                    "incomplete and younger than {}: may be in progress",
                    humantime::format_duration(opts.abandon_after)
                )
            })
        } else if action == Action::Keep {
            None
        } else if proven.get(l.source.as_str()) == Some(&l.id.as_str()) {
            Some("guard: the newest backup of this source that passed a drill".into())
        } else if let Some((_, why)) = anchor {
            Some(why.clone())
        } else if age < opts.min_age.as_secs() {
            Some(format!(
                "guard: younger than the minimum age of {}",
                humantime::format_duration(opts.min_age)
            ))
        } else {
            None
        };
        let (delete, reason, guarded) = match (l.complete, guard) {
            (false, None) => (
                true,
                format!(
                    "leftover of an interrupted backup, {}",
                    humantime::format_duration(Duration::from_secs(age))
                ),
                false,
            ),
            (false, Some(g)) => (false, g, false),
            (true, Some(g)) => (false, format!("{g} (the plugin said: {reason})"), true),
            (true, None) => (action == Action::Delete, reason, false),
        };
        decisions.push(Decision {
            id: l.id.clone(),
            source: l.source.clone(),
            delete,
            reason,
            guarded,
        });
    }
    keep_parents_of_backups_in_progress(
        &listings,
        &physical,
        &mut decisions,
        now,
        opts.abandon_after,
    );
    let chains = chains(&listings, &physical);
    keep_chains_whole(&listings, &physical, &chains, &mut decisions);
    cap_deletions(
        &listings,
        &physical,
        &chains,
        &mut decisions,
        opts.max_deletions,
    );
    let mut deleted = Vec::new();
    if !opts.dry_run {
        for i in deletion_order(&listings, &physical, &decisions) {
            let d = &decisions[i];
            delete_backup(store, &d.source, &d.id).await?;
            tracing::info!(backup = %d.id, source = %d.source, reason = %d.reason, "backup deleted");
            deleted.push(d.id.clone());
        }
    }
    // The WAL, once the backups that needed it are gone. Its failures are
    // noted, not raised: the backups' deletions above stand and must be
    // reported, and the WAL is tried again at the next prune.
    let going: BTreeSet<(&str, &str)> = decisions
        .iter()
        .filter(|d| d.delete)
        .map(|d| (d.source.as_str(), d.id.as_str()))
        .collect();
    let mut sources: BTreeSet<&str> = listings.iter().map(|l| l.source.as_str()).collect();
    sources.extend(opts.source.as_deref());
    let archived_before = pitr_window.map(|w| now.saturating_sub(w.as_secs() as i64));
    let mut wal = Vec::new();
    let mut wal_deleted = Vec::new();
    for source in sources {
        let kept = |l: &&Listing| l.source == source && !going.contains(&(source, l.id.as_str()));
        let oldest = listings
            .iter()
            .filter(kept)
            .filter_map(|l| physical.get(&key(l)).map(|(p, _)| (l, p)))
            .min_by_key(|(l, p)| (p.timeline, p.start_lsn, l.created));
        let bound = match oldest {
            None => Err("no physical backup of this source is kept: its WAL is kept whole (nothing could be restored from it, but deleting it on a configuration mistake would be worse; delete it by hand if the source is gone)".to_string()),
            Some((o, p)) => {
                // A backup without its manifest yet, begun no later than the
                // oldest kept one, may be a base backup in progress whose
                // start (not written down yet) lies below.
                match listings
                    .iter()
                    .filter(kept)
                    .find(|l| !l.complete && l.created <= o.created)
                {
                    Some(busy) => Err(format!(
                        "backup {} is incomplete and may be a base backup in progress: the WAL is kept until it is done",
                        busy.id
                    )),
                    None => Ok(Oldest {
                        id: &o.id,
                        physical: p,
                    }),
                }
            }
        };
        let planned = match wal_prune::plan(store, source, bound, archived_before).await {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(source, error = %e, "the WAL archive was not pruned");
                wal.push(WalPrune::failed(source, format!("not pruned: {e}")));
                continue;
            }
        };
        if !opts.dry_run {
            if let Err(e) = wal_prune::apply(store, &planned, &mut wal_deleted).await {
                tracing::warn!(source, error = %e, "the WAL archive was pruned only in part");
                let mut planned = planned;
                planned.note = Some(format!("pruned only in part: {e}"));
                wal.push(planned);
                continue;
            }
        }
        wal.push(planned);
    }
    Ok(PruneReport {
        policy: opts.policy.version(),
        dry_run: opts.dry_run,
        decisions,
        deleted,
        wal,
        wal_deleted,
    })
}

/// An incremental backup in progress has no manifest yet, so no chain
/// names its parent: while a source has an incomplete backup that may still
/// be running, its newest complete physical backup begun before it (the
/// parent such a backup takes) is kept, and with it its chain.
fn keep_parents_of_backups_in_progress(
    listings: &[Listing],
    physical: &PhysicalMap,
    decisions: &mut [Decision],
    now: i64,
    abandon_after: Duration,
) {
    for busy in listings
        .iter()
        .filter(|l| !l.complete && ((now - l.created).max(0) as u64) < abandon_after.as_secs())
    {
        let parent = listings
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.source == busy.source && l.created <= busy.created && l.id != busy.id
            })
            .filter(|(_, l)| physical.contains_key(&key(l)))
            .last();
        if let Some((i, l)) = parent {
            let d = &mut decisions[i];
            if d.delete {
                d.delete = false;
                d.guarded = true;
                d.reason = format!(
                    "guard: backup {} of this source is in progress and may be an incremental one built on {} (the plugin said: {})",
                    busy.id, l.id, d.reason
                );
            }
        }
    }
}

fn key(l: &Listing) -> (String, String) {
    (l.source.clone(), l.id.clone())
}

/// The complete physical backups' manifest entries and finishing times, by
/// (source, id).
type PhysicalMap = HashMap<(String, String), (PhysicalEntry, i64)>;

/// Complete physical backups by chain: per source and full backup, the
/// indices (into `listings`, so oldest first) of the chain's members. A full
/// backup roots its own chain; an incremental belongs to the first backup of
/// its recorded chain, listed or not (when that one is already gone, what
/// remains of the chain still goes together).
fn chains(listings: &[Listing], physical: &PhysicalMap) -> Vec<Vec<usize>> {
    let mut by_root: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (i, l) in listings.iter().enumerate() {
        if let Some((p, _)) = physical.get(&key(l)) {
            by_root
                .entry((l.source.as_str(), p.root(&l.id)))
                .or_default()
                .push(i);
        }
    }
    by_root.into_values().collect()
}

/// How deep in its chain a backup is: 0 for a full backup (and a logical or
/// incomplete one), one more than its parent for an incremental. Deleting
/// deepest first never leaves an incremental without its parent.
fn depth(l: &Listing, physical: &PhysicalMap) -> usize {
    physical.get(&key(l)).map_or(0, |(p, _)| p.chain.len())
}

/// A chain is kept or deleted whole: when any member of a chain is kept, for
/// whatever reason, every member that was going to be deleted is kept too. A
/// restore of an incremental needs every backup before it in its chain; the
/// ones built on a kept backup (or beside it) are not needed by it, but they
/// stay too: the chain is the unit a policy keeps, not the single backup.
fn keep_chains_whole(
    listings: &[Listing],
    physical: &PhysicalMap,
    chains: &[Vec<usize>],
    decisions: &mut [Decision],
) {
    for members in chains {
        let kept: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| !decisions[i].delete)
            .collect();
        let Some(&first_kept) = kept.first() else {
            continue;
        };
        for &i in members {
            if !decisions[i].delete {
                continue;
            }
            let id = listings[i].id.as_str();
            let needs = |k: usize| {
                physical.get(&key(&listings[k])).is_some_and(|(p, _)| {
                    p.chain.iter().any(|c| c == id) || p.parent.as_deref() == Some(id)
                })
            };
            let why = match kept.iter().copied().find(|&k| needs(k)) {
                Some(k) => format!(
                    "guard: incremental backup {} needs it (a chain is kept or deleted whole)",
                    listings[k].id
                ),
                None => {
                    let k = &listings[first_kept];
                    let what = if depth(k, physical) == 0 {
                        "the full backup"
                    } else {
                        "backup"
                    };
                    format!(
                        "guard: {what} {} of its chain is kept (a chain is kept or deleted whole)",
                        k.id
                    )
                }
            };
            let d = &mut decisions[i];
            d.reason = format!("{why} (the plugin said: {})", d.reason);
            d.delete = false;
            d.guarded = true;
        }
    }
}

/// At most `max` deletions: in listing order, oldest first; a leftover of an
/// interrupted backup counts but always goes. A chain, every member of which
/// is going by now, takes its slots when its oldest member comes up, deepest
/// first: what the cap leaves of it is its older part, which needs nothing
/// deleted, and goes at a later run. (Capping before the chains were settled
/// would keep a chain longer than `max` forever.)
fn cap_deletions(
    listings: &[Listing],
    physical: &PhysicalMap,
    chains: &[Vec<usize>],
    decisions: &mut [Decision],
    max: usize,
) {
    let mut chain_of = HashMap::new();
    for (c, members) in chains.iter().enumerate() {
        for &i in members {
            chain_of.insert(i, c);
        }
    }
    let mut done = vec![false; listings.len()];
    let mut deletions = 0;
    for i in 0..listings.len() {
        if done[i] {
            continue;
        }
        let unit = match chain_of.get(&i) {
            None => vec![i],
            Some(&c) => {
                let mut members = chains[c].clone();
                members.sort_by_key(|&j| std::cmp::Reverse((depth(&listings[j], physical), j)));
                members
            }
        };
        for j in unit {
            done[j] = true;
            let d = &mut decisions[j];
            if !d.delete {
                continue;
            }
            if listings[j].complete && deletions >= max {
                d.reason = format!(
                    "guard: at most {max} deletions per run (the plugin said: {})",
                    d.reason
                );
                d.delete = false;
                d.guarded = true;
            } else {
                deletions += 1;
            }
        }
    }
}

/// The backups to delete (indices into `listings`), incrementals deepest
/// first and otherwise newest first: a prune interrupted part way never
/// leaves an incremental whose parent is gone.
fn deletion_order(
    listings: &[Listing],
    physical: &PhysicalMap,
    decisions: &[Decision],
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..decisions.len())
        .filter(|&i| decisions[i].delete)
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse((depth(&listings[i], physical), i)));
    order
}

/// Per source, the physical backup recovery to the pitr window's start
/// begins from, and the guard's reason: the newest one finished before the
/// window starts (its end, not its start: recovery reaches a consistent
/// state only there); while the window reaches back past all of them, the
/// oldest one (the earliest moment of the window that can be reached).
fn window_anchors<'a>(
    listings: &'a [Listing],
    physical: &PhysicalMap,
    now: i64,
    window: Duration,
) -> HashMap<&'a str, (&'a str, String)> {
    let start = now.saturating_sub(window.as_secs() as i64);
    let shown = humantime::format_duration(window);
    let mut before: HashMap<&str, &str> = HashMap::new();
    let mut oldest: HashMap<&str, &str> = HashMap::new();
    // Oldest first.
    for l in listings.iter().filter(|l| l.complete) {
        let Some((_, finished)) = physical.get(&key(l)) else {
            continue;
        };
        oldest.entry(&l.source).or_insert(&l.id);
        if *finished <= start {
            before.insert(&l.source, &l.id);
        }
    }
    oldest
        .into_iter()
        .map(|(source, first)| match before.get(source) {
            Some(id) => (
                source,
                (
                    *id,
                    format!("guard: the newest physical backup finished before the pitr window of {shown} starts: recovery to the window's start begins from it"),
                ),
            ),
            None => (
                source,
                (
                    first,
                    format!("guard: the oldest physical backup, and the pitr window of {shown} reaches back before it: recovery to the window's earliest moment begins from it"),
                ),
            ),
        })
        .collect()
}

/// What the plugin sees of a backup. A physical one carries the WAL it needs
/// and its place in its chain in its labels (the WIT record has no place for
/// them within 0.1.x); a logical one has none.
fn info(l: &Listing, physical: Option<&PhysicalEntry>) -> BackupInfo {
    BackupInfo {
        id: l.id.clone(),
        source: l.source.clone(),
        kind: BackupKind::Postgres,
        created: l.created,
        size_bytes: l.size,
        complete: l.complete,
        drill: match &l.last_drill {
            None => DrillStatus::Never,
            Some(d) if d.passed => DrillStatus::Passed,
            Some(_) => DrillStatus::Failed,
        },
        last_drill: None,
        labels: physical
            .map(|p| physical_labels(&l.id, p))
            .unwrap_or_default(),
    }
}

fn physical_labels(id: &str, p: &PhysicalEntry) -> Vec<(String, String)> {
    let mut labels = vec![
        ("kind".to_string(), "physical".to_string()),
        ("timeline".into(), p.timeline.to_string()),
        ("start_lsn".into(), p.start_lsn.to_string()),
    ];
    if let Ok(size) = crate::archive::wal::check_segment_size(p.segment_size) {
        labels.push((
            "start_segment".into(),
            Segment::of(p.timeline, p.start_lsn, size).file_name(size),
        ));
    }
    labels.push(("end_timeline".into(), p.end_timeline.to_string()));
    labels.push(("end_lsn".into(), p.end_lsn.to_string()));
    // The chain, not the parent, says what is incremental: it is what
    // retention groups by.
    let incremental = !p.chain.is_empty();
    labels.push(("incremental".into(), incremental.to_string()));
    if incremental {
        let parent = p.parent.as_ref().or(p.chain.last()).cloned();
        labels.push(("parent".into(), parent.unwrap_or_default()));
        labels.push(("chain_root".into(), p.root(id).to_string()));
    }
    labels
}

/// The manifest first: from then on the backup is no longer listed as complete.
pub async fn delete_backup(store: &Store, source: &str, id: &str) -> Result<(), JobError> {
    let dir = arch::backup_dir(source, id);
    store
        .delete(&format!("{dir}{}", manifest::MANIFEST))
        .await?;
    store.delete_all(&dir).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::wal::Lsn;

    fn listing(id: &str, created: i64) -> Listing {
        Listing {
            id: id.into(),
            source: "s".into(),
            created,
            complete: true,
            size: 1,
            databases: vec![],
            tables: 0,
            seconds: None,
            signed_by: None,
            last_drill: None,
            parent: None,
        }
    }

    fn physical(start: u64) -> PhysicalEntry {
        PhysicalEntry {
            system_id: "7".into(),
            timeline: 2,
            start_lsn: Lsn(start),
            end_lsn: Lsn(start + 0x100),
            end_timeline: 2,
            segment_size: crate::archive::wal::DEFAULT_SEGMENT_SIZE,
            superuser: "postgres".into(),
            wal_included: false,
            archives: vec![],
            backup_manifest: None,
            parent: None,
            chain: vec![],
        }
    }

    #[test]
    fn physical_backups_carry_their_wal_in_labels_logical_ones_nothing() {
        let l = listing("a", 0);
        assert!(info(&l, None).labels.is_empty());
        let labels = info(&l, Some(&physical(0x3_0000_0028))).labels;
        let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("kind"), Some("physical"));
        assert_eq!(get("timeline"), Some("2"));
        assert_eq!(get("start_lsn"), Some("3/28"));
        assert_eq!(get("start_segment"), Some("000000020000000300000000"));
        assert_eq!(get("end_lsn"), Some("3/128"));
    }

    #[test]
    fn the_window_keeps_the_newest_backup_finished_before_it_or_else_the_oldest() {
        let listings = vec![listing("a", 100), listing("b", 200), listing("c", 300)];
        let mut phys = HashMap::new();
        for (l, finished) in listings.iter().zip([110, 210, 310]) {
            phys.insert(key(l), (physical(0), finished));
        }
        let day = Duration::from_secs(1000);
        // The window starts at 250: b finished before it, c after.
        let a = window_anchors(&listings, &phys, 1250, day);
        assert_eq!(a["s"].0, "b");
        assert!(a["s"].1.contains("finished before the pitr window"));
        // b started before 205 but finished after it: a it is.
        let a = window_anchors(&listings, &phys, 1205, day);
        assert_eq!(a["s"].0, "a");
        // The window reaches back past all of them.
        let a = window_anchors(&listings, &phys, 1050, day);
        assert_eq!(a["s"].0, "a");
        assert!(a["s"].1.contains("reaches back before it"));
    }

    fn incremental(start: u64, chain: &[&str]) -> PhysicalEntry {
        let mut p = physical(start);
        p.chain = chain.iter().map(|c| c.to_string()).collect();
        p.parent = p.chain.last().cloned();
        p
    }

    /// The host's passes over a plan in which the plugin deletes what
    /// `deletes` says (listing order), with `max` deletions at most: the
    /// decisions, and the order of deletion.
    fn settle(
        backups: &[(&str, Option<PhysicalEntry>)],
        deletes: &[bool],
        max: usize,
    ) -> (Vec<Decision>, Vec<String>) {
        let listings: Vec<Listing> = backups
            .iter()
            .enumerate()
            .map(|(i, (id, _))| listing(id, i as i64 * 100))
            .collect();
        let mut phys = HashMap::new();
        for (l, (_, p)) in listings.iter().zip(backups) {
            if let Some(p) = p {
                phys.insert(key(l), (p.clone(), l.created + 10));
            }
        }
        let mut decisions: Vec<Decision> = listings
            .iter()
            .zip(deletes)
            .map(|(l, &delete)| Decision {
                id: l.id.clone(),
                source: l.source.clone(),
                delete,
                reason: "plugin".into(),
                guarded: false,
            })
            .collect();
        let chains = chains(&listings, &phys);
        keep_chains_whole(&listings, &phys, &chains, &mut decisions);
        cap_deletions(&listings, &phys, &chains, &mut decisions, max);
        let order = deletion_order(&listings, &phys, &decisions)
            .into_iter()
            .map(|i| listings[i].id.clone())
            .collect();
        (decisions, order)
    }

    #[test]
    fn incrementals_carry_their_parent_and_chain_in_labels() {
        let l = listing("c", 0);
        let full = info(&l, Some(&physical(0))).labels;
        assert!(full.contains(&("incremental".into(), "false".into())));
        assert!(!full.iter().any(|(k, _)| k == "parent" || k == "chain_root"));
        let labels = info(&l, Some(&incremental(0, &["a", "b"]))).labels;
        let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("incremental"), Some("true"));
        assert_eq!(get("parent"), Some("b"));
        assert_eq!(get("chain_root"), Some("a"));
        assert_eq!(get("kind"), Some("physical"));
    }

    #[test]
    fn a_kept_member_keeps_its_whole_chain() {
        let backups = [
            ("a", Some(physical(0))),
            ("b", Some(incremental(1, &["a"]))),
            ("c", Some(incremental(2, &["a", "b"]))),
            ("d", Some(physical(3))),
            ("e", None),
        ];
        let (d, order) = settle(&backups, &[true, true, false, true, true], 10);
        for i in [0, 1] {
            assert!(!d[i].delete && d[i].guarded, "{d:?}");
            assert_eq!(
                d[i].reason,
                "guard: incremental backup c needs it (a chain is kept or deleted whole) (the plugin said: plugin)"
            );
        }
        assert!(!d[2].delete && !d[2].guarded);
        assert!(d[3].delete && d[4].delete, "{d:?}");
        assert_eq!(order, ["e", "d"], "newest first");

        // The full backup kept, what was built on it is kept with it.
        let (d, order) = settle(&backups, &[false, true, true, true, false], 10);
        for i in [1, 2] {
            assert!(!d[i].delete && d[i].guarded, "{d:?}");
            assert!(
                d[i].reason
                    .starts_with("guard: the full backup a of its chain is kept"),
                "{}",
                d[i].reason
            );
        }
        assert_eq!(order, ["d"]);

        // All of it going: incrementals first, deepest first.
        let (d, order) = settle(&backups, &[true, true, true, false, false], 10);
        assert!(d[..3].iter().all(|d| d.delete), "{d:?}");
        assert_eq!(order, ["c", "b", "a"]);
    }

    /// A backup in progress (no manifest yet) may be an incremental one on
    /// the newest complete physical backup: that one and its chain stay
    /// until it is done (or abandoned).
    #[test]
    fn a_backup_in_progress_keeps_the_chain_it_may_build_on() {
        let mut listings = vec![listing("a", 100), listing("b", 200), listing("c", 300)];
        listings[2].complete = false;
        let mut phys = HashMap::new();
        phys.insert(key(&listings[0]), (physical(0), 110));
        phys.insert(key(&listings[1]), (incremental(1, &["a"]), 210));
        let mut decisions: Vec<Decision> = listings
            .iter()
            .map(|l| Decision {
                id: l.id.clone(),
                source: l.source.clone(),
                delete: l.complete,
                reason: "plugin".into(),
                guarded: false,
            })
            .collect();
        let opts = Duration::from_secs;
        let mut old = decisions.clone();
        // Abandoned long ago: nothing is in progress, nothing held.
        keep_parents_of_backups_in_progress(&listings, &phys, &mut old, 100_000, opts(60));
        assert!(old[0].delete && old[1].delete, "{old:?}");
        keep_parents_of_backups_in_progress(&listings, &phys, &mut decisions, 310, opts(3600));
        assert!(
            !decisions[1].delete && decisions[1].guarded,
            "{decisions:?}"
        );
        assert!(decisions[1]
            .reason
            .contains("backup c of this source is in progress"));
        let chains = chains(&listings, &phys);
        keep_chains_whole(&listings, &phys, &chains, &mut decisions);
        assert!(
            !decisions[0].delete,
            "its chain is kept whole: {decisions:?}"
        );
    }

    #[test]
    fn a_chain_whose_full_backup_is_gone_is_still_one_chain() {
        let backups = [
            ("b", Some(incremental(1, &["gone"]))),
            ("c", Some(incremental(2, &["gone", "b"]))),
        ];
        let (d, order) = settle(&backups, &[true, true], 10);
        assert!(d.iter().all(|d| d.delete), "{d:?}");
        assert_eq!(order, ["c", "b"]);
        let (d, _) = settle(&backups, &[true, false], 10);
        assert!(!d[0].delete && d[0].guarded, "{d:?}");
        assert!(d[0]
            .reason
            .starts_with("guard: incremental backup c needs it"));
    }

    #[test]
    fn the_cap_takes_a_chain_from_its_newest_end_and_counts_leftovers() {
        let backups = [
            ("a", Some(physical(0))),
            ("b", Some(incremental(1, &["a"]))),
            ("c", Some(incremental(2, &["a", "b"]))),
            ("d", None),
        ];
        let (d, order) = settle(&backups, &[true, true, true, true], 2);
        assert_eq!(order, ["c", "b"]);
        for i in [0, 3] {
            assert!(!d[i].delete && d[i].guarded, "{d:?}");
            assert_eq!(
                d[i].reason,
                "guard: at most 2 deletions per run (the plugin said: plugin)"
            );
        }
        // Without chains, the oldest first, as always.
        let logical = [("x", None), ("y", None), ("z", None)];
        let (d, order) = settle(&logical, &[true, true, true], 2);
        assert_eq!(order, ["y", "x"]);
        assert!(!d[2].delete && d[2].guarded);
        // A leftover of an interrupted backup takes a slot but always goes.
        let mut listings: Vec<Listing> = ["x", "y", "z"]
            .iter()
            .enumerate()
            .map(|(i, id)| listing(id, i as i64))
            .collect();
        listings[1].complete = false;
        let mut decisions: Vec<Decision> = listings
            .iter()
            .map(|l| Decision {
                id: l.id.clone(),
                source: l.source.clone(),
                delete: true,
                reason: "r".into(),
                guarded: false,
            })
            .collect();
        cap_deletions(&listings, &HashMap::new(), &[], &mut decisions, 1);
        let going: Vec<bool> = decisions.iter().map(|d| d.delete).collect();
        assert_eq!(going, [true, true, false]);
    }
}
