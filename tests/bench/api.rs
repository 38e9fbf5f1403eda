//! API throughput on loopback with the authorizer off and on, in the same
//! run, and the authorizer's decision time.
//!
//!   tests/bench/run api
//!
//! Starts a private redis-server and a throwaway PostgreSQL cluster (random
//! ports), takes a few real backups into a file store, then serves the API
//! in-process and drives it from keep-alive client threads for a fixed time
//! per configuration: authorization disabled; signed tokens (signature,
//! expiry and role; the agent has no Redis); plus the revocation check in
//! Redis; plus both rate limits (set high enough never to refuse). Two routes: a listing
//! of the store (`/v1/backups`, what a dashboard polls) and an in-memory one
//! (`/v1/jobs`, the worst case for the authorizer's share).
//! FIREDRILL_BENCH_SECONDS (default 5) and FIREDRILL_BENCH_CLIENTS (16).

use firedrill::api::{serve, Authorization, Readiness};
use firedrill::archive::Store;
use firedrill::caps::keyvalue::KvTarget;
use firedrill::caps::types::{Header, RequestFacts};
use firedrill::caps::CallContext;
use firedrill::config::Config;
use firedrill::jobs::backup::{self, BackupOptions};
use firedrill::runtime::World;
use firedrill::servers::local_pg::LocalCluster;
use firedrill::servers::local_redis::LocalRedis;
use firedrill_token::{Claims, SigningKey};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "bench-hmac-secret-0123456789abcdef0123";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn policy_dir(limits: &str) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::copy(
        root().join("target/components/authorizer_signed.wasm"),
        dir.join("authorizer_signed.wasm"),
    )
    .expect("target/components/authorizer_signed.wasm: run scripts/build-plugins");
    std::fs::write(
        dir.join("auth.toml"),
        format!("world = \"authorizer\"\nwasm = \"authorizer_signed.wasm\"\n[grants]\nconfig = true\nkeyvalue = {{ prefixes = [\"auth:\"], expire = \"5m\" }}\n[config]\nhmac_key = \"{KEY}\"\n{limits}"),
    )
    .unwrap();
    dir
}

fn token() -> String {
    let claims = Claims {
        sub: "bench".into(),
        role: "viewer".into(),
        exp: firedrill::archive::manifest::unix_now() + 3600,
        iat: 0,
        jti: "bench-token".into(),
        alg: String::new(),
    };
    firedrill_token::issue(claims, &SigningKey::hmac(KEY.as_bytes()).unwrap())
}

/// Requests per second over `secs` from `clients` keep-alive connections.
fn drive(addr: SocketAddr, path: &str, token: &str, clients: usize, secs: u64) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {token}\r\n\r\n");
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, done, errors, request) =
                (stop.clone(), done.clone(), errors.clone(), request.clone());
            std::thread::spawn(move || {
                let sock = TcpStream::connect(addr).unwrap();
                sock.set_nodelay(true).unwrap();
                let mut writer = sock.try_clone().unwrap();
                let mut reader = BufReader::new(sock);
                let mut line = String::new();
                while !stop.load(Ordering::Relaxed) {
                    writer.write_all(request.as_bytes()).unwrap();
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let ok = line.starts_with("HTTP/1.1 200");
                    let mut length = 0usize;
                    loop {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0u8; length];
                    reader.read_exact(&mut body).unwrap();
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in threads {
        t.join().unwrap();
    }
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        errors.load(Ordering::Relaxed),
    )
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(samples[samples.len() / 2]),
        us(samples[samples.len() * 99 / 100]),
    )
}

