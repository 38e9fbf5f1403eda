//! The version matrix: sources on PostgreSQL 15 (Debian's packages), 17 and
//! 18 (`scripts/setup` installs them into target/tools), each backed up,
//! restored and drilled with the tools firedrill picks for it, the schema and
//! every table's data identical after the round trip; and the refusals when
//! the tools or servers on hand are older than the source.

use crate::backup_restore::{backup, file_store, restore};
use crate::harness::{self, firedrill, output_text, pg_bin, postgres_from, Postgres};
use sha2::{Digest, Sha256};
use std::path::Path;

const MAJORS: [u32; 3] = [15, 17, 18];

/// FIREDRILL_PG_BIN naming the bin directories of `majors`.
fn bins(majors: &[u32]) -> String {
    majors
        .iter()
        .map(|m| pg_bin(*m).display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Several schemas, a partitioned table, an enum, a domain, indexes (btree,
/// gin), foreign keys (one to a partitioned table's referencing side), a view, a sequence with its
/// own increment, an identity column, jsonb/uuid/text/array data: a few
/// thousand rows, all of it valid on 13 and later.
fn seed(pg: &Postgres, db: &str) {
    pg.client(db)
        .batch_execute(
            r#"
            CREATE SCHEMA sales;
            CREATE SCHEMA inventory;
            CREATE SCHEMA audit;
            CREATE TYPE sales.status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
            CREATE DOMAIN inventory.sku AS text CHECK (VALUE ~ '^[A-Z]{3}-[0-9]{4}$');
            CREATE SEQUENCE sales.invoice_no START 1000 INCREMENT 7;
            CREATE TABLE inventory.products (id uuid PRIMARY KEY, sku inventory.sku NOT NULL UNIQUE,
                                             name text NOT NULL, attrs jsonb NOT NULL DEFAULT '{}');
            CREATE INDEX products_attrs ON inventory.products USING gin (attrs);
            CREATE TABLE sales.customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                          name text NOT NULL, email text, tags text[]);
            CREATE TABLE sales.orders (id bigint NOT NULL, placed date NOT NULL,
                                       customer_id bigint NOT NULL REFERENCES sales.customers(id),
                                       product_id uuid NOT NULL REFERENCES inventory.products(id),
                                       status sales.status NOT NULL DEFAULT 'new',
                                       invoice bigint DEFAULT nextval('sales.invoice_no'),
                                       note text, PRIMARY KEY (id, placed)) PARTITION BY RANGE (placed);
            CREATE TABLE sales.orders_2025 PARTITION OF sales.orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
            CREATE TABLE sales.orders_2026 PARTITION OF sales.orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
            CREATE INDEX orders_status ON sales.orders (status, placed);
            CREATE VIEW sales.paid AS
                SELECT o.id, o.placed, c.name, p.sku FROM sales.orders o
                JOIN sales.customers c ON c.id = o.customer_id
                JOIN inventory.products p ON p.id = o.product_id WHERE o.status = 'paid';
            CREATE TABLE audit.log (at timestamptz NOT NULL, entry jsonb, tags text[]);
            INSERT INTO inventory.products
                SELECT md5(g::text)::uuid, 'ABC-' || lpad(g::text, 4, '0'), 'product ' || g,
                       jsonb_build_object('weight', g % 17, 'colour', (ARRAY['red', 'green', 'blue'])[1 + g % 3])
                FROM generate_series(1, 500) g;
            INSERT INTO sales.customers (name, email, tags)
                SELECT 'customer ' || g || E' with a tab\there', 'c' || g || '@example.com', ARRAY['t' || g % 5]
                FROM generate_series(1, 1000) g;
            INSERT INTO sales.orders (id, placed, customer_id, product_id, status, note)
                SELECT g, DATE '2025-01-01' + (g % 700), 1 + g % 1000, md5((1 + g % 500)::text)::uuid,
                       (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4]::sales.status,
                       CASE WHEN g % 10 = 0 THEN NULL ELSE repeat('n', g % 50) END
                FROM generate_series(1, 4000) g;
            INSERT INTO audit.log
                SELECT TIMESTAMPTZ '2026-01-01 00:00+00' + g * interval '1 minute',
                       jsonb_build_object('order', g, 'nested', jsonb_build_object('ok', g % 2 = 0)), ARRAY['a', 'b']
                FROM generate_series(1, 2000) g;
            "#,
        )
        .unwrap();
}

/// `pg_dump --schema-only` of `db`, by the newest pg_dump of the matrix
/// (one that reads every server in it), without its per-run random
/// `\restrict` keys and server-assigned column stamps.
fn schema(pg: &Postgres, db: &str) -> String {
    let newest = pg_bin(*MAJORS.last().unwrap());
    let o = std::process::Command::new(newest.join("pg_dump"))
        .args(["--schema-only", "--no-password"])
        .arg(format!("--dbname={}", pg.url(db)))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        // Debian's 15.20 server stamps every column with a `pg_attver`
        // option of its own choosing (a SET of it is overridden): no restore
        // can carry it.
        .filter(|l| !(l.contains(" ALTER COLUMN ") && l.contains(" SET (pg_attver=")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each table's rows (leaf partitions on their own) as sha256 of ordered COPY output.
fn data(pg: &Postgres, db: &str) -> Vec<(String, usize, String)> {
    let mut c = pg.client(db);
    let tables: Vec<String> = c
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    tables
        .into_iter()
        .map(|t| {
            use std::io::Read;
            let mut out = Vec::new();
            c.copy_out(&format!(
                "COPY (SELECT * FROM {t} x ORDER BY x::text COLLATE \"C\") TO STDOUT"
            ))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
            let rows = out.iter().filter(|b| **b == b'\n').count();
            (t, rows, hex::encode(Sha256::digest(&out)))
        })
        .collect()
}

fn manifest(store_dir: &Path, source: &str, id: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(store_dir.join(source).join(id).join("manifest.json")).unwrap(),
    )
    .unwrap()
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

/// Backup → restore → drill of a PostgreSQL `major` source, with every
/// major of the matrix installed: firedrill must pick the matching tools.
fn round_trip(major: u32) {
    let pg = postgres_from(&pg_bin(major));
    let db = pg.fresh_database("src");
    seed(&pg, &db);
    let env = [("FIREDRILL_PG_BIN", bins(&MAJORS))];
    let (store, dir) = file_store();
    let source = format!("pg{major}");
    let b = backup(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            &source,
            "-j",
            "2",
            "--chunk-size",
            "64KiB",
        ],
        &env,
    );
    let id = b["id"].as_str().unwrap();
    let m = manifest(&dir, &source, id);
    assert_eq!(m["postgres"]["server_major"], major, "{m:#}");
    let dumped_by = m["postgres"]["pg_dump"].as_str().unwrap();
    assert!(
        dumped_by.contains(&format!("(PostgreSQL) {major}.")),
        "the lowest pg_dump at least the server's: {dumped_by}"
    );

    let target = format!("restored_{major}");
    let o = restore(
        &["--store", &store, id, "--target-url", &pg.url(&target)],
        &env,
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let before = schema(&pg, &db);
    assert!(
        before.contains("CREATE TYPE sales.status")
            && before.contains("ATTACH PARTITION sales.orders_2025"),
        "{before}"
    );
    let after = schema(&pg, &target);
    let only = |a: &str, b: &str| -> Vec<String> {
        let b: Vec<&str> = b.lines().collect();
        a.lines()
            .filter(|l| !b.contains(l))
            .map(String::from)
            .collect()
    };
    assert!(
        before == after,
        "schema differs after restore: only in the source {:#?}, only in the restored {:#?}",
        only(&before, &after),
        only(&after, &before)
    );
    let rows = data(&pg, &db);
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(
        rows.iter().map(|(_, n, _)| n).sum::<usize>(),
        500 + 1000 + 4000 + 2000
    );
    assert_eq!(rows, data(&pg, &target), "data differs after restore");

    let tmp = harness::tempdir("versions-local");
    let mut env = env.to_vec();
    env.push(("TMPDIR", tmp.display().to_string()));
    let o = firedrill(&["drill", "--json", "--store", &store, id, "--local"], &env);
    assert!(o.status.success(), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(r["target"], "local");
}

#[test]
fn postgres_15_backs_up_restores_and_drills() {
    round_trip(15);
}

#[test]
fn postgres_17_backs_up_restores_and_drills() {
    round_trip(17);
}

#[test]
fn postgres_18_backs_up_restores_and_drills() {
    round_trip(18);
}

#[test]
fn an_18_source_with_only_15_tools_is_refused_naming_the_version_and_the_fix() {
    let pg = postgres_from(&pg_bin(18));
    let db = pg.fresh_database("src");
    seed(&pg, &db);
    let (store, dir) = file_store();
    let o = firedrill(
        &[
            "backup",
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "new",
        ],
        &[("FIREDRILL_PG_BIN", bins(&[15]))],
    );
    let said = output_text(&o);
    assert!(!o.status.success(), "{said}");
    let pg_dump15 = pg_bin(15).join("pg_dump");
    for needle in [
        "source new runs PostgreSQL 18".to_string(),
        format!("the newest pg_dump found is 15 ({})", pg_dump15.display()),
        "postgresql-client-18".into(),
        "FIREDRILL_PG_BIN".into(),
    ] {
        assert!(said.contains(&needle), "{needle:?} not in: {said}");
    }
    assert_eq!(files(&dir), Vec::<String>::new(), "nothing is written");
    let o = firedrill(&["list", "--store", &store, "--json"], &[]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed, serde_json::json!([]), "{}", output_text(&o));
}

#[test]
fn an_18_backup_is_refused_by_older_servers_with_the_version_needed() {
    let pg18 = postgres_from(&pg_bin(18));
    let db = pg18.fresh_database("src");
    seed(&pg18, &db);
    let (store, _) = file_store();
    let b = backup(
        &[
            "--database-url",
            &pg18.url(&db),
            "--store",
            &store,
            "--source",
            "new",
        ],
        &[("FIREDRILL_PG_BIN", bins(&MAJORS))],
    );
    let id = b["id"].as_str().unwrap();

    // A local drill with only older servers installed.
    let tmp = harness::tempdir("versions-refused");
    let o = firedrill(
        &["drill", "--store", &store, id, "--local"],
        &[
            ("FIREDRILL_PG_BIN", bins(&[15, 17])),
            ("TMPDIR", tmp.display().to_string()),
        ],
    );
    let said = output_text(&o);
    assert!(!o.status.success(), "{said}");
    let initdb17 = pg_bin(17).join("initdb");
    for needle in [
        format!("backup {id} comes from PostgreSQL 18"),
        format!("the newest initdb found is 17 ({})", initdb17.display()),
        "postgresql-18".into(),
    ] {
        assert!(said.contains(&needle), "{needle:?} not in: {said}");
    }
    assert_eq!(files(&tmp), Vec::<String>::new(), "no cluster was left");

    // A restore into an older server.
    let pg15 = postgres_from(&pg_bin(15));
    let o = restore(
        &["--store", &store, id, "--target-url", &pg15.url("restored")],
        &[("FIREDRILL_PG_BIN", bins(&MAJORS))],
    );
    let said = output_text(&o);
    assert!(!o.status.success(), "{said}");
    assert!(
        said.contains(&format!("backup {id} comes from PostgreSQL 18"))
            && said.contains("runs PostgreSQL 15")
            && said.contains("version 18 or later"),
        "{said}"
    );
    let created: i64 = pg15
        .client("postgres")
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'restored'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(created, 0, "the refused restore created nothing");
}
