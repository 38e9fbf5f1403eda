//! The agent: configuration checked whole before anything runs; a run with
//! short intervals backs up, drills and prunes (GFS) with the guards holding;
//! a broken source is retried without stopping the others; SIGTERM ends it
//! cleanly.

use crate::backup_restore::seeded;
use crate::harness::{self, firedrill, http_get, output_text, start_agent};
use std::time::{Duration, Instant};

#[test]
fn config_check_names_the_bad_setting_and_hides_secrets() {
    let dir = harness::tempdir("config");
    let good = dir.join("good.toml");
    std::fs::write(&good, "[store]\nurl = \"file:///tmp/x\"\n[[source]]\nname = \"app\"\nurls = [\"postgres://app:hunter2-secret@db/app\"]\nbackup = \"cron: 0 3 * * *\"\n").unwrap();
    let o = firedrill(
        &["config", "check", "--config", good.to_str().unwrap()],
        &[("S3_SECRET_ACCESS_KEY", "s3-secret-value".into())],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let out = output_text(&o);
    assert!(
        out.contains("configuration valid") && out.contains("source     app"),
        "{out}"
    );
    assert!(
        !out.contains("hunter2-secret") && !out.contains("s3-secret-value"),
        "{out}"
    );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[store]\nurl = \"file:///tmp/x\"\n[[source]]\nname = \"app\"\nurls = [\"postgres://app:hunter2-secret@db/app\"]\nbackup = \"whenever\"\n").unwrap();
    for cmd in [vec!["config", "check"], vec!["agent"]] {
        let mut args = cmd.clone();
        args.extend(["--config", bad.to_str().unwrap()]);
        let start = Instant::now();
        let o = firedrill(&args, &[]);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {}", output_text(&o));
        assert!(
            output_text(&o).contains("invalid configuration: source[0].backup"),
            "{}",
            output_text(&o)
        );
        assert!(!output_text(&o).contains("hunter2"), "{}", output_text(&o));
        assert!(start.elapsed() < Duration::from_secs(10), "exits at once");
    }
    // The template's environment alone, with a bad value.
    let o = firedrill(
        &["config", "check"],
        &[
            ("DATABASE_URL", "postgres://db/app".into()),
            ("S3_BUCKET", "b".into()),
            ("BACKUP_INTERVAL", "soon".into()),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        output_text(&o).contains("source[0].backup"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn an_agent_backs_up_drills_and_prunes_on_schedule_until_sigterm() {
    let pg = harness::postgres();
    let (db, store, _) = seeded("agent");
    let policies = harness::policy_dir(
        &["retention-gfs", "verifier-sql"],
        &[
            ("gfs.toml", "world = \"retention\"\nwasm = \"retention_gfs.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ndaily = 1\nweekly = 0\nmonthly = 0\n"),
            ("sql.toml", "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nconfig = true\nlogging = true\nsql = { database = \"drill\" }\n"),
        ],
    );
    let port = harness::free_port();
    let dead = harness::free_port();
    let config = harness::tempdir("agent").join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\n[store]\nurl = \"{store}\"\n[drill]\ntarget = \"{}\"\n[retention]\nmin_age = \"0s\"\n\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"1s\"\ndrill = \"2s\"\nprune = \"2s\"\njobs = 2\n\n\
             [[source]]\nname = \"broken\"\nurls = [\"postgres://postgres@127.0.0.1:{dead}/nowhere\"]\nbackup = \"1s\"\n",
            policies.display(),
            pg.url("postgres"),
            pg.url(&db)
        ),
    )
    .unwrap();
    let child = start_agent(&config, port, &[]);
    assert_eq!(http_get(port, "/health"), Some(200));
    assert_eq!(http_get(port, "/nope"), Some(404));
    // Let it go through several rounds.
    let o = harness::run_agent_for(child, 9);
    let log = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{log}");
    assert!(log.contains("stopped on SIGTERM"), "{log}");
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let backups = count("backup done");
    assert!(backups >= 3, "backups: {backups}\n{log}");
    assert!(count("drill passed") >= 1, "{log}");
    assert!(count("prune done") >= 1, "{log}");
    assert!(
        count("source=broken") >= 2 && count("job failed, retrying") >= 2,
        "the broken source is retried: {log}"
    );
    let listed: serde_json::Value =
        serde_json::from_slice(&firedrill(&["list", "--store", &store, "--json"], &[]).stdout)
            .unwrap();
    let ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["complete"] == true)
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.len() < backups,
        "GFS pruned: {} kept of {backups}",
        ids.len()
    );
    // The guard: the newest backup that passed a drill is still there.
    let drilled: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("drill passed"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("backup=")))
        .collect();
    let newest_drilled = drilled.iter().max().unwrap();
    assert!(
        ids.iter().any(|i| i == newest_drilled),
        "{newest_drilled} was pruned: {ids:?}"
    );
    let made: Vec<String> = log
        .lines()
        .filter(|l| l.contains("backup done"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("backup=")))
        .map(|id| {
            format!(
                "firedrill_drill_{}",
                id.to_ascii_lowercase().replace('-', "_")
            )
        })
        .collect();
    let left: Vec<String> = pg
        .client("postgres")
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'firedrill\\_drill\\_%'",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .filter(|n: &String| made.contains(n))
        .collect();
    assert!(
        left.is_empty(),
        "no drill database outlives the agent: {left:?}"
    );
}

