//! Scale of the catalog, not only of the data: 10,000 small tables across 100
//! schemas (a common multi-tenant layout) back up, restore and drill, with
//! every table, index and row present afterwards.

use crate::backup_restore::{backup_id, file_store, restore};
use crate::harness::{self, firedrill, output_text};

const SCHEMAS: usize = 100;
const TABLES: usize = 100;

/// Per schema: its tables, its indexes and its rows, in one query so that a
/// missing table, index or row anywhere shows as a difference.
fn shape(client: &mut postgres::Client) -> Vec<(String, i64, i64)> {
    client
        .query(
            "SELECT n.nspname::text,
                    count(*) FILTER (WHERE c.relkind = 'r'),
                    count(*) FILTER (WHERE c.relkind = 'i')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname LIKE 'tenant\\_%'
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The sum of every table's row count and of a hash of its contents.
fn contents(client: &mut postgres::Client) -> (i64, String) {
    client
        .batch_execute(
            "CREATE TEMP TABLE seen (n bigint, h text);
             DO $$ DECLARE r record; BEGIN
               FOR r IN SELECT c.oid::regclass AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname LIKE 'tenant\\_%' AND c.relkind = 'r' ORDER BY 1 LOOP
                 EXECUTE format('INSERT INTO seen SELECT count(*), md5(string_agg(t::text, '','' ORDER BY t::text)) FROM %s t', r.t);
               END LOOP; END $$;",
        )
        .unwrap();
    let row = client
        .query_one(
            "SELECT sum(n)::bigint, md5(string_agg(coalesce(h, '-'), ',' ORDER BY h)) FROM seen",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn ten_thousand_tables_in_a_hundred_schemas_back_up_restore_and_drill() {
    // Its own server: pg_dump locks every table it dumps in one transaction,
    // so a catalog this size needs a lock table to match (as in production).
    let dir = harness::tempdir("many-tables");
    let cluster = firedrill::servers::local_pg::LocalCluster::start_tcp(
        &dir,
        &["max_locks_per_transaction=512", "shared_buffers=64MB"],
    )
    .unwrap();
    let url = |db: &str| cluster.url(db).secret_url().to_string();
    let mut admin = postgres::Client::connect(&url("postgres"), postgres::NoTls).unwrap();
    for db in ["tenants", "restored"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
    }
    let mut source = postgres::Client::connect(&url("tenants"), postgres::NoTls).unwrap();
    for s in 0..SCHEMAS {
        source
            .batch_execute(&format!(
                "CREATE SCHEMA tenant_{s:03};
                 DO $$ BEGIN FOR t IN 0..{last} LOOP
                   EXECUTE format('CREATE TABLE tenant_{s:03}.t_%s (
                       id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                       name text NOT NULL,
                       body jsonb)', t);
                   EXECUTE format('INSERT INTO tenant_{s:03}.t_%s (name, body)
                       SELECT md5(g::text || %L), jsonb_build_object(''n'', g)
                       FROM generate_series(1, 1 + %s %% 3) g', t, t, t);
                 END LOOP; END $$;",
                last = TABLES - 1
            ))
            .unwrap();
    }
    let before = shape(&mut source);
    assert_eq!(before.len(), SCHEMAS);
    assert!(before
        .iter()
        .all(|(_, t, i)| *t == TABLES as i64 && *i == TABLES as i64));
    let data = contents(&mut source);

    let (store, _) = file_store();
    let id = backup_id(
        &[
            "--database-url",
            &url("tenants"),
            "--store",
            &store,
            "--source",
            "tenants",
            "--no-globals",
            "-j",
            "2",
        ],
        &[],
    );
    let o = restore(
        &[
            "--store",
            &store,
            &id,
            "--target-url",
            &url("restored"),
            "-j",
            "2",
            "--force",
        ],
        &[],
    );
    assert!(o.status.success(), "restore failed: {}", output_text(&o));
    let mut restored = postgres::Client::connect(&url("restored"), postgres::NoTls).unwrap();
    assert_eq!(shape(&mut restored), before);
    assert_eq!(contents(&mut restored), data);

    let o = firedrill(
        &[
            "drill",
            "--json",
            "--store",
            &store,
            &id,
            "--drill-url",
            &url("postgres"),
            "-j",
            "2",
        ],
        &[],
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("drill printed no report ({e}): {}", output_text(&o)));
    assert!(o.status.success(), "drill failed: {}", output_text(&o));
    let counted = report["databases"][0]["tables"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(counted, SCHEMAS * TABLES, "{report}");
}
