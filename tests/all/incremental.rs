//! Incremental physical backups on PostgreSQL 17+: full -> writes ->
//! incremental -> writes -> incremental, each point restored (the chain
//! combined by pg_combinebackup) with exactly the data it held; the drill of
//! the newest proves the combined copy and reports the chain; a missing or
//! damaged member is named; the chain-length rule and every reason to fall
//! back to a full backup.

use crate::backup_restore::file_store;
use crate::harness::{self, firedrill, output_text, pg_bin, postgres_from, postgres_from_with};
use crate::pitr::{
    check_status, drill_json, start_streamer, stop_streamer, wait_received, wait_streaming,
};
use firedrill::archive::{open_backup, Store, StoreOptions};
use firedrill::jobs::backup::physical::{self as backup_physical, PhysicalBackupOptions};
use firedrill::jobs::backup::BackupSummary;
use firedrill::jobs::prune::{self, PruneOptions};
use firedrill::jobs::JobError;
use firedrill::servers::local_pg::LocalCluster;
use firedrill::servers::pg::PgUrl;
use std::path::Path;

const TABLE: &str = "CREATE TABLE t (id bigserial PRIMARY KEY, batch int NOT NULL, payload text)";
/// Rows and a digest of every row: what a restored copy must equal.
const DIGEST: &str = "SELECT count(*)::bigint, coalesce(md5(string_agg(id || ':' || batch || ':' || payload, ',' ORDER BY id)), '') FROM t";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// A backup of `url` in this process (the agent's code path, without its
/// lease), incremental when asked.
fn backup(
    store: &Store,
    url: &str,
    source: &str,
    incremental: bool,
    max_chain: usize,
) -> BackupSummary {
    try_backup(store, url, source, incremental, max_chain)
        .unwrap_or_else(|e| panic!("physical backup failed: {e}"))
}

fn try_backup(
    store: &Store,
    url: &str,
    source: &str,
    incremental: bool,
    max_chain: usize,
) -> Result<BackupSummary, JobError> {
    let opts = PhysicalBackupOptions {
        source: source.into(),
        url: PgUrl::parse(url).unwrap(),
        compression_level: 3,
        part_bytes: 8 << 20,
        fast_checkpoint: true,
        incremental,
        max_chain,
        guard: None,
        progress: Default::default(),
    };
    rt().block_on(backup_physical::run(store, &opts))
}

/// `firedrill restore --immediate` of `id` (the WAL inside the backup, no
/// archive) into a new data directory, as an operator runs it; then the
/// restored directory started on its own for the test to query.
fn restore(bin: &Path, store_url: &str, id: &str) -> Result<(String, LocalCluster), String> {
    let dir = harness::tempdir("incremental-restore").join("data");
    let o = firedrill(
        &[
            "restore",
            id,
            "--data-dir",
            dir.to_str().unwrap(),
            "--immediate",
        ],
        &[
            ("FIREDRILL_STORE", store_url.to_string()),
            ("FIREDRILL_PG_BIN", bin.display().to_string()),
        ],
    );
    let said = output_text(&o);
    let left: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".firedrill-chain-"))
        .collect();
    assert!(
        left.is_empty(),
        "the chain's members were left behind: {left:?}"
    );
    if !o.status.success() {
        return Err(said);
    }
    // Handed over with peer authentication; the test connects as postgres.
    std::fs::write(dir.join("pg_hba.conf"), "local all all trust\n").unwrap();
    let run = LocalCluster::private_run_dir(&harness::tempdir("incremental-run")).unwrap();
    let cluster = LocalCluster::start_restored(bin, run, &dir, &[dir.as_path()], &[])
        .unwrap_or_else(|e| panic!("the restored directory does not start: {e}"));
    Ok((said, cluster))
}

fn digest(client: &mut postgres::Client) -> (i64, String) {
    let r = client.query_one(DIGEST, &[]).unwrap();
    (r.get(0), r.get(1))
}

