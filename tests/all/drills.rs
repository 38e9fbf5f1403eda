//! Fire drills against the real servers: a good backup is proven, every kind
//! of corruption fails the drill naming what is wrong, plugins and assertions
//! can fail it, and the drill database never outlives the drill.

use crate::backup_restore::{backup_id, file_store, seeded};
use crate::harness::{self, firedrill, output_text};

fn drill(args: &[&str], env: &[(&str, String)]) -> (std::process::Output, serde_json::Value) {
    let mut all = vec!["drill", "--json"];
    all.extend_from_slice(args);
    let o = firedrill(&all, env);
    let report = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, report)
}

fn drill_databases() -> Vec<String> {
    harness::postgres()
        .client("postgres")
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'firedrill\\_drill\\_%'",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

fn drill_db_of(id: &str) -> String {
    format!(
        "firedrill_drill_{}",
        id.to_ascii_lowercase().replace('-', "_")
    )
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"))
}

fn verifier_policies() -> std::path::PathBuf {
    harness::policy_dir(
        &["verifier-sql"],
        &[(
            "sql.toml",
            "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nlogging = true\nconfig = true\nsql = { database = \"drill\" }\n[config]\n\"assert.big-spenders\" = \"SELECT count(*) > 0 FROM big_spenders\"",
        )],
    )
}

#[test]
fn a_drill_proves_a_good_backup_and_says_so_in_the_list() {
    let pg = harness::postgres();
    let (db, store, dir) = seeded("drilled");
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "d",
            "--chunk-size",
            "256KiB",
        ],
        &[],
    );
    let assertions = harness::tempdir("assertions").join("checks.sql");
    std::fs::write(&assertions, "-- name: emails\nSELECT bool_and(email LIKE '%@example.com') FROM users;\n-- name: no-negative\nSELECT id FROM orders WHERE amount < 0;\n").unwrap();
    let policies = verifier_policies();
    let (o, r) = drill(
        &[
            "--store",
            &store,
            &id,
            "--drill-url",
            &pg.url("postgres"),
            "--policies",
            policies.to_str().unwrap(),
            "--assertions",
            assertions.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(r["passed"], true, "{r:#}");
    for name in [
        "tables.present",
        "rows.public.events",
        "indexes.valid",
        "indexes.present",
        "constraints.present",
        "sequences",
        "assert.emails",
        "assert.no-negative",
    ] {
        assert_eq!(check(&r, name)["status"], "pass", "{name}: {r:#}");
    }
    // The verifier plugin (policy "sql") ran its own checks beside the built-in ones.
    let by_plugin = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["by"] == "sql" && c["name"] == "rows.public.users")
        .expect("the plugin's check");
    assert_eq!(by_plugin["status"], "pass");
    assert_eq!(check(&r, "assert.big-spenders")["status"], "pass");
    assert!(
        r["rto_seconds"].as_f64().unwrap() > 0.0 && r["rpo_seconds"].as_i64().unwrap() >= 0,
        "{r:#}"
    );
    assert!(
        r["plugins"][0].as_str().unwrap().starts_with("sql@"),
        "{r:#}"
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(r["report"].as_str().unwrap())).unwrap())
            .unwrap();
    assert_eq!(stored["backup_id"], id.as_str());
    assert!(
        !drill_databases().contains(&drill_db_of(&id)),
        "the drill database is dropped"
    );
    let o = firedrill(&["list", "--store", &store, "--json"], &[]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed[0]["last_drill"]["passed"], true, "{listed:#}");
}

#[test]
fn a_local_drill_starts_and_removes_its_own_cluster() {
    let pg = harness::postgres();
    let (db, store, _) = seeded("local");
    let id = backup_id(&["--database-url", &pg.url(&db), "--store", &store], &[]);
    let tmp = harness::tempdir("localtmp");
    let (o, r) = drill(
        &["--store", &store, &id, "--local"],
        &[("TMPDIR", tmp.display().to_string())],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(r["target"], "local");
    assert_eq!(r["passed"], true);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the local cluster is gone"
    );
}

/// A real database's objects belong to its own roles, which a throwaway
/// cluster does not have: the local drill creates them (without login)
/// instead of failing a correct backup.
#[test]
fn a_local_drill_creates_the_roles_the_schema_names() {
    let pg = harness::postgres();
    let db = pg.fresh_database("owned");
    let (owner, reader, writer) = (
        format!("{db}_Owner \"x\""),
        format!("{db}_reader"),
        format!("{db}_writer"),
    );
    let q = |r: &str| format!("\"{}\"", r.replace('"', "\"\""));
    pg.client(&db)
        .batch_execute(&format!(
            "CREATE ROLE {o}; CREATE ROLE {r}; CREATE ROLE {w};
             CREATE SCHEMA app AUTHORIZATION {o};
             CREATE TABLE app.items (id int PRIMARY KEY, name text);
             ALTER TABLE app.items OWNER TO {o};
             INSERT INTO app.items SELECT g, 'n' || g FROM generate_series(1, 50) g;
             GRANT SELECT ON app.items TO {r}, {w};
             GRANT UPDATE ON app.items TO {w};",
            o = q(&owner),
            r = q(&reader),
            w = q(&writer)
        ))
        .unwrap();
    let (store, _) = file_store();
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--no-globals",
        ],
        &[],
    );
    let tmp = harness::tempdir("localroles");
    let (o, r) = drill(
        &["--store", &store, &id, "--local"],
        &[("TMPDIR", tmp.display().to_string())],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(r["databases"][0]["tables"][0]["rows"], 50, "{r:#}");
}

