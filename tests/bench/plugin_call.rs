//! Plugin call cost: a fresh instance of the built-in token authorizer per
//! call (pooling allocator + InstancePre), instantiate + call + drop, against
//! the same check written natively in Rust, in the same run.
//!
//!   tests/bench/run            (builds the plugins first)
//!
//! Prints a table of p50 / p99 / mean over N calls (default 100000,
//! FIREDRILL_BENCH_CALLS to change).

use firedrill::caps::types::{Decision, Grant, Header, Refusal, RequestFacts, Role};
use firedrill::caps::CallContext;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;

fn facts() -> RequestFacts {
    RequestFacts {
        method: "GET".into(),
        path: "/v1/backups".into(),
        query: None,
        headers: vec![Header {
            name: "authorization".into(),
            value: "Bearer bench-token-0123456789".into(),
        }],
        peer: "127.0.0.1".into(),
        time: 1_795_381_200,
        request_id: "bench".into(),
    }
}

/// The plugin's logic, natively: the baseline.
fn native(facts: &RequestFacts, expected: &str) -> Decision {
    let presented = facts
        .headers
        .iter()
        .find(|h| h.name == "authorization")
        .and_then(|h| h.value.strip_prefix("Bearer "));
    match presented {
        Some(t)
            if t.len() == expected.len()
                && t.bytes()
                    .zip(expected.bytes())
                    .fold(0, |a, (x, y)| a | (x ^ y))
                    == 0 =>
        {
            Decision::Allow(Grant {
                principal: "bench".into(),
                role: Role::Operator,
                credential_id: None,
            })
        }
        _ => Decision::Deny(Refusal {
            status: 401,
            reason: "invalid bearer token".into(),
            retry_after: None,
        }),
    }
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn measure(n: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    let mean = samples.iter().sum::<Duration>() / n as u32;
    samples.sort_unstable();
    Stats {
        p50: samples[n / 2],
        p99: samples[n * 99 / 100],
        mean,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let n: usize = std::env::var("FIREDRILL_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let plugin = common::load_plugin(
        "authorizer",
        "authorizer_token.wasm",
        "[grants]\nconfig = true\nlogging = true\n[config]\ntoken = \"bench-token-0123456789\"\nrole = \"operator\"\nprincipal = \"bench\"",
    );
    let ctx = CallContext::default();
    let f = facts();
    assert!(matches!(
        plugin.authorize(&ctx, &f).unwrap(),
        Decision::Allow(_)
    ));
    assert!(matches!(
        native(&f, "bench-token-0123456789"),
        Decision::Allow(_)
    ));

    let wasm_stats = measure(n, || {
        black_box(plugin.authorize(&ctx, black_box(&f)).unwrap());
    });
    let native_stats = measure(n, || {
        black_box(native(black_box(&f), "bench-token-0123456789"));
    });

    println!("plugin call cost: authorizer-token, {n} calls, fresh instance per call (pooling + InstancePre)");
    println!();
    println!("| what                                  |   p50 µs |   p99 µs |  mean µs |");
    println!("|---------------------------------------|---------:|---------:|---------:|");
    for (name, s) in [
        ("plugin: instantiate + call + drop", &wasm_stats),
        ("native Rust, same check", &native_stats),
    ] {
        println!(
            "| {name:<37} | {:>8.2} | {:>8.2} | {:>8.2} |",
            us(s.p50),
            us(s.p99),
            us(s.mean)
        );
    }
    println!();
    println!(
        "p99 goal <= 50 µs: {} (p99 {:.1} µs); plugin/native p50 ratio: {:.0}x",
        if wasm_stats.p99 <= Duration::from_micros(50) {
            "met"
        } else {
            "NOT met"
        },
        us(wasm_stats.p99),
        wasm_stats.p50.as_secs_f64() / native_stats.p50.as_secs_f64().max(1e-9)
    );
}
