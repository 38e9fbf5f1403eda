//! Object kinds that make a logical backup lose rows or a drill raise a
//! false alarm without anyone noticing: row-level security on the backup
//! role, inheritance, partition trees and materialized views, and the data
//! of extensions' configuration tables.

use crate::backup_restore::{backup_id, file_store};
use crate::harness::{self, firedrill, output_text};
use firedrill::servers::local_pg::LocalCluster;
use std::path::{Path, PathBuf};

fn listed(store: &str) -> Vec<(String, bool)> {
    let o = firedrill(&["list", "--store", store, "--json"], &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().into(),
                l["complete"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn drill(store: &str, id: &str, policies: Option<&Path>) -> serde_json::Value {
    drill_on(&harness::postgres().url("postgres"), store, id, policies)
}

fn drill_on(drill_url: &str, store: &str, id: &str, policies: Option<&Path>) -> serde_json::Value {
    let mut args = vec![
        "drill",
        "--json",
        "--store",
        store,
        id,
        "--drill-url",
        drill_url,
    ];
    if let Some(p) = policies {
        args.extend(["--policies", p.to_str().unwrap()]);
    }
    let o = firedrill(&args, &[]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", output_text(&o)));
    assert!(o.status.success(), "{}\n{report:#}", output_text(&o));
    report
}

/// The detail of every check with this name (the built-in one and the plugin's).
fn checks<'a>(report: &'a serde_json::Value, name: &str) -> Vec<&'a serde_json::Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name)
        .collect()
}

fn table_rows(manifest_tables: &serde_json::Value, name: &str) -> Option<u64> {
    manifest_tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .map(|t| t["rows"].as_u64().unwrap())
}

#[test]
fn a_policy_on_the_backup_role_fails_the_backup_instead_of_hiding_rows() {
    let pg = harness::postgres();
    let db = pg.fresh_database("rls");
    let role = format!("fd_owner_{db}");
    pg.client("postgres")
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT ALL ON DATABASE {db} TO {role}"
        ))
        .unwrap();
    pg.client(&db)
        .batch_execute(&format!(
            "GRANT ALL ON SCHEMA public TO {role};
             SET ROLE {role};
             CREATE TABLE secrets (id int PRIMARY KEY, visible boolean NOT NULL);
             INSERT INTO secrets SELECT g, g % 2 = 0 FROM generate_series(1, 100) g;
             CREATE TABLE plain (id int);
             INSERT INTO plain VALUES (1);
             CREATE POLICY half ON secrets USING (visible);
             ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
             ALTER TABLE secrets FORCE ROW LEVEL SECURITY;"
        ))
        .unwrap();
    // The owner, subject to its own policy, sees half the rows.
    let owner_url = format!("postgres://{role}@127.0.0.1:{}/{db}", pg.port);
    let mut owner = postgres::Client::connect(&owner_url, postgres::NoTls).unwrap();
    let seen: i64 = owner
        .query_one("SELECT count(*) FROM secrets", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 50);

    let (store, dir) = file_store();
    let args = [
        "backup",
        "--json",
        "--database-url",
        &owner_url,
        "--store",
        &store,
        "--source",
        "rls",
    ];
    let o = firedrill(&args, &[]);
    let text = output_text(&o);
    assert!(!o.status.success(), "a backup of 50 of 100 rows: {text}");
    for needle in ["public.secrets", "row-level security", &role, "BYPASSRLS"] {
        assert!(text.contains(needle), "{needle} not in: {text}");
    }
    assert!(
        listed(&store).iter().all(|(_, complete)| !complete),
        "{:?}",
        listed(&store)
    );

    pg.client("postgres")
        .batch_execute(&format!("ALTER ROLE {role} BYPASSRLS"))
        .unwrap();
    let id = backup_id(
        &[
            "--database-url",
            &owner_url,
            "--store",
            &store,
            "--source",
            "rls",
        ],
        &[],
    );
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("rls").join(&id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        table_rows(&m["databases"][0]["tables"], "secrets"),
        Some(100),
        "{m:#}"
    );
    let r = drill(&store, &id, None);
    assert_eq!(r["passed"], true, "{r:#}");
    let rows = checks(&r, "rows.public.secrets");
    assert_eq!(rows.len(), 1, "{r:#}");
    assert_eq!(rows[0]["status"], "pass", "{r:#}");
    assert!(
        rows[0]["detail"].as_str().unwrap().starts_with("100 rows"),
        "{r:#}"
    );
}