#[test]
fn every_kind_of_corruption_fails_the_drill_naming_it() {
    let pg = harness::postgres();
    let (db, store, dir) = seeded("rotten");
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
    let m: serde_json::Value = serde_json::from_str(&manifest_text).unwrap();
    let chunk = m["databases"][0]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "events")
        .unwrap()["chunks"][2]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let original = std::fs::read(bdir.join(&chunk)).unwrap();
    let drill_fails = |what: &str, needle: &str| {
        let (o, r) = drill(
            &["--store", &store, &id, "--drill-url", &pg.url("postgres")],
            &[],
        );
        assert_eq!(o.status.code(), Some(1), "{what}: {}", output_text(&o));
        assert_eq!(r["passed"], false, "{what}");
        let failed: Vec<String> = r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "fail")
            .map(|c| c["detail"].as_str().unwrap().to_string())
            .collect();
        assert!(
            failed.iter().any(|d| d.contains(needle)),
            "{what}: expected {needle:?} in {failed:?}"
        );
        assert!(
            !drill_databases().contains(&drill_db_of(&id)),
            "{what}: the drill database is dropped"
        );
    };
    let mut flipped = original.clone();
    flipped[100] ^= 0x01;
    std::fs::write(bdir.join(&chunk), &flipped).unwrap();
    drill_fails("a flipped byte", &format!("{chunk} is corrupt"));
    std::fs::write(bdir.join(&chunk), &original[..original.len() / 2]).unwrap();
    drill_fails("a truncated object", &format!("{chunk} is corrupt"));
    std::fs::remove_file(bdir.join(&chunk)).unwrap();
    drill_fails("a missing object", &format!("{chunk} is missing"));
    std::fs::write(bdir.join(&chunk), &original).unwrap();
    // A manifest whose row counts do not match what is stored.
    let mut lying = m.clone();
    for t in lying["databases"][0]["tables"].as_array_mut().unwrap() {
        if t["name"] == "users" {
            t["rows"] = serde_json::json!(301);
        }
    }
    std::fs::write(&mpath, serde_json::to_string_pretty(&lying).unwrap()).unwrap();
    drill_fails(
        "a manifest that does not match",
        "300 rows restored, 301 counted at backup time",
    );
    std::fs::write(&mpath, &manifest_text).unwrap();
    let (o, r) = drill(
        &["--store", &store, &id, "--drill-url", &pg.url("postgres")],
        &[],
    );
    assert!(
        o.status.success() && r["passed"] == true,
        "repaired, it passes: {}",
        output_text(&o)
    );
}

