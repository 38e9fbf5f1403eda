//! Export over OTLP (gRPC or HTTP/protobuf), configured the standard way:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (none: nothing is exported),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or `http/protobuf`),
//! `OTEL_SERVICE_NAME` (default `firedrill`), `OTEL_METRIC_EXPORT_INTERVAL`
//! (milliseconds, default 10 000).
//!
//! Spans come from `tracing` (one per job, step and plugin call) through
//! tracing-opentelemetry; metrics are observable instruments over
//! [`super::metrics`]; log records are the redacted lines of [`super::logs`].
//!
//! Invariants: span names, attributes and events pass the redactor before
//! they are exported ([`Redacting`]); logs are exported only after
//! redaction; the exporters' own traffic is never traced or logged back
//! into the export.

use super::{metrics, redact};
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_otlp::{LogExporter, MetricExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub endpoint: String,
    pub grpc: bool,
    pub service: String,
    pub metrics_every: Duration,
}

impl Settings {
    /// From the standard environment variables; `None` when no endpoint is set.
    pub fn from_env() -> Result<Option<Settings>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let Some(endpoint) = var("OTEL_EXPORTER_OTLP_ENDPOINT") else {
            return Ok(None);
        };
        let grpc = match var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            None | Some("grpc") => true,
            Some("http/protobuf") => false,
            Some(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: use grpc or http/protobuf"
                ))
            }
        };
        let metrics_every = match var("OTEL_METRIC_EXPORT_INTERVAL") {
            None => Duration::from_secs(10),
            Some(ms) => Duration::from_millis(ms.parse().map_err(|_| {
                format!("OTEL_METRIC_EXPORT_INTERVAL={ms:?}: milliseconds, e.g. 10000")
            })?),
        };
        Ok(Some(Settings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            grpc,
            service: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "firedrill".into()),
            metrics_every,
        }))
    }
}

/// What is running; shut down (flushing) at exit.
pub struct Otlp {
    pub tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
    logger: SdkLoggerProvider,
    /// gRPC's channel lives on a runtime of its own: the SDK's batch threads
    /// are not tokio threads.
    _runtime: tokio::runtime::Runtime,
}

static LOGGER: OnceLock<opentelemetry_sdk::logs::SdkLogger> = OnceLock::new();

/// Passes redacted log lines on as OTLP log records (from the log thread).
pub(super) fn emit_logs(lines: &[(tracing::Level, String)]) {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    for (level, line) in lines {
        let mut r = logger.create_log_record();
        let (number, text) = match *level {
            tracing::Level::ERROR => (Severity::Error, "ERROR"),
            tracing::Level::WARN => (Severity::Warn, "WARN"),
            tracing::Level::INFO => (Severity::Info, "INFO"),
            tracing::Level::DEBUG => (Severity::Debug, "DEBUG"),
            tracing::Level::TRACE => (Severity::Trace, "TRACE"),
        };
        r.set_severity_number(number);
        r.set_severity_text(text);
        r.set_body(AnyValue::String(line.clone().into()));
        logger.emit(r);
    }
}

impl Otlp {
    pub fn start(s: &Settings) -> Result<Otlp, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("firedrill-otlp")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let _enter = runtime.enter();
        let bad = |e: opentelemetry_otlp::ExporterBuildError| {
            format!("OTEL_EXPORTER_OTLP_ENDPOINT={}: {e}", s.endpoint)
        };
        let (spans, metric, logs) = if s.grpc {
            (
                SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(&s.endpoint)
                    .build()
                    .map_err(bad)?,
                MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(&s.endpoint)
                    .build()
                    .map_err(bad)?,
                LogExporter::builder()
                    .with_tonic()
                    .with_endpoint(&s.endpoint)
                    .build()
                    .map_err(bad)?,
            )
        } else {
            // An endpoint given in code is used as is: the signal's path is ours to add.
            let at = |signal: &str| format!("{}/v1/{signal}", s.endpoint);
            (
                SpanExporter::builder()
                    .with_http()
                    .with_endpoint(at("traces"))
                    .build()
                    .map_err(bad)?,
                MetricExporter::builder()
                    .with_http()
                    .with_endpoint(at("metrics"))
                    .build()
                    .map_err(bad)?,
                LogExporter::builder()
                    .with_http()
                    .with_endpoint(at("logs"))
                    .build()
                    .map_err(bad)?,
            )
        };
        let resource = Resource::builder()
            .with_service_name(s.service.clone())
            .build();
        let tracer = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(Redacting(BatchSpanProcessor::builder(spans).build()))
            .build();
        let meter = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(
                PeriodicReader::builder(metric)
                    .with_interval(s.metrics_every)
                    .build(),
            )
            .build();
        let logger = SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(logs)
            .build();
        let _ = LOGGER.set(logger.logger("firedrill"));
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        register_metrics(&meter);
        drop(_enter);
        Ok(Otlp {
            tracer,
            meter,
            logger,
            _runtime: runtime,
        })
    }

    /// Flushes and stops the exporters.
    pub fn shutdown(&self) {
        let _ = self.tracer.shutdown();
        let _ = self.meter.shutdown();
        let _ = self.logger.shutdown();
    }
}

