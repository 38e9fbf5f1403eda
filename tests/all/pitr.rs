//! Point-in-time recovery: a physical base backup over the replication
//! protocol, the WAL streamed into the archive while the source keeps
//! writing, and restores to chosen moments, each proven by the rows present
//! at exactly that moment; `wal verify` on a whole archive and on one with
//! a hole; the streamer killed and restarted without a gap; a timeline
//! switch followed.

use crate::backup_restore::file_store;
use crate::harness::{self, firedrill, firedrill_command, output_text, pg_bin, postgres_from};
use firedrill::archive::{Store, StoreOptions};
use firedrill::jobs::restore::physical::{self, PhysicalRestoreOptions, RecoveryTarget};
use firedrill::jobs::wal::fetch::FetchServer;
use firedrill::jobs::JobError;
use firedrill::servers::local_pg::LocalCluster;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Starts `firedrill wal stream` of `url` into `store` as source `source`
/// (a heartbeat every second, the segment in progress archived every two).
pub(crate) fn start_streamer(store: &str, url: &str, source: &str) -> Child {
    firedrill_command(
        &[
            "wal",
            "stream",
            "--database-url",
            url,
            "--source",
            source,
            "--heartbeat",
            "1s",
            "--partial-every",
            "2s",
        ],
        &[("FIREDRILL_STORE", store.to_string())],
    )
    .env("RUST_LOG", "info")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap()
}

/// Stops a streamer as an operator (or systemd) does: SIGTERM, then it
/// stores the segment in progress and exits 0.
pub(crate) fn stop_streamer(child: Child) -> String {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let text = output_text(&o);
    assert!(o.status.success(), "the streamer failed: {text}");
    text
}

/// Waits until the source's slot is streaming (the streamer is connected).
pub(crate) fn wait_streaming(client: &mut postgres::Client, slot: &str) {
    let start = Instant::now();
    loop {
        let active: Option<bool> = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .unwrap()
            .map(|r| r.get(0));
        if active == Some(true) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the streamer never connected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every streamer (every replication slot of the server) is
/// connected and has received everything the server has written so far:
/// what a stop then stores as the partial segment. By slot, not by
/// connection: a base backup's walsender shares the streamers' name and
/// may linger, and a streamer reconnecting has no row of its own. Up to
/// the insert position: with synchronous_commit off (the test clusters'),
/// the write position may still stop short of the last commit's record.
pub(crate) fn wait_received(client: &mut postgres::Client) {
    let target: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);
    let start = Instant::now();
    loop {
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE r.write_lsn >= $1::text::pg_lsn)
                   FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid",
                &[&target],
            )
            .unwrap();
        let (slots, caught_up): (i64, i64) = (row.get(0), row.get(1));
        if slots > 0 && caught_up == slots {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the streamers never caught up ({caught_up} of {slots} slots)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn physical_backup(store: &str, url: &str, source: &str) -> String {
    let o = firedrill(
        &[
            "backup",
            "--physical",
            "--json",
            "--database-url",
            url,
            "--source",
            source,
        ],
        &[("FIREDRILL_STORE", store.to_string())],
    );
    assert!(
        o.status.success(),
        "physical backup failed: {}",
        output_text(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Restores backup `id` of `source` to `target` in this process, keeping
/// the promoted server running for the test to query.
pub(crate) fn restore_to(
    store_url: &str,
    source: &str,
    id: &str,
    target: RecoveryTarget,
) -> (physical::PhysicalRestoreSummary, LocalCluster) {
    let store = Store::open(store_url, &StoreOptions::default()).unwrap();
    try_restore(&store, source, id, target.clone())
        .unwrap_or_else(|e| panic!("restore to {target:?} failed: {e}"))
}

/// [`restore_to`] with the store given (its keys), the failure returned.
pub(crate) fn try_restore(
    store: &Store,
    source: &str,
    id: &str,
    target: RecoveryTarget,
) -> Result<(physical::PhysicalRestoreSummary, LocalCluster), JobError> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let backup = firedrill::archive::open_backup(store, source, id).await?;
        let system_id = backup.manifest.physical.as_ref().unwrap().system_id.clone();
        let (_wal, restore_command) = FetchServer::for_restore(
            store,
            source,
            &system_id,
            Path::new(env!("CARGO_BIN_EXE_firedrill")),
        )?;
        let opts = PhysicalRestoreOptions {
            data_dir: harness::tempdir("pitr-restore").join("data"),
            force: false,
            target,
            restore_command: Some(restore_command),
            env: vec![],
            progress: Default::default(),
            keep_running: true,
        };
        let (summary, cluster) = physical::run(store, &backup, &opts).await?;
        Ok((summary, cluster.expect("kept running")))
    })
}

/// `firedrill drill <id> --json` with the PostgreSQL of `bin`: the report,
/// and everything the command said (for messages).
pub(crate) fn drill_json(store: &str, id: &str, bin: &Path) -> (serde_json::Value, String) {
    let o = firedrill(
        &["drill", id, "--json"],
        &[
            ("FIREDRILL_STORE", store.to_string()),
            ("FIREDRILL_PG_BIN", bin.display().to_string()),
        ],
    );
    let text = output_text(&o);
    let report =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not a report ({e}): {text}"));
    (report, text)
}

/// The status of check `name` in a drill report.
pub(crate) fn check_status(report: &serde_json::Value, name: &str, text: &str) -> String {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no check {name}: {text}"))
}

/// Rows per batch in the restored copy.
pub(crate) fn batches(cluster: &LocalCluster) -> Vec<(i32, i64)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = cluster.url("postgres").connect().await.unwrap();
        c.query(
            "SELECT batch, count(*) FROM t GROUP BY batch ORDER BY batch",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    })
}

