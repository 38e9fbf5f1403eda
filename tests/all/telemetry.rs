//! Telemetry against a real OTLP receiver (rotel): an agent exporting over
//! gRPC sends the spans of its jobs and their steps, its metrics and its
//! (redacted) logs; a job started through the API continues the caller's
//! W3C trace; a CLI command exports over HTTP/protobuf; `/metrics` shows the
//! same measurements in the Prometheus format; the job and API counters
//! (jobs by kind, failures, requests, authorizer decisions) arrive over OTLP
//! with the values `/metrics` shows.

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
        "firedrill_lock_wait_seconds_count{kind=\"backup\"}",
        // What the alert rules measure lateness against.
        "firedrill_start_time_seconds ",
        "firedrill_schedule_interval_seconds{source=\"app\",kind=\"backup\"} 2\n",
        "firedrill_schedule_interval_seconds{source=\"app\",kind=\"drill\"} 3\n",
        "firedrill_drill_last_run_seconds{source=\"app\"}",
        "firedrill_policy_reload_failed 0\n",
        "firedrill_plugin_errors_total{plugin=\"auth\"}",
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

/// The data points of the last export of metric `name` in rotel's dump, as
/// (attributes, value): `-> Name: firedrill.jobs`, then per point its
/// `-> kind: Str(backup)` lines and `Value: 1`.
fn last_points(received: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let marker = format!("-> Name: {name}\n");
    let Some(at) = received.rfind(&marker) else {
        return Vec::new();
    };
    let mut points = Vec::new();
    let mut attributes = Vec::new();
    for line in received[at + marker.len()..].lines().map(str::trim) {
        // The next metric, or the next export, ends this one.
        if line.starts_with("Metric #") || line.starts_with("ResourceMetrics #") {
            break;
        }
        if line.starts_with("NumberDataPoints #") {
            attributes.clear();
        } else if let Some(v) = line.strip_prefix("Value: ") {
            points.push((attributes.clone(), v.trim().parse().unwrap_or(f64::NAN)));
        } else if let Some((k, v)) = line.strip_prefix("-> ").and_then(|l| l.split_once(": ")) {
            if let Some(v) = v.strip_prefix("Str(").and_then(|v| v.strip_suffix(')')) {
                attributes.push((k.to_string(), v.to_string()));
            }
        }
    }
    points
}

/// The value of the point of `name` whose attributes are `labels`, in the
/// last export.
fn exported(received: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    last_points(received, name)
        .into_iter()
        .find(|(a, _)| {
            a.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| a.iter().any(|(ak, av)| ak == k && av == v))
        })
        .map(|(_, v)| v)
}

