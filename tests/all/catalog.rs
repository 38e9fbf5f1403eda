//! The catalog: migrations up and down (and their dry runs), status, an
//! agent that refuses a catalog at another version, `sync` rebuilding
//! history from the store (pruned backups leave it), and an agent recording
//! its jobs, backups, drills and audit entries as they happen.

use crate::api::{now, signed_policies, token_with, KEY};
use crate::backup_restore::{backup_id, seeded};
use crate::harness::{self, firedrill, output_text, start_agent};

fn catalog(url: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["catalog"];
    all.extend_from_slice(args);
    firedrill(&all, &[("FIREDRILL_CATALOG_URL", url.to_string())])
}

fn tables(db: &str) -> Vec<String> {
    harness::postgres()
        .client(db)
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'firedrill' ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

fn count(db: &str, sql: &str) -> i64 {
    harness::postgres()
        .client(db)
        .query_one(sql, &[])
        .unwrap()
        .get(0)
}

#[test]
fn migrations_go_up_and_down_and_dry_runs_change_nothing() {
    let pg = harness::postgres();
    let db = pg.fresh_database("catalog_mig");
    let url = pg.url(&db);
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", output_text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let status: serde_json::Value =
        serde_json::from_str(&ok(catalog(&url, &["status", "--json"]))).unwrap();
    assert_eq!(status["version"], 0);
    assert_eq!(status["pending"].as_array().unwrap().len(), 3);

    let plan = ok(catalog(&url, &["migrate", "--dry-run"]));
    assert!(
        plan.contains("would apply 1 (backups)") && plan.contains("CREATE TABLE firedrill.backups"),
        "{plan}"
    );
    assert!(
        tables(&db).is_empty(),
        "a dry run created {:?}",
        tables(&db)
    );

    ok(catalog(&url, &["migrate", "--to", "2"]));
    assert_eq!(tables(&db), ["backups", "drills", "schema_migrations"]);
    ok(catalog(&url, &["migrate"]));
    assert_eq!(
        tables(&db),
        ["audit", "backups", "drills", "jobs", "schema_migrations"]
    );
    let status: serde_json::Value =
        serde_json::from_str(&ok(catalog(&url, &["status", "--json"]))).unwrap();
    assert_eq!(
        (
            status["version"].clone(),
            status["pending"].as_array().unwrap().len()
        ),
        (3.into(), 0)
    );
    assert!(ok(catalog(&url, &["migrate"])).contains("nothing to do"));

    let plan = ok(catalog(&url, &["rollback", "--to", "1", "--dry-run"]));
    assert!(
        plan.contains("would undo 3")
            && plan.contains("would undo 2")
            && plan.contains("DROP TABLE firedrill.drills"),
        "{plan}"
    );
    assert_eq!(tables(&db).len(), 5, "a dry run dropped tables");
    ok(catalog(&url, &["rollback", "--to", "1"]));
    assert_eq!(tables(&db), ["backups", "schema_migrations"]);

    // An agent refuses a catalog behind its version, and says what to run.
    let (src, store, _) = seeded("catalog_refuse");
    let config = harness::tempdir("catalog-refuse").join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{}\"\n[store]\nurl = \"{store}\"\n[catalog]\nurl = \"{url}\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"1h\"\n",
            harness::free_port(),
            pg.url(&src)
        ),
    )
    .unwrap();
    let o = firedrill(&["agent", "--config", config.to_str().unwrap()], &[]);
    let text = output_text(&o);
    assert!(!o.status.success());
    assert!(
        text.contains("schema version 1") && text.contains("firedrill catalog migrate"),
        "{text}"
    );

    ok(catalog(&url, &["migrate"]));
    assert_eq!(tables(&db).len(), 5);
    let o = catalog(&url, &["migrate", "--to", "9"]);
    assert!(
        !o.status.success() && output_text(&o).contains("no migration 9"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn sync_rebuilds_history_and_an_agent_records_its_jobs() {
    let pg = harness::postgres();
    let cat_db = pg.fresh_database("catalog_sync");
    let url = pg.url(&cat_db);
    assert!(catalog(&url, &["migrate"]).status.success());
    let (db, store, dir) = seeded("catalog_src");
    let args = [
        "--database-url",
        &pg.url(&db),
        "--store",
        &store,
        "--source",
        "app",
        "--no-globals",
    ];
    let first = backup_id(&args, &[]);
    let second = backup_id(&args, &[]);
    let o = firedrill(
        &[
            "drill",
            "--store",
            &store,
            &first,
            "--drill-url",
            &pg.url("postgres"),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));

    let sync = || {
        let o = catalog(&url, &["sync", "--json", "--store", &store]);
        assert!(o.status.success(), "{}", output_text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let r = sync();
    assert_eq!(
        (r["backups"].as_u64(), r["drills"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    assert_eq!(count(&cat_db, "SELECT count(*) FROM firedrill.backups"), 2);
    assert_eq!(
        count(
            &cat_db,
            &format!(
                "SELECT count(*) FROM firedrill.drills WHERE backup_id = '{first}' AND passed"
            )
        ),
        1
    );
    // Synced twice: the same rows, not twice as many.
    sync();
    assert_eq!(count(&cat_db, "SELECT count(*) FROM firedrill.backups"), 2);
    // The store is the truth: a backup gone from it leaves the catalog, drills and all.
    std::fs::remove_dir_all(dir.join("app").join(&first)).unwrap();
    let r = sync();
    assert_eq!(r["removed"].as_u64(), Some(1), "{r}");
    assert_eq!(count(&cat_db, "SELECT count(*) FROM firedrill.backups"), 1);
    assert_eq!(count(&cat_db, "SELECT count(*) FROM firedrill.drills"), 0);
    assert_eq!(
        count(
            &cat_db,
            &format!("SELECT count(*) FROM firedrill.backups WHERE id = '{second}'")
        ),
        1
    );

    // An agent writes its history as it goes.
    let policies = signed_policies("");
    let port = harness::free_port();
    let config = harness::tempdir("catalog-agent").join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\n[store]\nurl = \"{store}\"\n[drill]\ntarget = \"{}\"\n\
             [catalog]\nurl = \"{url}\"\n[[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"1s\"\ndrill = \"2s\"\n",
            policies.display(),
            pg.url("postgres"),
            pg.url(&db)
        ),
    )
    .unwrap();
    let child = start_agent(&config, port, &[("FIREDRILL_TOKEN_KEY", KEY)]);
    let token = token_with(KEY, "catalog-reader", "viewer", now() + 600);
    let r = harness::http(
        port,
        "GET",
        "/v1/backups",
        &[("authorization", &format!("Bearer {token}"))],
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let o = harness::run_agent_for(child, 6);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let jobs = count(
        &cat_db,
        "SELECT count(*) FROM firedrill.jobs WHERE kind = 'backup' AND state = 'succeeded'",
    );
    assert!(
        jobs >= 2,
        "{jobs} backup jobs recorded:\n{}",
        output_text(&o)
    );
    assert!(
        count(
            &cat_db,
            "SELECT count(*) FROM firedrill.jobs WHERE kind = 'drill'"
        ) >= 1
    );
    assert!(count(&cat_db, "SELECT count(*) FROM firedrill.backups") >= 3);
    assert!(
        count(
            &cat_db,
            "SELECT count(*) FROM firedrill.drills WHERE passed"
        ) >= 1
    );
    assert_eq!(
        count(
            &cat_db,
            "SELECT count(*) FROM firedrill.audit WHERE entry->>'path' = '/v1/backups'"
        ),
        1
    );
    // No token reaches the catalog.
    assert_eq!(
        count(
            &cat_db,
            &format!(
                "SELECT count(*) FROM firedrill.audit WHERE entry::text LIKE '%{}%'",
                &token[..40]
            )
        ),
        0
    );
}