fn restored_digest(cluster: &mut LocalCluster) -> (i64, String) {
    let start = std::time::Instant::now();
    rt().block_on(async {
        let c = loop {
            if let Some(how) = cluster.exited() {
                panic!(
                    "the restored server stopped ({how}): {}",
                    cluster.log_tail(20)
                );
            }
            match cluster.url("postgres").connect().await {
                Ok(c) => break c,
                Err(e) if start.elapsed() > std::time::Duration::from_secs(60) => {
                    panic!("the restored server never accepted a connection: {e}")
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        };
        // A restored cluster that is up is past recovery: promoted.
        let r: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!r, "the restored copy is still recovering");
        let r = c.query_one(DIGEST, &[]).await.unwrap();
        (r.get(0), r.get(1))
    })
}

/// Inserts, updates and deletes a little of `t`, in batch `batch`.
fn write(client: &mut postgres::Client, batch: i32) {
    client
        .batch_execute(&format!(
            "INSERT INTO t (batch, payload) SELECT {batch}, md5(g::text) || repeat('y', 150) FROM generate_series(1, 2000) g;
             UPDATE t SET payload = 'changed in {batch}' WHERE id % 997 = {batch};
             DELETE FROM t WHERE id % 1009 = {batch};"
        ))
        .unwrap();
}

fn open_store(url: &str) -> Store {
    Store::open(url, &StoreOptions::default()).unwrap()
}

#[test]
fn a_chain_restores_each_point_and_its_drill_reports_the_chain() {
    let bin = pg_bin(17);
    let pg = postgres_from_with(&bin, &["summarize_wal=on"]);
    let url = pg.url("postgres");
    let (store_url, _) = file_store();
    let store = open_store(&store_url);
    let source = "chain17";
    let mut client = pg.client("postgres");
    client.batch_execute(TABLE).unwrap();
    // ~40 MB of table: the changed blocks of an incremental are a sliver of it.
    client
        .batch_execute("INSERT INTO t (batch, payload) SELECT 0, md5(g::text) || repeat('x', 200) FROM generate_series(1, 150000) g")
        .unwrap();
    let streamer = start_streamer(&store_url, &url, source);
    wait_streaming(&mut client, "firedrill_chain17");

    let mut points = vec![];
    let full = backup(&store, &url, source, true, 14);
    assert_eq!(full.parent, None);
    assert!(
        full.full_because
            .as_deref()
            .unwrap_or_default()
            .contains("first backup of a chain"),
        "{:?}",
        full.full_because
    );
    points.push((full.id.clone(), digest(&mut client)));
    write(&mut client, 1);
    let inc1 = backup(&store, &url, source, true, 14);
    assert_eq!(
        inc1.parent.as_deref(),
        Some(full.id.as_str()),
        "{:?}",
        inc1.full_because
    );
    points.push((inc1.id.clone(), digest(&mut client)));
    write(&mut client, 2);
    let inc2 = backup(&store, &url, source, true, 14);
    assert_eq!(
        inc2.parent.as_deref(),
        Some(inc1.id.as_str()),
        "{:?}",
        inc2.full_because
    );
    points.push((inc2.id.clone(), digest(&mut client)));
    // What an incremental stores: the changed blocks, not the cluster.
    assert!(
        inc1.raw_bytes * 2 < full.raw_bytes && inc2.raw_bytes * 2 < full.raw_bytes,
        "full {} raw bytes, incrementals {} and {}",
        full.raw_bytes,
        inc1.raw_bytes,
        inc2.raw_bytes
    );
    let m = rt()
        .block_on(open_backup(&store, source, &inc2.id))
        .unwrap()
        .manifest;
    let p = m.physical.unwrap();
    assert_eq!(p.chain, vec![full.id.clone(), inc1.id.clone()]);
    assert_eq!(p.parent.as_deref(), Some(inc1.id.as_str()));

    for (i, (id, want)) in points.iter().enumerate() {
        let (said, mut cluster) =
            restore(&bin, &store_url, id).unwrap_or_else(|e| panic!("restore of {id}: {e}"));
        assert_eq!(
            &restored_digest(&mut cluster),
            want,
            "point {i} ({id}): {said}"
        );
        if i > 0 {
            let chain = points[..=i]
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(" <- ");
            assert!(
                said.contains(&chain),
                "the chain of point {i} is not {chain}: {said}"
            );
            assert!(
                said.contains(&format!("each of the {} members", i + 1)),
                "{said}"
            );
        }
    }

    // The drill of the newest: the combined copy proven like a full one.
    for batch in 3..=5 {
        write(&mut client, batch);
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    wait_received(&mut client);
    stop_streamer(streamer);
    let (report, text) = drill_json(&store_url, &inc2.id, &bin);
    let status = |name: &str| check_status(&report, name, &text);
    for check in [
        "physical.chain",
        "physical.backup_manifest",
        "wal.chain",
        "pitr.target",
        "amcheck",
    ] {
        assert_eq!(status(check), "pass", "{check}: {text}");
    }
    assert_eq!(report["passed"], true, "{text}");
    let chain = report["physical"]["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 3, "{text}");
    assert_eq!(chain[0]["id"], full.id.as_str());
    assert_eq!(chain[2]["id"], inc2.id.as_str());
    assert!(chain
        .iter()
        .all(|c| c["stored_bytes"].as_u64().unwrap() > 0));
    assert!(
        chain[1]["stored_bytes"].as_u64().unwrap() < chain[0]["stored_bytes"].as_u64().unwrap()
    );

    // Retention that keeps only the newest backup keeps its whole chain,
    // whatever the plugin says of the older members.
    let policy = harness::load(
        "retention-count",
        "world = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nlogging = true\nconfig = true\n[config]\nkeep = 1",
    )
    .unwrap();
    let opts = PruneOptions {
        policy: std::sync::Arc::new(policy),
        min_age: std::time::Duration::ZERO,
        abandon_after: std::time::Duration::from_secs(86_400),
        max_deletions: 10,
        dry_run: false,
        source: Some(source.into()),
        pitr_window: None,
    };
    let report = rt().block_on(prune::run(&store, &opts)).unwrap();
    assert!(report.deleted.is_empty(), "{report:#?}");
    // The plugin keeps the one it takes for the newest (ids made within one
    // second may sort either way); the guard keeps the rest of the chain.
    let chain: Vec<_> = [&full.id, &inc1.id, &inc2.id]
        .into_iter()
        .map(|id| report.decisions.iter().find(|d| &d.id == id).unwrap())
        .collect();
    assert!(chain.iter().all(|d| !d.delete), "{chain:#?}");
    assert_eq!(chain.iter().filter(|d| d.guarded).count(), 2, "{chain:#?}");
    let (_, mut cluster) = restore(&bin, &store_url, &inc2.id).expect("the kept chain restores");
    assert_eq!(restored_digest(&mut cluster), points[2].1);
}

#[test]
fn a_missing_or_damaged_member_is_named() {
    let bin = pg_bin(17);
    let pg = postgres_from_with(&bin, &["summarize_wal=on"]);
    let url = pg.url("postgres");
    let (store_url, dir) = file_store();
    let store = open_store(&store_url);
    let source = "broken17";
    let mut client = pg.client("postgres");
    client.batch_execute(TABLE).unwrap();
    write(&mut client, 0);
    let full = backup(&store, &url, source, true, 14);
    write(&mut client, 1);
    let inc1 = backup(&store, &url, source, true, 14);
    write(&mut client, 2);
    let inc2 = backup(&store, &url, source, true, 14);
    assert_eq!(inc2.parent.as_deref(), Some(inc1.id.as_str()));
    // The marker an incremental keeps while it runs is gone once it is done.
    for id in [&inc1.id, &inc2.id] {
        assert!(!dir
            .join(source)
            .join(id)
            .join("in-progress.parent")
            .exists());
    }
    // `list` shows what builds on what.
    let o = firedrill(&["list"], &[("FIREDRILL_STORE", store_url.clone())]);
    let text = output_text(&o);
    assert!(
        text.contains(&format!("incremental on {}", inc1.id)),
        "{text}"
    );
    assert!(
        text.contains(&format!("incremental on {}", full.id)),
        "{text}"
    );

    // A tampered chain: an id that is a path, never used as one.
    let path = dir.join(source).join(&inc2.id).join("manifest.json");
    let genuine = std::fs::read(&path).unwrap();
    let evil = harness::tempdir("incremental-evil");
    let mut m: serde_json::Value = serde_json::from_slice(&genuine).unwrap();
    m["physical"]["chain"][0] = evil.display().to_string().into();
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let said = restore(&bin, &store_url, &inc2.id)
        .err()
        .expect("a tampered chain restores");
    assert!(said.contains("not another backup's id"), "{said}");
    assert_eq!(
        std::fs::read_dir(&evil).unwrap().count(),
        0,
        "written where the manifest said"
    );
    std::fs::write(&path, &genuine).unwrap();

    // A damaged full backup: one byte of its base archive flipped.
    let part = dir
        .join(source)
        .join(&full.id)
        .join("physical/base/00000.tar.zst");
    let mut bytes = std::fs::read(&part).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x5a;
    std::fs::write(&part, &bytes).unwrap();
    let said = restore(&bin, &store_url, &inc2.id)
        .err()
        .expect("a damaged member restores");
    assert!(
        said.contains(&full.id),
        "the damaged member is not named: {said}"
    );

    // A missing incremental in the middle: named by the drill, before anything is unpacked.
    std::fs::remove_dir_all(dir.join(source).join(&inc1.id)).unwrap();
    let o = firedrill(
        &["drill", &inc2.id, "--json"],
        &[
            ("FIREDRILL_STORE", store_url.clone()),
            ("FIREDRILL_PG_BIN", bin.display().to_string()),
        ],
    );
    let text = output_text(&o);
    assert!(
        !o.status.success(),
        "the drill passed without a chain member: {text}"
    );
    assert!(
        text.contains(&inc1.id) && text.contains("missing"),
        "the missing member is not named: {text}"
    );
}

#[test]
fn a_full_backup_is_taken_whenever_an_incremental_one_cannot_be() {
    let (store_url, _) = file_store();
    let store = open_store(&store_url);

    // PostgreSQL 15: no incremental backups at all.
    let pg15 = postgres_from(&pg_bin(15));
    pg15.client("postgres").batch_execute(TABLE).unwrap();
    let s = backup(&store, &pg15.url("postgres"), "old15", true, 14);
    assert_eq!(s.parent, None);
    assert!(
        s.full_because
            .as_deref()
            .unwrap_or_default()
            .contains("PostgreSQL 15"),
        "{:?}",
        s.full_because
    );

    // PostgreSQL 17 without summarize_wal, then with it turned on after the
    // full backup: the summaries do not reach back to it.
    let pg = postgres_from(&pg_bin(17));
    let url = pg.url("postgres");
    let mut client = pg.client("postgres");
    client.batch_execute(TABLE).unwrap();
    write(&mut client, 0);
    let first = backup(&store, &url, "late17", true, 14);
    assert_eq!(first.parent, None);
    write(&mut client, 1);
    let off = backup(&store, &url, "late17", true, 14);
    assert_eq!(off.parent, None);
    assert!(
        off.full_because
            .as_deref()
            .unwrap_or_default()
            .contains("summarize_wal is off"),
        "{:?}",
        off.full_because
    );
    // The WAL since that backup recycled before the summarizer starts: its
    // summaries cannot reach back, and the server says so.
    for _ in 0..3 {
        client.batch_execute("SELECT pg_switch_wal()").unwrap();
        client.batch_execute("CHECKPOINT").unwrap();
    }
    client
        .batch_execute("ALTER SYSTEM SET summarize_wal = on")
        .unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    write(&mut client, 2);
    let refused = backup(&store, &url, "late17", true, 14);
    assert_eq!(
        refused.parent, None,
        "an incremental on a parent the summaries do not reach"
    );
    assert!(
        refused
            .full_because
            .as_deref()
            .unwrap_or_default()
            .contains("refused an incremental backup on"),
        "{:?}",
        refused.full_because
    );
    // From that full backup on, the summaries reach back: incrementals work,
    // until the chain holds max_chain of them.
    write(&mut client, 3);
    let inc = backup(&store, &url, "late17", true, 1);
    assert_eq!(
        inc.parent.as_deref(),
        Some(refused.id.as_str()),
        "{:?}",
        inc.full_because
    );
    write(&mut client, 4);
    let capped = backup(&store, &url, "late17", true, 1);
    assert_eq!(capped.parent, None);
    assert!(
        capped
            .full_because
            .as_deref()
            .unwrap_or_default()
            .contains("max_chain = 1"),
        "{:?}",
        capped.full_because
    );
    // Without asking, a backup is full and says nothing.
    let plain = backup(&store, &url, "late17", false, 14);
    assert_eq!((plain.parent, plain.full_because), (None, None));
}

/// On 18 the chain is combined by linking (`--link`): the restored copy
/// holds exactly the data, and removing the members after leaves it whole.
#[test]
fn a_chain_restores_on_postgres_18() {
    let bin = pg_bin(18);
    let pg = postgres_from_with(&bin, &["summarize_wal=on"]);
    let url = pg.url("postgres");
    let (store_url, _) = file_store();
    let store = open_store(&store_url);
    let source = "chain18";
    let mut client = pg.client("postgres");
    client.batch_execute(TABLE).unwrap();
    write(&mut client, 0);
    let full = backup(&store, &url, source, true, 14);
    write(&mut client, 1);
    let inc = backup(&store, &url, source, true, 14);
    assert_eq!(
        inc.parent.as_deref(),
        Some(full.id.as_str()),
        "{:?}",
        inc.full_because
    );
    let want = digest(&mut client);
    let (said, mut cluster) =
        restore(&bin, &store_url, &inc.id).unwrap_or_else(|e| panic!("restore: {e}"));
    assert!(
        said.contains(&format!("{} <- {}", full.id, inc.id)),
        "{said}"
    );
    assert_eq!(restored_digest(&mut cluster), want);
}
