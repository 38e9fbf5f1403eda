//! Backups and restores against the real servers: round trips through a
//! file store and through S3, consistency under concurrent writes, refusals,
//! and corruption named by its object.

use crate::harness::{self, firedrill, output_text};
use std::path::{Path, PathBuf};

/// A small but realistic schema: keys, foreign keys, unique and partial
/// indexes, a view, sequences, generated columns, arrays, json, bytea, odd
/// names, an empty table, and a table big enough to be cut into chunks.
pub fn seed(db: &str) {
    harness::postgres()
        .client(db)
        .batch_execute(
            r#"
            CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, created timestamptz NOT NULL DEFAULT '2026-01-01', tags text[]);
            CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id), amount numeric(12,2) NOT NULL CHECK (amount >= 0),
                                 meta jsonb, total_cents bigint GENERATED ALWAYS AS ((amount * 100)::bigint) STORED);
            CREATE INDEX orders_user ON orders (user_id) WHERE amount > 0;
            CREATE VIEW big_spenders AS SELECT user_id, sum(amount) AS spent FROM orders GROUP BY user_id HAVING sum(amount) > 100;
            CREATE SCHEMA "Odd Schema";
            CREATE TABLE "Odd Schema"."Mixed ""Case" (v numeric, b bytea, t text);
            CREATE TABLE empty_table (id int PRIMARY KEY);
            CREATE TABLE events (id bigint PRIMARY KEY, payload text NOT NULL);
            INSERT INTO users (email, tags) SELECT 'u' || g || '@example.com', ARRAY['a', 'b' || g] FROM generate_series(1, 300) g;
            INSERT INTO orders (user_id, amount, meta) SELECT 1 + g % 300, (g % 997) / 3.0, jsonb_build_object('n', g) FROM generate_series(1, 2000) g;
            INSERT INTO "Odd Schema"."Mixed ""Case" VALUES (1.5, '\x00ff', E'tab\there\nnewline and \\ backslash'), (NULL, NULL, NULL);
            INSERT INTO events SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 20000) g;
            SELECT setval('users_id_seq', 5000);
            "#,
        )
        .unwrap();
}

/// Everything that must survive a round trip, as comparable text.
pub fn fingerprint(db: &str) -> Vec<String> {
    let mut c = harness::postgres().client(db);
    let tables: Vec<(String, String)> = c
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut out = Vec::new();
    for (s, t) in tables {
        let q = format!(
            "SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM \"{}\".\"{}\" x",
            s.replace('"', "\"\""),
            t.replace('"', "\"\"")
        );
        let r = c.query_one(&q, &[]).unwrap();
        out.push(format!(
            "table {s}.{t}: {} rows, {}",
            r.get::<_, i64>(0),
            r.get::<_, String>(1)
        ));
    }
    for r in c
        .query(
            "SELECT schemaname || '.' || indexname || ': ' || indexdef FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog') ORDER BY 1",
            &[],
        )
        .unwrap()
    {
        out.push(format!("index {}", r.get::<_, String>(0)));
    }
    for r in c
        .query(
            "SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace <> 'pg_catalog'::regnamespace ORDER BY 1",
            &[],
        )
        .unwrap()
    {
        out.push(format!("constraint {}", r.get::<_, String>(0)));
    }
    let seq: i64 = c
        .query_one("SELECT last_value FROM users_id_seq", &[])
        .unwrap()
        .get(0);
    out.push(format!("sequence users_id_seq {seq}"));
    let view: String = c
        .query_one("SELECT pg_get_viewdef('big_spenders')", &[])
        .unwrap()
        .get(0);
    out.push(format!("view {view}"));
    out
}

/// A new database with the [`seed`] schema and an empty file store:
/// (database, store URL, store directory).
pub fn seeded(prefix: &str) -> (String, String, PathBuf) {
    let db = harness::postgres().fresh_database(prefix);
    seed(&db);
    let (store, dir) = file_store();
    (db, store, dir)
}

/// Runs `firedrill backup --json` and returns the new backup's id.
pub fn backup_id(args: &[&str], env: &[(&str, String)]) -> String {
    backup(args, env)["id"].as_str().unwrap().to_string()
}

pub fn file_store() -> (String, PathBuf) {
    let dir = harness::tempdir("store");
    (format!("file://{}", dir.display()), dir)
}

