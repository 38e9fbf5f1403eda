//! Point-in-time recovery under faults: the streamer killed at random
//! moments and the server crashed under it, and still no gap; a segment
//! removed from the archive, named by `wal verify` and the drill; a
//! tampered or foreign segment refused rather than replayed; an encrypted
//! chain restored with the identity only; a timeline switch followed
//! into the same archive.

use crate::backup_restore::file_store;
use crate::harness::{self, firedrill, output_text, pg_bin, postgres_from};
use crate::pitr::{
    batches, insert_batch, moment, physical_backup, restore_to, start_streamer, stop_streamer,
    try_restore, wait_received, wait_streaming,
};
use firedrill::archive::keys::{KeySettings, Keys};
use firedrill::archive::{Store, StoreOptions};
use firedrill::jobs::restore::physical::RecoveryTarget;
use firedrill::servers::local_pg::LocalCluster;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TABLE: &str = "CREATE TABLE t (id bigserial PRIMARY KEY, batch int NOT NULL, payload text)";

fn open_store(url: &str) -> Store {
    Store::open(url, &StoreOptions::default()).unwrap()
}

fn count_rows(client: &mut postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM t", &[])
        .unwrap()
        .get(0)
}

fn restored_count(cluster: &LocalCluster) -> i64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = cluster.url("postgres").connect().await.unwrap();
        c.query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0)
    })
}

fn wal_verify(store: &str, source: &str) -> (i32, String) {
    let o = firedrill(
        &["wal", "verify", "--source", source, "--deep"],
        &[("FIREDRILL_STORE", store.to_string())],
    );
    (o.status.code().unwrap_or(-1), output_text(&o))
}

/// The WAL segment the server writes now.
fn current_segment(client: &mut postgres::Client) -> String {
    client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .unwrap()
        .get(0)
}

