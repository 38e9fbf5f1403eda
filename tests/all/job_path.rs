//! One job path for every trigger: a backup run by hand (`firedrill
//! backup`) beside an agent on the same source takes the same lease, so the
//! two never overlap — through the node's lock directory without Redis,
//! through Redis with it — and the hand-run one is fenced like the agent's.

use crate::backup_restore::file_store;
use crate::harness::{self, firedrill, output_text, start_agent};
use std::path::Path;
use std::time::{Duration, Instant};

/// A database whose backup takes a few seconds (debug build): long enough
/// that a second backup started meanwhile would overlap it.
fn slow_source() -> String {
    let db = harness::postgres().fresh_database("jobpath");
    harness::postgres()
        .client(&db)
        .batch_execute(
            "CREATE TABLE events (id uuid PRIMARY KEY, body text NOT NULL, meta jsonb NOT NULL);
             INSERT INTO events SELECT md5(g::text)::uuid, repeat(md5(g::text), 12), jsonb_build_object('n', g)
             FROM generate_series(1, 150000) g;",
        )
        .unwrap();
    harness::postgres().url(&db)
}

/// Waits until a backup of `source` is in progress in the file store (its
/// directory exists, its manifest does not yet).
fn wait_for_backup_in_progress(store: &Path, source: &str) {
    let start = Instant::now();
    loop {
        let running = std::fs::read_dir(store.join(source))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| !e.path().join("manifest.json").exists())
            })
            .unwrap_or(false);
        if running {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent never started its backup"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every committed manifest of `source`: (started, finished, fencing token).
fn manifests(store: &Path, source: &str) -> Vec<(i64, i64, Option<u64>)> {
    let mut out: Vec<(i64, i64, Option<u64>)> = std::fs::read_dir(store.join(source))
        .unwrap()
        .filter_map(|e| std::fs::read(e.unwrap().path().join("manifest.json")).ok())
        .map(|m| {
            let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
            (
                m["timings"]["started"].as_i64().unwrap(),
                m["timings"]["finished"].as_i64().unwrap(),
                m["fencing_token"].as_u64(),
            )
        })
        .collect();
    out.sort();
    out
}

fn agent_beside_cli(redis: Option<String>) {
    let url = slow_source();
    let (store, dir) = file_store();
    let work = harness::tempdir("jobpath");
    let locks = work.join("locks");
    let port = harness::free_port();
    let coordination = match &redis {
        Some(r) => {
            format!("[coordination]\nredis_url = \"{r}\"\nnamespace = \"jobpath-{port}:\"\n")
        }
        None => String::new(),
    };
    let config = work.join("agent.toml");
    std::fs::write(
        &config,
        format!("[agent]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store}\"\n{coordination}[[source]]\nname = \"app\"\nurls = [\"{url}\"]\nbackup = \"1h\"\n"),
    )
    .unwrap();
    let lock_env = locks.to_str().unwrap();
    let agent = start_agent(&config, port, &[("FIREDRILL_LOCK_DIR", lock_env)]);
    wait_for_backup_in_progress(&dir, "app");
    // While the agent's backup runs: the same source by hand, with the
    // agent's configuration (Redis) or with flags (the node's lock directory).
    let args: Vec<String> = match &redis {
        Some(_) => [
            "backup",
            "--json",
            "--config",
            config.to_str().unwrap(),
            "--source",
            "app",
        ]
        .map(String::from)
        .to_vec(),
        None => [
            "backup",
            "--json",
            "--store",
            &store,
            "--source",
            "app",
            "--database-url",
            &url,
        ]
        .map(String::from)
        .to_vec(),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = firedrill(
        &args,
        // No RUST_LOG: the wait is said at the default level.
        &[("FIREDRILL_LOCK_DIR", lock_env.into())],
    );
    let out = output_text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("waiting for the lease"),
        "the hand-run backup did not wait: {out}"
    );
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait_with_output().unwrap();

    let runs = manifests(&dir, "app");
    assert_eq!(runs.len(), 2, "one backup each: {runs:?}");
    let (first, second) = (runs[0], runs[1]);
    assert!(
        second.0 >= first.1,
        "the two backups overlapped: {first:?} and {second:?} (started, finished, token)"
    );
    let (Some(t1), Some(t2)) = (first.2, second.2) else {
        panic!("both backups carry a fencing token: {runs:?}")
    };
    assert!(
        t2 > t1,
        "fencing tokens grow from one holder to the next: {runs:?}"
    );
}

#[test]
fn a_cli_backup_waits_for_the_agents_backup_of_the_same_source_without_redis() {
    agent_beside_cli(None);
}

#[test]
fn a_cli_backup_waits_for_the_agents_backup_of_the_same_source_through_redis() {
    agent_beside_cli(Some(harness::redis().url()));
}

/// A prune of the whole store by hand runs per source, each under its
/// lease, as the agent's do, and still deletes at most `--max-deletions`
/// in all: the limit is the operator's safety net, not one per source.
#[test]
fn a_prune_of_every_source_keeps_one_deletion_budget() {
    let pg = harness::postgres();
    let (db, store, dir) = crate::backup_restore::seeded("budget");
    for source in ["a", "b"] {
        for _ in 0..3 {
            crate::backup_restore::backup_id(
                &[
                    "--database-url",
                    &pg.url(&db),
                    "--store",
                    &store,
                    "--source",
                    source,
                    "--no-globals",
                ],
                &[],
            );
        }
    }
    let r = crate::retention::prune(&store, 1, &["--min-age", "0s", "--max-deletions", "2"]);
    assert_eq!(r["deleted"].as_array().unwrap().len(), 2, "{r:#}");
    let sources: std::collections::BTreeSet<&str> = r["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["a", "b"].into(), "both sources decided: {r:#}");
    let left = |s: &str| {
        std::fs::read_dir(dir.join(s))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().join("manifest.json").exists())
            .count()
    };
    assert_eq!(left("a") + left("b"), 4, "two of six deleted");
}
