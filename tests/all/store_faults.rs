//! Store faults: the S3 server behind a proxy that answers 5 % of requests
//! with 503, drops some without an answer, cuts some answers short and slows
//! others. Backups, drills and restores complete through retries; a store
//! that stays down fails the backup cleanly, with nothing listed as complete.

use crate::backup_restore::{backup, fingerprint, restore, seed};
use crate::harness::{self, firedrill, output_text, FaultProxy, Faults};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

#[test]
fn backups_drills_and_restores_complete_through_a_faulty_store() {
    let pg = harness::postgres();
    let db = pg.fresh_database("faulty");
    seed(&db);
    let proxy = FaultProxy::start(Faults::Some);
    let mut env = proxy.env();
    env.push(("S3_BUCKET", harness::s3().bucket("faulty")));
    // Small chunks: many objects, so every kind of fault lands on some.
    let b = backup(
        &[
            "--database-url",
            &pg.url(&db),
            "--source",
            "app",
            "--chunk-size",
            "64KiB",
            "-j",
            "2",
        ],
        &env,
    );
    let id = b["id"].as_str().unwrap().to_string();
    let o = firedrill(
        &[
            "drill",
            "--latest",
            "--drill-url",
            &pg.url("postgres"),
            "--json",
        ],
        &env,
    );
    assert!(
        o.status.success(),
        "drill through faults: {}",
        output_text(&o)
    );
    let target = format!("{db}_restored");
    let o = restore(&[&id, "--target-url", &pg.url(&target)], &env);
    assert!(
        o.status.success(),
        "restore through faults: {}",
        output_text(&o)
    );
    assert_eq!(fingerprint(&db), fingerprint(&target));
    let c = &proxy.counts;
    let (requests, errors, dropped, cut, slow) = (
        c.requests.load(Relaxed),
        c.errors.load(Relaxed),
        c.dropped.load(Relaxed),
        c.cut.load(Relaxed),
        c.slow.load(Relaxed),
    );
    eprintln!("faulty store: {requests} requests, {errors} answered 503, {dropped} dropped, {cut} cut short, {slow} slowed");
    assert!(
        errors > 0 && dropped > 0 && cut > 0 && slow > 0,
        "not every fault was exercised: {c:?}"
    );
}

#[test]
fn a_store_that_stays_down_fails_the_backup_cleanly_and_the_next_one_succeeds() {
    let pg = harness::postgres();
    let db = pg.fresh_database("storedown");
    seed(&db);
    let proxy = FaultProxy::start(Faults::Down);
    let bucket = harness::s3().bucket("down");
    let mut env = proxy.env();
    env.push(("S3_BUCKET", bucket.clone()));
    let args = ["backup", "--database-url", &pg.url(&db), "--source", "app"];
    let started = Instant::now();
    let o = firedrill(&args, &env);
    let out = output_text(&o);
    assert!(!o.status.success(), "{out}");
    eprintln!(
        "store down: the backup failed after {:.1?}: {}",
        started.elapsed(),
        out.trim()
    );
    assert!(
        started.elapsed() < Duration::from_secs(180),
        "gave up only after {:?}",
        started.elapsed()
    );
    // The operator learns it was the store, and what it said.
    assert!(out.contains("SlowDown") || out.contains("503"), "{out}");
    assert!(!out.contains(&harness::s3().secret_key), "{out}");
    // Nothing half-written is listed as complete.
    proxy.set(Faults::None);
    let o = firedrill(&["list", "--json"], &env);
    assert!(o.status.success(), "{}", output_text(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["complete"] == false),
        "{listed}"
    );
    // Back up: the next backup completes.
    let o = firedrill(&args, &env);
    assert!(o.status.success(), "{}", output_text(&o));
}
