//! `firedrill status`: each source's verdict, newest backup and newest
//! drill, read from the store and through an agent's API (as a viewer),
//! with exit code 2 once a source's newest drill has failed.

use crate::api::{agent, issue, signed_policies};
use crate::backup_restore::backup_id;
use crate::harness::{self, firedrill, output_text};

fn status(args: &[&str], env: &[(&str, String)]) -> (std::process::Output, serde_json::Value) {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    let o = firedrill(&all, env);
    let json = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, json)
}

#[test]
fn each_sources_verdict_from_the_store_and_through_the_api() {
    let pg = harness::postgres();
    let api = agent("status", &signed_policies(""));
    let store = api.store.clone();
    let dir = std::path::PathBuf::from(store.strip_prefix("file://").unwrap());
    let backup = || {
        backup_id(
            &[
                "--database-url",
                &pg.url(&api.db),
                "--store",
                &store,
                "--source",
                "app",
                "--chunk-size",
                "64KiB",
                "--no-globals",
            ],
            &[],
        )
    };
    let drill = |id: &str| {
        firedrill(
            &[
                "drill",
                "--store",
                &store,
                id,
                "--drill-url",
                &pg.url("postgres"),
            ],
            &[],
        )
    };

    let first = backup();
    let o = drill(&first);
    assert!(o.status.success(), "{}", output_text(&o));
    let (o, s) = status(&["--store", &store, "--json"], &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(s[0]["source"], "app", "{s:#}");
    assert_eq!(s[0]["verdict"], "proven", "{s:#}");
    assert_eq!(s[0]["backups"], 1);
    assert_eq!(s[0]["last_backup"]["id"], first.as_str());
    assert_eq!(s[0]["last_drill"]["passed"], true);
    assert!(
        s[0]["last_drill"]["rto_seconds"].as_f64().unwrap() > 0.0,
        "{s:#}"
    );
    assert!(s[0]["rpo_seconds"].as_i64().unwrap() >= 0);
    // For people: a table, and no colour codes when stdout is no terminal.
    let (o, _) = status(&["--store", &store], &[]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("app") && text.contains("proven"), "{text}");
    assert!(!text.contains('\x1b'), "{text:?}");

    // The fleet through the API, as a viewer: the same answer.
    let url = format!("http://127.0.0.1:{}", api.port);
    let (viewer, _) = issue("viewer", "status-reader");
    let (o, through) = status(
        &["--api", &url, "--json"],
        &[("FIREDRILL_API_TOKEN", viewer.clone())],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    // The RPO is the age of the newest backup, read at each call's own
    // moment: the same within the seconds between the two calls.
    let (mut through, mut local) = (through, s.clone());
    let ages: Vec<i64> = [&mut through, &mut local]
        .into_iter()
        .map(|v| {
            v[0].as_object_mut()
                .unwrap()
                .remove("rpo_seconds")
                .unwrap()
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!((ages[0] - ages[1]).abs() <= 30, "{ages:?}");
    assert_eq!(through, local);
    let (o, _) = status(&["--api", &url, "--json"], &[]);
    assert!(!o.status.success());
    let text = output_text(&o);
    assert!(
        text.contains("401") && text.contains("--token-file"),
        "{text}"
    );
    assert!(!text.contains(&viewer));

    // A newer backup whose drill fails: the source is no longer proven,
    // and the exit code says so.
    let second = backup();
    let bdir = dir.join("app").join(&second);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bdir.join("manifest.json")).unwrap()).unwrap();
    let chunk = m["databases"][0]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["chunks"].as_array().unwrap().clone())
        .find(|c| c["size"].as_u64().unwrap() > 200)
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = std::fs::read(bdir.join(&chunk)).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(bdir.join(&chunk), &bytes).unwrap();
    let o = drill(&second);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let (o, s) = status(&["--store", &store, "--json"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert_eq!(s[0]["verdict"], "drill_failed", "{s:#}");
    assert_eq!(s[0]["backups"], 2);
    assert_eq!(s[0]["last_drill"]["backup"], second.as_str());
    assert_eq!(
        (
            s[0]["drills_passed"].as_u64(),
            s[0]["drills_failed"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // An agent started on this store (a restart, a replacement) says the
    // same from its first scrape: the failed drill is not forgotten, the
    // last backup's time is the store's, before any job of its own.
    let port = harness::free_port();
    let config = harness::tempdir("status-restart").join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store}\"\n[[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"cron: 0 3 1 1 *\"\n",
            pg.url(&api.db)
        ),
    )
    .unwrap();
    let child = harness::start_agent(&config, port, &[]);
    let metrics = harness::http(port, "GET", "/metrics", &[], "").body;
    let _ = harness::run_agent_for(child, 0);
    let created = s[0]["last_backup"]["created"].as_i64().unwrap();
    for line in [
        "firedrill_drill_passed{source=\"app\"} 0".to_string(),
        format!("firedrill_backup_last_success_seconds{{source=\"app\"}} {created}"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
}
