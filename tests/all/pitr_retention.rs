//! Retention that keeps point-in-time chains whole: deleting an old
//! physical backup deletes the WAL only it could replay (below the kept
//! backup's start segment) and nothing from there on; the archive still
//! verifies whole and the kept backup still drills; a pitr window keeps the
//! backup it begins from and its WAL; a dry run and a source without a
//! physical backup lose nothing.

use crate::backup_restore::file_store;
use crate::harness::{self, firedrill, output_text, pg_bin, postgres_from};
use crate::pitr::{
    insert_batch, physical_backup, start_streamer, stop_streamer, wait_received, wait_streaming,
};
use firedrill::archive::wal::{Lsn, Segment};
use firedrill::archive::{Store, StoreOptions};
use firedrill::jobs::prune::{self, PruneOptions, PruneReport};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SOURCE: &str = "chain";
const TLI_DIR: &str = "00000001";

/// The objects in the store's timeline-1 WAL directory (records included).
fn wal_files(dir: &Path) -> BTreeSet<String> {
    let tli = dir.join(SOURCE).join("wal").join(TLI_DIR);
    match std::fs::read_dir(&tli) {
        Err(_) => BTreeSet::new(),
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
    }
}

/// The segment number of a WAL object or record name.
fn number(name: &str, size: u64) -> u64 {
    let seg = name.trim_end_matches(".json").trim_end_matches(".partial");
    Segment::parse(seg, size)
        .unwrap_or_else(|| panic!("{name} is not a segment"))
        .number
}

/// The start segment of a physical backup, and the segment size.
fn start_segment(dir: &Path, id: &str) -> (u64, u64) {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(SOURCE).join(id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let p = &m["physical"];
    let size = p["segment_size"].as_u64().unwrap();
    let lsn: Lsn = p["start_lsn"].as_str().unwrap().parse().unwrap();
    assert_eq!(p["timeline"], 1);
    (Segment::of(1, lsn, size).number, size)
}

/// A prune of `SOURCE` in this process (the CLI has no flag for the
/// window): keep the newest backup, no minimum age.
fn prune_here(store: &str, window: Option<Duration>, dry_run: bool) -> PruneReport {
    let policy = harness::load(
        "retention-count",
        "world = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nlogging = true\nconfig = true\n[config]\nkeep = 1",
    )
    .unwrap();
    let opts = PruneOptions {
        policy: Arc::new(policy),
        min_age: Duration::ZERO,
        abandon_after: Duration::from_secs(86_400),
        max_deletions: 10,
        dry_run,
        source: Some(SOURCE.into()),
        pitr_window: window,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(store, &StoreOptions::default()).unwrap();
        prune::run(&store, &opts).await.unwrap()
    })
}

fn decision<'a>(r: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    r["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("no decision about {id}: {r:#}"))
}