#[test]
fn inheritance_partitions_and_matviews_are_counted_as_the_backup_counted_them() {
    let pg = harness::postgres();
    let db = pg.fresh_database("inherit");
    pg.client(&db)
        .batch_execute(
            "CREATE TABLE parent (id int, note text);
             CREATE TABLE child (extra int) INHERITS (parent);
             INSERT INTO parent VALUES (1, 'a'), (2, 'b');
             INSERT INTO child VALUES (3, 'c', 30), (4, 'd', 40), (5, 'e', 50);
             CREATE TABLE measures (at date NOT NULL, v int) PARTITION BY RANGE (at);
             CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY LIST (v);
             CREATE TABLE measures_2025_low PARTITION OF measures_2025 FOR VALUES IN (1, 2);
             CREATE TABLE measures_2025_rest PARTITION OF measures_2025 DEFAULT;
             CREATE TABLE measures_2026 PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             INSERT INTO measures SELECT '2025-03-01'::date + g, g % 4 FROM generate_series(1, 40) g;
             INSERT INTO measures SELECT '2026-03-01'::date + g, g FROM generate_series(1, 7) g;
             CREATE MATERIALIZED VIEW totals AS SELECT v, count(*) AS n FROM measures GROUP BY v;",
        )
        .unwrap();
    let (store, dir) = file_store();
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "inh",
        ],
        &[],
    );
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("inh").join(&id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let tables = &m["databases"][0]["tables"];
    // COPY of a table copies its own rows only.
    assert_eq!(table_rows(tables, "parent"), Some(2), "{m:#}");
    assert_eq!(table_rows(tables, "child"), Some(3), "{m:#}");
    assert_eq!(table_rows(tables, "measures_2026"), Some(7), "{m:#}");

    let policies = verifier("\"assert.matview\" = \"SELECT sum(n) = 47 FROM totals\"");
    let r = drill(&store, &id, Some(&policies));
    assert_eq!(r["passed"], true, "{r:#}");
    for (name, n) in [
        ("rows.public.parent", 2),
        ("rows.public.child", 3),
        ("rows.public.measures_2025_low", 20),
        ("rows.public.measures_2025_rest", 20),
        ("rows.public.measures_2026", 7),
    ] {
        let found = checks(&r, name);
        // The built-in check and the verifier plugin's.
        assert_eq!(found.len(), 2, "{name}: {r:#}");
        for c in found {
            assert_eq!(c["status"], "pass", "{name}: {r:#}");
            assert!(
                c["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{n} rows")),
                "{name}: {r:#}"
            );
        }
    }
    let matview = checks(&r, "assert.matview");
    assert_eq!(matview.len(), 1, "{r:#}");
    assert_eq!(matview[0]["status"], "pass", "{r:#}");
}

/// The verifier-sql plugin, counting rows beside the built-in checks.
fn verifier(extra_config: &str) -> PathBuf {
    harness::policy_dir(
        &["verifier-sql"],
        &[(
            "sql.toml",
            &format!("world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nlogging = true\nconfig = true\nsql = {{ database = \"drill\" }}\n[config]\n{extra_config}"),
        )],
    )
}

