//! The agent's HTTP API (hyper, HTTP/1.1).
//!
//! Outside `/v1`, unauthenticated: `/health` (the process answers), `/ready`
//! (start-up finished, not shutting down), `/metrics` (Prometheus text).
//! Under `/v1` every request first goes through the authorizer plugin
//! (`auth.rs`) and then through the route table (`routes.rs`), which names
//! the role each route needs (viewer < operator < admin). Errors have one
//! shape: `{"error": {"status", "code", "message", "request_id"}}`. The
//! status page `/ui` (`ui.rs`) is HTML for people, behind the same
//! authorizer: its session cookie's token is sent to it as a bearer token.
//!
//! Invariants: no `/v1` request reaches a handler without an authorizer's
//! allow and a sufficient role, and every decision is audited; with no
//! authorizer loaded, or one that fails or overruns its deadline, the answer
//! is 503 (fail closed); nothing here blocks a job; request bodies are
//! capped and headers must arrive within a timeout; open event streams are
//! capped (`api.max_event_streams`, 429 past it).

mod auth;
mod routes;
mod sse;
mod ui;

pub use auth::Audit;

use crate::agent::Agent;
use crate::caps::keyvalue::KvTarget;
use crate::jobs::status::Kind;
use crate::telemetry::metrics;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connections the kernel holds for the accept loop (capped by somaxconn).
const LISTEN_BACKLOG: u32 = 1024;

/// The largest request body accepted (JSON job requests are tiny).
const MAX_BODY: usize = 64 * 1024;

/// Shared with the agent: flipped to ready after start-up, back on shutdown.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How `/v1` requests are authorized.
pub enum Authorization {
    /// The first `authorizer` plugin of the agent's policies (hot-reloaded).
    Plugins,
    /// No checks at all: only for benchmarks measuring the API without it.
    Disabled,
}

/// Everything a request handler can reach.
pub struct ApiState {
    pub agent: Arc<Agent>,
    pub ready: Arc<Readiness>,
    pub authorization: Authorization,
    /// Redis for the authorizer's keyvalue grant (revocations, rate limits).
    pub keyvalue: Option<KvTarget>,
    pub audit: Audit,
    /// One permit per open `/v1/events` stream (`api.max_event_streams`).
    event_streams: Arc<tokio::sync::Semaphore>,
    next_id: AtomicU64,
}

impl ApiState {
    pub fn new(
        agent: Arc<Agent>,
        ready: Arc<Readiness>,
        authorization: Authorization,
        keyvalue: Option<KvTarget>,
        audit: Audit,
    ) -> Arc<ApiState> {
        // The series `/metrics` has always listed, there at zero from the
        // start so that a rate has a first point before the first event.
        let m = metrics::global();
        m.declare(metrics::API_REQUESTS, &[]);
        for decision in ["allow", "deny", "error"] {
            m.declare(metrics::API_AUTHORIZATIONS, &[("decision", decision)]);
        }
        m.declare(metrics::API_AUTHORIZER_TIME, &[]);
        for kind in [Kind::Backup, Kind::Drill, Kind::Prune, Kind::Restore] {
            m.declare(metrics::JOBS, &[("kind", kind.as_str())]);
        }
        m.declare(metrics::JOB_FAILURES, &[]);
        m.declare(metrics::JOBS_SKIPPED, &[]);
        let event_streams = Arc::new(tokio::sync::Semaphore::new(
            agent.config().max_event_streams,
        ));
        Arc::new(ApiState {
            event_streams,
            agent,
            ready,
            authorization,
            keyvalue,
            audit,
            next_id: AtomicU64::new(rand::random::<u32>() as u64),
        })
    }

    fn request_id(&self) -> String {
        format!("req-{:012x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

pub type Body = BoxBody<Bytes, std::io::Error>;

/// An answer that is not a success, in the API's one error shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            retry_after: None,
        }
    }

    fn code(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            409 => "conflict",
            413 => "payload_too_large",
            429 => "rate_limited",
            503 => "unavailable",
            _ => "error",
        }
    }

    fn into_response(self, request_id: &str) -> Response<Body> {
        let body = serde_json::json!({"error": {
            "status": self.status.as_u16(),
            "code": self.code(),
            "message": crate::telemetry::redactor().redact(&self.message),
            "request_id": request_id,
        }});
        let mut r = json(self.status, &body);
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", s.into());
        }
        r
    }
}

pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).expect("API bodies serialize");
    bytes.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(bytes))
                .map_err(|e| match e {})
                .boxed(),
        )
        .expect("a valid response")
}

/// Binds `addr` and serves until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<ApiState>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    // std's and mio's backlog of 128 resets part of a burst of clients (a
    // dashboard reconnecting its viewers) before the accept loop sees them.
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener: TcpListener = socket.listen(LISTEN_BACKLOG)?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!("api: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            tokio::spawn(serve_connection(state.clone(), peer, sock));
        }
    });
    Ok((local, task))
}

/// Serves the HTTP/1.1 requests of one connection until it closes: the one
/// path every byte a client sends takes (the fuzz target drives it over an
/// in-memory pipe).
pub async fn serve_connection<IO>(state: Arc<ApiState>, peer: SocketAddr, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(state, peer, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let _ = conn.await;
}

async fn handle(
    state: Arc<ApiState>,
    peer: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    metrics::global().add(metrics::API_REQUESTS, &[], 1.0);
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| state.request_id());
    // A caller's W3C trace context (`traceparent`) becomes this request's
    // parent, and through it the parent of any job the request starts.
    let span = tracing::info_span!("http.request", otel.kind = "server", method = %req.method(), path = %req.uri().path(), request_id = %request_id);
    let parent = {
        use opentelemetry::propagation::TextMapPropagator;
        opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .extract(&opentelemetry_http::HeaderExtractor(req.headers()))
    };
    let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
    let routed =
        tracing::Instrument::instrument(routes::route(&state, peer, &request_id, req), span).await;
    let mut response = match routed {
        Ok(r) => r,
        Err(e) => e.into_response(&request_id),
    };
    if let Ok(v) = request_id.parse() {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// The value of `name` in a URL's query, decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Reads a JSON body (at most [`MAX_BODY`]); an empty body reads as `{}`.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<hyper::body::Incoming>,
) -> Result<T, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                413,
                format!("the request body is over {MAX_BODY} bytes or broken"),
            )
        })?
        .to_bytes();
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(text).map_err(|e| {
        ApiError::new(
            400,
            format!("the request body is not the expected JSON: {e}"),
        )
    })
}
