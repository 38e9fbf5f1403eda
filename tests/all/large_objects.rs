//! Large objects (`lo_from_bytea`, `lo_import`): their bytes, owners and
//! grants survive backup -> restore, a drill checks them against the
//! manifest, and a lost or damaged large-object chunk fails the drill
//! naming it.

use crate::backup_restore::{backup_id, file_store, restore};
use crate::harness::{self, firedrill, output_text};
use std::path::Path;

/// A database with several large objects: one over 1 MiB (several data
/// rows, and several chunks at a small chunk size), one empty, one owned by
/// another role with SELECT granted to a third; returns (database, owner
/// role, reader role).
fn seeded(prefix: &str) -> (String, String, String) {
    let pg = harness::postgres();
    let db = pg.fresh_database(prefix);
    let (owner, reader) = (format!("{db}_owner"), format!("{db}_reader"));
    pg.client(&db)
        .batch_execute(&format!(
            "CREATE ROLE {owner}; CREATE ROLE {reader};
             CREATE TABLE docs (id int PRIMARY KEY, body oid);
             INSERT INTO docs VALUES
               (1, lo_from_bytea(0, convert_to('hello, large object', 'UTF8'))),
               (2, lo_from_bytea(0, '')),
               (3, lo_from_bytea(0, (SELECT string_agg(sha256(int4send(g)), '') FROM generate_series(1, 80000) g))),
               (4, lo_from_bytea(0, '\\x00ff00ff'));"
        ))
        .unwrap();
    // ALTER LARGE OBJECT takes a literal oid.
    let mut c = pg.client(&db);
    let oid: u32 = c
        .query_one("SELECT body FROM docs WHERE id = 4", &[])
        .unwrap()
        .get(0);
    c.batch_execute(&format!(
        "ALTER LARGE OBJECT {oid} OWNER TO {owner}; GRANT SELECT ON LARGE OBJECT {oid} TO {reader}"
    ))
    .unwrap();
    (db, owner, reader)
}

/// Each large object as (oid, owner, ACL, length, md5 of its bytes).
fn large_objects(db: &str) -> Vec<String> {
    harness::postgres()
        .client(db)
        .query(
            "SELECT m.oid::text || ' ' || pg_get_userbyid(m.lomowner) || ' ' || coalesce(m.lomacl::text, '-') || ' '
                    || length(lo_get(m.oid)) || ' ' || md5(lo_get(m.oid))
             FROM pg_largeobject_metadata m ORDER BY m.oid",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

fn manifest(dir: &Path, source: &str, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(source).join(id).join("manifest.json")).unwrap())
        .unwrap()
}

fn drill(store: &str, id: &str) -> (std::process::Output, serde_json::Value) {
    let o = firedrill(
        &[
            "drill",
            "--json",
            "--store",
            store,
            id,
            "--drill-url",
            &harness::postgres().url("postgres"),
        ],
        &[],
    );
    let report = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, report)
}

