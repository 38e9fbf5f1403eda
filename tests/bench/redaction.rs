//! Redaction throughput: the built-in redactor plugin (a fresh instance per
//! batch, as the log thread calls it) against a native regex pass over the
//! same lines doing the same job, in the same run. Goal: the plugin costs at
//! most 2x the native pass.
//!
//!   tests/bench/run redaction      (FIREDRILL_BENCH_LINES, default 200000)

use firedrill::caps::CallContext;
use regex::Regex;
use std::time::Instant;

#[path = "common.rs"]
mod common;

/// Log lines like the agent's: most clean, some with each kind of secret.
fn lines(n: usize) -> Vec<String> {
    let shapes = [
        "2026-11-23T04:00:00Z INFO firedrill::agent: backup done source=app backup=20261123T040000Z-k3x9qa bytes=4123456 seconds=2.31",
        "2026-11-23T04:00:01Z WARN firedrill::jobs::backup: cannot connect to postgres://backup:s3cr3t-pw@db.internal:5432/app: connection refused",
        "2026-11-23T04:00:02Z INFO audit: {\"principal\":\"ci\",\"path\":\"/v1/backups\",\"decision\":\"allow\",\"request_id\":\"r-19\"}",
        "2026-11-23T04:00:03Z DEBUG firedrill::caps::sql: query rows=20000 table=public.events took=12ms",
        "2026-11-23T04:00:04Z ERROR firedrill::api: refused Authorization: Bearer fdt1.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJl from 10.0.0.7",
        "2026-11-23T04:00:05Z INFO firedrill::jobs::drill: drill passed source=app rto=7.2 rpo=3600 checks=41",
        "2026-11-23T04:00:06Z WARN firedrill::config: s3_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY set in the file, prefer S3_SECRET_ACCESS_KEY",
        "2026-11-23T04:00:07Z INFO firedrill::jobs::drill: check assert.owner returned Text(\"ann.lee@example.com\")",
        "2026-11-23T04:00:08Z INFO firedrill::jobs::backup: uploaded app/20261123T040000Z-k3x9qa/app/data/public.orders/00003.copy.zst size=1048576",
        "2026-11-23T04:00:09Z WARN firedrill::archive: key AKIAIOSFODNN7EXAMPLE has no permission on s3://backups/pg",
    ];
    (0..n)
        .map(|i| shapes[i % shapes.len()].to_string())
        .collect()
}

/// The same job with regexes: URL passwords, key=value secrets, bearer and
/// API tokens, access keys, e-mail addresses.
struct Native(Vec<(Regex, &'static str)>);

impl Native {
    fn new() -> Native {
        Native(vec![
            (Regex::new(r"(://[^:/?#\s@]*:)[^@/\s]+@").unwrap(), "${1}***@"),
            (
                Regex::new(r#"(?i)((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?|auth)"?\s*[:=]\s*"?)[^\s",;&})]+"#).unwrap(),
                "${1}***",
            ),
            (Regex::new(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+").unwrap(), "${1}***"),
            (Regex::new(r"\bfdt1\.[A-Za-z0-9_.-]+").unwrap(), "***"),
            (Regex::new(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b").unwrap(), "***"),
            (Regex::new(r"[A-Za-z0-9._%+-]+@([A-Za-z0-9.-]+\.[A-Za-z]{2,})").unwrap(), "***@${1}"),
        ])
    }

    fn redact(&self, line: &str) -> String {
        let mut out = line.to_string();
        for (re, with) in &self.0 {
            if re.is_match(&out) {
                out = re.replace_all(&out, *with).into_owned();
            }
        }
        out
    }
}

fn main() {
    let n: usize = std::env::var("FIREDRILL_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let plugin = common::load_plugin(
        "redactor",
        "redactor_secrets.wasm",
        "[limits]\ndeadline = \"5s\"\n[grants]\nconfig = true\n[config]\nmask = \"***\"\n",
    );
    let input = lines(n);
    let bytes: usize = input.iter().map(|l| l.len() + 1).sum();

    // Both must do the job before their time means anything.
    let native = Native::new();
    let check = plugin
        .redact(&CallContext::default(), &input[..10])
        .unwrap();
    for (i, out) in check.iter().enumerate() {
        let n_out = native.redact(&input[i]);
        for secret in [
            "s3cr3t-pw",
            "fdt1.eyJ",
            "wJalrXUtnFEMI",
            "ann.lee@",
            "AKIAIOSFODNN7EXAMPLE",
        ] {
            assert!(!out.contains(secret), "plugin left {secret}: {out}");
            assert!(!n_out.contains(secret), "native left {secret}: {n_out}");
        }
    }

    let start = Instant::now();
    let mut kept = 0usize;
    for l in &input {
        kept += native.redact(l).len();
    }
    let native_s = start.elapsed().as_secs_f64();

    println!(
        "redaction of {n} log lines ({:.1} MiB), one thread",
        bytes as f64 / 1048576.0
    );
    println!();
    println!("| redactor | batch | seconds | lines/s | MiB/s | vs native |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| native regex pass (6 patterns) | - | {native_s:.3} | {:.0} | {:.1} | 1.00x |",
        n as f64 / native_s,
        bytes as f64 / 1048576.0 / native_s
    );
    for batch in [1usize, 16, 256, 1024] {
        let lines_n = if batch == 1 { n / 10 } else { n };
        let start = Instant::now();
        for chunk in input[..lines_n].chunks(batch) {
            let out = plugin.redact(&CallContext::default(), chunk).unwrap();
            kept += out.len();
        }
        let s = start.elapsed().as_secs_f64() * n as f64 / lines_n as f64;
        println!(
            "| redactor-secrets plugin (fresh instance per batch) | {batch} | {s:.3} | {:.0} | {:.1} | {:.2}x |",
            n as f64 / s,
            bytes as f64 / 1048576.0 / s,
            s / native_s
        );
    }
    std::hint::black_box(kept);
    println!();
    println!("batch 1 is measured over a tenth of the lines and scaled; the log thread sends up to 256 lines per call.");
}
