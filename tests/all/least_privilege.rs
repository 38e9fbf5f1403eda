//! The least-privileged roles of docs/ROLES.md, made exactly as documented
//! (LOGIN and the documented grants, nothing more): a backup and a drill
//! with them pass and bring every row back; a backup role missing one piece
//! (BYPASSRLS with a row-level security table, SELECT on a large object)
//! fails the backup naming the object and the fix, and commits nothing.

use crate::backup_restore::{backup_id, file_store, restore};
use crate::harness::{self, firedrill, output_text};
use crate::torture::table_data;
use std::path::Path;

struct Roles {
    db: String,
    owner: String,
    backup: String,
    drill: String,
}

/// A database owned by an ordinary role: tables in two schemas, a
/// sequence, a large object, a table with row-level security (policies
/// that show the backup role nothing); and the backup and drill roles.
fn setup() -> (Roles, u32) {
    let pg = harness::postgres();
    let db = pg.fresh_database("least");
    let roles = Roles {
        owner: format!("{db}_owner"),
        backup: format!("{db}_backup"),
        drill: format!("{db}_drill"),
        db,
    };
    let Roles {
        db,
        owner,
        backup,
        drill,
    } = &roles;
    let mut c = pg.client(db);
    c.batch_execute(&format!(
        "CREATE ROLE {owner};
         GRANT CREATE ON DATABASE {db} TO {owner};
         -- docs/ROLES.md, backup role (the LO grant comes below, per object)
         CREATE ROLE {backup} LOGIN BYPASSRLS;
         GRANT pg_read_all_data TO {backup};
         -- docs/ROLES.md, drill role (on the drill server; here the same cluster)
         CREATE ROLE {drill} LOGIN CREATEDB CREATEROLE;
         GRANT {owner} TO {drill};
         SET ROLE {owner};
         CREATE SCHEMA sales;
         CREATE SCHEMA stock;
         CREATE TABLE sales.orders (id bigserial PRIMARY KEY, item text NOT NULL, placed date);
         INSERT INTO sales.orders (item, placed) SELECT 'item ' || g, DATE '2025-01-01' + g FROM generate_series(1, 500) g;
         CREATE TABLE stock.items (sku text PRIMARY KEY, qty int CHECK (qty >= 0));
         INSERT INTO stock.items SELECT 'sku-' || g, g FROM generate_series(1, 40) g;
         CREATE SEQUENCE stock.batch_no START 1000;
         SELECT nextval('stock.batch_no'), nextval('stock.batch_no');
         CREATE TABLE sales.invoices (id int PRIMARY KEY, order_id bigint REFERENCES sales.orders, doc oid);
         INSERT INTO sales.invoices VALUES (1, 1, lo_from_bytea(0, decode(repeat('cafe', 5000), 'hex')));
         CREATE TABLE sales.private_notes (id int PRIMARY KEY, author text, note text);
         INSERT INTO sales.private_notes SELECT g, 'user' || (g % 3), 'note ' || g FROM generate_series(1, 30) g;
         ALTER TABLE sales.private_notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_notes ON sales.private_notes USING (author = current_user);
         GRANT SELECT ON sales.private_notes TO PUBLIC;
         RESET ROLE;"
    ))
    .unwrap();
    let lo: u32 = c
        .query_one("SELECT doc FROM sales.invoices", &[])
        .unwrap()
        .get(0);
    (roles, lo)
}

fn url_as(role: &str, db: &str) -> String {
    format!(
        "postgres://{role}@127.0.0.1:{}/{db}",
        harness::postgres().port
    )
}

