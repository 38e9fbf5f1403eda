//! Telemetry against a real OTLP receiver (rotel): an agent exporting over
//! gRPC sends the spans of its jobs and their steps, its metrics and its
//! (redacted) logs; a job started through the API continues the caller's
//! W3C trace; a CLI command exports over HTTP/protobuf; `/metrics` shows the
//! same measurements in the Prometheus format.

use crate::api::{now, signed_policies, token_with, KEY};
use crate::backup_restore::seeded;
use crate::harness::{self, firedrill, output_text, start_agent, Rotel};
use std::time::{Duration, Instant};

/// Span and metric names in rotel's dump (`Name           : job`,
/// `-> Name: firedrill.drills`).
fn names(received: &str) -> Vec<String> {
    received
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("-> ").strip_prefix("Name"))
        .filter_map(|rest| rest.trim_start().strip_prefix(':'))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn an_agent_exports_spans_metrics_and_logs_over_otlp() {
    let rotel = Rotel::start();
    let pg = harness::postgres();
    let (db, store, _) = seeded("otel");
    let policies = signed_policies("");
    let port = harness::free_port();
    let config = harness::tempdir("otel").join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\n[store]\nurl = \"{store}\"\n[drill]\ntarget = \"{}\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"2s\"\ndrill = \"3s\"\njobs = 2\n",
            policies.display(),
            pg.url("postgres"),
            pg.url(&db)
        ),
    )
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", rotel.grpc);
    let mut child = start_agent(
        &config,
        port,
        &[
            ("FIREDRILL_TOKEN_KEY", KEY),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_SERVICE_NAME", "firedrill-test-agent"),
        ],
    );
    // A backup asked for through the API, inside the caller's trace.
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let traceparent = format!("00-{trace_id}-{:016x}-01", rand::random::<u64>() | 1);
    let token = token_with(KEY, "ci", "operator", now() + 600);
    let r = crate::harness::http(
        port,
        "POST",
        "/v1/backups",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
            ("traceparent", &traceparent),
        ],
        "{}",
    );
    assert_eq!(r.status, 202, "{r:?}");
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert!(child.try_wait().unwrap().is_none(), "the agent died");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Prometheus text carries the same measurements.
    let metrics = crate::harness::http(port, "GET", "/metrics", &[], "").body;
    for m in [
        "firedrill_backup_duration_seconds_bucket{source=\"app\",le=\"+Inf\"}",
        "firedrill_backup_last_success_seconds{source=\"app\"}",
        "firedrill_drills_total{source=\"app\",result=\"passed\"}",
        "firedrill_drill_rto_seconds{source=\"app\"}",
        "firedrill_plugin_duration_seconds_count{plugin=\"auth\"}",
        "firedrill_lock_wait_seconds_count{job=\"backup\"}",
    ] {
        assert!(metrics.contains(m), "{m} missing from /metrics:\n{metrics}");
    }
    // Each metric described once: strict parsers (promtool) refuse a second HELP.
    let mut described: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let all = described.len();
    described.sort_unstable();
    described.dedup();
    assert_eq!(
        described.len(),
        all,
        "a metric is described twice:\n{metrics}"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));

    let wanted_spans = [
        "http.request",
        "job",
        "backup",
        "backup.database",
        "backup.copy",
        "backup.upload",
        "drill",
        "restore",
        "drill.checks",
        "plugin.call",
    ];
    let wanted_metrics = [
        "firedrill.backup.duration",
        "firedrill.backup.last_success",
        "firedrill.drills",
        "firedrill.drill.rto",
        "firedrill.drill.rpo",
        "firedrill.plugin.calls",
        "firedrill.plugin.duration",
        "firedrill.lock.wait",
    ];
    let got = rotel.wait_for(
        &["backup done", "drill passed", &trace_id],
        Duration::from_secs(15),
    );
    let spans = names(&got);
    for s in wanted_spans.iter().chain(wanted_metrics.iter()) {
        assert!(
            spans.iter().any(|n| n == s),
            "{s} not received; names: {spans:?}"
        );
    }
    assert!(got.contains("firedrill-test-agent"), "service.name");
    // Logs arrive as records whose body is the (redacted) line.
    assert!(
        got.contains("backup done") && got.contains("drill passed"),
        "no logs received"
    );
    // The API's job continued the caller's trace.
    assert!(got.contains(&trace_id), "trace {trace_id} not continued");
}

#[test]
fn a_cli_command_exports_over_http_protobuf() {
    let rotel = Rotel::start();
    let pg = harness::postgres();
    let (db, store, _) = seeded("otel_http");
    let o = firedrill(
        &[
            "backup",
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "h",
        ],
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", rotel.http),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_SERVICE_NAME", "firedrill-test-cli".into()),
            ("RUST_LOG", "info".into()),
        ],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let got = rotel.wait_for(
        &["firedrill-test-cli", "backup.copy"],
        Duration::from_secs(10),
    );
    let spans = names(&got);
    assert!(
        ["backup", "backup.database", "backup.copy", "backup.upload"]
            .iter()
            .all(|s| spans.iter().any(|n| n == s)),
        "{spans:?}"
    );
    assert!(got.contains("firedrill-test-cli"));
}