/// A server build of the test's own: the installed server binaries copied
/// under a private root in the same layout (a server finds its share
/// directory relative to its own executable), the share directory linked
/// entry by entry, plus one extension of ours. Contrib ships no extension
/// with configuration tables, and the system's directories are not ours to
/// change.
fn server_with_extension(name: &str, control: &str, script: &str) -> LocalCluster {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let pg_config = |what: &str| {
        let o = std::process::Command::new(harness::postgres().bin.join("pg_config"))
            .arg(what)
            .output()
            .expect("pg_config next to the server binaries");
        PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
    };
    let (bindir, sharedir, libdir) = (
        pg_config("--bindir"),
        pg_config("--sharedir"),
        pg_config("--pkglibdir"),
    );
    let root = harness::tempdir("own-server");
    let under = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    let (bin, share) = (under(&bindir), under(&sharedir));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(share.join("extension")).unwrap();
    std::fs::create_dir_all(under(&libdir).parent().unwrap()).unwrap();
    for tool in ["initdb", "postgres"] {
        std::fs::copy(bindir.join(tool), bin.join(tool)).unwrap();
    }
    symlink(&libdir, under(&libdir)).unwrap();
    for e in std::fs::read_dir(&sharedir).unwrap().flatten() {
        if e.file_name() != "extension" {
            symlink(e.path(), share.join(e.file_name())).unwrap();
        }
    }
    for e in std::fs::read_dir(sharedir.join("extension"))
        .unwrap()
        .flatten()
    {
        symlink(e.path(), share.join("extension").join(e.file_name())).unwrap();
    }
    std::fs::write(share.join(format!("extension/{name}.control")), control).unwrap();
    std::fs::write(share.join(format!("extension/{name}--1.0.sql")), script).unwrap();
    // The server runs as the postgres OS user when the tests run as root.
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    LocalCluster::start_tcp_from(&bin, &root, &[]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn extension_configuration_tables_keep_their_data() {
    let server = server_with_extension(
        "fdcfg",
        "comment = 'configuration tables, as PostGIS or pg_partman keep them'\ndefault_version = '1.0'\nrelocatable = false\n",
        "CREATE TABLE fdcfg_settings (name text PRIMARY KEY, value text, builtin boolean NOT NULL DEFAULT false);
         INSERT INTO fdcfg_settings VALUES ('builtin-a', '1', true), ('builtin-b', '2', true);
         SELECT pg_catalog.pg_extension_config_dump('fdcfg_settings', 'WHERE NOT builtin');
         CREATE TABLE fdcfg_jobs (id int PRIMARY KEY, what text);
         SELECT pg_catalog.pg_extension_config_dump('fdcfg_jobs', '');
         CREATE SEQUENCE fdcfg_job_ids;
         SELECT pg_catalog.pg_extension_config_dump('fdcfg_job_ids', '');
         CREATE TABLE fdcfg_cache (k text);
         INSERT INTO fdcfg_cache VALUES ('not configuration: never backed up');",
    );
    let url = |db: &str| format!("postgres://postgres@127.0.0.1:{}/{db}", server.port());
    let connect = |db: &str| postgres::Client::connect(&url(db), postgres::NoTls).unwrap();
    connect("postgres")
        .batch_execute("CREATE DATABASE ext")
        .unwrap();
    connect("ext")
        .batch_execute(
            "CREATE EXTENSION fdcfg;
             INSERT INTO fdcfg_settings VALUES ('mine-x', '9', false), ('mine-y', '8', false);
             INSERT INTO fdcfg_jobs SELECT g, 'job ' || g FROM generate_series(1, 4) g;
             SELECT setval('fdcfg_job_ids', 42);
             CREATE TABLE plain (id int);
             INSERT INTO plain VALUES (1);",
        )
        .unwrap();
    let (store, dir) = file_store();
    let id = backup_id(
        &[
            "--database-url",
            &url("ext"),
            "--store",
            &store,
            "--source",
            "ext",
        ],
        &[],
    );
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("ext").join(&id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let tables = &m["databases"][0]["tables"];
    // pg_dump's rule: the rows the extension's filter calls the user's.
    assert_eq!(table_rows(tables, "fdcfg_settings"), Some(2), "{m:#}");
    assert_eq!(table_rows(tables, "fdcfg_jobs"), Some(4), "{m:#}");
    assert_eq!(table_rows(tables, "fdcfg_cache"), None, "{m:#}");

    let o = firedrill(
        &[
            "restore",
            "--store",
            &store,
            &id,
            "--target-url",
            &url("ext_restored"),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let mut restored = connect("ext_restored");
    let settings: Vec<String> = restored
        .query("SELECT name FROM fdcfg_settings ORDER BY 1", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(settings, ["builtin-a", "builtin-b", "mine-x", "mine-y"]);
    let jobs: i64 = restored
        .query_one("SELECT count(*) FROM fdcfg_jobs", &[])
        .unwrap()
        .get(0);
    assert_eq!(jobs, 4);
    let seq: i64 = restored
        .query_one("SELECT last_value FROM fdcfg_job_ids", &[])
        .unwrap()
        .get(0);
    assert_eq!(seq, 42);
    drop(restored);

    // The drill counts what the backup counted: the filtered rows, not the
    // ones the extension's own script inserts at restore.
    let r = drill_on(&url("postgres"), &store, &id, Some(&verifier("")));
    assert_eq!(r["passed"], true, "{r:#}");
    for (name, n) in [
        ("rows.public.fdcfg_settings", 2),
        ("rows.public.fdcfg_jobs", 4),
    ] {
        let found = checks(&r, name);
        assert_eq!(found.len(), 2, "{name}: {r:#}");
        for c in found {
            assert_eq!(c["status"], "pass", "{name}: {r:#}");
            assert!(
                c["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{n} rows")),
                "{name}: {r:#}"
            );
        }
    }
}