fn attributes(labels: &metrics::Labels) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .collect()
}

/// One observable instrument per counter and gauge, reading the registry at
/// each export; histograms are recorded as they happen.
fn register_metrics(provider: &SdkMeterProvider) {
    let meter = provider.meter("firedrill");
    for d in metrics::ALL {
        let read = move |observe: &dyn Fn(f64, &[KeyValue])| {
            for (labels, value) in metrics::global().series(d) {
                if let metrics::Value::Number(n) = value {
                    observe(n, &attributes(&labels));
                }
            }
        };
        match d.kind {
            metrics::Kind::Counter => {
                meter
                    .f64_observable_counter(d.name)
                    .with_unit(d.unit)
                    .with_description(d.help)
                    .with_callback(move |i| read(&|v, a| i.observe(v, a)))
                    .build();
            }
            metrics::Kind::Gauge => {
                meter
                    .f64_observable_gauge(d.name)
                    .with_unit(d.unit)
                    .with_description(d.help)
                    .with_callback(move |i| read(&|v, a| i.observe(v, a)))
                    .build();
            }
            metrics::Kind::Histogram => {}
        }
    }
    let histograms: Vec<(&'static str, opentelemetry::metrics::Histogram<f64>)> = metrics::ALL
        .iter()
        .filter(|d| d.kind == metrics::Kind::Histogram)
        .map(|d| {
            (
                d.name,
                meter
                    .f64_histogram(d.name)
                    .with_unit(d.unit)
                    .with_description(d.help)
                    .with_boundaries(metrics::BUCKETS.to_vec())
                    .build(),
            )
        })
        .collect();
    metrics::global().on_histogram(move |d, labels, v| {
        if let Some((_, h)) = histograms.iter().find(|(n, _)| *n == d.name) {
            h.record(v, &attributes(labels));
        }
    });
}

/// Redacts a span's name, string attributes and events before the batch
/// exporter sees them: one redactor call per span.
#[derive(Debug)]
struct Redacting<P>(P);

impl<P: SpanProcessor> SpanProcessor for Redacting<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.0.on_start(span, cx)
    }

    fn on_end(&self, mut span: SpanData) {
        fn strings(attrs: &[KeyValue], into: &mut Vec<String>) {
            for kv in attrs {
                if let Value::String(s) = &kv.value {
                    into.push(s.to_string());
                }
            }
        }
        fn replace(attrs: &mut [KeyValue], from: &mut impl Iterator<Item = String>) {
            for kv in attrs.iter_mut() {
                if let Value::String(_) = kv.value {
                    kv.value = Value::String(from.next().unwrap_or_default().into());
                }
            }
        }
        let mut texts = vec![span.name.to_string()];
        strings(&span.attributes, &mut texts);
        for e in span.events.events.iter() {
            texts.push(e.name.to_string());
            strings(&e.attributes, &mut texts);
        }
        let mut out = redact::global().redact_lines(texts).into_iter();
        span.name = out.next().unwrap_or_default().into();
        replace(&mut span.attributes, &mut out);
        for e in span.events.events.iter_mut() {
            e.name = out.next().unwrap_or_default().into();
            replace(&mut e.attributes, &mut out);
        }
        self.0.on_end(span)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
}
