//! The agent's measurements, kept once and shown twice: as Prometheus text
//! on `/metrics` and over OTLP (observable instruments read the same
//! values at each export; histograms are recorded to both as they happen).
//!
//! Names follow both conventions from one description: OpenTelemetry's
//! dotted name and unit (`firedrill.backup.duration`, `s`), and the
//! Prometheus name derived from it (`firedrill_backup_duration_seconds`,
//! counters ending in `_total`). Labels are the same keys in both.
//!
//! Invariants: every metric the agent reports is a series here (jobs, API
//! requests and authorizer decisions included), and `/metrics` renders this
//! registry and nothing else, so the two outputs cannot disagree; a label
//! value is never a secret or unbounded (sources, plugins, kinds, decisions
//! and results only: operators name those).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub struct Desc {
    /// OpenTelemetry name.
    pub name: &'static str,
    pub unit: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Desc {
    pub fn prometheus_name(&self) -> String {
        let mut n = self.name.replace('.', "_");
        match self.unit {
            "s" => n.push_str("_seconds"),
            "By" => n.push_str("_bytes"),
            _ => {}
        }
        if self.kind == Kind::Counter {
            n.push_str("_total");
        }
        n
    }
}

macro_rules! metric {
    ($id:ident, $name:literal, $unit:literal, $kind:ident, $help:literal) => {
        pub const $id: &Desc = &Desc {
            name: $name,
            unit: $unit,
            kind: Kind::$kind,
            help: $help,
        };
    };
}

metric!(
    BACKUP_DURATION,
    "firedrill.backup.duration",
    "s",
    Histogram,
    "Time a backup took, by source."
);
metric!(
    BACKUP_SIZE,
    "firedrill.backup.size",
    "By",
    Gauge,
    "Bytes stored by the last backup, by source."
);
metric!(
    BACKUP_LAST_SUCCESS,
    "firedrill.backup.last_success",
    "s",
    Gauge,
    "Unix time of the last successful backup, by source."
);
metric!(
    DRILLS,
    "firedrill.drills",
    "",
    Counter,
    "Drills finished, by source and result (passed, failed)."
);
metric!(
    DRILL_PASSED,
    "firedrill.drill.passed",
    "",
    Gauge,
    "1 if the last drill of a source passed, else 0."
);
metric!(
    DRILL_LAST_RUN,
    "firedrill.drill.last_run",
    "s",
    Gauge,
    "Unix time the last drill of a source finished, passed or failed, by source."
);
metric!(
    DRILL_RTO,
    "firedrill.drill.rto",
    "s",
    Gauge,
    "Restore time (RTO) of the last drill, by source."
);
metric!(
    DRILL_RPO,
    "firedrill.drill.rpo",
    "s",
    Gauge,
    "Age of the drilled backup when the drill started (RPO), by source."
);
metric!(
    PLUGIN_CALLS,
    "firedrill.plugin.calls",
    "",
    Counter,
    "Plugin calls, by plugin."
);
metric!(
    PLUGIN_ERRORS,
    "firedrill.plugin.errors",
    "",
    Counter,
    "Plugin calls that failed (trap, timeout, out of memory, refused), by plugin."
);
metric!(
    PLUGIN_DURATION,
    "firedrill.plugin.duration",
    "s",
    Histogram,
    "Time of a plugin call, by plugin."
);
metric!(
    RELOADS,
    "firedrill.policy.reloads",
    "",
    Counter,
    "Policy directory reloads, by result (ok, error)."
);
metric!(
    RELOAD_FAILED,
    "firedrill.policy.reload_failed",
    "",
    Gauge,
    "1 while the last reload of the policies directory failed (the previous set stays in force), else 0."
);
metric!(
    LOCK_WAIT,
    "firedrill.lock.wait",
    "s",
    Histogram,
    "Time spent waiting for a job's lease, by job kind."
);
metric!(
    UNTRUSTED_IGNORED,
    "firedrill.untrusted_objects_ignored",
    "",
    Counter,
    "Stored manifests and drill reports that signing keys do not vouch for, ignored by list, drill and prune, by kind (manifest, report); each object counted once."
);