fn main() {
    let secs = env_num("FIREDRILL_BENCH_SECONDS", 5);
    let clients = env_num("FIREDRILL_BENCH_CLIENTS", 16) as usize;
    let scratch = tempfile::tempdir().unwrap();
    let redis = LocalRedis::start_tcp(scratch.path(), &[])
        .expect("redis-server (scripts/setup installs it)");
    let redis_url = format!("redis://127.0.0.1:{}/", redis.port().expect("a TCP server"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // A store with real backups to list.
    let mut cluster =
        LocalCluster::start(scratch.path(), &[]).expect("a throwaway PostgreSQL cluster");
    let source = cluster.url("postgres");
    let store_url = format!("file://{}", scratch.path().join("store").display());
    let store = Store::open(&store_url, &Default::default()).unwrap();
    rt.block_on(async {
        source
            .connect()
            .await
            .unwrap()
            .batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
            .await
            .unwrap();
        for _ in 0..10 {
            let opts = BackupOptions {
                source: "bench".into(),
                databases: vec![source.clone()],
                jobs: 1,
                compression_level: 3,
                chunk_bytes: 1 << 20,
                globals: false,
                role_passwords: false,
                planner: None,
                plugin_sql: None,
                guard: None,
                progress: Default::default(),
            };
            backup::run(&store, &opts).await.unwrap();
        }
    });

    let token = token();
    let high = "subject_limit = \"100000000/1m\"\naddress_limit = \"100000000/1m\"\n";
    let configs: [(&str, Option<(bool, &str)>); 4] = [
        ("authorizer off", None),
        ("signed token (signature, expiry, role)", Some((false, ""))),
        ("+ revocation check (1 Redis call)", Some((true, ""))),
        (
            "+ revocation + 2 rate limits (5 Redis calls)",
            Some((true, high)),
        ),
    ];
    let mut rows = Vec::new();
    let mut decisions = Vec::new();
    for (label, limits) in configs {
        // Without Redis the authorizer has no revocation list to consult.
        let with_redis = limits.is_some_and(|(redis, _)| redis);
        let mut text = format!("[store]\nurl = \"{store_url}\"\n[api]\naudit_log = {:?}\n[[source]]\nname = \"bench\"\nurls = [\"postgres://127.0.0.1:1/x\"]\nbackup = \"cron: 0 3 1 1 *\"\n", scratch.path().join("audit.jsonl").display().to_string());
        if let Some((_, l)) = limits {
            text = format!(
                "[agent]\npolicies = {:?}\n{text}",
                policy_dir(l).display().to_string()
            );
        }
        if with_redis {
            text.push_str(&format!(
                "[coordination]\nredis_url = {:?}\nnamespace = \"bench:\"\n",
                redis_url
            ));
        }
        let file = scratch.path().join("firedrill.toml");
        std::fs::write(&file, text).unwrap();
        let config = Config::load(Some(&file), |_| None).unwrap();
        let (addr, server, policies) = rt.block_on(async {
            let agent = Arc::new(
                firedrill::agent::assemble(config, firedrill::agent::Purpose::Agent)
                    .await
                    .unwrap(),
            );
            let policies = limits.map(|_| agent.policies().clone());
            let auth = if policies.is_some() {
                Authorization::Plugins
            } else {
                Authorization::Disabled
            };
            let state = firedrill::launch::api_state(agent, Arc::new(Readiness::default()), auth)
                .await
                .unwrap();
            let (addr, server) = serve("127.0.0.1:0".parse().unwrap(), state).await.unwrap();
            (addr, server, policies)
        });
        for path in ["/v1/backups", "/v1/jobs"] {
            let (rps, errors) = drive(addr, path, &token, clients, secs);
            assert_eq!(errors, 0, "{label} {path}: {errors} requests failed");
            rows.push((label, path, rps));
        }
        server.abort();
        if let Some(p) = &policies {
            let plugin = p
                .current()
                .of_world(World::Authorizer)
                .next()
                .unwrap()
                .clone();
            let ctx = CallContext {
                keyvalue: with_redis.then(|| KvTarget::new(&redis_url, "bench:plugin:").unwrap()),
                ..Default::default()
            };
            let facts = RequestFacts {
                method: "GET".into(),
                path: "/v1/backups".into(),
                query: None,
                headers: vec![Header {
                    name: "authorization".into(),
                    value: format!("Bearer {token}"),
                }],
                peer: "127.0.0.1".into(),
                time: firedrill::archive::manifest::unix_now(),
                request_id: "bench".into(),
            };
            let n = env_num("FIREDRILL_BENCH_CALLS", 20_000) as usize;
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let d = plugin.authorize(&ctx, &facts).unwrap();
                samples.push(t.elapsed());
                assert!(
                    matches!(d, firedrill::caps::types::Decision::Allow(_)),
                    "{d:?}"
                );
            }
            decisions.push((label, percentiles(samples)));
        }
    }
    cluster.stop();

    println!("API throughput on loopback ({clients} keep-alive clients, {secs} s each, 2 server threads, same machine)\n");
    println!("| authorizer | route | requests/s | vs off |");
    println!("|---|---|---:|---:|");
    for (label, path, rps) in &rows {
        let off = rows
            .iter()
            .find(|(l, p, _)| *l == "authorizer off" && p == path)
            .unwrap()
            .2;
        println!(
            "| {label} | {path} | {rps:.0} | {:.0}% |",
            rps / off * 100.0
        );
    }
    println!("\nAuthorizer decision (plugin call on a fresh instance, one thread)\n");
    println!("| authorizer | p50 us | p99 us |");
    println!("|---|---:|---:|");
    for (label, (p50, p99)) in decisions {
        println!("| {label} | {p50:.1} | {p99:.1} |");
    }
}