#[test]
fn plugins_and_assertions_can_fail_a_drill() {
    let pg = harness::postgres();
    let db = pg.fresh_database("business");
    pg.client(&db)
        .batch_execute(
            "CREATE TABLE orders (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL);
             INSERT INTO orders (created_at) SELECT now() - g * interval '1 minute' FROM generate_series(1, 100) g;",
        )
        .unwrap();
    let (store, _) = file_store();
    let example =
        std::fs::read_to_string(harness::root().join("examples/verifier-freshness/freshness.toml"))
            .unwrap();
    let policies = harness::policy_dir(&["verifier-freshness"], &[("freshness.toml", &example)]);
    let policies = policies.to_str().unwrap();
    let first = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "b",
        ],
        &[],
    );
    let (o, r) = drill(
        &[
            "--store",
            &store,
            &first,
            "--drill-url",
            &pg.url("postgres"),
            "--policies",
            policies,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(check(&r, "freshness")["status"], "pass", "{r:#}");
    assert_eq!(
        check(&r, "growth")["status"],
        "skip",
        "no previous drill yet"
    );
    // Half the orders vanish and the rest are old: both business checks fail.
    pg.client(&db).batch_execute("DELETE FROM orders WHERE id % 2 = 0; UPDATE orders SET created_at = created_at - interval '3 days'").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "b",
        ],
        &[],
    );
    let (o, r) = drill(
        &[
            "--store",
            &store,
            &second,
            "--drill-url",
            &pg.url("postgres"),
            "--policies",
            policies,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert_eq!(check(&r, "freshness")["status"], "fail", "{r:#}");
    let growth = check(&r, "growth.public.orders");
    assert_eq!(growth["status"], "fail");
    assert!(
        growth["detail"]
            .as_str()
            .unwrap()
            .contains("50 rows, 100 at the previous drill"),
        "{growth}"
    );
    // An assertion alone can fail a drill too.
    let assertions = harness::tempdir("assertions").join("a.sql");
    std::fs::write(
        &assertions,
        "-- name: enough-orders\nSELECT count(*) >= 100 FROM orders;\n",
    )
    .unwrap();
    let (o, r) = drill(
        &[
            "--store",
            &store,
            &second,
            "--drill-url",
            &pg.url("postgres"),
            "--assertions",
            assertions.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(check(&r, "assert.enough-orders")["status"], "fail");
    assert_eq!(
        check(&r, "rows.public.orders")["status"],
        "pass",
        "the backup itself is sound"
    );
}

#[test]
fn sigterm_mid_restore_drops_the_drill_database() {
    let pg = harness::postgres();
    let db = pg.fresh_database("interrupted");
    pg.client(&db)
        .batch_execute("CREATE TABLE big (id bigint PRIMARY KEY, body text); INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 600000) g;")
        .unwrap();
    let (store, _) = file_store();
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--no-globals",
        ],
        &[],
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_firedrill"))
        .args([
            "drill",
            "--store",
            &store,
            &id,
            "--drill-url",
            &pg.url("postgres"),
            "-j",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let name = drill_db_of(&id);
    let start = std::time::Instant::now();
    while !drill_databases().contains(&name) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the drill never created its database"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the drill ended before it could be interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", output_text(&o));
    assert!(output_text(&o).contains("SIGTERM"), "{}", output_text(&o));
    assert!(
        !drill_databases().contains(&name),
        "the drill database was dropped on SIGTERM"
    );
}

#[test]
fn orphans_of_crashed_drills_are_swept_and_others_left_alone() {
    let pg = harness::postgres();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let admin = || pg.client("postgres");
    let make = |name: &str, comment: String| {
        let mut c = admin();
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        c.batch_execute(&format!("COMMENT ON DATABASE {name} IS '{comment}'"))
            .unwrap();
    };
    // A run on this host whose process is gone; one still running (this test); another host's.
    make(
        "firedrill_drill_orphan_dead",
        format!("firedrill drill host={host} pid=2147483000 started={now}"),
    );
    make(
        "firedrill_drill_orphan_live",
        format!(
            "firedrill drill host={host} pid={} started={now}",
            std::process::id()
        ),
    );
    make(
        "firedrill_drill_orphan_other",
        format!("firedrill drill host=elsewhere pid=2147483000 started={now}"),
    );
    let (db, store, _) = seeded("sweeper");
    let id = backup_id(&["--database-url", &pg.url(&db), "--store", &store], &[]);
    let (o, _) = drill(
        &["--store", &store, &id, "--drill-url", &pg.url("postgres")],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let left = drill_databases();
    assert!(
        !left.contains(&"firedrill_drill_orphan_dead".to_string()),
        "{left:?}"
    );
    assert!(
        left.contains(&"firedrill_drill_orphan_live".to_string()),
        "{left:?}"
    );
    assert!(
        left.contains(&"firedrill_drill_orphan_other".to_string()),
        "{left:?}"
    );
    admin()
        .batch_execute("DROP DATABASE firedrill_drill_orphan_live")
        .unwrap();
    admin()
        .batch_execute("DROP DATABASE firedrill_drill_orphan_other")
        .unwrap();
}

#[test]
fn latest_unverified_picks_the_backup_never_drilled() {
    let pg = harness::postgres();
    let (db, store, _) = seeded("unverified");
    let args = [
        "--database-url",
        &pg.url(&db),
        "--store",
        &store,
        "--source",
        "u",
    ];
    let first = backup_id(&args, &[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = backup_id(&args, &[]);
    let url = pg.url("postgres");
    let unverified = || {
        drill(
            &[
                "--store",
                &store,
                "--latest-unverified",
                "--drill-url",
                &url,
            ],
            &[],
        )
    };
    assert_eq!(unverified().1["backup_id"], second.as_str());
    assert_eq!(unverified().1["backup_id"], first.as_str());
    let (o, _) = unverified();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        output_text(&o).contains("drilled already"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn the_demo_passes() {
    let o = firedrill(
        &["demo"],
        &[(
            "FIREDRILL_COMPONENTS",
            harness::root()
                .join("target/components")
                .display()
                .to_string(),
        )],
    );
    let out = output_text(&o);
    assert!(o.status.success(), "{out}");
    for needle in ["postgres", "backup", "PASSED", "freshness", "RTO"] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
}