/// The whole segments (object and record) stored for `source` on
/// `timeline`, oldest first.
fn stored_segments(dir: &Path, source: &str, timeline: u32) -> Vec<String> {
    let tli = dir.join(source).join("wal").join(format!("{timeline:08X}"));
    let mut names: Vec<String> = std::fs::read_dir(&tli)
        .unwrap_or_else(|e| panic!("{}: {e}", tli.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && tli.join(format!("{n}.json")).exists())
        .collect();
    names.sort();
    names
}

fn segment_file(dir: &Path, source: &str, name: &str) -> PathBuf {
    dir.join(source).join("wal").join(&name[..8]).join(name)
}

/// The walsender serving `slot`, once one is.
fn slot_pid(client: &mut postgres::Client, slot: &str) -> Option<i32> {
    client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .unwrap()
        .and_then(|r| r.get(0))
}

/// Waits until a walsender other than `old` serves `slot`: a streamer
/// (re)connected.
fn wait_new_walsender(url: &str, slot: &str, old: Option<i32>) -> i32 {
    let start = Instant::now();
    loop {
        // A fresh session each time: the server may have just restarted.
        if let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls) {
            if let Some(pid) = slot_pid(&mut c, slot) {
                if Some(pid) != old {
                    return pid;
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no streamer (re)connected to {slot}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `streamer` serves `slot`; if it exits or never does, fails
/// with what it said.
fn connected_or_said(mut streamer: Child, client: &mut postgres::Client, slot: &str) -> Child {
    let start = Instant::now();
    while slot_pid(client, slot).is_none() {
        let exited = streamer.try_wait().unwrap().is_some();
        if exited || start.elapsed() > Duration::from_secs(60) {
            let said = kill_streamer(streamer);
            panic!("the streamer never served {slot}: {said}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    streamer
}

/// SIGKILL: no partial segment stored, no goodbye to the server.
fn kill_streamer(mut child: Child) -> String {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.kill();
    let o = child.wait_with_output().unwrap();
    output_text(&o)
}

/// A small xorshift: the test's random delays, reproducible from the seed
/// it prints.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("PITR_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("PITR_FAULTS_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

#[test]
fn a_streamer_killed_and_a_server_crashed_leave_no_gap() {
    let mut pg = postgres_from(&pg_bin(15));
    let url = pg.url("postgres");
    let (store, _) = file_store();
    let source = "killed";
    let slot = "firedrill_killed";
    let mut client = pg.client("postgres");
    client.batch_execute(TABLE).unwrap();
    insert_batch(&mut client, 0);
    let mut streamer = start_streamer(&store, &url, source);
    let mut walsender = wait_new_walsender(&url, slot, None);
    let id = physical_backup(&store, &url, source);

    // The writer: small transactions without a pause, a segment switch
    // every half second; it reconnects through the server's crash. What
    // it committed is counted on the source at the end.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url) = (stop.clone(), url.clone());
        std::thread::spawn(move || {
            let mut client: Option<postgres::Client> = None;
            let mut switched = Instant::now();
            let mut batch = 1;
            while !stop.load(Ordering::Relaxed) {
                let c = match client.as_mut() {
                    Some(c) if !c.is_closed() => c,
                    _ => {
                        client = postgres::Client::connect(&url, postgres::NoTls).ok();
                        if client.is_none() {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        continue;
                    }
                };
                let wrote = c.execute(
                    "INSERT INTO t (batch, payload) SELECT $1, md5(g::text) FROM generate_series(1, 50) g",
                    &[&batch],
                );
                if wrote.is_err() {
                    client = None;
                    continue;
                }
                batch += 1;
                if switched.elapsed() >= Duration::from_millis(500)
                    && c.batch_execute("SELECT pg_switch_wal()").is_ok()
                {
                    switched = Instant::now();
                }
            }
        })
    };

    let mut rng = Rng::new();
    let mut said = vec![];
    for round in 0..20 {
        std::thread::sleep(rng.millis(200, 2000));
        if round == 10 {
            // The server crashes under a streaming streamer, which must
            // find it again by itself.
            pg.restart();
            walsender = wait_new_walsender(&url, slot, Some(walsender));
            std::thread::sleep(rng.millis(200, 2000));
        }
        said.push(kill_streamer(streamer));
        streamer = start_streamer(&store, &url, source);
        walsender = wait_new_walsender(&url, slot, Some(walsender));
    }
    std::thread::sleep(rng.millis(200, 2000));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let mut client = pg.client("postgres");
    let committed = count_rows(&mut client);
    wait_received(&mut client);
    let last = stop_streamer(streamer);
    let written: i64 = client
        .query_one("SELECT count(DISTINCT batch) FROM t", &[])
        .unwrap()
        .get(0);
    assert!(
        written > 20,
        "the writer hardly wrote: {written} transactions"
    );

    let (code, text) = wal_verify(&store, source);
    assert_eq!(
        code, 0,
        "wal verify: {text}\nstreamers said: {said:#?}\n{last}"
    );
    assert!(text.contains("is whole"), "{text}");
    let (_, restored) = restore_to(&store, source, &id, RecoveryTarget::Latest);
    assert_eq!(
        restored_count(&restored),
        committed,
        "the restore to the archive's end lost rows"
    );
}

/// An archive with `batches_after` segments switched after the backup:
/// the store's URL and directory, the backup, and the segment the server
/// was writing when the backup ended (every later one is after it).
struct Archive {
    store: String,
    dir: PathBuf,
    id: String,
    after: String,
    /// What the streamers said as they stopped, for failure messages.
    said: String,
}

fn archive_with_segments_after(
    source: &str,
    extra_source: Option<&str>,
) -> (Archive, harness::PostgresFrom) {
    let pg = postgres_from(&pg_bin(15));
    let url = pg.url("postgres");
    let (store, dir) = file_store();
    let mut client = pg.client("postgres");
    client.batch_execute(TABLE).unwrap();
    insert_batch(&mut client, 0);
    let mut streamers = vec![start_streamer(&store, &url, source)];
    wait_streaming(&mut client, &format!("firedrill_{source}"));
    if let Some(other) = extra_source {
        streamers.push(start_streamer(&store, &url, other));
        wait_streaming(&mut client, &format!("firedrill_{other}"));
    }
    let id = physical_backup(&store, &url, source);
    let after = current_segment(&mut client);
    for batch in 1..=5 {
        insert_batch(&mut client, batch);
        client.batch_execute("SELECT pg_switch_wal()").unwrap();
    }
    insert_batch(&mut client, 6);
    wait_received(&mut client);
    let said = streamers
        .into_iter()
        .map(stop_streamer)
        .collect::<Vec<_>>()
        .join("\n");
    (
        Archive {
            store,
            dir,
            id,
            after,
            said,
        },
        pg,
    )
}

#[test]
fn a_removed_segment_is_named_by_verify_and_the_drill() {
    let source = "holed";
    let (a, _pg) = archive_with_segments_after(source, None);
    let (code, text) = wal_verify(&a.store, source);
    assert_eq!(code, 0, "{text}");
    let after: Vec<String> = stored_segments(&a.dir, source, 1)
        .into_iter()
        .filter(|n| *n > a.after)
        .collect();
    assert!(after.len() >= 4, "segments after the backup: {after:?}");
    // One segment loses its object, a later one its record: both missing.
    let (gone, unrecorded) = (&after[0], &after[2]);
    std::fs::remove_file(segment_file(&a.dir, source, gone)).unwrap();
    std::fs::remove_file(segment_file(&a.dir, source, &format!("{unrecorded}.json"))).unwrap();

    let (code, text) = wal_verify(&a.store, source);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(gone.as_str()), "{gone} not named: {text}");
    assert!(
        text.contains(unrecorded.as_str()),
        "{unrecorded} not named: {text}"
    );
    assert!(!text.contains("is whole"), "{text}");

    let o = firedrill(
        &["drill", &a.id, "--json"],
        &[
            ("FIREDRILL_STORE", a.store.clone()),
            ("FIREDRILL_PG_BIN", pg_bin(15).display().to_string()),
        ],
    );
    let text = output_text(&o);
    assert!(!o.status.success(), "{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not a report ({e}): {text}"));
    assert_eq!(report["passed"], false, "{text}");
    let chain = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "wal.chain")
        .unwrap_or_else(|| panic!("no wal.chain check: {text}"));
    assert_eq!(chain["status"], "fail", "{text}");
    assert!(
        chain["detail"].as_str().unwrap().contains(gone.as_str()),
        "wal.chain does not name {gone}: {chain}"
    );
}

#[test]
fn a_tampered_or_foreign_segment_is_refused_never_replayed() {
    let source = "tampered";
    let other = "elsewhere";
    let (a, _pg) = archive_with_segments_after(source, Some(other));
    let store = open_store(&a.store);
    let after: Vec<String> = stored_segments(&a.dir, source, 1)
        .into_iter()
        .filter(|n| *n > a.after)
        .collect();
    assert!(after.len() >= 3, "segments after the backup: {after:?}");
    let victim = &after[1];
    let path = segment_file(&a.dir, source, victim);
    let record_path = segment_file(&a.dir, source, &format!("{victim}.json"));
    let original = std::fs::read(&path).unwrap();
    let original_record = std::fs::read(&record_path).unwrap();

    // One byte flipped in the middle of the stored object.
    let mut bent = original.clone();
    let at = bent.len() / 2;
    bent[at] ^= 0x20;
    std::fs::write(&path, &bent).unwrap();
    let (code, text) = wal_verify(&a.store, source);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(victim.as_str()), "{text}");
    refused(&store, source, &a.id, victim, "a tampered segment");

    // The same segment as another source's archive holds it (the same
    // server, so the same WAL): its record says whose it is.
    std::fs::write(&path, &original).unwrap();
    for suffix in ["", ".json"] {
        std::fs::copy(
            segment_file(&a.dir, other, &format!("{victim}{suffix}")),
            segment_file(&a.dir, source, &format!("{victim}{suffix}")),
        )
        .unwrap();
    }
    let (code, text) = wal_verify(&a.store, source);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(victim.as_str()), "{text}");
    refused(&store, source, &a.id, victim, "another source's segment");

    // Put back, the archive restores whole: the refusals were the faults'.
    std::fs::write(&path, &original).unwrap();
    std::fs::write(&record_path, &original_record).unwrap();
    let (summary, restored) = restore_to(&a.store, source, &a.id, RecoveryTarget::Latest);
    assert_eq!(
        batches(&restored),
        (0..=6).map(|b| (b, 1000)).collect::<Vec<_>>(),
        "recovery reached {}; the streamers said:\n{}",
        summary.reached_lsn,
        a.said
    );
}

/// A restore to the archive's end fails, naming `segment`: never a
/// recovery that stops short of it as if the WAL ended there.
fn refused(store: &Store, source: &str, id: &str, segment: &str, what: &str) {
    match try_restore(store, source, id, RecoveryTarget::Latest) {
        Ok((summary, cluster)) => panic!(
            "{what} ({segment}) was replayed or skipped: recovery reached {} with {:?}",
            summary.reached_lsn,
            batches(&cluster)
        ),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains(segment),
                "{what}: the failure does not name {segment}: {e}"
            );
        }
    }
}

#[test]
fn an_encrypted_chain_restores_to_a_moment_with_the_identity() {
    let pg = postgres_from(&pg_bin(15));
    let url = pg.url("postgres");
    let (store, dir) = file_store();
    let source = "sealed";
    let key = harness::tempdir("pitr-keys").join("age.key");
    let o = firedrill(&["keygen", "age", "--out", key.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let recipient = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");

    let mut client = pg.client("postgres");
    client.batch_execute(TABLE).unwrap();
    insert_batch(&mut client, 0);
    let streamer = harness::firedrill_command(
        &[
            "wal",
            "stream",
            "--database-url",
            &url,
            "--source",
            source,
            "--heartbeat",
            "1s",
            "--partial-every",
            "2s",
            "--recipient",
            &recipient,
        ],
        &[("FIREDRILL_STORE", store.clone())],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    wait_streaming(&mut client, "firedrill_sealed");
    let o = firedrill(
        &[
            "backup",
            "--physical",
            "--json",
            "--database-url",
            &url,
            "--source",
            source,
            "--recipient",
            &recipient,
        ],
        &[("FIREDRILL_STORE", store.clone())],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let id = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    insert_batch(&mut client, 1);
    client.batch_execute("SELECT pg_switch_wal()").unwrap();
    let t = moment(&mut client);
    insert_batch(&mut client, 2);
    client.batch_execute("SELECT pg_switch_wal()").unwrap();
    insert_batch(&mut client, 3);
    wait_received(&mut client);
    stop_streamer(streamer);

    // Every stored segment is an age file; none is zstd of plain WAL.
    let segments = stored_segments(&dir, source, 1);
    assert!(segments.len() >= 2, "{segments:?}");
    for name in &segments {
        let bytes = std::fs::read(segment_file(&dir, source, name)).unwrap();
        assert!(
            bytes.starts_with(b"age-encryption.org/v1\n"),
            "{name} is not an age file"
        );
        assert!(
            zstd::decode_all(&bytes[..]).is_err(),
            "{name} decompresses as it is"
        );
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(segment_file(&dir, source, &format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(record["encoding"], "zstd+age-v1", "{record}");
    }

    // Without the identity: nothing restores, and it says what is needed.
    let bare = open_store(&store);
    match try_restore(&bare, source, &id, RecoveryTarget::Time(t.clone())) {
        Ok(_) => panic!("an encrypted chain restored without an identity"),
        Err(e) => assert!(e.to_string().contains("identity"), "{e}"),
    }
    let keys = Keys::load(&KeySettings {
        identity_files: vec![key.clone()],
        ..Default::default()
    })
    .unwrap();
    let sealed = open_store(&store).with_keys(keys);
    let (summary, restored) = try_restore(&sealed, source, &id, RecoveryTarget::Time(t.clone()))
        .unwrap_or_else(|e| panic!("restore to {t} with the identity: {e}"));
    assert_eq!(
        batches(&restored),
        vec![(0, 1000), (1, 1000)],
        "restored to {t} (reached {} at {:?})",
        summary.reached_lsn,
        summary.reached_time
    );
}

#[test]
fn a_timeline_switch_is_followed_into_the_same_archive() {
    let pg = postgres_from(&pg_bin(15));
    let url = pg.url("postgres");
    let (store, dir) = file_store();
    let source = "forked";
    let mut client = pg.client("postgres");
    client.batch_execute(TABLE).unwrap();
    insert_batch(&mut client, 0);
    let streamer = start_streamer(&store, &url, source);
    wait_streaming(&mut client, "firedrill_forked");
    let id = physical_backup(&store, &url, source);
    insert_batch(&mut client, 1);
    client.batch_execute("SELECT pg_switch_wal()").unwrap();
    let fork = moment(&mut client);
    // Written by the original after the fork: on timeline 1 only.
    insert_batch(&mut client, 2);
    client.batch_execute("SELECT pg_switch_wal()").unwrap();
    insert_batch(&mut client, 3);
    wait_received(&mut client);
    stop_streamer(streamer);

    // The copy promoted at the fork writes on timeline 2, streamed into
    // the same source's archive.
    let (summary, copy) = restore_to(&store, source, &id, RecoveryTarget::Time(fork.clone()));
    assert_eq!(summary.timeline, 2, "{summary:?}");
    assert_eq!(batches(&copy), vec![(0, 1000), (1, 1000)]);
    let copy_url = copy.url_as("postgres", "postgres").secret_url().to_string();
    let mut copy_client = postgres::Client::connect(&copy_url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("the copy at {copy_url}: {e}"));
    let streamer = start_streamer(&store, &copy_url, source);
    let streamer = connected_or_said(streamer, &mut copy_client, "firedrill_forked");
    insert_batch(&mut copy_client, 10);
    copy_client.batch_execute("SELECT pg_switch_wal()").unwrap();
    insert_batch(&mut copy_client, 11);
    wait_received(&mut copy_client);
    let said = stop_streamer(streamer);
    drop(copy_client);
    drop(copy);

    let wal = dir.join(source).join("wal");
    assert!(wal.join("00000002.history").exists(), "{said}");
    assert!(wal.join("00000002.history.json").exists(), "{said}");
    let tl2 = stored_segments(&dir, source, 2);
    assert!(!tl2.is_empty(), "no whole segment on timeline 2: {said}");
    let (code, text) = wal_verify(&store, source);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("is whole"), "{text}");

    // The original backup, to the archive's end: through the history to
    // timeline 2, with the copy's rows and none the original wrote after
    // the fork.
    let (summary, restored) = restore_to(&store, source, &id, RecoveryTarget::Latest);
    assert_eq!(
        batches(&restored),
        vec![(0, 1000), (1, 1000), (10, 1000), (11, 1000)],
        "reached {} on timeline {}",
        summary.reached_lsn,
        summary.timeline
    );
    assert_eq!(summary.timeline, 3, "{summary:?}");
}