fn manifests(dir: &Path) -> usize {
    walk(dir)
        .iter()
        .filter(|p| p.ends_with("manifest.json"))
        .count()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn try_backup(url: &str, store: &str) -> std::process::Output {
    firedrill(
        &[
            "backup",
            "--json",
            "--database-url",
            url,
            "--store",
            store,
            "--source",
            "least",
        ],
        &[],
    )
}

#[test]
fn the_documented_least_privileged_roles_back_up_and_drill_everything() {
    let pg = harness::postgres();
    let (
        Roles {
            db,
            owner,
            backup,
            drill,
        },
        lo,
    ) = setup();
    let before = table_data(&db);
    let (store, dir) = file_store();

    // Without pg_read_all_data: refused, naming every table and the fix.
    let partial = format!("{db}_partial");
    pg.client(&db)
        .batch_execute(&format!("CREATE ROLE {partial} LOGIN BYPASSRLS"))
        .unwrap();
    let o = try_backup(&url_as(&partial, &db), &store);
    let text = output_text(&o);
    assert!(!o.status.success(), "{text}");
    for t in ["sales.orders", "sales.private_notes", "stock.items"] {
        assert!(text.contains(t), "names {t}: {text}");
    }
    assert!(text.contains("GRANT pg_read_all_data TO"), "{text}");
    assert_eq!(manifests(&dir), 0, "nothing committed: {text}");

    // Without SELECT on the large object: refused, naming it and the fix.
    let o = try_backup(&url_as(&backup, &db), &store);
    let text = output_text(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains(&format!("large object {lo}")), "{text}");
    assert!(
        text.contains(&format!("GRANT SELECT ON LARGE OBJECT {lo} TO")),
        "{text}"
    );
    assert_eq!(manifests(&dir), 0, "nothing committed: {text}");

    pg.client(&db)
        .batch_execute(&format!("GRANT SELECT ON LARGE OBJECT {lo} TO {backup}"))
        .unwrap();
    // Without BYPASSRLS: refused, naming the table and the fix.
    pg.client(&db)
        .batch_execute(&format!("ALTER ROLE {backup} NOBYPASSRLS"))
        .unwrap();
    let o = try_backup(&url_as(&backup, &db), &store);
    let text = output_text(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("sales.private_notes"), "{text}");
    assert!(text.contains("BYPASSRLS"), "{text}");
    assert_eq!(manifests(&dir), 0, "nothing committed: {text}");

    // Exactly the documented role: the backup holds every row.
    pg.client(&db)
        .batch_execute(&format!("ALTER ROLE {backup} BYPASSRLS"))
        .unwrap();
    let id = backup_id(
        &[
            "--database-url",
            &url_as(&backup, &db),
            "--store",
            &store,
            "--source",
            "least",
        ],
        &[],
    );
    assert_eq!(manifests(&dir), 1);

    // The drill, as the documented drill role.
    let o = firedrill(
        &[
            "drill",
            "--json",
            "--store",
            &store,
            &id,
            "--drill-url",
            &url_as(&drill, "postgres"),
        ],
        &[],
    );
    assert!(o.status.success(), "drill as {drill}: {}", output_text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report:#}");

    // And restored by the drill role, the data is the source's, row for row.
    let target = format!("{db}_restored");
    let o = restore(
        &[
            "--store",
            &store,
            &id,
            "--target-url",
            &url_as(&drill, &target),
        ],
        &[],
    );
    assert!(
        o.status.success(),
        "restore as {drill}: {}",
        output_text(&o)
    );
    assert_eq!(table_data(&target), before);
    let restored_owner: String = pg
        .client(&target)
        .query_one(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE relname = 'orders'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(restored_owner, owner);
}

/// pg_dump leaves a database's subscriptions out for a role that is not a
/// superuser, with only a warning: such a backup used to succeed without
/// them. Now it fails, naming them and the fix, and commits nothing.
#[test]
fn a_subscription_only_a_superuser_can_dump_fails_the_backup_of_a_lesser_role() {
    let pg = harness::postgres();
    let db = pg.fresh_database("least_sub");
    let backup = format!("{db}_backup");
    let mut c = pg.client(&db);
    c.batch_execute(&format!(
        "CREATE ROLE {backup} LOGIN BYPASSRLS; GRANT pg_read_all_data TO {backup};
         CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);"
    ))
    .unwrap();
    // No publisher is ever reached: made disabled, without a slot.
    c.batch_execute(&format!(
        "CREATE SUBSCRIPTION {db}_feed CONNECTION 'host=127.0.0.1 port=1 dbname=nowhere' PUBLICATION p
         WITH (connect = false, enabled = false, create_slot = false, slot_name = NONE)"
    ))
    .unwrap();
    let (store, dir) = file_store();
    let o = try_backup(&url_as(&backup, &db), &store);
    let text = output_text(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains(&format!("{db}_feed")), "{text}");
    assert!(text.contains("superuser"), "{text}");
    assert_eq!(manifests(&dir), 0, "nothing committed: {text}");
    // A superuser backs it up, subscription included.
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "least",
        ],
        &[],
    );
    assert_eq!(manifests(&dir), 1, "{id}");
}
