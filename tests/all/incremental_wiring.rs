//! Incremental physical backups as the operator reaches them: the source
//! keys (`incremental`, `max_chain`) checked by `config check`, `backup
//! --incremental` refused off a physical source before anything connects,
//! the API's `"incremental": true` refused where it means nothing, and the
//! way through each door on PostgreSQL 17: the CLI's chain (full, then
//! incremental on it, then full again at --max-chain), and the agent's
//! incremental schedule leaving the full schedule's slots to the full
//! backup.

use crate::api::{agent, issue, post, signed_policies, wait_job};
use crate::backup_restore::file_store;
use crate::harness::{self, firedrill, output_text, pg_bin, postgres_from};
use std::time::{Duration, Instant};

fn config_check(toml: &str) -> std::process::Output {
    let f = harness::tempdir("incremental-config").join("firedrill.toml");
    std::fs::write(&f, toml).unwrap();
    firedrill(&["config", "check", "--config", f.to_str().unwrap()], &[])
}

#[test]
fn config_check_takes_incremental_keys_on_physical_sources_only() {
    let store = "[store]\nurl = \"file:///tmp/incremental-wiring\"\n";
    let physical = "[[source]]\nname = \"main\"\nkind = \"physical\"\nurls = [\"postgres://repl:s3cret-pw@db/postgres\"]\n";
    let o = config_check(&format!(
        "{store}{physical}backup = \"cron: 0 3 * * 0\"\nincremental = \"cron: 0 3 * * *\"\nmax_chain = 6\n"
    ));
    assert!(o.status.success(), "{}", output_text(&o));

    let logical = "[[source]]\nname = \"app\"\nurls = [\"postgres://app:s3cret-pw@db/app\"]\nbackup = \"1d\"\n";
    for (extra, setting) in [
        ("incremental = \"1h\"\n", "source[0].incremental"),
        ("max_chain = 3\n", "source[0].max_chain"),
    ] {
        let o = config_check(&format!("{store}{logical}{extra}"));
        let out = output_text(&o);
        assert_eq!(o.status.code(), Some(1), "{out}");
        assert!(
            out.contains(&format!("invalid configuration: {setting}: incremental backups are physical (PostgreSQL 17+)")),
            "{out}"
        );
        assert!(!out.contains("s3cret-pw"), "{out}");
    }
    let o = config_check(&format!("{store}{physical}incremental = \"1d\"\n"));
    let out = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "source[0].backup: incremental needs backup, the schedule of the full backups"
        ),
        "{out}"
    );
}

#[test]
fn backup_incremental_is_refused_off_a_physical_source_before_connecting() {
    let (store, _) = file_store();
    let env = [("FIREDRILL_STORE", store.clone())];
    // Nothing listens on port 1: a connection attempt would say so instead.
    let url = "postgres://app@127.0.0.1:1/app";
    for extra in [&[][..], &["--all-databases"][..]] {
        let mut args = vec!["backup", "--incremental", "--database-url", url];
        args.extend_from_slice(extra);
        let start = Instant::now();
        let o = firedrill(&args, &env);
        let out = output_text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {out}");
        assert!(
            out.contains(
                "--incremental: incremental backups are physical (PostgreSQL 17+): add --physical"
            ),
            "{args:?}: {out}"
        );
        assert!(start.elapsed() < Duration::from_secs(10), "{out}");
    }
    let o = firedrill(
        &[
            "backup",
            "--incremental",
            "--redis-url",
            "redis://127.0.0.1:1",
        ],
        &env,
    );
    let out = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("a Redis backup is a whole snapshot, never incremental"),
        "{out}"
    );
    // --max-chain means something only with --incremental, and is at least 1.
    for (args, words) in [
        (
            vec![
                "backup",
                "--physical",
                "--max-chain",
                "3",
                "--database-url",
                url,
            ],
            "--incremental",
        ),
        (
            vec![
                "backup",
                "--physical",
                "--incremental",
                "--max-chain",
                "0",
                "--database-url",
                url,
            ],
            "--max-chain",
        ),
    ] {
        let o = firedrill(&args, &env);
        let out = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
        assert!(out.contains(words), "{args:?}: {out}");
    }
    // A configured logical source: the configuration says its kind.
    let config = harness::tempdir("incremental-cli").join("firedrill.toml");
    std::fs::write(
        &config,
        format!("[store]\nurl = \"{store}\"\n[[source]]\nname = \"app\"\nurls = [\"{url}\"]\nbackup = \"1d\"\n"),
    )
    .unwrap();
    let o = firedrill(
        &[
            "backup",
            "--incremental",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    let out = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("--incremental: source \"app\" is logical (pg_dump-compatible, per database); incremental backups are physical"),
        "{out}"
    );
}