metric!(
    JOBS,
    "firedrill.jobs",
    "",
    Counter,
    "Jobs finished without error, by kind (backup, drill, prune, restore)."
);
metric!(
    JOB_FAILURES,
    "firedrill.job.failures",
    "",
    Counter,
    "Jobs that failed."
);
metric!(
    JOBS_SKIPPED,
    "firedrill.jobs.skipped",
    "",
    Counter,
    "Scheduled runs another agent of the fleet ran."
);
metric!(
    API_REQUESTS,
    "firedrill.api.requests",
    "",
    Counter,
    "HTTP requests received."
);
metric!(
    API_AUTHORIZATIONS,
    "firedrill.api.authorizations",
    "",
    Counter,
    "Decisions on /v1 requests, by decision (allow, deny, error)."
);
metric!(
    API_AUTHORIZER_TIME,
    "firedrill.api.authorizer",
    "s",
    Counter,
    "Time spent in authorizer decisions."
);
metric!(
    WAL_ARCHIVED_LSN,
    "firedrill.wal.archived_lsn",
    "",
    Gauge,
    "The end of the newest WAL segment in the archive (an LSN as a number), by source."
);
metric!(
    WAL_ARCHIVE_LAG,
    "firedrill.wal.archive_lag",
    "s",
    Gauge,
    "Seconds since the newest WAL segment was archived while the server has written more (the real RPO of a physical source), by source."
);
metric!(
    WAL_PENDING,
    "firedrill.wal.pending",
    "By",
    Gauge,
    "WAL the server has written that the archive does not hold yet (what the slot holds back), by source."
);
metric!(
    WAL_CAUGHT_UP,
    "firedrill.wal.caught_up",
    "s",
    Gauge,
    "Unix time the WAL archive last held everything the server had written (while it lags: when its newest segment was stored; before the streamer hears from the server: when this agent started it), by source."
);
metric!(
    WAL_SEGMENTS,
    "firedrill.wal.segments",
    "",
    Counter,
    "WAL segments archived, by source."
);

metric!(
    START_TIME,
    "firedrill.start_time",
    "s",
    Gauge,
    "Unix time this agent started running its schedules."
);
metric!(
    SCHEDULE_INTERVAL,
    "firedrill.schedule.interval",
    "s",
    Gauge,
    "Longest wait between two runs of a source's schedule (an interval; a cron's longest gap over the coming year), by source and kind (backup, incremental, drill, prune)."
);
metric!(
    RPO_TARGET,
    "firedrill.source.rpo_target",
    "s",
    Gauge,
    "The recovery point objective a source must meet (its rpo_target), by source; only for sources that set one."
);

metric!(
    NOTIFICATIONS,
    "firedrill.notifications",
    "",
    Counter,
    "Notification messages by destination and result: delivered; retried (an attempt failed, another follows); failed (every attempt failed); dropped (the queue was full)."
);

pub const ALL: &[&Desc] = &[
    BACKUP_DURATION,
    BACKUP_SIZE,
    BACKUP_LAST_SUCCESS,
    DRILLS,
    DRILL_PASSED,
    DRILL_LAST_RUN,
    DRILL_RTO,
    DRILL_RPO,
    PLUGIN_CALLS,
    PLUGIN_ERRORS,
    PLUGIN_DURATION,
    RELOADS,
    RELOAD_FAILED,
    LOCK_WAIT,
    UNTRUSTED_IGNORED,
    JOBS,
    JOB_FAILURES,
    JOBS_SKIPPED,
    API_REQUESTS,
    API_AUTHORIZATIONS,
    API_AUTHORIZER_TIME,
    WAL_ARCHIVED_LSN,
    WAL_ARCHIVE_LAG,
    WAL_PENDING,
    WAL_CAUGHT_UP,
    WAL_SEGMENTS,
    START_TIME,
    SCHEDULE_INTERVAL,
    RPO_TARGET,
    NOTIFICATIONS,
];

