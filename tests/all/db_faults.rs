//! Database faults: the source restarted in the middle of a backup, a drill
//! server that runs out of disk, a statement timeout on the source. Each is
//! a clean failure that names the cause, nothing half-done is visible (no
//! backup listed as complete, no drill database left), and the next run
//! succeeds.

use crate::backup_restore::{backup, file_store, seed};
use crate::harness::{self, firedrill, firedrill_command, output_text};
use firedrill::servers::local_pg::LocalCluster;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Backups of `store` that `firedrill list` shows as complete.
fn complete(store: &str) -> usize {
    let o = firedrill(&["list", "--json", "--store", store], &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["complete"] == true)
        .count()
}

/// `firedrill drill --latest` of `store` on the drill server `server`.
fn drill_latest(store: &str, server: &str) -> std::process::Output {
    firedrill(
        &["drill", "--latest", "--store", store, "--drill-url", server],
        &[],
    )
}

fn url(cluster: &LocalCluster, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{db}", cluster.port())
}

#[test]
fn the_source_restarted_mid_backup_fails_it_cleanly_and_the_next_one_succeeds() {
    let mut cluster = LocalCluster::start_tcp(&harness::tempdir("restarted"), &[]).unwrap();
    let mut admin = postgres::Client::connect(&url(&cluster, "postgres"), postgres::NoTls).unwrap();
    admin.batch_execute("CREATE DATABASE app").unwrap();
    let mut app = postgres::Client::connect(&url(&cluster, "app"), postgres::NoTls).unwrap();
    app.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 20000) g;")
        .unwrap();
    // A transaction holding the table makes the backup wait there: the
    // restart lands mid-backup, every time.
    let mut holder = postgres::Client::connect(&url(&cluster, "app"), postgres::NoTls).unwrap();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let (store, _) = file_store();
    let source = url(&cluster, "app");
    let args = [
        "--database-url",
        &source,
        "--store",
        &store,
        "--source",
        "app",
    ];
    let child = firedrill_command(&[&["backup"], &args[..]].concat(), &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        let waiting: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND wait_event_type = 'Lock'", &[])
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the backup never reached the table"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(tx);
    cluster.restart().unwrap();
    let o = child.wait_with_output().unwrap();
    let out = output_text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("nothing was committed"), "{out}");
    eprintln!(
        "source restarted: {}",
        out.lines().last().unwrap_or_default()
    );
    assert_eq!(complete(&store), 0);
    // The server is back: the next backup completes, and restores.
    backup(&args, &[]);
    assert_eq!(complete(&store), 1);
    let o = drill_latest(&store, &url(&cluster, "postgres"));
    assert!(o.status.success(), "{}", output_text(&o));
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = harness::tempdir("tmpfs");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_drill_server_out_of_disk_fails_the_drill_cleanly_and_the_next_drill_passes() {
    // The drill server keeps new databases on a disk with room for the
    // empty database and 3 MiB more: the restore runs out of space midway.
    let drills = LocalCluster::start_tcp(&harness::tempdir("fulldisk"), &[]).unwrap();
    let mut admin = postgres::Client::connect(&url(&drills, "postgres"), postgres::NoTls).unwrap();
    let template: i64 = admin
        .query_one("SELECT pg_database_size('template0')", &[])
        .unwrap()
        .get(0);
    let Some(small) = Tmpfs::mount(&format!("{}k", (2 * template + (3 << 20)) / 1024)) else {
        eprintln!(
            "SKIPPED: mounting a tmpfs needs root (it stands in for the drill server's small disk)"
        );
        return;
    };
    let _ = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&small.0)
        .status();
    for statement in [
        format!("CREATE TABLESPACE small LOCATION '{}'", small.0.display()),
        // Drills create their database from template0: it now lives there.
        "ALTER DATABASE template0 SET TABLESPACE small".into(),
    ] {
        admin.batch_execute(&statement).unwrap();
    }
    let pg = harness::postgres();
    let db = pg.fresh_database("fulldisk");
    seed(&db);
    pg.client(&db)
        .batch_execute("CREATE TABLE bulk (id int, a text, b text); INSERT INTO bulk SELECT g, md5(g::text), md5((-g)::text) FROM generate_series(1, 100000) g;")
        .unwrap();
    let (store, _) = file_store();
    backup(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "app",
        ],
        &[],
    );
    let o = drill_latest(&store, &url(&drills, "postgres"));
    let out = output_text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("(53100): the server is out of disk space"),
        "{out}"
    );
    eprintln!(
        "drill server out of disk: {}",
        out.lines()
            .find(|l| l.contains("out of disk"))
            .unwrap_or_default()
            .trim()
    );
    // The throwaway database went, even though the disk was full.
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'firedrill_drill_%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "a drill database was left behind");
    // The backup was not at fault: on a server with room the drill passes.
    let o = drill_latest(&store, &pg.url("postgres"));
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn a_statement_timeout_on_the_source_fails_the_backup_cleanly() {
    let pg = harness::postgres();
    let db = pg.fresh_database("stmttimeout");
    let mut c = pg.client(&db);
    c.batch_execute("CREATE TABLE bulk (id int, a text); INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 400000) g;")
        .unwrap();
    c.batch_execute(&format!(
        "ALTER DATABASE {db} SET statement_timeout = '20ms'"
    ))
    .unwrap();
    let (store, _) = file_store();
    let args = [
        "backup",
        "--database-url",
        &pg.url(&db),
        "--store",
        &store,
        "--source",
        "app",
    ];
    let o = firedrill(&args, &[]);
    let out = output_text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("canceling statement due to statement timeout (57014)"),
        "{out}"
    );
    assert!(out.contains("nothing was committed"), "{out}");
    assert_eq!(complete(&store), 0);
    c.batch_execute(&format!("ALTER DATABASE {db} RESET statement_timeout"))
        .unwrap();
    let o = firedrill(&args, &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(complete(&store), 1);
}
