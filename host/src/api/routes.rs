//! The route table: each `/v1` route with the role it needs, and the
//! handlers. A handler runs only after `auth::authorize` allowed the call.

use super::auth::{self, role_name, Principal};
use super::{json, read_json, sse, ApiError, ApiState, Body};
use crate::agent::JobRequest;
use crate::archive as arch;
use crate::caps::types::Role;
use crate::jobs::status::Kind;
use crate::servers::pg::PgUrl;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

enum Route<'a> {
    WhoAmI,
    ListBackups,
    ListDrills,
    Trigger(Kind),
    ListJobs,
    Job(&'a str),
    Events,
}

/// (the route, the role it needs) for a `/v1` method and path.
fn lookup<'a>(method: &Method, path: &'a str) -> Result<(Route<'a>, Role), ApiError> {
    let segments: Vec<&str> = path.split('/').collect();
    let (route, role, allowed): (Option<Route>, Role, &str) = match segments.as_slice() {
        ["whoami"] => (
            method.eq(&Method::GET).then_some(Route::WhoAmI),
            Role::Viewer,
            "GET",
        ),
        ["backups"] if method == Method::GET => {
            (Some(Route::ListBackups), Role::Viewer, "GET, POST")
        }
        ["backups"] => (
            (method == Method::POST).then_some(Route::Trigger(Kind::Backup)),
            Role::Operator,
            "GET, POST",
        ),
        ["drills"] if method == Method::GET => (Some(Route::ListDrills), Role::Viewer, "GET, POST"),
        ["drills"] => (
            (method == Method::POST).then_some(Route::Trigger(Kind::Drill)),
            Role::Operator,
            "GET, POST",
        ),
        ["prune"] => (
            (method == Method::POST).then_some(Route::Trigger(Kind::Prune)),
            Role::Operator,
            "POST",
        ),
        ["restore"] => (
            (method == Method::POST).then_some(Route::Trigger(Kind::Restore)),
            Role::Admin,
            "POST",
        ),
        ["jobs"] => (
            (method == Method::GET).then_some(Route::ListJobs),
            Role::Viewer,
            "GET",
        ),
        ["jobs", id] => (
            (method == Method::GET).then_some(Route::Job(id)),
            Role::Viewer,
            "GET",
        ),
        ["events"] => (
            (method == Method::GET).then_some(Route::Events),
            Role::Viewer,
            "GET",
        ),
        _ => return Err(ApiError::new(404, format!("no route /v1/{path}"))),
    };
    route
        .map(|r| (r, role))
        .ok_or_else(|| ApiError::new(405, format!("/v1/{path} answers {allowed}, not {method}")))
}

pub async fn route(
    state: &Arc<ApiState>,
    peer: SocketAddr,
    request_id: &str,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/health") => {
            return Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
        }
        ("GET" | "HEAD", "/ready") if state.ready.get() => {
            return Ok(json(
                StatusCode::OK,
                &serde_json::json!({"status": "ready"}),
            ))
        }
        ("GET" | "HEAD", "/ready") => return Err(ApiError::new(503, "not ready")),
        ("GET", "/metrics") => return Ok(metrics()),
        (_, "/health" | "/ready" | "/metrics") => {
            return Err(ApiError::new(405, format!("{path} answers GET")))
        }
        _ => {}
    }
    if path == "/ui" || path.starts_with("/ui/") {
        return super::ui::route(state, peer, request_id, req).await;
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(ApiError::new(
            404,
            format!("no route {path}; the API lives under /v1"),
        ));
    };
    // Unknown routes are authorized too (as viewer), so they cannot be probed anonymously.
    let (found, required) = match lookup(&method, rest) {
        Ok((r, role)) => (Ok(r), role),
        Err(e) => (Err(e), Role::Viewer),
    };
    let principal = auth::authorize(
        state,
        peer,
        request_id,
        method.as_str(),
        &path,
        query.as_deref(),
        req.headers(),
        required,
    )
    .await?;
    let q = |name: &str| super::query_param(query.as_deref(), name);
    match found? {
        Route::WhoAmI => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"principal": principal.name, "role": role_name(principal.role)}),
        )),
        Route::ListBackups => {
            let (shown, ignored) = listings(state, q("source")).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "backups": shown, "ignored": ignored }),
            ))
        }
        Route::ListDrills => {
            let drills: Vec<_> = listings(state, q("source"))
                .await?
                .0
                .into_iter()
                .filter_map(|l| {
                    let d = l.last_drill?;
                    Some(serde_json::json!({"source": l.source, "backup": l.id, "report": d.report, "passed": d.passed}))
                })
                .collect();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "drills": drills }),
            ))
        }
        Route::ListJobs => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "jobs": state.agent.jobs.list() }),
        )),
        Route::Job(id) => match state.agent.jobs.get(id) {
            Some(j) => Ok(json(StatusCode::OK, &j.view())),
            None => Err(ApiError::new(
                404,
                format!("no job {id:?} (this agent keeps its last 200)"),
            )),
        },
        Route::Events => sse::stream(state, req.headers(), q("after")).await,
        Route::Trigger(kind) => trigger(state, kind, &principal, req).await,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    source: Option<String>,
    backup: Option<String>,
    target: Option<String>,
    #[serde(default)]
    dry_run: bool,
    /// Backups of a physical source only.
    #[serde(default)]
    incremental: bool,
}