#[test]
fn large_objects_come_back_with_their_bytes_owners_and_grants() {
    let pg = harness::postgres();
    let (db, owner, reader) = seeded("lo_src");
    let before = large_objects(&db);
    assert_eq!(before.len(), 4, "{before:#?}");
    assert!(
        before
            .iter()
            .any(|l| l.contains(&owner) && l.contains(&reader)),
        "{before:#?}"
    );
    let (store, dir) = file_store();
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "lo",
            "--chunk-size",
            "1MiB",
        ],
        &[],
    );
    let target = format!("{db}_restored");
    let o = restore(
        &[
            "--store",
            &store,
            &id,
            "--target-url",
            &pg.url(&target),
            "-j",
            "2",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(large_objects(&target), before);
    // The table that points at them came back too, and still points at them.
    let n: i64 = pg
        .client(&target)
        .query_one(
            "SELECT count(*) FROM docs JOIN pg_largeobject_metadata m ON m.oid = docs.body",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
    let m = manifest(&dir, "lo", &id);
    let los = &m["databases"][0]["large_objects"];
    assert_eq!(los["count"], 4, "{m:#}");
    assert_eq!(los["bytes"], 19 + 80000 * 32 + 4, "{m:#}");
    // Over 1 MiB of data at a 1 MiB chunk size: more than one chunk.
    assert!(los["chunks"].as_array().unwrap().len() >= 2, "{los:#}");

    let (o, r) = drill(&store, &id);
    assert!(o.status.success(), "{}", output_text(&o));
    let check = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "large-objects")
        .unwrap_or_else(|| panic!("no large-objects check: {r:#}"));
    assert_eq!(check["status"], "pass", "{r:#}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("4 large objects"),
        "{check:#}"
    );
}

#[test]
fn a_lost_or_damaged_large_object_chunk_fails_the_drill_naming_it() {
    let pg = harness::postgres();
    let (db, _, _) = seeded("lo_bad");
    let (store, dir) = file_store();
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "lob",
        ],
        &[],
    );
    let m = manifest(&dir, "lob", &id);
    let rel = m["databases"][0]["large_objects"]["chunks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rel.ends_with(".lo.zst"), "{rel}");
    let path = dir.join("lob").join(&id).join(&rel);
    let original = std::fs::read(&path).unwrap();

    let mut damaged = original.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x55;
    std::fs::write(&path, &damaged).unwrap();
    let (o, r) = drill(&store, &id);
    assert!(!o.status.success(), "{}", output_text(&o));
    assert_eq!(r["passed"], false, "{r:#}");
    assert!(
        output_text(&o).contains(&rel),
        "names {rel}: {}",
        output_text(&o)
    );

    std::fs::remove_file(&path).unwrap();
    let (o, _) = drill(&store, &id);
    assert!(!o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(&rel),
        "names {rel}: {}",
        output_text(&o)
    );

    std::fs::write(&path, &original).unwrap();
    let (o, r) = drill(&store, &id);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(r["passed"], true, "{r:#}");
}

#[test]
fn restore_by_hand_loads_large_objects_too() {
    let pg = harness::postgres();
    let (db, _, _) = seeded("lo_hand");
    let (store, dir) = file_store();
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "loh",
            "--chunk-size",
            "1MiB",
        ],
        &[],
    );
    let target = pg.fresh_database("lo_hand_target");
    crate::backup_restore::restore_by_hand(&dir.join("loh").join(&id), &db, &target, &[]);
    assert_eq!(large_objects(&target), large_objects(&db));
}

#[test]
fn the_drill_reads_large_objects_back_and_fails_on_a_difference_or_an_old_backup() {
    let pg = harness::postgres();
    let (db, _, _) = seeded("lo_check");
    let (store, dir) = file_store();
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "loc",
            "--chunk-size",
            "1MiB",
        ],
        &[],
    );
    let path = dir.join("loc").join(&id).join("manifest.json");
    let original = std::fs::read(&path).unwrap();
    let check_of = |r: &serde_json::Value| {
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "large-objects")
            .unwrap_or_else(|| panic!("no large-objects check: {r:#}"))
            .clone()
    };
    // The recorded checksum of the data read back differs (the objects
    // restored are not the ones backed up): the check names the chunk.
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let chunk = &mut m["databases"][0]["large_objects"]["chunks"][1];
    let rel = chunk["path"].as_str().unwrap().to_string();
    chunk["raw_sha256"] = serde_json::json!("00".repeat(32));
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let (o, r) = drill(&store, &id);
    assert!(!o.status.success(), "{}", output_text(&o));
    let c = check_of(&r);
    assert_eq!(c["status"], "fail", "{r:#}");
    assert!(c["detail"].as_str().unwrap().contains(&rel), "{c:#}");

    // A backup from before large objects were backed up: the objects come
    // back empty from pre-data, and the drill says so instead of passing.
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
    m["databases"][0]
        .as_object_mut()
        .unwrap()
        .remove("large_objects");
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let (o, r) = drill(&store, &id);
    assert!(!o.status.success(), "{}", output_text(&o));
    let c = check_of(&r);
    assert_eq!(c["status"], "fail", "{r:#}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("4 large objects restored"),
        "{c:#}"
    );
}
