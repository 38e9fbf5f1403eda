//! A logical restore applies post-data side by side over its connections
//! (`restore/post_data.rs`): the restored database must hold exactly the
//! source's indexes, keys and their states, whatever ran beside what.

use crate::backup_restore::{backup, file_store, restore};
use crate::harness::{self, output_text};
use firedrill::servers::local_pg::LocalCluster;
use std::process::Command;

fn url(cluster: &LocalCluster, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{db}", cluster.port())
}

/// Every index, key and their states, comments, clustering and replica
/// identity, and each table's rows, as comparable text.
fn catalog(client: &mut postgres::Client) -> Vec<String> {
    let queries = [
        "SELECT 'index ' || schemaname || '.' || tablename || ' ' || indexname || ' ' || indexdef || ' tablespace ' || coalesce(tablespace, '-')
         FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        "SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
                || ' validated ' || convalidated || ' deferrable ' || condeferrable || ' deferred ' || condeferred
         FROM pg_constraint WHERE connamespace <> 'pg_catalog'::regnamespace AND contype <> 'n' ORDER BY 1",
        "SELECT 'comment ' || c.relname || ' ' || d.description FROM pg_description d JOIN pg_class c ON c.oid = d.objoid
         WHERE d.classoid = 'pg_class'::regclass ORDER BY 1",
        "SELECT 'comment on constraint ' || c.conname || ' ' || d.description FROM pg_description d JOIN pg_constraint c ON c.oid = d.objoid
         WHERE d.classoid = 'pg_constraint'::regclass ORDER BY 1",
        "SELECT 'clustered ' || i.indexrelid::regclass::text FROM pg_index i WHERE i.indisclustered ORDER BY 1",
        "SELECT 'replica identity ' || i.indexrelid::regclass::text FROM pg_index i WHERE i.indisreplident ORDER BY 1",
        "SELECT 'invalid index ' || i.indexrelid::regclass::text FROM pg_index i WHERE NOT i.indisvalid ORDER BY 1",
    ];
    let mut out = Vec::new();
    for q in queries {
        for r in client.query(q, &[]).unwrap() {
            out.push(r.get::<_, String>(0));
        }
    }
    let tables: Vec<String> = client
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    for t in tables {
        let r = client
            .query_one(
                &format!("SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"),
                &[],
            )
            .unwrap();
        out.push(format!(
            "rows {t} {} {}",
            r.get::<_, i64>(0),
            r.get::<_, String>(1)
        ));
    }
    out
}

fn assert_same(before: &[String], after: &[String], what: &str) {
    let missing: Vec<_> = before.iter().filter(|l| !after.contains(l)).collect();
    let extra: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:#?}\nextra {extra:#?}"
    );
}

