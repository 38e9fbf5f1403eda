//! Coordination through a real Redis: three agents on one source take
//! exactly one backup per slot; killing the lock holder lets another take
//! over after the lease; a stale holder's commit is refused; the drill quota
//! holds across agents; events reach pub/sub and late readers.

use crate::backup_restore::seeded;
use crate::harness::{self, start_agent};
use firedrill::archive::{self as arch, Store};
use firedrill::coord::{CoordOptions, Coordinator, TryLock};
use firedrill::jobs::backup::{self, BackupOptions};
use firedrill::servers::pg::PgUrl;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn namespace(label: &str) -> String {
    format!("{label}-{}:", rand::random::<u32>())
}

fn coord(ns: &str, lease: Duration, quota: usize, node: &str) -> Coordinator {
    let rt = tokio::runtime::Handle::current();
    let opts = CoordOptions {
        redis_url: Some(harness::redis().url()),
        namespace: ns.into(),
        lease,
        drill_quota: quota,
        node: node.into(),
        ..Default::default()
    };
    tokio::task::block_in_place(|| rt.block_on(Coordinator::new(opts))).unwrap()
}

fn config(
    dir: &std::path::Path,
    port: u16,
    store: &str,
    db: &str,
    ns: &str,
    backup: &str,
    lease: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("agent-{port}.toml"));
    std::fs::write(
        &path,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store}\"\n\
             [coordination]\nredis_url = \"{}\"\nnamespace = \"{ns}\"\nlease = \"{lease}\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"{backup}\"\njobs = 2\n",
            harness::redis().url(),
            harness::postgres().url(db),
        ),
    )
    .unwrap();
    path
}

fn complete_backups(store: &str) -> Vec<firedrill::archive::manifest::Manifest> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(store, &Default::default()).unwrap();
        let mut out = Vec::new();
        for l in arch::list_backups(&store).await.unwrap() {
            if l.complete {
                out.push(arch::read_manifest(&store, &l.source, &l.id).await.unwrap());
            }
        }
        out
    })
}

fn stop(child: std::process::Child) -> String {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let log = crate::harness::output_text(&o);
    assert!(o.status.success(), "{log}");
    log
}

#[test]
fn three_agents_on_one_source_take_one_backup_per_slot() {
    let (db, store, _) = seeded("fleet3");
    let ns = namespace("fleet3");
    let dir = harness::tempdir("fleet3");
    let started = Instant::now();
    let agents: Vec<_> = (0..3)
        .map(|_| {
            let port = harness::free_port();
            start_agent(&config(&dir, port, &store, &db, &ns, "5s", "5s"), port, &[])
        })
        .collect();
    // Long enough for several slots.
    std::thread::sleep(Duration::from_secs(16).saturating_sub(started.elapsed()));
    let logs: Vec<String> = agents.into_iter().map(stop).collect();
    let backups = complete_backups(&store);
    let mut per_slot: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for m in &backups {
        per_slot
            .entry(m.timings.started - m.timings.started.rem_euclid(5))
            .or_default()
            .push(m.id.clone());
    }
    assert!(per_slot.len() >= 3, "{per_slot:?}");
    for (slot, ids) in &per_slot {
        assert_eq!(
            ids.len(),
            1,
            "slot {slot} was backed up {} times: {ids:?}",
            ids.len()
        );
    }
    // Each commit carries its own lease's token, all different.
    let mut tokens: Vec<u64> = backups
        .iter()
        .map(|m| m.fencing_token.expect("a fencing token"))
        .collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), backups.len(), "{tokens:?}");
    // Work was shared out rather than done by one agent only or thrice.
    let skipped = logs
        .iter()
        .filter(|l| l.contains("another agent ran this slot"))
        .count();
    assert!(
        skipped >= 1,
        "no agent ever skipped a slot:\n{}",
        logs.join("\n---\n")
    );
}