/// One sample of `/metrics`: `name{labels} value`.
fn scraped(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The counters of jobs and API requests (once written by hand beside the
/// registry, and so never exported) reach OTLP with the values `/metrics`
/// shows: jobs by kind, failures, requests and authorization decisions.
#[test]
fn job_and_api_counters_are_exported_over_otlp() {
    let rotel = Rotel::start();
    let pg = harness::postgres();
    let (db, store, _) = seeded("otel_counters");
    let policies = signed_policies("");
    let port = harness::free_port();
    let config = harness::tempdir("otel_counters").join("firedrill.toml");
    // No schedule fires during the test: every job is one the test asks for.
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\n[store]\nurl = \"{store}\"\n[drill]\ntarget = \"{}\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"cron: 0 3 1 1 *\"\njobs = 2\n",
            policies.display(),
            pg.url("postgres"),
            pg.url(&db)
        ),
    )
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", rotel.grpc);
    let child = start_agent(
        &config,
        port,
        &[
            ("FIREDRILL_TOKEN_KEY", KEY),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
            ("OTEL_SERVICE_NAME", "firedrill-test-counters"),
            ("RUST_LOG", "warn"),
        ],
    );
    let operator = token_with(KEY, "ci", "operator", now() + 600);
    let viewer = token_with(KEY, "dash", "viewer", now() + 600);
    let (mut allowed, mut denied) = (0.0, 0.0);
    let mut run = |body: &str| -> serde_json::Value {
        let r = crate::api::post(port, "/v1/backups", &operator, body);
        assert_eq!(r.status, 202, "{r:?}");
        allowed += 1.0;
        let id = r.json()["id"].as_str().unwrap().to_string();
        let start = Instant::now();
        loop {
            let r = crate::api::get(port, &format!("/v1/jobs/{id}"), &operator);
            assert_eq!(r.status, 200, "{r:?}");
            allowed += 1.0;
            let j = r.json();
            if j["state"] != "waiting" && j["state"] != "running" {
                return j;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{j}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let j = run("{}");
    assert_eq!(j["state"], "succeeded", "{j}");
    drop(run);
    // A drill of a backup that does not exist: a job that fails.
    let r = crate::api::post(
        port,
        "/v1/drills",
        &operator,
        "{\"backup\": \"no-such-backup\"}",
    );
    assert_eq!(r.status, 202, "{r:?}");
    allowed += 1.0;
    let id = r.json()["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let j = crate::api::get(port, &format!("/v1/jobs/{id}"), &operator).json();
        allowed += 1.0;
        if j["state"] == "failed" {
            break;
        }
        assert!(
            j["state"] == "waiting" || j["state"] == "running",
            "the drill of a missing backup should fail: {j}"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "{j}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two refusals: no token, and a viewer asking for a backup.
    assert_eq!(
        crate::harness::http(port, "GET", "/v1/jobs", &[], "").status,
        401
    );
    assert_eq!(
        crate::api::post(port, "/v1/backups", &viewer, "{}").status,
        403
    );
    denied += 2.0;

    // The last request: from here on the requests counter stands still.
    let metrics = crate::harness::http(port, "GET", "/metrics", &[], "").body;
    let requests = scraped(&metrics, "firedrill_api_requests_total").expect(&metrics);
    // The test's own requests, plus start_agent's readiness polls.
    assert!(requests >= allowed + denied + 1.0, "{metrics}");
    let prometheus = [
        ("firedrill_jobs_total{kind=\"backup\"}", 1.0),
        ("firedrill_jobs_total{kind=\"drill\"}", 0.0),
        ("firedrill_job_failures_total", 1.0),
        ("firedrill_jobs_skipped_total", 0.0),
        (
            "firedrill_api_authorizations_total{decision=\"allow\"}",
            allowed,
        ),
        (
            "firedrill_api_authorizations_total{decision=\"deny\"}",
            denied,
        ),
        (
            "firedrill_api_authorizations_total{decision=\"error\"}",
            0.0,
        ),
    ];
    for (series, want) in prometheus {
        assert_eq!(
            scraped(&metrics, series),
            Some(want),
            "{series}:\n{metrics}"
        );
    }
    assert!(
        scraped(&metrics, "firedrill_api_authorizer_seconds_total").is_some_and(|s| s > 0.0),
        "{metrics}"
    );

    let otlp: [(&str, &[(&str, &str)], f64); 7] = [
        ("firedrill.jobs", &[("kind", "backup")], 1.0),
        ("firedrill.jobs", &[("kind", "drill")], 0.0),
        ("firedrill.job.failures", &[], 1.0),
        ("firedrill.api.requests", &[], requests),
        (
            "firedrill.api.authorizations",
            &[("decision", "allow")],
            allowed,
        ),
        (
            "firedrill.api.authorizations",
            &[("decision", "deny")],
            denied,
        ),
        (
            "firedrill.api.authorizations",
            &[("decision", "error")],
            0.0,
        ),
    ];
    // Exports are cumulative, every 300 ms: wait until one carries them all.
    let start = Instant::now();
    let got = loop {
        let got = rotel.received();
        if otlp
            .iter()
            .all(|(name, labels, want)| exported(&got, name, labels) == Some(*want))
        {
            break got;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let seen: Vec<_> = otlp
                .iter()
                .map(|(name, labels, want)| (name, labels, want, exported(&got, name, labels)))
                .collect();
            panic!(
                "OTLP never carried the counters (name, labels, wanted, last exported): {seen:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        exported(&got, "firedrill.api.authorizer", &[]).is_some_and(|s| s > 0.0),
        "the authorizer's time is not exported"
    );
    assert!(got.contains("firedrill-test-counters"), "service.name");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
}
