//! Redis backups and drills against real redis-servers: every data type and
//! expiries round-trip (through a drill, and by hand with zstd and
//! redis-server); corruption is detected and named; a password (and an ACL
//! user) works and never shows; a large dataset streams in bounded memory.

use crate::backup_restore::{backup, file_store};
use crate::harness::{self, firedrill, output_text, OwnRedis};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Strings (text and binary), a hash, a list, a set, a sorted set, a stream,
/// a key with an expiry, and a key in database 1.
fn fill(c: &mut redis::Connection) {
    redis::pipe()
        .cmd("SET")
        .arg("user:1")
        .arg("alice")
        .ignore()
        .cmd("SET")
        .arg("user:2")
        .arg(&[0u8, 159, 146, 150, 255][..])
        .ignore()
        .cmd("HSET")
        .arg("profile:1")
        .arg("name")
        .arg("alice")
        .arg("plan")
        .arg("pro")
        .ignore()
        .cmd("RPUSH")
        .arg("queue")
        .arg("a")
        .arg("b")
        .arg("c")
        .ignore()
        .cmd("SADD")
        .arg("tags")
        .arg("x")
        .arg("y")
        .arg("z")
        .ignore()
        .cmd("ZADD")
        .arg("scores")
        .arg(1.5)
        .arg("a")
        .arg(2)
        .arg("b")
        .ignore()
        .cmd("XADD")
        .arg("events")
        .arg("1-1")
        .arg("kind")
        .arg("login")
        .ignore()
        .cmd("XADD")
        .arg("events")
        .arg("2-1")
        .arg("kind")
        .arg("logout")
        .ignore()
        .cmd("SET")
        .arg("session:9")
        .arg("live")
        .arg("EX")
        .arg(3600)
        .ignore()
        .cmd("SELECT")
        .arg(1)
        .ignore()
        .cmd("SET")
        .arg("other-db")
        .arg("1")
        .ignore()
        .cmd("SELECT")
        .arg(0)
        .ignore()
        .query::<()>(c)
        .unwrap();
}

/// Every key of every database, as comparable text: type, value, has-TTL.
fn contents(c: &mut redis::Connection) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for db in 0..2 {
        redis::cmd("SELECT").arg(db).query::<()>(c).unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(c).unwrap();
        for k in keys {
            let kind: String = redis::cmd("TYPE").arg(&k).query(c).unwrap();
            let value = match kind.as_str() {
                "string" => format!(
                    "{:?}",
                    redis::cmd("GET").arg(&k).query::<Vec<u8>>(c).unwrap()
                ),
                "hash" => format!(
                    "{:?}",
                    redis::cmd("HGETALL")
                        .arg(&k)
                        .query::<BTreeMap<String, String>>(c)
                        .unwrap()
                ),
                "list" => format!(
                    "{:?}",
                    redis::cmd("LRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .query::<Vec<String>>(c)
                        .unwrap()
                ),
                "set" => {
                    let mut m: Vec<String> = redis::cmd("SMEMBERS").arg(&k).query(c).unwrap();
                    m.sort();
                    format!("{m:?}")
                }
                "zset" => format!(
                    "{:?}",
                    redis::cmd("ZRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query::<Vec<String>>(c)
                        .unwrap()
                ),
                "stream" => format!(
                    "{:?}",
                    redis::cmd("XRANGE")
                        .arg(&k)
                        .arg("-")
                        .arg("+")
                        .query::<redis::Value>(c)
                        .unwrap()
                ),
                other => panic!("type {other}"),
            };
            let ttl: i64 = redis::cmd("PTTL").arg(&k).query(c).unwrap();
            out.insert(
                format!("db{db}/{k}"),
                format!("{kind} {value} ttl={}", ttl > 0),
            );
        }
    }
    redis::cmd("SELECT").arg(0).query::<()>(c).unwrap();
    out
}

/// `firedrill backup --json` of a Redis server, filed under source `cache`.
fn backup_cache(url: &str, store: &str) -> serde_json::Value {
    backup(
        &["--redis-url", url, "--store", store, "--source", "cache"],
        &[],
    )
}

fn rdb_object(store_dir: &Path, source: &str, id: &str) -> PathBuf {
    store_dir.join(source).join(id).join("redis/dump.rdb.zst")
}

/// `firedrill drill --latest --json`, with a temporary directory of its own
/// that must be empty again afterwards: the throwaway redis-server and its
/// copy of the snapshot are gone, pass or fail.
fn drill(store: &str, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
    let tmp = harness::tempdir("drill-tmp");
    let mut args = vec!["drill", "--store", store, "--latest", "--json"];
    args.extend_from_slice(extra);
    let o = firedrill(&args, &[("TMPDIR", tmp.display().to_string())]);
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "the drill left {left:?}: {}",
        output_text(&o)
    );
    let report = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, report)
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"))
}

