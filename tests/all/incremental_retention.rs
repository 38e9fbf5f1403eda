//! Retention of incremental chains: the host keeps or deletes a chain
//! whole, whatever the retention plugin says. A full backup past the cut-off
//! that a young incremental builds on stays, with the guard's reason; a
//! chain that is all past it goes, incrementals before the full backup, and
//! the cap on deletions takes a chain from its newest end; a dry run decides
//! the same.
//!
//! The chains are synthetic manifests in a file store (what the host
//! decides from is the manifests; no server is needed for it), judged by the
//! built-in age policy.

use crate::backup_restore::file_store;
use crate::harness;
use firedrill::archive::manifest::{self, Manifest};
use firedrill::archive::{Store, StoreOptions};
use firedrill::jobs::prune::{self, Decision, PruneOptions, PruneReport};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const SOURCE: &str = "inc";
const DAY: u64 = 86_400;

/// A backup id from `days` ago.
fn id_days_ago(days: u64) -> String {
    manifest::new_backup_id(SystemTime::now() - Duration::from_secs(days * DAY))
}

/// Writes a complete physical backup's manifest (and a stand-in data
/// object) whose chain is `chain` (empty: a full backup).
fn physical_backup(dir: &Path, id: &str, chain: &[&str], start_lsn: &str) {
    let started = manifest::id_time(id).unwrap();
    let m: Manifest = serde_json::from_value(serde_json::json!({
        "format": manifest::FORMAT,
        "id": id,
        "source": SOURCE,
        "kind": "physical",
        "server_version": "17.2",
        "tool": "firedrill test",
        "compression": { "algorithm": "zstd", "level": 3 },
        "globals": null,
        "databases": [],
        "timings": { "started": started, "finished": started + 60, "seconds": 60.0 },
        "physical": {
            "system_id": "7400000000000000001",
            "timeline": 1,
            "start_lsn": start_lsn,
            "end_lsn": start_lsn,
            "end_timeline": 1,
            "segment_size": 16 * 1024 * 1024,
            "superuser": "postgres",
            "wal_included": false,
            "archives": [],
            "parent": chain.last(),
            "chain": chain,
        },
    }))
    .expect("a manifest the host reads");
    let backup = dir.join(SOURCE).join(id);
    std::fs::create_dir_all(backup.join("base")).unwrap();
    std::fs::write(backup.join("base").join("00000.tar.zst"), b"blocks").unwrap();
    std::fs::write(backup.join(manifest::MANIFEST), m.to_bytes(|_| None)).unwrap();
}

/// The store's backups.
struct Chains {
    store: String,
    dir: std::path::PathBuf,
    /// Past the cut-off, all of it: a full backup and two incrementals.
    old: [String; 3],
    /// A full backup and an incremental past the cut-off, and an
    /// incremental within it.
    young: [String; 3],
    /// An incremental whose full backup is already gone.
    orphan: String,
}

fn chains() -> Chains {
    let (store, dir) = file_store();
    let old = [id_days_ago(30), id_days_ago(29), id_days_ago(28)];
    physical_backup(&dir, &old[0], &[], "0/2000028");
    physical_backup(&dir, &old[1], &[&old[0]], "0/4000028");
    physical_backup(&dir, &old[2], &[&old[0], &old[1]], "0/6000028");
    let gone = id_days_ago(40);
    let orphan = id_days_ago(25);
    physical_backup(&dir, &orphan, &[&gone], "0/7000028");
    let young = [id_days_ago(20), id_days_ago(10), id_days_ago(2)];
    physical_backup(&dir, &young[0], &[], "0/8000028");
    physical_backup(&dir, &young[1], &[&young[0]], "0/A000028");
    physical_backup(&dir, &young[2], &[&young[0], &young[1]], "0/C000028");
    Chains {
        store,
        dir,
        old,
        young,
        orphan,
    }
}

/// A prune under "keep what is younger than 7 days", no minimum age.
fn prune_here(store: &str, max_deletions: usize, dry_run: bool) -> PruneReport {
    let policy = harness::load(
        "retention-age",
        "world = \"retention\"\nwasm = \"retention_age.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ndays = 7",
    )
    .unwrap();
    let opts = PruneOptions {
        policy: Arc::new(policy),
        min_age: Duration::ZERO,
        abandon_after: Duration::from_secs(DAY),
        max_deletions,
        dry_run,
        source: Some(SOURCE.into()),
        pitr_window: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(store, &StoreOptions::default()).unwrap();
        prune::run(&store, &opts).await.unwrap()
    })
}

