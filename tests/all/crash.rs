//! Crash safety (the reliability suite grows here): a backup killed with
//! SIGKILL at random points never leaves a backup listed as complete that is
//! not; the next backup and a drill succeed; prune clears the leftovers.

use crate::backup_restore::{backup_id, seeded};
use crate::harness::{self, firedrill, output_text};
use firedrill::archive::{self as arch, Store};
use rand::Rng;
use sha2::Digest;
use std::time::{Duration, Instant};

/// Every complete backup in the store: its manifest reads, and every object
/// it lists exists with the size and sha256 it records.
fn check_complete_ones(store: &str) -> (usize, usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = Store::open(store, &Default::default()).unwrap();
        let (mut complete, mut incomplete) = (0, 0);
        for l in arch::list_backups(&s).await.unwrap() {
            if !l.complete {
                incomplete += 1;
                continue;
            }
            complete += 1;
            let m = arch::read_manifest(&s, &l.source, &l.id).await.unwrap();
            let dir = arch::backup_dir(&l.source, &l.id);
            let stored: std::collections::HashMap<String, u64> =
                s.list_recursive(&dir).await.unwrap().into_iter().collect();
            for o in m.objects() {
                let path = format!("{dir}{}", o.path);
                let got = stored.get(&path).copied();
                assert_eq!(
                    got,
                    Some(o.size),
                    "{} of complete backup {} is missing or short",
                    o.path,
                    l.id
                );
                let bytes = s.get(&path).await.unwrap();
                assert_eq!(
                    hex::encode(sha2::Sha256::digest(&bytes)),
                    o.sha256,
                    "{} of complete backup {} is not what its manifest records",
                    o.path,
                    l.id
                );
            }
        }
        (complete, incomplete)
    })
}

#[test]
fn a_backup_killed_at_random_points_never_looks_complete() {
    let pg = harness::postgres();
    let (db, store, _) = seeded("crash");
    // Enough data that a backup lasts long enough to be cut anywhere.
    pg.client(&db)
        .batch_execute(
            "CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 100000) g",
        )
        .unwrap();
    let args = [
        "backup",
        "--database-url",
        &pg.url(&db),
        "--store",
        &store,
        "--source",
        "c",
        "--chunk-size",
        "1MiB",
        "-j",
        "2",
    ];
    // How long a whole backup takes here, to spread the kills over it.
    let start = Instant::now();
    let o = firedrill(&args, &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let full = start.elapsed();
    let mut rng = rand::rng();
    let mut finished_anyway = 0;
    for _ in 0..50 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_firedrill"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(
            rng.random_range(0..full.as_micros() as u64),
        ));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        if child.wait().unwrap().success() {
            finished_anyway += 1;
        }
    }
    let (complete, incomplete) = check_complete_ones(&store);
    eprintln!("50 kills over a {full:?} backup: {complete} complete ({finished_anyway} finished before the kill, 1 before the loop), {incomplete} incomplete");
    // A kill that lands after the manifest is written but before the
    // process exits leaves a complete backup: whole, as checked above. What
    // must never happen is a complete-looking backup that is not.
    assert!(
        complete >= 1 + finished_anyway,
        "a backup that finished is not listed as complete"
    );
    assert!(incomplete > 0, "no kill landed mid-backup");

    // Life goes on: a backup and a drill of it succeed.
    let id = backup_id(&args[1..], &[]);
    let o = firedrill(
        &[
            "drill",
            "--store",
            &store,
            &id,
            "--drill-url",
            &pg.url("postgres"),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    // The leftovers go at the next prune once they are past the abandon age.
    crate::retention::prune(
        &store,
        100,
        &["--abandon-after", "0s", "--max-deletions", "100"],
    );
    let (complete_after, incomplete_after) = check_complete_ones(&store);
    assert_eq!((complete_after, incomplete_after), (complete + 1, 0));
}

/// The failed checks' details, and the error, of a drill's report.
fn failures(report: &serde_json::Value) -> String {
    let mut out: Vec<String> = report["checks"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["status"] != "pass")
                .map(|c| format!("{}: {}", c["name"], c["detail"]))
                .collect()
        })
        .unwrap_or_default();
    out.push(report["error"].to_string());
    out.join("\n")
}

