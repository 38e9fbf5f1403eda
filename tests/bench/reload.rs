//! Policy reload latency: from a policy file landing in the watched directory
//! (written aside, renamed into place) to the new version answering calls,
//! against restarting a process that loads the same directory (`firedrill
//! policy check`, compiled code cached), in the same run. Goal: <= 1 s.
//!
//!   tests/bench/run reload

use firedrill::caps::types::{Decision, Header, RequestFacts};
use firedrill::caps::CallContext;
use firedrill::runtime::{Policies, Runtime, RuntimeOptions, World};
use std::path::Path;
use std::time::{Duration, Instant};

const ROUNDS: usize = 20;
const DEBOUNCE: Duration = Duration::from_millis(100);

fn policy(principal: &str) -> String {
    format!("world = \"authorizer\"\nwasm = \"authorizer_token.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ntoken = \"t\"\nprincipal = \"{principal}\"")
}

fn serving(p: &Policies) -> String {
    let set = p.current();
    let facts = RequestFacts {
        method: "GET".into(),
        path: "/v1/backups".into(),
        query: None,
        headers: vec![Header {
            name: "authorization".into(),
            value: "Bearer t".into(),
        }],
        peer: "127.0.0.1".into(),
        time: 0,
        request_id: "bench".into(),
    };
    let plugin = set.of_world(World::Authorizer).next().unwrap().clone();
    let decision = plugin.authorize(&CallContext::default(), &facts).unwrap();
    match decision {
        Decision::Allow(g) => g.principal,
        Decision::Deny(r) => panic!("{}", r.reason),
    }
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (
        v[v.len() / 2].as_secs_f64() * 1000.0,
        v[v.len() - 1].as_secs_f64() * 1000.0,
    )
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let wasm = root.join("target/components/authorizer_token.wasm");
    assert!(
        wasm.exists(),
        "{} missing: run scripts/build-plugins",
        wasm.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(&wasm, dir.path().join("authorizer_token.wasm")).unwrap();
    std::fs::write(dir.path().join("auth.toml"), policy("v0")).unwrap();
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let policies = Policies::load(&runtime, Some(dir.path()), Default::default()).unwrap();
    let _watch = policies.watch(DEBOUNCE).unwrap();

    let mut reload = Vec::new();
    for i in 1..=ROUNDS {
        let want = format!("v{i}");
        let tmp = dir.path().join(".auth.toml.tmp");
        std::fs::write(&tmp, policy(&want)).unwrap();
        let start = Instant::now();
        std::fs::rename(&tmp, dir.path().join("auth.toml")).unwrap();
        while serving(&policies) != want {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(1));
        }
        reload.push(start.elapsed());
    }

    let bin = root.join("target/release/firedrill");
    let mut restart = Vec::new();
    if bin.exists() {
        for _ in 0..ROUNDS / 4 {
            let start = Instant::now();
            let ok = std::process::Command::new(&bin)
                .args(["policy", "check"])
                .arg(dir.path())
                .env("FIREDRILL_CACHE_DIR", cache.path())
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok);
            restart.push(start.elapsed());
        }
    }

    let (p50, max) = stats(reload);
    println!(
        "policy reload: file landing -> new version serving, {ROUNDS} rounds, debounce {} ms",
        DEBOUNCE.as_millis()
    );
    println!();
    println!("| what                                          | p50 ms | max ms |");
    println!("|-----------------------------------------------|-------:|-------:|");
    println!("| hot reload (watch, debounce, load aside, swap) | {p50:6.0} | {max:6.0} |");
    if !restart.is_empty() {
        let (r50, rmax) = stats(restart);
        println!("| process restart loading the same directory     | {r50:6.0} | {rmax:6.0} |");
    }
    println!();
    println!(
        "goal <= 1000 ms: {} (max {max:.0} ms)",
        if max <= 1000.0 { "met" } else { "NOT met" }
    );
}