pub(crate) fn insert_batch(client: &mut postgres::Client, batch: i32) {
    client
        .execute(
            "INSERT INTO t (batch, payload) SELECT $1, md5(g::text) || repeat('x', 200) FROM generate_series(1, 1000) g",
            &[&batch],
        )
        .unwrap();
}

/// A moment strictly between two writes: the server's clock, after the
/// last commit, with a pause on either side.
pub(crate) fn moment(client: &mut postgres::Client) -> String {
    std::thread::sleep(Duration::from_millis(1100));
    let t: String = client
        .query_one("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(1100));
    t
}

#[test]
fn restores_to_three_moments_from_a_base_backup_and_streamed_wal() {
    let pg = postgres_from(&pg_bin(15));
    let url = pg.url("postgres");
    let (store, _) = file_store();
    let source = "pitr";
    let mut client = pg.client("postgres");
    client
        .batch_execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, batch int NOT NULL, payload text)",
        )
        .unwrap();
    insert_batch(&mut client, 0);
    let streamer = start_streamer(&store, &url, source);
    wait_streaming(&mut client, "firedrill_pitr");
    let id = physical_backup(&store, &url, source);

    // Three moments, each after a batch; batches 1 and 2 end in switched
    // (whole) segments, batches 3 and 4 only in the partial one.
    let mut moments = vec![];
    for batch in 1..=3 {
        insert_batch(&mut client, batch);
        if batch < 3 {
            client.batch_execute("SELECT pg_switch_wal()").unwrap();
        }
        moments.push(moment(&mut client));
    }
    insert_batch(&mut client, 4);
    wait_received(&mut client);
    let said = stop_streamer(streamer);
    assert!(said.contains("stopped at"), "{said}");

    let o = firedrill(
        &["wal", "verify", "--source", source, "--deep"],
        &[("FIREDRILL_STORE", store.clone())],
    );
    assert!(o.status.success(), "wal verify: {}", output_text(&o));
    assert!(output_text(&o).contains("is whole"), "{}", output_text(&o));

    for (i, t) in moments.iter().enumerate() {
        let (summary, cluster) = restore_to(&store, source, &id, RecoveryTarget::Time(t.clone()));
        let want: Vec<(i32, i64)> = (0..=i as i32 + 1).map(|b| (b, 1000)).collect();
        assert_eq!(
            batches(&cluster),
            want,
            "restored to {t} (reached {} at {:?})",
            summary.reached_lsn,
            summary.reached_time
        );
    }
    // As far as the archive goes: the partial segment's WAL too.
    let (_, cluster) = restore_to(&store, source, &id, RecoveryTarget::Latest);
    assert_eq!(
        batches(&cluster),
        (0..=4).map(|b| (b, 1000)).collect::<Vec<_>>()
    );
}