/// Runs `firedrill backup --json` and returns its JSON.
pub fn backup(args: &[&str], env: &[(&str, String)]) -> serde_json::Value {
    let mut all = vec!["backup", "--json"];
    all.extend_from_slice(args);
    let o = firedrill(&all, env);
    assert!(o.status.success(), "backup failed: {}", output_text(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", output_text(&o)))
}

pub fn restore(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut all = vec!["restore"];
    all.extend_from_slice(args);
    firedrill(&all, env)
}

fn manifest(store_dir: &Path, source: &str, id: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(store_dir.join(source).join(id).join("manifest.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn a_file_store_round_trip_restores_everything() {
    let pg = harness::postgres();
    let (db, store, dir) = seeded("src");
    let b = backup(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "app",
            "-j",
            "3",
            "--chunk-size",
            "256KiB",
        ],
        &[],
    );
    let id = b["id"].as_str().unwrap();
    assert_eq!(b["tables"], 5, "{b}");
    assert!(
        b["bytes"].as_u64().unwrap() > 0 && b["seconds"].as_f64().is_some(),
        "{b}"
    );
    let m = manifest(&dir, "app", id);
    let events = m["databases"][0]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "events")
        .unwrap()
        .clone();
    assert_eq!(events["rows"], 20000);
    assert!(
        events["chunks"].as_array().unwrap().len() > 3,
        "a big table is chunked: {events}"
    );
    // ... and read by several connections at once, in page ranges.
    let ranges: std::collections::BTreeSet<&str> = events["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["path"].as_str()?.split('/').last()?.get(..5))
        .collect();
    assert_eq!(
        ranges.into_iter().collect::<Vec<_>>(),
        ["r000-", "r001-", "r002-"],
        "{events}"
    );
    assert!(
        m["server_version"]
            .as_str()
            .unwrap()
            .starts_with(|c: char| c.is_ascii_digit()),
        "{}",
        m["server_version"]
    );
    assert_eq!(m["format"], "firedrill-archive/1");
    let target = format!("{db}_restored");
    let o = restore(
        &[
            "--store",
            &store,
            id,
            "--target-url",
            &pg.url(&target),
            "-j",
            "3",
            "--json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(fingerprint(&db), fingerprint(&target));
}

#[test]
fn an_s3_round_trip_through_the_template_environment() {
    let (pg, s3) = (harness::postgres(), harness::s3());
    let db = pg.fresh_database("s3src");
    seed(&db);
    let bucket = s3.bucket("backups");
    let mut env = s3.env();
    env.push(("S3_BUCKET", bucket.clone()));
    env.push(("BACKUP_PREFIX", "nightly/pg".into()));
    env.push(("DATABASE_URL", pg.url(&db)));
    let b = backup(&["--source", "s3app", "--chunk-size", "1MiB"], &env);
    let id = b["id"].as_str().unwrap().to_string();
    assert!(s3
        .root
        .join(&bucket)
        .join("nightly/pg/s3app")
        .join(&id)
        .join("manifest.json")
        .exists());
    let o = firedrill(&["list", "--json"], &env);
    assert!(o.status.success(), "{}", output_text(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["complete"], true);
    let target = format!("{db}_restored");
    let o = restore(&["--latest", "--target-url", &pg.url(&target)], &env);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(fingerprint(&db), fingerprint(&target));
    let everything = output_text(&o) + &output_text(&firedrill(&["list"], &env));
    assert!(!everything.contains(&s3.secret_key), "the S3 secret leaked");
}

#[test]
fn a_backup_is_one_snapshot_even_under_concurrent_writes() {
    let pg = harness::postgres();
    let db = pg.fresh_database("busy");
    pg.client(&db)
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE ledger (id bigserial PRIMARY KEY, account int NOT NULL, delta bigint NOT NULL);
             INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;
             INSERT INTO ledger (account, delta) SELECT g, 1000 FROM generate_series(1, 100) g;",
        )
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, url) = (stop.clone(), pg.url(&db));
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (a, b) = ((n * 7 % 100 + 1) as i32, (n * 13 % 100 + 1) as i32);
                // Money moves between two tables' rows in one transaction.
                let mut tx = c.transaction().unwrap();
                tx.execute(
                    "UPDATE accounts SET balance = balance - 5 WHERE id = $1",
                    &[&a],
                )
                .unwrap();
                tx.execute(
                    "UPDATE accounts SET balance = balance + 5 WHERE id = $1",
                    &[&b],
                )
                .unwrap();
                tx.execute(
                    "INSERT INTO ledger (account, delta) VALUES ($1, -5), ($2, 5)",
                    &[&a, &b],
                )
                .unwrap();
                tx.commit().unwrap();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (store, _) = file_store();
    let b = backup(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "-j",
            "2",
            "--chunk-size",
            "4KiB",
        ],
        &[],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let moved = writer.join().unwrap();
    assert!(moved > 0);
    let target = format!("{db}_restored");
    let o = restore(
        &[
            "--store",
            &store,
            b["id"].as_str().unwrap(),
            "--target-url",
            &pg.url(&target),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let mut c = pg.client(&target);
    let total: i64 = c
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .unwrap()
        .get(0);
    assert_eq!(total, 100_000, "every transfer is whole");
    // Both tables were read at the same instant: the ledger explains every balance.
    let mismatched: i64 = c
        .query_one("SELECT count(*) FROM accounts a WHERE balance <> (SELECT sum(delta) FROM ledger l WHERE l.account = a.id)", &[])
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0);
}

#[test]
fn several_databases_in_one_run() {
    let pg = harness::postgres();
    let (a, b) = (pg.fresh_database("multi_a"), pg.fresh_database("multi_b"));
    seed(&a);
    pg.client(&b)
        .batch_execute("CREATE TABLE only_b (x int); INSERT INTO only_b VALUES (1), (2)")
        .unwrap();
    let (store, _) = file_store();
    let out = backup(
        &[
            "--database-url",
            &format!("{},{}", pg.url(&a), pg.url(&b)),
            "--store",
            &store,
            "--source",
            "multi",
        ],
        &[],
    );
    assert_eq!(out["databases"], serde_json::json!([a, b]));
    let id = out["id"].as_str().unwrap();
    let target = format!("{b}_restored");
    let o = restore(
        &["--store", &store, id, "--target-url", &pg.url(&target)],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        output_text(&o).contains("--database"),
        "{}",
        output_text(&o)
    );
    let o = restore(
        &[
            "--store",
            &store,
            id,
            "--database",
            &b,
            "--target-url",
            &pg.url(&target),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let n: i64 = pg
        .client(&target)
        .query_one("SELECT count(*) FROM only_b", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[test]
fn a_non_empty_target_is_refused_unless_forced() {
    let pg = harness::postgres();
    let (db, store, _) = seeded("force");
    let id = backup_id(&["--database-url", &pg.url(&db), "--store", &store], &[]);
    let target = pg.fresh_database("occupied");
    pg.client(&target)
        .batch_execute("CREATE TABLE precious (x int); INSERT INTO precious VALUES (42)")
        .unwrap();
    let o = restore(
        &["--store", &store, &id, "--target-url", &pg.url(&target)],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        output_text(&o).contains("is not empty") && output_text(&o).contains("--force"),
        "{}",
        output_text(&o)
    );
    let kept: i32 = pg
        .client(&target)
        .query_one("SELECT x FROM precious", &[])
        .unwrap()
        .get(0);
    assert_eq!(kept, 42, "refused means untouched");
    let o = restore(
        &[
            "--store",
            &store,
            &id,
            "--target-url",
            &pg.url(&target),
            "--force",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(fingerprint(&db), fingerprint(&target));
}

#[test]
fn corruption_is_found_and_named_and_nothing_is_left_behind() {
    let pg = harness::postgres();
    let (db, store, dir) = seeded("corrupt");
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "c",
            "--chunk-size",
            "64KiB",
        ],
        &[],
    );
    let m = manifest(&dir, "c", &id);
    let events = m["databases"][0]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "events")
        .unwrap()
        .clone();
    let chunk = events["chunks"][1]["path"].as_str().unwrap().to_string();
    let pre = m["databases"][0]["pre_data"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let path = |rel: &str| dir.join("c").join(&id).join(rel);
    let original = std::fs::read(path(&chunk)).unwrap();
    let mut n = 0;
    let mut check = |what: &str, needle: &str| {
        n += 1;
        let target = format!("{db}_bad{n}");
        let o = restore(
            &["--store", &store, &id, "--target-url", &pg.url(&target)],
            &[],
        );
        assert_eq!(o.status.code(), Some(1), "{what}: {}", output_text(&o));
        assert!(
            output_text(&o).contains(needle),
            "{what}: expected {needle:?} in {}",
            output_text(&o)
        );
        let left: i64 = pg
            .client("postgres")
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&target],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{what}: the half-restored database was dropped");
    };
    // A flipped byte.
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x40;
    std::fs::write(path(&chunk), &flipped).unwrap();
    check("flipped byte", &format!("{chunk} is corrupt"));
    // A truncated object.
    std::fs::write(path(&chunk), &original[..original.len() - 10]).unwrap();
    check("truncated", &format!("{chunk} is corrupt"));
    // A missing object.
    std::fs::remove_file(path(&chunk)).unwrap();
    check("missing", &format!("{chunk} is missing"));
    std::fs::write(path(&chunk), &original).unwrap();
    // A damaged schema script.
    let pre_bytes = std::fs::read(path(&pre)).unwrap();
    let mut bad = pre_bytes.clone();
    bad[5] ^= 1;
    std::fs::write(path(&pre), &bad).unwrap();
    check("schema", &format!("{pre} is corrupt"));
    std::fs::write(path(&pre), &pre_bytes).unwrap();
    // A manifest that does not match what is stored.
    let mpath = path("manifest.json");
    let good = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(
        &mpath,
        good.replacen(
            &format!("\"id\": \"{id}\""),
            "\"id\": \"20000101T000000Z-aaaaaa\"",
            1,
        ),
    )
    .unwrap();
    check("manifest", "manifest.json: not a firedrill manifest");
    std::fs::write(&mpath, &good).unwrap();
    // Repaired, it restores.
    let o = restore(
        &[
            "--store",
            &store,
            &id,
            "--target-url",
            &pg.url(&format!("{db}_fine")),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn a_backup_without_its_manifest_is_incomplete_and_never_restored() {
    let pg = harness::postgres();
    let (db, store, dir) = seeded("partial");
    let first = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "p",
        ],
        &[],
    );
    pg.client(&db)
        .batch_execute("INSERT INTO empty_table VALUES (1)")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "p",
        ],
        &[],
    );
    // As a crash before the commit would leave it.
    std::fs::remove_file(dir.join("p").join(&second).join("manifest.json")).unwrap();
    let o = firedrill(&["list", "--store", &store, "--json"], &[]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let state: Vec<(String, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().into(),
                l["complete"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(state, vec![(first.clone(), true), (second.clone(), false)]);
    let o = restore(
        &[
            "--store",
            &store,
            &second,
            "--target-url",
            &pg.url(&format!("{db}_r1")),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let o = restore(
        &[
            "--store",
            &store,
            "--latest",
            "--target-url",
            &pg.url(&format!("{db}_r2")),
            "--json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["id"],
        first.as_str(),
        "--latest means the latest complete backup"
    );
}

#[test]
fn the_dump_planner_decides_what_is_dumped() {
    let pg = harness::postgres();
    let db = pg.fresh_database("planned");
    seed(&db);
    let policies = harness::policy_dir(
        &["planner-all"],
        &[(
            "planner.toml",
            "world = \"dump-planner\"\nwasm = \"planner_all.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\nexclude-schemas = \"Odd Schema\"\nschema-only = \"public.events\"",
        )],
    );
    let (store, dir) = file_store();
    let b = backup(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "pl",
            "--policies",
            policies.to_str().unwrap(),
        ],
        &[],
    );
    let m = manifest(&dir, "pl", b["id"].as_str().unwrap());
    assert!(
        m["plugins"][0].as_str().unwrap().starts_with("planner@"),
        "{}",
        m["plugins"]
    );
    let target = format!("{db}_restored");
    let o = restore(
        &[
            "--store",
            &store,
            b["id"].as_str().unwrap(),
            "--target-url",
            &pg.url(&target),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let mut c = pg.client(&target);
    let events: i64 = c
        .query_one("SELECT count(*) FROM events", &[])
        .unwrap()
        .get(0);
    assert_eq!(events, 0, "schema-only: the table exists, empty");
    let odd: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'Odd Schema'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(odd, 0, "the excluded schema is not restored");
    let users: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .unwrap()
        .get(0);
    assert_eq!(users, 300);
}

#[test]
fn passwords_stay_out_of_output_and_errors() {
    let pg = harness::postgres();
    let db = pg.fresh_database("secret");
    seed(&db);
    // Trust authentication ignores the password, so the URL still works.
    let url = format!(
        "postgres://postgres:hunter2-very-secret@127.0.0.1:{}/{db}",
        pg.port
    );
    let (store, dir) = file_store();
    let o = firedrill(
        &[
            "backup",
            "--database-url",
            &url,
            "--store",
            &store,
            "--json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let dead = format!(
        "postgres://postgres:hunter2-very-secret@127.0.0.1:{}/{db}",
        harness::free_port()
    );
    let failed = firedrill(&["backup", "--database-url", &dead, "--store", &store], &[]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        output_text(&failed).contains("***"),
        "{}",
        output_text(&failed)
    );
    for out in [output_text(&o), output_text(&failed)] {
        assert!(!out.contains("hunter2"), "{out}");
    }
    for (path, _) in walk(&dir) {
        let bytes = std::fs::read(&path).unwrap();
        let text = if path.extension().is_some_and(|x| x == "zst") {
            zstd::decode_all(&bytes[..]).unwrap()
        } else {
            bytes
        };
        assert!(
            !String::from_utf8_lossy(&text).contains("hunter2"),
            "{} holds the password",
            path.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push((p.clone(), e.metadata().unwrap().len()));
        }
    }
    out
}

#[test]
fn roles_are_kept_without_passwords_unless_asked() {
    let pg = harness::postgres();
    let db = pg.fresh_database("globals");
    let role = format!("fd_role_{db}");
    pg.client("postgres")
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'rolepw-secret'"
        ))
        .unwrap();
    let (store, dir) = file_store();
    let read_globals = |id: &str| {
        let bytes = std::fs::read(dir.join("g").join(id).join("globals.sql.zst")).unwrap();
        String::from_utf8(zstd::decode_all(&bytes[..]).unwrap()).unwrap()
    };
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "g",
        ],
        &[],
    );
    let globals = read_globals(&id);
    assert!(
        globals.contains(&format!("CREATE ROLE {role}")),
        "{globals}"
    );
    assert!(
        !globals.contains("SCRAM-SHA-256") && !globals.contains("md5"),
        "no password hashes by default"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "g",
            "--role-passwords",
        ],
        &[],
    );
    assert!(
        read_globals(&id).contains("SCRAM-SHA-256"),
        "asked for, the hashes are kept"
    );
    pg.client("postgres")
        .batch_execute(&format!("DROP ROLE {role}"))
        .unwrap();
}

#[test]
fn psql_meta_commands_in_the_schema_are_handled() {
    // Recent pg_dump minor releases wrap their scripts in \restrict/\unrestrict;
    // restoring through psql must accept them (the round trips above prove it
    // whenever the installed pg_dump writes them; this shows which case ran).
    let pg = harness::postgres();
    let (db, store, dir) = seeded("meta");
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "m",
        ],
        &[],
    );
    let m = manifest(&dir, "m", &id);
    let pre = std::fs::read(
        dir.join("m")
            .join(&id)
            .join(m["databases"][0]["pre_data"]["path"].as_str().unwrap()),
    )
    .unwrap();
    let script = String::from_utf8(zstd::decode_all(&pre[..]).unwrap()).unwrap();
    eprintln!(
        "pre-data uses \\restrict: {}",
        script.contains("\\restrict")
    );
    let o = restore(
        &[
            "--store",
            &store,
            &id,
            "--target-url",
            &pg.url(&format!("{db}_r")),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn memory_stays_bounded_whatever_the_table_size() {
    let pg = harness::postgres();
    let db = pg.fresh_database("large");
    // About 190 MB of COPY text: more than the bound below.
    pg.client(&db)
        .batch_execute("CREATE TABLE big (id bigint, body text); INSERT INTO big SELECT g, repeat(md5(g::text), 7) FROM generate_series(1, 800000) g;")
        .unwrap();
    let (store, _) = file_store();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_firedrill"))
        .args([
            "backup",
            "--json",
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "-j",
            "2",
            "--no-globals",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, peak_kib) = harness::wait_with_peak_rss(&mut child);
    assert!(status.success(), "backup exited with {status}");
    let raw_mib = 800_000u64 * 240 / (1 << 20);
    eprintln!("backup of ~{raw_mib} MiB: peak RSS {} MiB", peak_kib / 1024);
    assert!(peak_kib > 0, "no reading of the child's memory");
    assert!(
        peak_kib < 128 * 1024,
        "peak RSS {} MiB for ~{raw_mib} MiB of data",
        peak_kib / 1024
    );
}

#[test]
fn a_person_with_zstd_and_psql_can_restore_by_hand() {
    let pg = harness::postgres();
    let (db, store, dir) = seeded("byhand");
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "h",
            "--chunk-size",
            "256KiB",
        ],
        &[],
    );
    let target = pg.fresh_database("byhand_target");
    restore_by_hand(&dir.join("h").join(&id), &db, &target, &[]);
    assert_eq!(fingerprint(&db), fingerprint(&target));
}

/// `scripts/restore-by-hand` of database `db` of the backup in `backup_dir`
/// into `target`, with the server's client tools on the PATH.
pub fn restore_by_hand(backup_dir: &Path, db: &str, target: &str, env: &[(&str, String)]) {
    let pg = harness::postgres();
    let o = std::process::Command::new(harness::root().join("scripts/restore-by-hand"))
        .arg(backup_dir)
        .arg(db)
        .arg(pg.url(target))
        .env(
            "PATH",
            format!(
                "{}:{}",
                pg.bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn large_objects_go_to_s3_in_parts() {
    let (pg, s3) = (harness::postgres(), harness::s3());
    let db = pg.fresh_database("multipart");
    // md5 text compresses about 2:1, so one chunk is well over the 8 MiB part size.
    pg.client(&db)
        .batch_execute("CREATE TABLE blobs (id int, a text, b text); INSERT INTO blobs SELECT g, md5(g::text), md5((-g)::text) FROM generate_series(1, 400000) g;")
        .unwrap();
    let bucket = s3.bucket("parts");
    let mut env = s3.env();
    env.push(("S3_BUCKET", bucket.clone()));
    let b = backup(
        &[
            "--database-url",
            &pg.url(&db),
            "--source",
            "mp",
            "-j",
            "1",
            "--no-globals",
        ],
        &env,
    );
    let id = b["id"].as_str().unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            s3.root
                .join(&bucket)
                .join("mp")
                .join(id)
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let chunk = &m["databases"][0]["tables"][0]["chunks"][0];
    assert!(chunk["size"].as_u64().unwrap() > 8 << 20, "{chunk}");
    let target = format!("{db}_restored");
    let o = restore(&["--latest", "--target-url", &pg.url(&target)], &env);
    assert!(o.status.success(), "{}", output_text(&o));
    let sum = |d: &str| -> String {
        pg.client(d)
            .query_one(
                "SELECT md5(string_agg(a || b, '' ORDER BY id)) FROM blobs",
                &[],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(sum(&db), sum(&target));
}

#[test]
fn all_databases_of_a_server_in_one_backup() {
    // A server of its own: the shared one gains and loses databases as other tests run.
    let cluster =
        firedrill::servers::local_pg::LocalCluster::start_tcp(&harness::tempdir("cluster"), &[])
            .unwrap();
    let mut admin =
        postgres::Client::connect(cluster.url("postgres").secret_url(), postgres::NoTls).unwrap();
    for db in ["alpha", "beta"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
        postgres::Client::connect(cluster.url(db).secret_url(), postgres::NoTls)
            .unwrap()
            .batch_execute(&format!(
                "CREATE TABLE t_{db} (x int); INSERT INTO t_{db} VALUES (1), (2), (3)"
            ))
            .unwrap();
    }
    let (store, _) = file_store();
    let b = backup(
        &[
            "--database-url",
            cluster.url("alpha").secret_url(),
            "--all-databases",
            "--store",
            &store,
        ],
        &[],
    );
    assert_eq!(
        b["databases"],
        serde_json::json!(["alpha", "beta", "postgres"]),
        "{b}"
    );
    assert_eq!(b["tables"], 2);
    assert_eq!(b["rows"], 6);
}