#[test]
fn every_type_and_expiry_round_trips_through_a_drill_and_by_hand() {
    let server = OwnRedis::start(&[]);
    let mut c = server.connection("");
    fill(&mut c);
    let before = contents(&mut c);
    let (store, dir) = file_store();
    let b = backup_cache(&server.url(""), &store);
    assert_eq!(b["keys"], 9, "{b}");
    let id = b["id"].as_str().unwrap();

    let policies = harness::policy_dir(
        &["verifier-keys"],
        &[("keys.toml", "world = \"verifier\"\nwasm = \"verifier_keys.wasm\"\n[grants]\nconfig = true\nkeyvalue = { prefixes = [\"user:\", \"queue\"] }\n[config]\nkeys = \"user:1, queue\"\ncounts = \"user:>=2\"\n")],
    );
    let (o, report) = drill(&store, &["--policies", policies.to_str().unwrap()]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(report["passed"], true, "{report:#}");
    assert!(report["rto_seconds"].as_f64().unwrap() > 0.0);
    for name in [
        "redis.rdb.checksum",
        "redis.db0.keys",
        "redis.db1.keys",
        "keys.user:1",
        "keys.queue",
        "count.user:",
    ] {
        assert_eq!(check(&report, name)["status"], "pass", "{name}: {report:#}");
    }
    // The verifier reached the drill instance only, and only its granted keys.
    assert!(check(&report, "count.user:")["detail"]
        .as_str()
        .unwrap()
        .starts_with("2 keys"));

    // By hand: zstd and redis-server are all it takes.
    let by_hand = harness::tempdir("redis-by-hand");
    let rdb = by_hand.join("dump.rdb");
    let z = std::process::Command::new("zstd")
        .args(["-q", "-d", "-o"])
        .arg(&rdb)
        .arg(rdb_object(&dir, "cache", id))
        .status()
        .unwrap();
    assert!(z.success());
    let restored = OwnRedis::start(&[
        "--dir",
        by_hand.to_str().unwrap(),
        "--dbfilename",
        "dump.rdb",
    ]);
    let mut r = restored.connection("");
    let start = std::time::Instant::now();
    while redis::cmd("DBSIZE").query::<i64>(&mut r).is_err() {
        assert!(start.elapsed().as_secs() < 30, "never loaded");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(contents(&mut r), before);
    assert!(before["db0/session:9"].ends_with("ttl=true"));
}

#[test]
fn a_corrupted_snapshot_is_detected_and_named() {
    let server = OwnRedis::start(&[]);
    fill(&mut server.connection(""));
    let (store, dir) = file_store();
    let b = backup_cache(&server.url(""), &store);
    let object = rdb_object(&dir, "cache", b["id"].as_str().unwrap());
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&object, &bytes).unwrap();
    let (o, report) = drill(&store, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert_eq!(report["passed"], false);
    let error = report["error"].as_str().unwrap_or_default().to_string() + &output_text(&o);
    assert!(error.contains("redis/dump.rdb.zst"), "{error}");
}

#[test]
fn a_password_or_an_acl_user_works_and_never_shows() {
    let server = OwnRedis::start(&["--requirepass", "pw-redis-hunter5"]);
    let mut c = server.connection(":pw-redis-hunter5@");
    fill(&mut c);
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("backup")
        .arg("on")
        .arg(">acl-hunter6")
        .arg("+@all")
        .arg("~*")
        .query::<()>(&mut c)
        .unwrap();
    let (store, dir) = file_store();
    for auth in [":pw-redis-hunter5@", "backup:acl-hunter6@"] {
        let o = firedrill(
            &[
                "backup",
                "--redis-url",
                &server.url(auth),
                "--store",
                &store,
                "--source",
                "cache",
            ],
            &[],
        );
        assert!(o.status.success(), "{}", output_text(&o));
        assert!(!output_text(&o).contains("hunter"), "{}", output_text(&o));
    }
    let (o, report) = drill(&store, &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(report["passed"], true);
    let wrong = firedrill(
        &[
            "backup",
            "--redis-url",
            &server.url(":wrong-hunter7@"),
            "--store",
            &store,
        ],
        &[],
    );
    assert_eq!(wrong.status.code(), Some(1));
    let text = output_text(&wrong);
    assert!(
        text.contains("authentication refused") && !text.contains("hunter7"),
        "{text}"
    );
    // Nothing in the store holds a password either.
    for e in walk(&dir) {
        let bytes = std::fs::read(&e).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("hunter"), "{} holds a password", e.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else if e.path().extension().is_some_and(|x| x == "json") {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn a_large_dataset_streams_in_bounded_memory() {
    // Uncompressed strings: the snapshot is as big as the data.
    let server = OwnRedis::start(&["--rdbcompression", "no"]);
    let mut c = server.connection("");
    // About 230 MB of snapshot: more than the bound below.
    redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(1_500_000)
        .arg("key")
        .arg(140)
        .query::<()>(&mut c)
        .unwrap();
    let (store, _) = file_store();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_firedrill"))
        .args([
            "backup",
            "--json",
            "--redis-url",
            &server.url(""),
            "--store",
            &store,
            "--source",
            "big",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, peak_kib) = harness::wait_with_peak_rss(&mut child);
    assert!(status.success(), "backup exited with {status}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    let raw_mib = b["raw_bytes"].as_u64().unwrap() >> 20;
    eprintln!(
        "redis backup of a {raw_mib} MiB snapshot: peak RSS {} MiB",
        peak_kib / 1024
    );
    assert_eq!(b["keys"], 1_500_000);
    assert!(raw_mib > 150, "{b}");
    assert!(
        peak_kib > 0 && peak_kib < 96 * 1024,
        "peak RSS {} MiB for a {raw_mib} MiB snapshot",
        peak_kib / 1024
    );
}

/// A CA and a server certificate for 127.0.0.1 and localhost: (dir, ca.crt).
fn certificates() -> (PathBuf, PathBuf) {
    let dir = harness::tempdir("tls");
    harness::self_signed_ca(&dir, "ca");
    harness::issue_cert(
        &dir,
        "server",
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    let ca = dir.join("ca.crt");
    (dir, ca)
}

#[test]
fn a_server_behind_tls_backs_up_over_rediss() {
    let (certs, ca) = certificates();
    let tls_port = harness::free_port().to_string();
    let file = |n: &str| certs.join(n).to_str().unwrap().to_string();
    let server = OwnRedis::start(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &file("server.crt"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.crt"),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "tls-hunter8",
    ]);
    fill(&mut server.connection(":tls-hunter8@"));
    let (store, _) = file_store();
    let url = format!(
        "rediss://:tls-hunter8@127.0.0.1:{tls_port}/?ca={}",
        ca.display()
    );
    let b = backup(
        &["--redis-url", &url, "--store", &store, "--source", "tls"],
        &[],
    );
    assert_eq!(b["keys"], 9, "{b}");
    // Without the CA the server's certificate is not trusted.
    let o = firedrill(
        &[
            "backup",
            "--redis-url",
            &format!("rediss://:tls-hunter8@127.0.0.1:{tls_port}/"),
            "--store",
            &store,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let text = output_text(&o);
    assert!(text.contains("TLS") && !text.contains("hunter8"), "{text}");
}

#[test]
fn an_agent_backs_up_and_drills_a_redis_source_on_schedule() {
    let server = OwnRedis::start(&[]);
    fill(&mut server.connection(""));
    let (store, _) = file_store();
    let port = harness::free_port();
    let config = harness::tempdir("redis-agent").join("firedrill.toml");
    std::fs::write(
        &config,
        format!("[agent]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store}\"\n[[source]]\nname = \"cache\"\nurls = [\"{}\"]\nbackup = \"2s\"\ndrill = \"3s\"\n", server.url("")),
    )
    .unwrap();
    let child = harness::start_agent(&config, port, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = firedrill::archive::Store::open(&store, &Default::default()).unwrap();
    let start = std::time::Instant::now();
    let drilled = loop {
        let listed = rt.block_on(firedrill::archive::list_backups(&s)).unwrap();
        if let Some(l) = listed.iter().find(|l| l.last_drill.is_some()) {
            break l.clone();
        }
        assert!(
            start.elapsed().as_secs() < 60,
            "no drill within a minute: {listed:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let metrics = harness::http(port, "GET", "/metrics", &[], "").body;
    let counted = |kind: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("firedrill_jobs_total{{kind=\"{kind}\"}} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(counted("backup") >= 1 && counted("drill") >= 1, "{metrics}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(drilled.source, "cache");
    assert!(
        drilled.last_drill.unwrap().passed,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn redis_backups_are_listed_and_pruned_like_any_other() {
    let server = OwnRedis::start(&[]);
    fill(&mut server.connection(""));
    let (store, _) = file_store();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct ids by the second
            backup_cache(&server.url(""), &store)["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let (o, _) = drill(&store, &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let pruned = crate::retention::prune(&store, 1, &["--min-age", "0s"]);
    let mut deleted: Vec<String> = pruned["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    deleted.sort();
    assert_eq!(deleted, ids[..2], "{pruned:#}");
    let o = firedrill(&["list", "--json", "--store", &store], &[]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = listed.as_array().expect("a list");
    assert_eq!(rows.len(), 1, "{listed:#}");
    assert_eq!(rows[0]["id"], ids[2].as_str());
    assert_eq!(rows[0]["last_drill"]["passed"], true, "{listed:#}");
}