#[test]
fn backup_retention_days_prunes_through_the_built_in_age_policy() {
    let pg = harness::postgres();
    let db = pg.fresh_database("agedays");
    pg.client(&db)
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .unwrap();
    let (store, _) = crate::backup_restore::file_store();
    // The policies directory holds a GFS policy (as a copy of the shipped
    // ones does): the days decide, and the agent says so.
    let policies = harness::policy_dir(
        &["retention-gfs"],
        &[("gfs.toml", "world = \"retention\"\nwasm = \"retention_gfs.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ndaily = 100\n")],
    );
    let port = harness::free_port();
    let config = harness::tempdir("agent").join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\n[store]\nurl = \"{store}\"\n[retention]\nmin_age = \"0s\"\n[[source]]\nname = \"aged\"\nurls = [\"{}\"]\nprune = \"1s\"\n",
            policies.display(),
            pg.url(&db)
        ),
    )
    .unwrap();
    let child = start_agent(
        &config,
        port,
        &[("BACKUP_RETENTION_DAYS", "1"), ("BACKUP_INTERVAL", "1")],
    );
    std::thread::sleep(Duration::from_secs(4));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let log = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{log}");
    assert!(
        log.contains("older than 1 days"),
        "BACKUP_RETENTION_DAYS is shown: {log}"
    );
    assert!(
        log.contains("BACKUP_RETENTION_DAYS is set: it decides retention")
            && log.contains("gfs.toml"),
        "{log}"
    );
    assert!(
        log.lines().filter(|l| l.contains("prune done")).count() >= 2,
        "{log}"
    );
    assert!(
        log.lines().filter(|l| l.contains("backup done")).count() >= 2,
        "BACKUP_INTERVAL=1 means every second: {log}"
    );
    assert!(!log.contains("job failed"), "{log}");
}

/// A user of the pg_dump-to-S3 template switches: its environment and
/// nothing else (no file, no policies directory, no token key). The
/// built-in age policy prunes after each backup; the API serves health and
/// metrics and says what /v1 needs.
#[test]
fn the_templates_environment_alone_backs_up_drills_and_prunes() {
    let pg = harness::postgres();
    let db = pg.fresh_database("template");
    pg.client(&db)
        .batch_execute(
            "CREATE TABLE notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), body text);
             INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 500) g;",
        )
        .unwrap();
    let s3 = harness::s3();
    let bucket = s3.bucket("template");
    let port = harness::free_port();
    let mut env: Vec<(&str, String)> = s3.env();
    env.extend([
        ("DATABASE_URL", pg.url(&db)),
        ("S3_BUCKET", bucket.clone()),
        ("BACKUP_INTERVAL", "2".into()),
        ("VERIFY_INTERVAL", "3".into()),
        ("BACKUP_RETENTION_DAYS", "7".into()),
    ]);
    let child = harness::start_bare_agent(port, &env);
    assert_eq!(http_get(port, "/health"), Some(200));
    assert_eq!(http_get(port, "/metrics"), Some(200));
    let r = harness::http(port, "GET", "/v1/backups", &[], "");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("FIREDRILL_TOKEN_KEY"), "{r:?}");

    let o = harness::run_agent_for(child, 12);
    let log = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{log}");
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert!(count("backup done") >= 2, "{log}");
    assert!(count("drill passed") >= 1, "{log}");
    assert!(count("prune done") >= 1, "{log}");
    assert!(!log.contains("job failed"), "{log}");
    // Each drill counted the rows back.
    let source = s3.root.join(&bucket).join("default");
    let reports: Vec<serde_json::Value> = std::fs::read_dir(&source)
        .unwrap()
        .filter_map(|b| std::fs::read_dir(b.ok()?.path().join("drills")).ok())
        .flatten()
        .map(|r| serde_json::from_slice(&std::fs::read(r.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert!(
        !reports.is_empty(),
        "no drill report under {}",
        source.display()
    );
    for r in &reports {
        let counted = r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"].as_str().unwrap().contains("notes") && c["status"] == "pass");
        assert!(counted, "no row count of notes: {r:#}");
    }
    assert!(!log.contains(&s3.secret_key), "{log}");
}