/// The point-in-time drill on PostgreSQL 18: a random moment after the
/// backup, the heartbeat found where it must be, amcheck clean.
#[test]
fn a_point_in_time_drill_passes_on_postgres_18() {
    let bin = pg_bin(18);
    let pg = postgres_from(&bin);
    let url = pg.url("postgres");
    let (store, _) = file_store();
    let source = "pitr18";
    let mut client = pg.client("postgres");
    client
        .batch_execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, batch int NOT NULL, payload text)",
        )
        .unwrap();
    insert_batch(&mut client, 0);
    let streamer = start_streamer(&store, &url, source);
    wait_streaming(&mut client, "firedrill_pitr18");
    let id = physical_backup(&store, &url, source);
    // Writes and heartbeats after the backup, long enough for the drill's
    // window (a heartbeat each second, the partial segment every two).
    for batch in 1..=6 {
        insert_batch(&mut client, batch);
        std::thread::sleep(Duration::from_secs(2));
    }
    wait_received(&mut client);
    stop_streamer(streamer);
    let (report, text) = drill_json(&store, &id, &bin);
    let status = |name: &str| check_status(&report, name, &text);
    for check in ["wal.chain", "pitr.target", "pitr.heartbeat", "amcheck"] {
        assert_eq!(status(check), "pass", "{check}: {text}");
    }
    assert_eq!(report["passed"], true, "{text}");
    let physical = &report["physical"];
    assert!(
        physical["wal_bytes_replayed"].as_u64().unwrap() > 0,
        "{text}"
    );
    assert!(physical["target_time"].is_string(), "{text}");
}

/// The CLI's way: `restore --data-dir` leaves a promoted, stopped data
/// directory; the backup's own configuration is kept aside, never loaded.
#[test]
fn the_cli_restores_a_physical_backup_into_a_data_directory() {
    let pg = postgres_from(&pg_bin(15));
    let url = pg.url("postgres");
    let (store, _) = file_store();
    let mut client = pg.client("postgres");
    client
        .batch_execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, batch int NOT NULL, payload text)",
        )
        .unwrap();
    // A backup's own settings never load on restore: this one would stop
    // any server that read it from starting.
    client
        .batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'not_a_library_anyone_has'")
        .unwrap();
    insert_batch(&mut client, 0);
    let id = physical_backup(&store, &url, "cli");
    let dir = harness::tempdir("pitr-cli").join("data");
    let env = [("FIREDRILL_STORE", store.clone())];
    let o = firedrill(
        &[
            "restore",
            &id,
            "--data-dir",
            dir.to_str().unwrap(),
            "--immediate",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("recovered to"),
        "{}",
        output_text(&o)
    );
    assert!(dir.join("PG_VERSION").exists());
    assert!(dir.join("postgresql.auto.conf.from-backup").exists());
    // Never over a directory that holds something.
    let again = firedrill(
        &[
            "restore",
            &id,
            "--data-dir",
            dir.to_str().unwrap(),
            "--immediate",
        ],
        &env,
    );
    assert!(!again.status.success());
    assert!(
        output_text(&again).contains("--force"),
        "{}",
        output_text(&again)
    );
}