/// Upper bounds of histogram buckets, in seconds: from a plugin call's
/// microseconds to a large backup's hour.
pub const BUCKETS: &[f64] = &[
    0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
];

pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Cumulative per bucket of [`BUCKETS`], then +Inf.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

#[derive(Clone, Debug)]
pub enum Value {
    Number(f64),
    Histogram(Histogram),
}

/// One hook for OTLP: histograms are recorded as they happen.
type HistogramHook = Box<dyn Fn(&Desc, &Labels, f64) + Send + Sync>;

#[derive(Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(&'static str, Labels), Value>>,
    on_histogram: OnceLock<HistogramHook>,
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::default)
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Metrics {
    pub fn add(&self, d: &'static Desc, l: &[(&'static str, &str)], v: f64) {
        let mut s = self.series.lock().unwrap_or_else(|e| e.into_inner());
        match s.entry((d.name, labels(l))).or_insert(Value::Number(0.0)) {
            Value::Number(n) => *n += v,
            Value::Histogram(_) => {}
        }
    }

    /// Starts a counter's series at zero unless it exists: a series known in
    /// advance is shown before its first event, so a rate has a base.
    pub fn declare(&self, d: &'static Desc, l: &[(&'static str, &str)]) {
        self.add(d, l, 0.0);
    }

    pub fn set(&self, d: &'static Desc, l: &[(&'static str, &str)], v: f64) {
        let mut s = self.series.lock().unwrap_or_else(|e| e.into_inner());
        s.insert((d.name, labels(l)), Value::Number(v));
    }

    pub fn observe(&self, d: &'static Desc, l: &[(&'static str, &str)], v: f64) {
        let l = labels(l);
        if let Some(hook) = self.on_histogram.get() {
            hook(d, &l, v);
        }
        let mut s = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let entry = s.entry((d.name, l)).or_insert_with(|| {
            Value::Histogram(Histogram {
                counts: vec![0; BUCKETS.len() + 1],
                ..Default::default()
            })
        });
        if let Value::Histogram(h) = entry {
            for (i, bound) in BUCKETS.iter().chain([f64::INFINITY].iter()).enumerate() {
                if v <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.sum += v;
            h.count += 1;
        }
    }

    /// Called with every histogram observation (the OTLP exporter's hook).
    pub fn on_histogram(&self, hook: impl Fn(&Desc, &Labels, f64) + Send + Sync + 'static) {
        let _ = self.on_histogram.set(Box::new(hook));
    }

    /// The current value of every series of `d`.
    pub fn series(&self, d: &Desc) -> Vec<(Labels, Value)> {
        let s = self.series.lock().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .filter(|((name, _), _)| *name == d.name)
            .map(|((_, l), v)| (l.clone(), v.clone()))
            .collect()
    }

    /// Every series in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        for d in ALL {
            let rows = self.series(d);
            if rows.is_empty() {
                continue;
            }
            let name = d.prometheus_name();
            let kind = match d.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", d.help);
            for (l, v) in rows {
                match v {
                    Value::Number(n) => {
                        let _ = writeln!(out, "{name}{} {n}", render_labels(&l, None));
                    }
                    Value::Histogram(h) => {
                        for (i, bound) in BUCKETS.iter().enumerate() {
                            let le = format!("{bound}");
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {}",
                                render_labels(&l, Some(&le)),
                                h.counts[i]
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {}",
                            render_labels(&l, Some("+Inf")),
                            h.counts[BUCKETS.len()]
                        );
                        let _ = writeln!(out, "{name}_sum{} {}", render_labels(&l, None), h.sum);
                        let _ =
                            writeln!(out, "{name}_count{} {}", render_labels(&l, None), h.count);
                    }
                }
            }
        }
    }
}

