//! Crash safety (the reliability suite grows here): a backup killed with
//! SIGKILL at random points never leaves a backup listed as complete that is
//! not; the next backup and a drill succeed; prune clears the leftovers.

use crate::backup_restore::{backup_id, seeded};
use crate::harness::{self, firedrill, output_text};
use firedrill::archive::{self as arch, Store};
use rand::Rng;
use std::time::{Duration, Instant};

/// Every complete backup in the store: its manifest reads, and every object
/// it lists exists with the size it records.
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
                let got = stored.get(&format!("{dir}{}", o.path)).copied();
                assert_eq!(
                    got,
                    Some(o.size),
                    "{} of complete backup {} is missing or short",
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
    assert_eq!(
        complete,
        1 + finished_anyway,
        "a killed backup is listed as complete"
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
    let keep = crate::retention::policies(100);
    let o = firedrill(
        &[
            "prune",
            "--json",
            "--store",
            &store,
            "--policies",
            keep.to_str().unwrap(),
            "--abandon-after",
            "0s",
            "--max-deletions",
            "100",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let (complete_after, incomplete_after) = check_complete_ones(&store);
    assert_eq!((complete_after, incomplete_after), (complete + 1, 0));
}