async fn trigger(
    state: &Arc<ApiState>,
    kind: Kind,
    principal: &Principal,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body: TriggerBody = read_json(req).await?;
    let sources = &state.agent.config().sources;
    let source = match (&body.source, sources.as_slice()) {
        (Some(s), _) => s.clone(),
        (None, [only]) => only.name.clone(),
        (None, _) => return Err(ApiError::new(400, "name the source: {\"source\": \"...\"}")),
    };
    if body.incremental {
        // Refused rather than ignored: the caller expects a backup that
        // builds on the last one, and would get something else.
        if kind != Kind::Backup {
            return Err(ApiError::new(
                400,
                "\"incremental\" is for backups (POST /v1/backups) of a physical source",
            ));
        }
        // An unknown source is spawn's 404 below.
        if let Some(s) = sources.iter().find(|s| s.name == source && !s.physical) {
            return Err(ApiError::new(
                400,
                format!(
                    "source {:?} is {}: incremental backups are physical (kind = \"physical\", PostgreSQL 17+); leave \"incremental\" out",
                    s.name,
                    if s.redis.is_some() { "a Redis source" } else { "logical" }
                ),
            ));
        }
    }
    let mut request = JobRequest::new(kind, &source, &format!("api:{}", principal.name));
    request.backup = body.backup;
    request.dry_run = body.dry_run;
    request.incremental = body.incremental;
    request.trace = Some(tracing_opentelemetry::OpenTelemetrySpanExt::context(
        &tracing::Span::current(),
    ));
    if kind == Kind::Restore {
        let target = body.target.ok_or_else(|| {
            ApiError::new(
                400,
                "a restore needs \"target\": a postgres:// URL of a new database",
            )
        })?;
        request.target =
            Some(PgUrl::parse(&target).map_err(|e| ApiError::new(400, format!("target: {e}")))?);
    }
    let record = state
        .agent
        .spawn(request)
        .map_err(|e| ApiError::new(404, e.to_string()))?;
    let mut r = json(StatusCode::ACCEPTED, &record.view());
    if let Ok(v) = format!("/v1/jobs/{}", record.id).parse() {
        r.headers_mut().insert("location", v);
    }
    Ok(r)
}

/// The store's backups that its keys vouch for, of one source if named,
/// and the manifests and reports left out.
async fn listings(
    state: &ApiState,
    source: Option<String>,
) -> Result<(Vec<arch::Listing>, Vec<arch::Ignored>), ApiError> {
    let scan = arch::scan_backups(state.agent.store())
        .await
        .map_err(|e| ApiError::new(503, format!("the store cannot be listed: {e}")))?;
    let ignored = scan
        .ignored
        .into_iter()
        .filter(|i| {
            source
                .as_ref()
                .is_none_or(|s| i.object.split('/').next() == Some(s.as_str()))
        })
        .collect();
    Ok((
        scan.listings
            .into_iter()
            .filter(|l| source.as_ref().is_none_or(|s| *s == l.source))
            .collect(),
        ignored,
    ))
}

/// Prometheus text exposition of the agent's registry: the same series
/// OTLP exports.
fn metrics() -> Response<Body> {
    let mut out = String::new();
    crate::telemetry::metrics::global().render_prometheus(&mut out);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(out)).map_err(|e| match e {}).boxed())
        .expect("a valid response")
}