#[test]
fn killing_the_holder_lets_another_take_over_after_the_lease() {
    let (db, store, _) = seeded("fleetkill");
    // Enough rows that the backup is still running when its holder is killed.
    harness::postgres()
        .client(&db)
        .batch_execute("CREATE TABLE bulk AS SELECT g, md5(g::text) AS h, repeat('x', 200) AS pad FROM generate_series(1, 400000) g")
        .unwrap();
    let ns = namespace("fleetkill");
    let dir = harness::tempdir("fleetkill");
    let lock = format!("{ns}lock:backup:app");
    let mut redis = harness::redis().connection();
    let port = harness::free_port();
    let mut holder = start_agent(&config(&dir, port, &store, &db, &ns, "1h", "2s"), port, &[]);
    let start = Instant::now();
    loop {
        let held: bool = redis::cmd("EXISTS").arg(&lock).query(&mut redis).unwrap();
        if held {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the agent never took the lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let killed_at = firedrill::archive::manifest::unix_now();
    assert!(
        complete_backups(&store).is_empty(),
        "the killed holder committed"
    );

    // Same slot (1h): the next agent waits out the lease, then backs up.
    let port = harness::free_port();
    let next = start_agent(&config(&dir, port, &store, &db, &ns, "1h", "2s"), port, &[]);
    let start = Instant::now();
    let backups = loop {
        let b = complete_backups(&store);
        if !b.is_empty() {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nobody took over"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    stop(next);
    assert_eq!(backups.len(), 1);
    assert_eq!(
        backups[0].fencing_token,
        Some(2),
        "the second lease of this lock"
    );
    assert!(
        backups[0].timings.started >= killed_at,
        "took over only after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_ran_out_cannot_commit() {
    let (db, store_url, _) = tokio::task::block_in_place(|| seeded("fleetstale"));
    let ns = namespace("fleetstale");
    let (a, b) = (
        coord(&ns, Duration::from_secs(1), 2, "node-a"),
        coord(&ns, Duration::from_secs(1), 2, "node-b"),
    );
    let TryLock::Acquired(mut stale) = a.try_lock("backup", "app", None).await.unwrap() else {
        panic!("the lock was free")
    };
    assert!(matches!(
        b.try_lock("backup", "app", None).await.unwrap(),
        TryLock::Busy
    ));
    stale.stall(); // as if node A froze
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let TryLock::Acquired(fresh) = b.try_lock("backup", "app", None).await.unwrap() else {
        panic!("the lease did not run out")
    };
    assert!(fresh.token() > stale.token());

    let store = Store::open(&store_url, &Default::default()).unwrap();
    let opts = |guard| BackupOptions {
        source: "app".into(),
        databases: vec![PgUrl::parse(&harness::postgres().url(&db)).unwrap()],
        jobs: 2,
        compression_level: 3,
        chunk_bytes: 1 << 20,
        globals: false,
        role_passwords: false,
        planner: None,
        plugin_sql: None,
        guard: Some(guard),
        progress: Default::default(),
    };
    let err = backup::run(&store, &opts(stale.guard()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lease on source \"app\" was lost") && err.contains("must not commit"),
        "{err}"
    );
    assert!(arch::list_backups(&store)
        .await
        .unwrap()
        .iter()
        .all(|l| !l.complete));
    let ok = backup::run(&store, &opts(fresh.guard())).await.unwrap();
    let m = arch::read_manifest(&store, "app", &ok.id).await.unwrap();
    assert_eq!(m.fencing_token, Some(fresh.token()));
    // The stale holder cannot release (or mark done) what it no longer holds.
    stale.release(Some(1)).await.unwrap();
    assert!(fresh.check().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_quota_holds_across_the_fleet() {
    let ns = namespace("quota");
    let nodes: Vec<Coordinator> = (0..3)
        .map(|i| coord(&ns, Duration::from_secs(30), 2, &format!("node-{i}")))
        .collect();
    let first = nodes[0].try_drill_permit().await.unwrap().expect("a place");
    let second = nodes[1].try_drill_permit().await.unwrap().expect("a place");
    assert!(
        nodes[2].try_drill_permit().await.unwrap().is_none(),
        "quota 2 admitted a third"
    );
    drop(first);
    let third = nodes[2].drill_permit(Duration::from_secs(5)).await.unwrap();
    assert!(third.is_some(), "a freed place was not given out");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_pubsub_listeners_and_late_readers() {
    let ns = namespace("events");
    let c = coord(&ns, Duration::from_secs(30), 2, "node-e");
    let client = redis::Client::open(harness::redis().url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(c.events_channel()).await.unwrap();
    let mut live = pubsub.on_message();
    for kind in ["backup.started", "backup.finished", "drill.passed"] {
        c.publish(&c.event(kind, "app")).await;
    }
    use futures::StreamExt;
    let msg = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .unwrap()
        .unwrap();
    let first: firedrill::coord::Event =
        serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(first.kind, "backup.started");
    // A reader arriving after all three reads them from the stream, in order.
    let mut reader = c.events_reader().await.unwrap();
    let got = reader
        .next(
            &firedrill::coord::EventCursor("0".into()),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    let kinds: Vec<&str> = got.iter().map(|(_, e)| e.kind.as_str()).collect();
    assert_eq!(kinds, ["backup.started", "backup.finished", "drill.passed"]);
    let after_first = got[0].0.clone();
    let rest = reader
        .next(&after_first, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
}

#[test]
fn an_unreachable_redis_is_named_without_its_password() {
    let dir = harness::tempdir("redisdown");
    let dead = harness::free_port();
    let config = dir.join("firedrill.toml");
    std::fs::write(
        &config,
        format!("[store]\nurl = \"file://{}\"\n[coordination]\nredis_url = \"redis://:hunter3-redis@127.0.0.1:{dead}/\"\n[[source]]\nname = \"app\"\nurls = [\"postgres://127.0.0.1:1/x\"]\nbackup = \"1h\"\n", dir.display()),
    )
    .unwrap();
    let check = harness::firedrill(
        &["config", "check", "--config", config.to_str().unwrap()],
        &[],
    );
    let text = harness::output_text(&check);
    assert!(
        check.status.success() && text.contains(&format!("redis://:***@127.0.0.1:{dead}")),
        "{text}"
    );
    let o = harness::firedrill(&["agent", "--config", config.to_str().unwrap()], &[]);
    let text = harness::output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("coordination.redis_url") && text.contains(&format!("127.0.0.1:{dead}")),
        "{text}"
    );
    assert!(!text.contains("hunter3"), "{text}");
}

/// A redis-server speaking TLS on `port`, its certificate (for `localhost`
/// and 127.0.0.1) signed by a CA made for the test; the harness's own
/// server (its plain port only tells that it is up); stopped when dropped.
struct TlsRedis {
    port: u16,
    ca: std::path::PathBuf,
    /// A CA that signed nothing here.
    other_ca: std::path::PathBuf,
    _server: harness::OwnRedis,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = harness::tempdir("tls-redis");
        harness::self_signed_ca(&dir, "ca");
        harness::self_signed_ca(&dir, "other-ca");
        harness::issue_cert(
            &dir,
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        );
        let port = harness::free_port();
        let path = |f: &str| dir.join(f).to_str().expect("a UTF-8 path").to_string();
        let server = harness::OwnRedis::start(&[
            "--tls-port",
            &port.to_string(),
            "--tls-auth-clients",
            "no",
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.crt"),
        ]);
        TlsRedis {
            port,
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
            _server: server,
        }
    }

    fn url(&self, ca: Option<&std::path::Path>) -> String {
        match ca {
            Some(ca) => format!("rediss://localhost:{}/?ca={}", self.port, ca.display()),
            None => format!("rediss://localhost:{}/", self.port),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordination_and_keyvalue_over_tls_check_the_certificate() {
    let tls = TlsRedis::start();
    let opts = |url: String| CoordOptions {
        redis_url: Some(url),
        namespace: "tls:".into(),
        node: "node-tls".into(),
        ..Default::default()
    };
    // Trusted through ?ca=: leases and events work over TLS.
    let c = Coordinator::new(opts(tls.url(Some(&tls.ca))))
        .await
        .unwrap();
    let TryLock::Acquired(lease) = c.try_lock("backup", "app", None).await.unwrap() else {
        panic!("a free lease was not acquired over TLS")
    };
    c.publish(&c.event("backup.started", "app")).await;
    let mut reader = c.events_reader().await.unwrap();
    let got = reader
        .next(
            &firedrill::coord::EventCursor("0".into()),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    lease.release(None).await.unwrap();

    // Not trusted (the system roots, or another CA): refused on the certificate.
    for url in [tls.url(None), tls.url(Some(&tls.other_ca))] {
        let e = match Coordinator::new(opts(url.clone())).await {
            Ok(_) => panic!("{url}: a server with an untrusted certificate was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("certificate") && e.contains("UnknownIssuer"),
            "{url}: {e}"
        );
    }
    // Certificate checks cannot be turned off.
    let e = Coordinator::new(opts(format!("{}#insecure", tls.url(None))))
        .await
        .err()
        .expect("#insecure was accepted")
        .to_string();
    assert!(e.contains("certificates are always checked"), "{e}");

    // The keyvalue capability, through a plugin, over the same TLS.
    let p = harness::load(
        "hostile",
        "world = \"authorizer\"\nwasm = \"hostile.wasm\"\n[grants]\nkeyvalue = { prefixes = [\"rl:\"] }",
    )
    .unwrap();
    let call = |url: String| {
        let ctx = firedrill::caps::CallContext {
            keyvalue: Some(firedrill::caps::keyvalue::KvTarget::new(&url, "tls:plugin:").unwrap()),
            ..Default::default()
        };
        let facts = crate::hostile_plugins::facts("/kv/incr/rl:tls/3");
        tokio::task::block_in_place(|| p.authorize(&ctx, &facts)).unwrap()
    };
    use firedrill::caps::types::Decision;
    match call(tls.url(Some(&tls.ca))) {
        Decision::Allow(g) => assert_eq!(g.principal, "3"),
        Decision::Deny(r) => panic!("keyvalue over TLS: {}", r.reason),
    }
    match call(tls.url(Some(&tls.other_ca))) {
        Decision::Allow(g) => panic!("keyvalue reached an untrusted server: {}", g.principal),
        Decision::Deny(_) => {}
    }

    // The CLI trusts a private CA through SSL_CERT_FILE (rustls-native-certs).
    let revoke = |env: Vec<(&'static str, String)>| {
        harness::firedrill(
            &[
                "token",
                "revoke",
                "tok-tls",
                "--namespace",
                "tls:",
                "--redis-url",
                &tls.url(None),
            ],
            &env,
        )
    };
    let o = revoke(vec![("SSL_CERT_FILE", tls.ca.display().to_string())]);
    assert!(o.status.success(), "{}", harness::output_text(&o));
    let o = revoke(vec![("SSL_CERT_FILE", tls.other_ca.display().to_string())]);
    assert!(
        !o.status.success() && harness::output_text(&o).contains("certificate"),
        "{}",
        harness::output_text(&o)
    );
}