fn render_labels(l: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_description_two_conventions() {
        assert_eq!(
            BACKUP_DURATION.prometheus_name(),
            "firedrill_backup_duration_seconds"
        );
        assert_eq!(DRILLS.prometheus_name(), "firedrill_drills_total");
        assert_eq!(BACKUP_SIZE.prometheus_name(), "firedrill_backup_size_bytes");
        let m = Metrics::default();
        m.add(DRILLS, &[("source", "app"), ("result", "passed")], 1.0);
        m.add(DRILLS, &[("source", "app"), ("result", "passed")], 1.0);
        m.observe(BACKUP_DURATION, &[("source", "a\"b")], 0.7);
        m.observe(BACKUP_DURATION, &[("source", "a\"b")], 42.0);
        let mut out = String::new();
        m.render_prometheus(&mut out);
        assert!(
            out.contains("firedrill_drills_total{source=\"app\",result=\"passed\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("firedrill_backup_duration_seconds_bucket{source=\"a\\\"b\",le=\"1\"} 1"),
            "{out}"
        );
        assert!(
            out.contains(
                "firedrill_backup_duration_seconds_bucket{source=\"a\\\"b\",le=\"+Inf\"} 2"
            ),
            "{out}"
        );
        assert!(
            out.contains("firedrill_backup_duration_seconds_count{source=\"a\\\"b\"} 2"),
            "{out}"
        );
    }

    /// The job and API counters keep the Prometheus names they had when
    /// they were written outside the registry (dashboards query them).
    #[test]
    fn the_job_and_api_counters_keep_their_names() {
        let names: Vec<String> = [
            JOBS,
            JOB_FAILURES,
            JOBS_SKIPPED,
            API_REQUESTS,
            API_AUTHORIZATIONS,
            API_AUTHORIZER_TIME,
        ]
        .iter()
        .map(|d| d.prometheus_name())
        .collect();
        assert_eq!(
            names,
            [
                "firedrill_jobs_total",
                "firedrill_job_failures_total",
                "firedrill_jobs_skipped_total",
                "firedrill_api_requests_total",
                "firedrill_api_authorizations_total",
                "firedrill_api_authorizer_seconds_total",
            ]
        );
        for d in [
            JOBS,
            JOB_FAILURES,
            JOBS_SKIPPED,
            API_REQUESTS,
            API_AUTHORIZATIONS,
            API_AUTHORIZER_TIME,
        ] {
            assert!(
                ALL.iter().any(|a| a.name == d.name),
                "{} is not in ALL, so neither /metrics nor OTLP shows it",
                d.name
            );
        }
    }

    /// The shipped alert rules (deploy/helm/firedrill/files/prometheus/)
    /// query these names; tests/deploy/check holds the rules to this file.
    #[test]
    fn the_series_the_alert_rules_read_keep_their_names() {
        let names: Vec<String> = [
            START_TIME,
            SCHEDULE_INTERVAL,
            RPO_TARGET,
            DRILL_LAST_RUN,
            RELOAD_FAILED,
            WAL_CAUGHT_UP,
        ]
        .iter()
        .map(|d| d.prometheus_name())
        .collect();
        assert_eq!(
            names,
            [
                "firedrill_start_time_seconds",
                "firedrill_schedule_interval_seconds",
                "firedrill_source_rpo_target_seconds",
                "firedrill_drill_last_run_seconds",
                "firedrill_policy_reload_failed",
                "firedrill_wal_caught_up_seconds",
            ]
        );
    }

    #[test]
    fn a_declared_series_shows_zero_and_keeps_its_count() {
        let m = Metrics::default();
        m.declare(JOBS, &[("kind", "backup")]);
        m.declare(JOB_FAILURES, &[]);
        let mut out = String::new();
        m.render_prometheus(&mut out);
        assert!(
            out.contains("firedrill_jobs_total{kind=\"backup\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("firedrill_job_failures_total 0\n"), "{out}");
        m.add(JOBS, &[("kind", "backup")], 1.0);
        m.add(JOBS, &[("kind", "backup")], 1.0);
        m.declare(JOBS, &[("kind", "backup")]);
        let mut out = String::new();
        m.render_prometheus(&mut out);
        assert!(
            out.contains("firedrill_jobs_total{kind=\"backup\"} 2\n"),
            "{out}"
        );
    }
}