fn decision<'a>(r: &'a PruneReport, id: &str) -> &'a Decision {
    r.decisions
        .iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("no decision about {id}: {r:#?}"))
}

/// Where `id` is in the order of deletion.
fn position(r: &PruneReport, id: &str) -> usize {
    r.deleted
        .iter()
        .position(|d| d == id)
        .unwrap_or_else(|| panic!("{id} not deleted: {r:#?}"))
}

fn present(c: &Chains, id: &str) -> bool {
    c.dir
        .join(SOURCE)
        .join(id)
        .join(manifest::MANIFEST)
        .exists()
}

/// What a report decided, comparable across runs.
fn decided(r: &PruneReport) -> Vec<(String, bool, bool, String)> {
    r.decisions
        .iter()
        .map(|d| (d.id.clone(), d.delete, d.guarded, d.reason.clone()))
        .collect()
}

#[test]
fn a_chain_is_kept_or_deleted_whole() {
    let c = chains();

    let dry = prune_here(&c.store, 10, true);
    // The young incremental's chain stays whole: the plugin wanted its
    // full backup and first incremental gone.
    let kept = decision(&dry, &c.young[2]);
    assert!(!kept.delete && !kept.guarded, "{dry:#?}");
    for id in &c.young[..2] {
        let d = decision(&dry, id);
        assert!(!d.delete && d.guarded, "{dry:#?}");
        assert!(
            d.reason.starts_with(&format!(
                "guard: incremental backup {} needs it (a chain is kept or deleted whole)",
                c.young[2]
            )),
            "{}",
            d.reason
        );
        assert!(
            d.reason.contains("(the plugin said: ") && d.reason.contains("older than 7 days"),
            "{}",
            d.reason
        );
    }
    // The old chain, and what is left of one whose full backup is gone.
    for id in c.old.iter().chain([&c.orphan]) {
        let d = decision(&dry, id);
        assert!(d.delete && !d.guarded, "{dry:#?}");
    }
    assert!(dry.deleted.is_empty(), "{dry:#?}");
    for id in c.old.iter().chain(&c.young).chain([&c.orphan]) {
        assert!(present(&c, id), "a dry run deleted {id}");
    }

    let run = prune_here(&c.store, 10, false);
    assert_eq!(decided(&run), decided(&dry), "a dry run decides the same");
    assert_eq!(run.deleted.len(), 4, "{run:#?}");
    // Children first: an interrupted prune leaves no incremental without
    // its parent.
    assert!(position(&run, &c.old[2]) < position(&run, &c.old[1]));
    assert!(position(&run, &c.old[1]) < position(&run, &c.old[0]));
    position(&run, &c.orphan);
    for id in c.old.iter().chain([&c.orphan]) {
        assert!(
            !c.dir.join(SOURCE).join(id).exists(),
            "{id} deleted entirely"
        );
    }
    for id in &c.young {
        assert!(present(&c, id), "{id} was kept");
    }

    // Again: the young chain is still kept whole, nothing else is left.
    let again = prune_here(&c.store, 10, false);
    assert!(again.deleted.is_empty(), "{again:#?}");
    assert_eq!(again.decisions.len(), 3, "{again:#?}");
}

#[test]
fn the_cap_on_deletions_takes_a_chain_from_its_newest_end() {
    let c = chains();
    // Two deletions per run: the old chain is the first that goes, its
    // incrementals first; its full backup waits for the next run.
    let r = prune_here(&c.store, 2, false);
    assert_eq!(r.deleted, [c.old[2].clone(), c.old[1].clone()], "{r:#?}");
    for id in [&c.old[0], &c.orphan] {
        let d = decision(&r, id);
        assert!(!d.delete && d.guarded, "{r:#?}");
        assert!(
            d.reason.starts_with("guard: at most 2 deletions per run"),
            "{}",
            d.reason
        );
    }
    assert!(present(&c, &c.old[0]));
    assert!(!present(&c, &c.old[1]) && !present(&c, &c.old[2]));

    let r = prune_here(&c.store, 2, false);
    let mut deleted = r.deleted.clone();
    deleted.sort();
    let mut expected = vec![c.old[0].clone(), c.orphan.clone()];
    expected.sort();
    assert_eq!(deleted, expected, "{r:#?}");

    let r = prune_here(&c.store, 2, false);
    assert!(r.deleted.is_empty(), "{r:#?}");
    for id in &c.young {
        assert!(present(&c, id), "{id} was kept");
    }
}