#[test]
fn deleting_an_old_base_backup_deletes_only_the_wal_below_the_kept_one() {
    let bin = pg_bin(18);
    let pg = postgres_from(&bin);
    let url = pg.url("postgres");
    let (store, dir) = file_store();
    let mut client = pg.client("postgres");
    client
        .batch_execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, batch int NOT NULL, payload text)",
        )
        .unwrap();
    let streamer = start_streamer(&store, &url, SOURCE);
    wait_streaming(&mut client, "firedrill_chain");
    insert_batch(&mut client, 0);
    client.batch_execute("SELECT pg_switch_wal()").unwrap();
    // A whole segment archived before any base backup.
    let start = Instant::now();
    while !wal_files(&dir)
        .iter()
        .any(|f| f.ends_with(".json") && !f.ends_with(".partial.json"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no segment archived: {:?}",
            wal_files(&dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // No physical backup yet: the WAL is kept, and the report says why.
    let before = wal_files(&dir);
    let r = prune_here(&store, None, false);
    assert_eq!(r.wal.len(), 1, "{r:?}");
    assert!(r.wal[0].segments.is_empty(), "{r:?}");
    assert!(
        r.wal[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("no physical backup")),
        "{r:?}"
    );
    assert!(r.wal_deleted.is_empty());
    assert!(wal_files(&dir).is_superset(&before));

    // Two base backups with whole segments between them, and WAL after
    // the newer one long enough for a drill's window.
    let older = physical_backup(&store, &url, SOURCE);
    for batch in 1..=2 {
        insert_batch(&mut client, batch);
        client.batch_execute("SELECT pg_switch_wal()").unwrap();
    }
    std::thread::sleep(Duration::from_millis(1100));
    let newer = physical_backup(&store, &url, SOURCE);
    for batch in 3..=8 {
        insert_batch(&mut client, batch);
        if batch == 4 {
            client.batch_execute("SELECT pg_switch_wal()").unwrap();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    wait_received(&mut client);
    stop_streamer(streamer);

    let (older_start, size) = start_segment(&dir, &older);
    let (newer_start, _) = start_segment(&dir, &newer);
    let all = wal_files(&dir);
    let below: BTreeSet<String> = all
        .iter()
        .filter(|f| number(f, size) < newer_start)
        .cloned()
        .collect();
    let kept: BTreeSet<String> = all.difference(&below).cloned().collect();
    // What could fail: whole segments (object and record) below the older
    // backup, between the two, and from the newer one on.
    let whole = |n: u64| {
        let name = Segment {
            timeline: 1,
            number: n,
        }
        .file_name(size);
        all.contains(&name) && all.contains(&format!("{name}.json"))
    };
    assert!(
        (0..older_start).any(whole),
        "no segment below the older backup: {all:?}"
    );
    assert!(
        (older_start..newer_start).any(whole),
        "no segment between the backups: {all:?}"
    );
    assert!(
        whole(newer_start),
        "the newer backup's start segment: {all:?}"
    );

    // A pitr window reaching back past both backups: the older one is the
    // earliest point recovery can start from; it and all WAL stay.
    let r = prune_here(&store, Some(Duration::from_secs(86_400)), false);
    let d = r.decisions.iter().find(|d| d.id == older).unwrap();
    assert!(!d.delete && d.guarded, "{r:?}");
    assert!(d.reason.contains("pitr window of 1day"), "{}", d.reason);
    assert!(r.deleted.is_empty(), "{r:?}");
    assert!(r.wal_deleted.is_empty(), "{r:?}");
    assert!(r.wal[0].segments.is_empty(), "{r:?}");
    assert!(
        r.wal[0].kept_in_window > 0,
        "the WAL below the older backup was archived inside the window: {r:?}"
    );
    assert_eq!(wal_files(&dir), all);
    assert!(dir.join(SOURCE).join(&older).join("manifest.json").exists());

    // A dry run says what would go and deletes nothing.
    let r = crate::retention::prune(&store, 1, &["--dry-run", "--min-age", "0s"]);
    assert_eq!(decision(&r, &older)["delete"], true, "{r:#}");
    assert_eq!(decision(&r, &newer)["delete"], false, "{r:#}");
    assert_eq!(r["deleted"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["wal_deleted"], serde_json::json!([]), "{r:#}");
    let prefix = format!("{SOURCE}/wal/{TLI_DIR}/");
    let objects_below: BTreeSet<String> = below
        .iter()
        .map(|f| format!("{prefix}{}", f.trim_end_matches(".json")))
        .collect();
    let would: BTreeSet<String> = r["wal"][0]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(would, objects_below, "{r:#}");
    assert_eq!(
        r["wal"][0]["keep_from"],
        Segment {
            timeline: 1,
            number: newer_start
        }
        .file_name(size)
    );
    assert_eq!(wal_files(&dir), all, "a dry run deletes nothing");
    assert!(dir.join(SOURCE).join(&older).join("manifest.json").exists());

    // The prune: the older backup and the WAL below the newer one go,
    // everything from its start segment on stays.
    let r = crate::retention::prune(&store, 1, &["--min-age", "0s"]);
    assert_eq!(r["deleted"], serde_json::json!([older]), "{r:#}");
    let went: BTreeSet<String> = r["wal_deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(went, objects_below, "{r:#}");
    assert_eq!(wal_files(&dir), kept);
    assert!(!dir.join(SOURCE).join(&older).exists());

    // Again: nothing more to do.
    let r = crate::retention::prune(&store, 1, &["--min-age", "0s"]);
    assert_eq!(r["deleted"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["wal_deleted"], serde_json::json!([]), "{r:#}");

    // The chain of the kept backup is whole and it still recovers.
    let env = [
        ("FIREDRILL_STORE", store.clone()),
        ("FIREDRILL_PG_BIN", bin.display().to_string()),
    ];
    let o = firedrill(&["wal", "verify", "--source", SOURCE, "--deep"], &env);
    assert!(o.status.success(), "wal verify: {}", output_text(&o));
    assert!(output_text(&o).contains("is whole"), "{}", output_text(&o));
    let o = firedrill(&["drill", &newer, "--json"], &env);
    let text = output_text(&o);
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not a report ({e}): {text}"));
    assert_eq!(report["passed"], true, "{text}");
}