#[test]
fn post_data_side_by_side_restores_every_index_and_key_as_it_was() {
    let pg = LocalCluster::start_tcp(&harness::tempdir("postdata"), &[]).unwrap();
    let mut admin = postgres::Client::connect(&url(&pg, "postgres"), postgres::NoTls).unwrap();
    // An index in a tablespace of its own: pg_dump switches
    // default_tablespace around it, a setting each connection must follow.
    let space = harness::tempdir("postdata-space");
    Command::new("chown")
        .arg("postgres:postgres")
        .arg(&space)
        .status()
        .unwrap();
    for statement in [
        format!("CREATE TABLESPACE fast LOCATION '{}'", space.display()),
        "CREATE DATABASE app".into(),
    ] {
        admin.batch_execute(&statement).unwrap();
    }
    let mut app = postgres::Client::connect(&url(&pg, "app"), postgres::NoTls).unwrap();
    app.batch_execute(
        r#"
        CREATE TABLE "Users" (id bigint PRIMARY KEY, email text NOT NULL, org int NOT NULL);
        CREATE UNIQUE INDEX users_email ON "Users" (lower(email));
        CREATE TABLE orgs (id int PRIMARY KEY, owner bigint, parent int REFERENCES orgs (id) DEFERRABLE INITIALLY DEFERRED);
        ALTER TABLE "Users" ADD FOREIGN KEY (org) REFERENCES orgs (id);
        ALTER TABLE orgs ADD CONSTRAINT orgs_owner FOREIGN KEY (owner) REFERENCES "Users" (id);
        CREATE TABLE items (id bigint, user_id bigint REFERENCES "Users" (id), sku text NOT NULL, during tstzrange, qty int);
        ALTER TABLE items ADD PRIMARY KEY (id);
        CREATE INDEX items_user ON items (user_id) WHERE qty > 0;
        CREATE INDEX items_sku ON items (sku) TABLESPACE fast;
        CREATE INDEX items_sku_hash ON items USING hash (sku);
        CREATE UNIQUE INDEX items_id_sku ON items (id, sku);
        ALTER TABLE items ADD CONSTRAINT items_no_overlap EXCLUDE USING gist (during WITH &&);
        COMMENT ON INDEX items_sku IS 'lookups by sku';
        ALTER TABLE items CLUSTER ON items_sku;
        ALTER TABLE items REPLICA IDENTITY USING INDEX items_id_sku;
        CREATE TABLE "odd ""name" (k int CONSTRAINT "odd key" PRIMARY KEY, ref int);
        ALTER TABLE "odd ""name" ADD CONSTRAINT "odd ref" FOREIGN KEY (ref) REFERENCES "odd ""name" (k);
        -- Rows the keys never saw: they must stay NOT VALID, and the restore pass.
        CREATE TABLE legacy (id int, user_id bigint, amount int);
        INSERT INTO legacy VALUES (1, 999999, -5);
        ALTER TABLE legacy ADD CONSTRAINT legacy_user FOREIGN KEY (user_id) REFERENCES "Users" (id) NOT VALID;
        ALTER TABLE legacy ADD CONSTRAINT legacy_positive CHECK (amount > 0) NOT VALID;
        COMMENT ON CONSTRAINT legacy_user ON legacy IS 'old rows predate the key';
        -- A partition tree: the parent's own index and key, attached ones,
        -- a key referencing the partitioned table.
        CREATE TABLE events (id bigint, at date, user_id bigint, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
        CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
        CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
        CREATE INDEX events_user ON events (user_id);
        ALTER TABLE events ADD FOREIGN KEY (user_id) REFERENCES "Users" (id);
        CREATE TABLE event_notes (event_id bigint, at date, note text, FOREIGN KEY (event_id, at) REFERENCES events);
        INSERT INTO orgs SELECT g, NULL, NULLIF(g - 1, 0) FROM generate_series(1, 50) g;
        INSERT INTO "Users" SELECT g, 'u' || g || '@example.com', 1 + g % 50 FROM generate_series(1, 20000) g;
        UPDATE orgs SET owner = id;
        INSERT INTO items SELECT g, 1 + g % 20000, 'sku-' || (g % 977) || '-' || g,
                                 tstzrange('2026-01-01'::timestamptz + g * interval '1 minute', '2026-01-01'::timestamptz + (g + 1) * interval '1 minute'), g % 5
        FROM generate_series(1, 40000) g;
        INSERT INTO "odd ""name" SELECT g, NULLIF(g - 1, 0) FROM generate_series(1, 1000) g;
        INSERT INTO events SELECT g, date '2026-06-01' + (g % 400), 1 + g % 20000 FROM generate_series(1, 30000) g;
        INSERT INTO event_notes SELECT id, at, 'n' FROM events WHERE id % 3 = 0;
        "#,
    )
    .unwrap();
    let before = catalog(&mut app);
    assert!(before
        .iter()
        .any(|l| l.contains("items_sku") && l.ends_with("tablespace fast")));
    assert!(before
        .iter()
        .any(|l| l.contains("legacy_user") && l.contains("validated false")));

    let (store, _) = file_store();
    let summary = backup(
        &[
            "--database-url",
            &url(&pg, "app"),
            "--store",
            &store,
            "--source",
            "postdata",
            "--no-globals",
        ],
        &[],
    );
    let id = summary["id"].as_str().unwrap();
    for jobs in ["1", "4"] {
        let target = format!("restored_{jobs}");
        let o = restore(
            &[
                "--store",
                &store,
                id,
                "--target-url",
                &url(&pg, &target),
                "-j",
                jobs,
            ],
            &[],
        );
        assert!(o.status.success(), "-j {jobs}: {}", output_text(&o));
        let mut restored = postgres::Client::connect(&url(&pg, &target), postgres::NoTls).unwrap();
        assert_same(&before, &catalog(&mut restored), &format!("-j {jobs}"));
    }
}

/// A table stored in several chunks: before PostgreSQL 16 (where a table's
/// extension lock makes more than two COPYs into it wait) it loads in two
/// parts side by side; from 16 on chunk by chunk; with one connection whole
/// in one transaction, truncated first so its rows go in frozen. Every way,
/// every row, index and key is there.
#[test]
fn a_table_in_many_chunks_restores_whole_on_every_server() {
    let pg = harness::postgres();
    let db = pg.fresh_database("chunked");
    let mut app = pg.client(&db);
    app.batch_execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, body text NOT NULL);
         CREATE INDEX big_body ON big (body);
         CREATE TABLE small (id int PRIMARY KEY, big_id bigint REFERENCES big (id));
         INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 40000) g;
         INSERT INTO small SELECT g, g FROM generate_series(1, 1000) g;",
    )
    .unwrap();
    let before = catalog(&mut app);
    let (store, dir) = file_store();
    let summary = backup(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "chunked",
            "--chunk-size",
            "1MiB",
            "--no-globals",
        ],
        &[],
    );
    let id = summary["id"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("chunked").join(id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let chunks = manifest["databases"][0]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "big")
        .unwrap()["chunks"]
        .as_array()
        .unwrap()
        .len();
    assert!(chunks > 3, "big is stored in {chunks} chunks");

    let pg17 = harness::postgres_from(&harness::pg_bin(17));
    for (server, target, jobs) in [
        (&*pg17, "chunked_on_17", "2"),
        (pg, "chunked_here", "2"),
        (pg, "chunked_one", "1"),
    ] {
        let o = restore(
            &[
                "--store",
                &store,
                id,
                "--target-url",
                &server.url(target),
                "-j",
                jobs,
            ],
            &[],
        );
        assert!(o.status.success(), "{target}: {}", output_text(&o));
        let mut restored = server.client(target);
        assert_same(&before, &catalog(&mut restored), target);
    }
    let mut one = pg.client("chunked_one");
    one.batch_execute("CREATE EXTENSION pg_visibility").unwrap();
    let unfrozen: i64 = one
        .query_one(
            "SELECT count(*) FROM pg_visibility_map('big') WHERE NOT all_frozen",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unfrozen, 0, "big was loaded in one stream, frozen");
}
