//! The catalog: migrations up and down (and their dry runs), status, an
//! agent that refuses a catalog at another version, `sync` rebuilding
//! history from the store (pruned backups leave it), and an agent recording
//! its jobs, backups, drills and audit entries as they happen. Migrations
//! are sqlx's (reversible files, versions in `firedrill._sqlx_migrations`):
//! down to 0 and up again, a catalog made before sqlx adopted with its
//! rows, and the connection's TLS with libpq's settings.

use crate::api::{now, signed_policies, token_with, KEY};
use crate::backup_restore::{backup_id, seeded};
use crate::harness::{self, firedrill, output_text, start_agent};
// The TLS tests' server: a test CA, a certificate for `localhost` only (so
// 127.0.0.1 is the wrong name), a client-certificate rule for `certuser`.
use crate::postgres_tls::server as tls_server;

fn catalog(url: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["catalog"];
    all.extend_from_slice(args);
    firedrill(&all, &[("FIREDRILL_CATALOG_URL", url.to_string())])
}

/// The catalog's own tables (sqlx's bookkeeping table apart: see `versions`).
fn tables(db: &str) -> Vec<String> {
    harness::postgres()
        .client(db)
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'firedrill' AND table_name <> '_sqlx_migrations' ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

/// The versions sqlx's migrator recorded, from its table in schema
/// `firedrill` (none in `public`).
fn versions(db: &str) -> Vec<i64> {
    let mut c = harness::postgres().client(db);
    let public: bool = c
        .query_one(
            "SELECT to_regclass('public._sqlx_migrations') IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!public, "sqlx's table went to schema public");
    c.query(
        "SELECT version FROM firedrill._sqlx_migrations WHERE success ORDER BY 1",
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
    assert_eq!(tables(&db), ["backups", "drills"]);
    assert_eq!(versions(&db), [1, 2]);
    ok(catalog(&url, &["migrate"]));
    assert_eq!(tables(&db), ["audit", "backups", "drills", "jobs"]);
    assert_eq!(versions(&db), [1, 2, 3]);
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
    assert_eq!(tables(&db).len(), 4, "a dry run dropped tables");
    assert_eq!(versions(&db), [1, 2, 3], "a dry run changed the versions");
    ok(catalog(&url, &["rollback", "--to", "1"]));
    assert_eq!(tables(&db), ["backups"]);
    assert_eq!(versions(&db), [1]);

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
    assert_eq!(tables(&db).len(), 4);
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
    // Until two backups and a drill are recorded (a loaded machine runs
    // them slower; the deadline only bounds a hung agent).
    let recorded = || {
        count(
            &cat_db,
            "SELECT count(*) FROM firedrill.jobs WHERE kind = 'backup' AND state = 'succeeded'",
        ) >= 2
            && count(
                &cat_db,
                "SELECT count(*) FROM firedrill.jobs WHERE kind = 'drill'",
            ) >= 1
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !recorded() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let o = harness::run_agent_for(child, 0);
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

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status(url: &str) -> serde_json::Value {
    serde_json::from_str(&ok(catalog(url, &["status", "--json"]))).unwrap()
}

#[test]
fn every_migration_reverses_down_to_zero_and_applies_again() {
    let pg = harness::postgres();
    let db = pg.fresh_database("catalog_rev");
    let url = pg.url(&db);
    ok(catalog(&url, &["migrate"]));
    assert_eq!(versions(&db), [1, 2, 3]);
    let undone = ok(catalog(&url, &["rollback", "--to", "0"]));
    assert!(
        undone.contains("undid 3") && undone.contains("undid 2") && undone.contains("undid 1"),
        "{undone}"
    );
    assert!(tables(&db).is_empty(), "left behind: {:?}", tables(&db));
    assert!(versions(&db).is_empty());
    assert_eq!(status(&url)["version"], 0);
    assert!(ok(catalog(&url, &["rollback", "--to", "0"])).contains("nothing to do"));

    ok(catalog(&url, &["migrate"]));
    assert_eq!(tables(&db), ["audit", "backups", "drills", "jobs"]);
    assert_eq!(versions(&db), [1, 2, 3]);
    // The tables work after the round trip (the index and defaults came back too).
    let mut c = pg.client(&db);
    c.batch_execute(
        "INSERT INTO firedrill.audit (entry) VALUES ('{}');
         INSERT INTO firedrill.drills VALUES ('r', 's', 'b', now(), now(), true, 1, 2, 0, NULL, '{}')",
    )
    .unwrap();
    let index: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'firedrill' AND indexname = 'drills_backup'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(index, 1);
}

/// The DDL the pre-sqlx firedrill ran (its hand-written runner's table and
/// its three migrations), as an existing catalog has it.
const OLD_CATALOG: &str = "
CREATE SCHEMA firedrill;
CREATE TABLE firedrill.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied timestamptz NOT NULL DEFAULT now());
CREATE TABLE firedrill.backups (
    source text NOT NULL, id text NOT NULL, kind text NOT NULL, created timestamptz NOT NULL,
    size_bytes bigint NOT NULL, tables integer NOT NULL, seconds double precision,
    encrypted boolean NOT NULL, signed boolean NOT NULL,
    synced timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (source, id));
INSERT INTO firedrill.schema_migrations (version, name, applied) VALUES (1, 'backups', '2026-01-02 03:04:05+00');
CREATE TABLE firedrill.drills (
    report text PRIMARY KEY, source text NOT NULL, backup_id text NOT NULL,
    started timestamptz NOT NULL, finished timestamptz NOT NULL, passed boolean NOT NULL,
    rto_seconds double precision NOT NULL, rpo_seconds bigint NOT NULL,
    failed_checks integer NOT NULL, error text, body jsonb NOT NULL);
CREATE INDEX drills_backup ON firedrill.drills (source, backup_id);
INSERT INTO firedrill.schema_migrations (version, name) VALUES (2, 'drills');
CREATE TABLE firedrill.jobs (
    id text PRIMARY KEY, kind text NOT NULL, source text NOT NULL, trigger text NOT NULL,
    state text NOT NULL, created timestamptz NOT NULL, started timestamptz,
    finished timestamptz, backup_id text, passed boolean, error text, node text NOT NULL);
CREATE TABLE firedrill.audit (
    seq bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), entry jsonb NOT NULL);
INSERT INTO firedrill.schema_migrations (version, name) VALUES (3, 'jobs and audit');
INSERT INTO firedrill.backups VALUES ('app', 'b1', 'full', now(), 10, 2, 1.5, false, false, now());
INSERT INTO firedrill.drills VALUES ('app/b1/drills/d.json', 'app', 'b1', now(), now(), true, 3, 4, 0, NULL, '{\"passed\": true}');
INSERT INTO firedrill.jobs VALUES ('j1', 'backup', 'app', 'schedule', 'succeeded', now(), now(), now(), 'b1', NULL, NULL, 'node-a');
INSERT INTO firedrill.audit (entry) VALUES ('{\"path\": \"/v1/backups\"}'), ('{\"path\": \"/v1/drills\"}');
";

#[test]
fn a_catalog_made_before_sqlx_is_adopted_at_version_3_with_its_rows() {
    let pg = harness::postgres();
    let db = pg.fresh_database("catalog_old");
    let url = pg.url(&db);
    pg.client(&db).batch_execute(OLD_CATALOG).unwrap();
    let rows = |db: &str| {
        ["backups", "drills", "jobs", "audit"]
            .map(|t| count(db, &format!("SELECT count(*) FROM firedrill.{t}")))
    };
    assert_eq!(rows(&db), [1, 1, 1, 2]);

    // Read as it is (an agent keeps working on it), changed by nothing but `migrate`.
    let s = status(&url);
    assert_eq!(
        (s["version"].clone(), s["pending"].as_array().unwrap().len()),
        (3.into(), 0),
        "{s}"
    );
    assert!(ok(catalog(&url, &["migrate", "--dry-run"])).contains("nothing to do"));
    assert_eq!(
        count(&db, "SELECT count(*) FROM firedrill.schema_migrations"),
        3
    );

    ok(catalog(&url, &["migrate"]));
    assert_eq!(rows(&db), [1, 1, 1, 2], "adoption lost rows");
    assert_eq!(versions(&db), [1, 2, 3]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'firedrill' AND tablename = 'schema_migrations'"),
        0,
        "the old version table stays"
    );
    // sqlx's checksums are those of today's files (SHA-384 of the up SQL):
    // anything else and sqlx would refuse the catalog as edited.
    let ups = [
        include_str!("../../host/migrations/0001_backups.up.sql"),
        include_str!("../../host/migrations/0002_drills.up.sql"),
        include_str!("../../host/migrations/0003_jobs_and_audit.up.sql"),
    ];
    let mut c = pg.client(&db);
    for (i, sql) in ups.iter().enumerate() {
        let same: bool = c
            .query_one(
                "SELECT checksum = sha384(convert_to($2, 'UTF8')) FROM firedrill._sqlx_migrations WHERE version = $1",
                &[&(i as i64 + 1), sql],
            )
            .unwrap()
            .get(0);
        assert!(same, "checksum of migration {}", i + 1);
    }
    // When the old runner applied them is kept.
    let applied: String = c
        .query_one(
            "SELECT to_char(installed_on AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM firedrill._sqlx_migrations WHERE version = 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(applied, "2026-01-02 03:04:05");
    let s = status(&url);
    assert_eq!(s["version"], 3);
    assert_eq!(s["applied"][2][1], "jobs and audit", "{s}");

    // sqlx's migrator takes it from here: a second run checks every checksum,
    // and the adopted migrations go down and up like any other.
    assert!(ok(catalog(&url, &["migrate"])).contains("nothing to do"));
    ok(catalog(&url, &["rollback", "--to", "2"]));
    assert_eq!(tables(&db), ["backups", "drills"]);
    assert_eq!(count(&db, "SELECT count(*) FROM firedrill.backups"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM firedrill.drills"), 1);
    ok(catalog(&url, &["migrate"]));
    assert_eq!(versions(&db), [1, 2, 3]);
}

#[test]
fn an_unknown_sslmode_is_refused_naming_it() {
    let pg = harness::postgres();
    let url = pg.url("postgres");
    let sep = if url.contains('?') { '&' } else { '?' };
    let o = catalog(&format!("{url}{sep}sslmode=verify_full"), &["status"]);
    let text = output_text(&o);
    assert!(
        !o.status.success() && text.contains("sslmode=\"verify_full\""),
        "{text}"
    );
    let o = firedrill(
        &["catalog", "status"],
        &[
            ("FIREDRILL_CATALOG_URL", url.clone()),
            ("PGSSLMODE", "required".to_string()),
        ],
    );
    let text = output_text(&o);
    assert!(!o.status.success() && text.contains("PGSSLMODE"), "{text}");
}

#[test]
fn the_catalog_connects_over_tls_with_libpq_settings() {
    let s = tls_server();
    let ca = s.file("ca.crt");
    let other = s.file("other-ca.crt");
    let refused = |url: &str, env: &[(&str, String)]| {
        let mut all = vec![("FIREDRILL_CATALOG_URL", url.to_string())];
        all.extend(env.iter().cloned());
        let o = firedrill(&["catalog", "status"], &all);
        let text = output_text(&o);
        assert!(!o.status.success(), "{url} {env:?} connected:\n{text}");
        text
    };

    // A client certificate logs in as its subject (before the schema
    // exists: certuser may not read it).
    let cert = s.url(
        "localhost",
        "certuser",
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
            s.file("client.crt"),
            s.file("client.key")
        ),
    );
    ok(catalog(&cert, &["status"]));
    refused(
        &s.url(
            "localhost",
            "certuser",
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        &[],
    );
    // verify-full against the right name: migrations run over TLS.
    let good = s.url(
        "localhost",
        "postgres",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    ok(catalog(&good, &["migrate"]));
    assert_eq!(status(&good)["version"], 3);
    // The wrong host name, the wrong CA: refused.
    let text = refused(
        &s.url(
            "127.0.0.1",
            "postgres",
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        &[],
    );
    assert!(text.contains("not valid for name"), "{text}");
    let text = refused(
        &s.url(
            "localhost",
            "postgres",
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={other}"),
        ),
        &[],
    );
    assert!(text.contains("UnknownIssuer"), "{text}");
    // libpq checks the chain under require when it has a root certificate
    // (sqlx alone would not); verify-ca checks it too.
    refused(
        &s.url(
            "localhost",
            "postgres",
            "postgres",
            &format!("sslmode=require&sslrootcert={other}"),
        ),
        &[],
    );
    refused(
        &s.url(
            "localhost",
            "postgres",
            "postgres",
            &format!("sslmode=verify-ca&sslrootcert={other}"),
        ),
        &[],
    );
    ok(catalog(
        &s.url(
            "localhost",
            "postgres",
            "postgres",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        &["status"],
    ));
    // Known and documented (docs/ARCHITECTURE.md, catalog): sqlx 0.8's
    // verify-ca still checks the name, where libpq would connect. Stricter,
    // not weaker; when sqlx changes this, this line says so.
    let text = refused(
        &s.url(
            "127.0.0.1",
            "postgres",
            "postgres",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        &[],
    );
    assert!(text.contains("not valid for name"), "{text}");
    // Encrypted without verification; allow tries TLS after the server
    // refuses plaintext (sqlx alone would not); prefer takes TLS.
    for mode in ["require", "prefer", "allow"] {
        ok(catalog(
            &s.url(
                "127.0.0.1",
                "postgres",
                "postgres",
                &format!("sslmode={mode}"),
            ),
            &["status"],
        ));
    }
    // disable: no TLS, and the server takes no plaintext.
    let text = refused(
        &s.url("localhost", "postgres", "postgres", "sslmode=disable"),
        &[],
    );
    assert!(text.contains("no encryption"), "{text}");
    // The environment, as libpq: PGSSLMODE and PGSSLROOTCERT.
    let env = |mode: &str| {
        vec![
            ("PGSSLMODE", mode.to_string()),
            ("PGSSLROOTCERT", ca.clone()),
        ]
    };
    let bare = |host: &str| format!("postgres://postgres@{host}:{}/postgres", s.port);
    let mut with_env = vec![("FIREDRILL_CATALOG_URL", bare("localhost"))];
    with_env.extend(env("verify-full"));
    ok(firedrill(&["catalog", "status"], &with_env));
    let text = refused(&bare("127.0.0.1"), &env("verify-full"));
    assert!(text.contains("not valid for name"), "{text}");
    // A password never shows, even when the connection fails.
    let text = refused(
        &format!(
            "postgres://postgres:s3cret-catalog-pw@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
            s.port
        ),
        &[],
    );
    assert!(!text.contains("s3cret-catalog-pw"), "{text}");
}