/// The archive_command route: the server pushes each completed segment
/// with `firedrill wal push`, into the same archive layout; a restore to
/// the archive's end has every row of the pushed segments.
#[test]
fn segments_pushed_by_archive_command_restore() {
    let (store, store_dir) = file_store();
    let source = "pushed";
    // The server runs archive_command as its own user (postgres under
    // root); the backups this test takes as root share the store.
    std::fs::create_dir_all(store_dir.join(source).join("wal")).unwrap();
    std::fs::create_dir_all(store_dir.join(".firedrill-tmp")).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        let status = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&store_dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let archive_command = format!(
        // A `-c` value is taken as it is: no quotes around it.
        "archive_command={} wal push %p --source {source} --store {store}",
        env!("CARGO_BIN_EXE_firedrill")
    );
    let cluster = LocalCluster::start_tcp_from(
        &pg_bin(15),
        harness::scratch(),
        &["archive_mode=on", &archive_command],
    )
    .unwrap();
    let url = cluster.url("postgres").secret_url().to_string();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, batch int NOT NULL, payload text)",
        )
        .unwrap();
    let id = physical_backup(&store, &url, source);
    for batch in 1..=2 {
        insert_batch(&mut client, batch);
    }
    let last: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .unwrap()
        .get(0);
    client.batch_execute("SELECT pg_switch_wal()").unwrap();
    let start = Instant::now();
    loop {
        let archived: Option<String> = client
            .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
            .unwrap()
            .get(0);
        let failed: Option<String> = client
            .query_one("SELECT last_failed_wal FROM pg_stat_archiver", &[])
            .unwrap()
            .get(0);
        assert!(
            failed.is_none(),
            "archive_command failed on {failed:?}: {}",
            std::fs::read_to_string(cluster.dir().join("postgres.log")).unwrap_or_default()
        );
        if archived.as_deref() >= Some(last.as_str()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never archived {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = firedrill(
        &["wal", "verify", "--source", source],
        &[("FIREDRILL_STORE", store.clone())],
    );
    assert!(o.status.success(), "wal verify: {}", output_text(&o));
    let (_, restored) = restore_to(&store, source, &id, RecoveryTarget::Latest);
    assert_eq!(batches(&restored), vec![(1, 1000), (2, 1000)]);
}

/// The agent's way: a `kind = "physical"` source is streamed for the
/// agent's lifetime (slot, heartbeat, metrics), backed up and drilled on
/// schedule; SIGTERM stores the segment in progress and the archive is whole.
#[test]
fn an_agent_streams_backs_up_and_drills_a_physical_source() {
    let pg = postgres_from(&pg_bin(15));
    let (store, _) = file_store();
    let port = harness::free_port();
    let config = harness::tempdir("pitr-agent").join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store}\"\n\
             [[source]]\nname = \"phys\"\nkind = \"physical\"\nurls = [\"{}\"]\n\
             backup = \"4s\"\ndrill = \"9s\"\nheartbeat = \"1s\"\nwal_partial_every = \"1s\"\n",
            pg.url("postgres")
        ),
    )
    .unwrap();
    let child = harness::start_agent(&config, port, &[]);
    let mut client = pg.client("postgres");
    wait_streaming(&mut client, "firedrill_phys");
    client
        .batch_execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, batch int NOT NULL, payload text)",
        )
        .unwrap();
    for batch in 0..3 {
        insert_batch(&mut client, batch);
        std::thread::sleep(Duration::from_secs(1));
    }
    // Published every few seconds: the archive's end moves past zero.
    let start = Instant::now();
    loop {
        let metrics = harness::http(port, "GET", "/metrics", &[], "").body;
        let archived = metrics
            .lines()
            .find(|l| l.starts_with("firedrill_wal_archived_lsn{source=\"phys\"}"))
            .map(str::to_string);
        if archived.as_deref().is_some_and(|l| !l.ends_with(" 0")) {
            // What the WAL archive lag alert reads (time() - it).
            assert!(
                metrics.contains("firedrill_wal_caught_up_seconds{source=\"phys\"}"),
                "{metrics}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no archived LSN in /metrics:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let o = harness::run_agent_for(child, 14);
    let log = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{log}");
    assert!(log.contains("physical backup done"), "{log}");
    assert!(log.contains("drill passed"), "{log}");
    assert!(log.contains("WAL streamer stopped"), "{log}");
    let heartbeats: i64 = client
        .query_one(
            "SELECT count(*) FROM firedrill.heartbeat WHERE source = 'phys'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(heartbeats, 1);
    let o = firedrill(
        &["wal", "verify", "--source", "phys"],
        &[("FIREDRILL_STORE", store.clone())],
    );
    assert!(o.status.success(), "wal verify: {}", output_text(&o));
}

/// A server shutting down waits until a walsender's client has flushed
/// what it was sent: the streamer stores the segment in progress and says
/// so, and the clean shutdown completes (it hung while flush was reported
/// at segment ends only); nothing written before it is lost.
#[test]
fn a_clean_shutdown_of_the_source_is_not_held_up_by_the_streamer() {
    let (store, _) = file_store();
    let source = "stopping";
    let mut cluster = LocalCluster::start_tcp_from(&pg_bin(15), harness::scratch(), &[]).unwrap();
    let url = cluster.url("postgres").secret_url().to_string();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, batch int NOT NULL, payload text)",
        )
        .unwrap();
    let streamer = start_streamer(&store, &url, source);
    wait_streaming(&mut client, "firedrill_stopping");
    let id = physical_backup(&store, &url, source);
    insert_batch(&mut client, 1);
    wait_received(&mut client);
    drop(client);
    // A fast shutdown; an immediate one (and an error) only after a minute.
    cluster
        .shutdown_fast(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the source did not shut down cleanly: {e}"));
    let said = stop_streamer(streamer);
    assert!(said.contains("stopped at"), "{said}");
    let (_, restored) = restore_to(&store, source, &id, RecoveryTarget::Latest);
    assert_eq!(batches(&restored), vec![(1, 1000)]);
}