#[test]
fn corruption_of_every_object_kind_is_detected_and_named() {
    let pg = harness::postgres();
    let (db, store, dir) = seeded("rot");
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "r",
            "--chunk-size",
            "64KiB",
        ],
        &[],
    );
    let bdir = dir.join("r").join(&id);
    let mpath = bdir.join("manifest.json");
    let manifest_text = std::fs::read_to_string(&mpath).unwrap();
    let m: firedrill::archive::manifest::Manifest = serde_json::from_str(&manifest_text).unwrap();
    // One object of each kind: globals, pre-data, post-data, a table chunk.
    let d = &m.databases[0];
    let mut objects = vec![
        d.pre_data.path.clone(),
        d.post_data.path.clone(),
        d.tables[0].chunks[0].object.path.clone(),
    ];
    objects.extend(m.globals.iter().map(|g| g.path.clone()));
    assert_eq!(objects.len(), 4, "the seeded backup has globals");
    let drill = |what: &str| -> (bool, serde_json::Value) {
        let o = firedrill(
            &[
                "drill",
                "--json",
                "--store",
                &store,
                &id,
                "--drill-url",
                &pg.url("postgres"),
            ],
            &[],
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| serde_json::json!({"error": output_text(&o)}));
        assert_eq!(
            o.status.success(),
            r["passed"] == true,
            "{what}: exit status and report agree"
        );
        (o.status.success(), r)
    };
    let mut detected = 0;
    for object in &objects {
        let path = bdir.join(object);
        let original = std::fs::read(&path).unwrap();
        let mut flipped = original.clone();
        let at = original.len() / 3;
        flipped[at] ^= 0x20;
        let damages: [(&str, Option<Vec<u8>>); 3] = [
            ("a flipped byte", Some(flipped)),
            (
                "a truncation",
                Some(original[..original.len() - 1].to_vec()),
            ),
            ("a missing object", None),
        ];
        for (what, content) in damages {
            match &content {
                Some(c) => std::fs::write(&path, c).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
            let (passed, r) = drill(what);
            let named = failures(&r).contains(object.as_str());
            assert!(
                !passed && named,
                "{what} of {object}: passed={passed}, failures:\n{}",
                failures(&r)
            );
            detected += 1;
            std::fs::write(&path, &original).unwrap();
        }
    }
    // An object the manifest does not list is named (a warning: not needed to restore).
    std::fs::write(bdir.join(&d.name).join("data/intruder.copy.zst"), b"junk").unwrap();
    let (passed, r) = drill("an extra object");
    let extra = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "archive.objects")
        .unwrap()
        .clone();
    assert!(
        passed
            && extra["status"] == "warn"
            && extra["detail"]
                .as_str()
                .unwrap()
                .contains("intruder.copy.zst"),
        "{extra}"
    );
    std::fs::remove_file(bdir.join(&d.name).join("data/intruder.copy.zst")).unwrap();
    detected += 1;
    // Tampered manifests: a checksum, a size, broken JSON.
    let chunk = &d.tables[0].chunks[0].object;
    for (what, tampered) in [
        (
            "a checksum",
            manifest_text.replacen(&chunk.sha256, &"0".repeat(64), 1),
        ),
        (
            "a size",
            manifest_text.replacen(
                &format!("\"size\": {}", chunk.size),
                &format!("\"size\": {}", chunk.size + 1),
                1,
            ),
        ),
        (
            "broken JSON",
            manifest_text[..manifest_text.len() / 2].to_string(),
        ),
    ] {
        assert_ne!(
            tampered, manifest_text,
            "{what}: the tampering changed nothing"
        );
        std::fs::write(&mpath, &tampered).unwrap();
        let (passed, r) = drill(what);
        let text = failures(&r);
        let named = text.contains(chunk.path.as_str()) || text.contains("manifest.json");
        assert!(!passed && named, "a tampered manifest ({what}): {text}");
        detected += 1;
    }
    std::fs::write(&mpath, &manifest_text).unwrap();
    let (passed, r) = drill("repaired");
    assert!(passed, "repaired, it passes: {}", failures(&r));
    eprintln!(
        "corruption cases detected and named: {detected} of {}",
        objects.len() * 3 + 4
    );
}