#[test]
fn the_api_refuses_incremental_where_it_means_nothing() {
    let api = agent("incrapi", &signed_policies(""));
    let p = api.port;
    let (operator, _) = issue("operator", "ops");
    for (path, body, words) in [
        (
            "/v1/drills",
            "{\"incremental\": true}",
            "\"incremental\" is for backups",
        ),
        (
            "/v1/prune",
            "{\"source\": \"app\", \"incremental\": true}",
            "\"incremental\" is for backups",
        ),
        (
            "/v1/backups",
            "{\"source\": \"app\", \"incremental\": true}",
            "source \"app\" is logical: incremental backups are physical",
        ),
    ] {
        let r = post(p, path, &operator, body);
        assert_eq!(r.status, 400, "{path}: {r:?}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(words), "{path}: {message}");
    }
    // Refused before any job: none was started.
    let jobs = crate::api::get(p, "/v1/jobs", &operator).json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0, "{jobs}");
    // An unknown source is still the agent's 404, and false is no request at all.
    let r = post(
        p,
        "/v1/backups",
        &operator,
        "{\"source\": \"nope\", \"incremental\": true}",
    );
    assert_eq!(r.status, 404, "{r:?}");
    let r = post(
        p,
        "/v1/backups",
        &operator,
        "{\"source\": \"app\", \"incremental\": false}",
    );
    assert_eq!(r.status, 202, "{r:?}");
    let job = wait_job(p, &operator, r.json()["id"].as_str().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");
}

/// A PostgreSQL 17 server that keeps WAL summaries, which incremental
/// backups are taken over.
fn summarizing_postgres() -> harness::PostgresFrom {
    let pg = postgres_from(&pg_bin(17));
    let mut c = pg.client("postgres");
    // One statement each: ALTER SYSTEM refuses a transaction block.
    c.batch_execute("ALTER SYSTEM SET summarize_wal = on")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    pg
}

fn backup_json(args: &[&str], store: &str) -> serde_json::Value {
    let mut all = vec!["backup", "--json"];
    all.extend_from_slice(args);
    let o = firedrill(&all, &[("FIREDRILL_STORE", store.to_string())]);
    assert!(o.status.success(), "{all:?}: {}", output_text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn the_cli_chains_incremental_backups_up_to_max_chain() {
    let pg = summarizing_postgres();
    let url = pg.url("postgres");
    let (store, _) = file_store();
    let args = [
        "--physical",
        "--incremental",
        "--database-url",
        &url,
        "--source",
        "chain",
    ];
    // Nothing to build on yet: full, and why.
    let first = backup_json(&args, &store);
    assert!(first["parent"].is_null(), "{first}");
    assert!(first["full_because"].is_string(), "{first}");
    pg.client("postgres")
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
        .unwrap();
    // On the first; said in the human output too.
    let o = firedrill(
        &["backup", "--max-chain", "1"]
            .into_iter()
            .chain(args)
            .collect::<Vec<_>>(),
        &[("FIREDRILL_STORE", store.clone())],
    );
    let out = output_text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "; incremental on {}",
            first["id"].as_str().unwrap()
        )) && out.contains("physical backup "),
        "{out}"
    );
    // The chain holds one incremental: --max-chain 1 makes the next full.
    let mut with_max = vec!["--max-chain", "1"];
    with_max.extend_from_slice(&args);
    let third = backup_json(&with_max, &store);
    assert!(third["parent"].is_null(), "{third}");
    assert!(
        third["full_because"]
            .as_str()
            .unwrap()
            .contains("max_chain"),
        "{third}"
    );
    // Without --incremental: full, and no reason given (none was asked for).
    let plain = backup_json(
        &["--physical", "--database-url", &url, "--source", "chain"],
        &store,
    );
    assert!(
        plain["parent"].is_null() && plain["full_because"].is_null(),
        "{plain}"
    );
}

/// Full backups every 10 s and incrementals every 2 s: every fifth
/// incremental slot is the full backup's, left to it (both would take the
/// same lease, and the second would find the slot done). Between full
/// ones, the incrementals have seconds to spare before such a slot comes.
#[test]
fn the_agent_runs_incremental_backups_between_full_ones() {
    let pg = summarizing_postgres();
    let (store, _) = file_store();
    let port = harness::free_port();
    let config = harness::tempdir("incremental-agent").join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store}\"\n\
             [[source]]\nname = \"inc\"\nkind = \"physical\"\nurls = [\"{}\"]\nwal_stream = false\n\
             backup = \"10s\"\nincremental = \"2s\"\n",
            pg.url("postgres")
        ),
    )
    .unwrap();
    let child = harness::start_agent(&config, port, &[]);
    let o = harness::run_agent_for(child, 25);
    let log = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{log}");
    assert!(
        log.contains("incremental backup skipped: the full backup's schedule takes this slot"),
        "{log}"
    );
    assert!(
        !log.contains("another agent ran this slot"),
        "a full and an incremental backup met on one slot: {log}"
    );
    let done: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("physical backup done"))
        .collect();
    assert!(
        done.iter().any(|l| l.contains("parent=")),
        "no incremental backup: {log}"
    );
    assert!(
        done.iter()
            .any(|l| !l.contains("parent=") && !l.contains("full_because=")),
        "no full backup on the full schedule: {log}"
    );
}
