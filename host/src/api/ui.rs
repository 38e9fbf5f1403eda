//! The status page, `/ui`, on the API's listener: each source's verdict,
//! last backup and drill, RTO and RPO over 30 days as SVG charts, each
//! backup with what retention would do to it, drill reports with their
//! checks, and buttons that start a backup or a drill. Server-rendered
//! (minijinja, templates in `ui/`), no JavaScript, no asset from elsewhere.
//!
//! A token entered once on `/ui/login` is checked by the authorizer (as
//! viewer) and kept in an HttpOnly, SameSite=Strict cookie scoped to `/ui`;
//! every page sends it through the authorizer again, as a bearer token, for
//! the role that page needs (viewer; operator for the buttons), so the
//! audit log and rate limits see the page as they see the API.
//!
//! Invariants: a state-changing request (a button) carries the session's
//! CSRF token (an HMAC of the session token) and, when the browser sends
//! one, an Origin of this host; the token is never written into a page;
//! every value shown is escaped by the templates (SVG charts hold numbers
//! only) and errors pass the redactor.

use super::{auth, ApiError, ApiState, Body};
use crate::agent::JobRequest;
use crate::archive::{self, health, Listing};
use crate::caps::types::Role;
use crate::jobs::status::Kind;
use crate::runtime::World;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, Response, StatusCode};
use minijinja::{context, Environment};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

const COOKIE: &str = "firedrill_session";
/// Days the charts look back.
const WINDOW_DAYS: i64 = 30;

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in [
            ("layout.html", include_str!("ui/layout.html")),
            ("login.html", include_str!("ui/login.html")),
            ("index.html", include_str!("ui/index.html")),
            ("report.html", include_str!("ui/report.html")),
            ("message.html", include_str!("ui/message.html")),
        ] {
            env.add_template(name, text)
                .expect("the UI templates parse");
        }
        env
    })
}

fn page(status: StatusCode, template: &str, ctx: minijinja::Value) -> Response<Body> {
    let (status, html) = match templates()
        .get_template(template)
        .and_then(|t| t.render(ctx))
    {
        Ok(html) => (status, html),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "<!doctype html><p>the page could not be rendered: {}</p>",
                minijinja::HtmlEscape(&e.to_string())
            ),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        )
        .header("x-frame-options", "DENY")
        .body(Full::new(Bytes::from(html)).map_err(|e| match e {}).boxed())
        .expect("a valid response")
}

fn redirect(to: &str, cookie: Option<String>) -> Response<Body> {
    let mut r = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("location", to)
        .header("cache-control", "no-store");
    if let Some(c) = cookie {
        r = r.header("set-cookie", c);
    }
    r.body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
        .expect("a valid response")
}

fn message(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    page(
        status,
        "message.html",
        context! { title, text => crate::telemetry::redactor().redact(text) },
    )
}

/// The CSRF token of a session: only its holder's page can show it.
fn csrf_of(token: &str) -> String {
    crate::notify::deliver::sign(token, b"firedrill-ui-csrf")
}

/// Equal, in a time that does not depend on where they differ.
fn same_bytes(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// The request's headers with the session's token as the bearer.
fn as_bearer(headers: &HeaderMap, token: &str) -> Option<HeaderMap> {
    let mut h = headers.clone();
    h.insert("authorization", format!("Bearer {token}").parse().ok()?);
    Some(h)
}

fn foreign() -> Response<Body> {
    message(
        StatusCode::FORBIDDEN,
        "Refused",
        "the form came from another site",
    )
}

/// Where the browser says the request came from is this host (or it says
/// nothing: SameSite=Strict already keeps the cookie from other sites).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get("host").and_then(|v| v.to_str().ok());
    let origin_host = origin.split("://").nth(1);
    origin_host.is_some() && origin_host == host
}

async fn form(req: Request<hyper::body::Incoming>) -> Result<Vec<(String, String)>, ApiError> {
    let bytes = http_body_util::Limited::new(req.into_body(), 16 * 1024)
        .collect()
        .await
        .map_err(|_| ApiError::new(413, "the form is over 16 KiB"))?
        .to_bytes();
    Ok(url::form_urlencoded::parse(&bytes).into_owned().collect())
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub async fn route(
    state: &Arc<ApiState>,
    peer: SocketAddr,
    request_id: &str,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers = req.headers().clone();
    let authorize = |token: &str, role: Role| {
        let headers = as_bearer(&headers, token);
        let (method, path, query) = (method.clone(), path.clone(), query.clone());
        async move {
            let headers = headers.ok_or_else(|| ApiError::new(401, "that token cannot be sent"))?;
            auth::authorize(
                state,
                peer,
                request_id,
                &method,
                &path,
                query.as_deref(),
                &headers,
                role,
            )
            .await
        }
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/ui/login") => Ok(page(StatusCode::OK, "login.html", context! {})),
        ("POST", "/ui/login") => {
            if !same_origin(&headers) {
                return Ok(foreign());
            }
            let f = form(req).await?;
            let token = field(&f, "token").unwrap_or_default().trim().to_string();
            // Only what a cookie can carry as it is (RFC 6265 cookie-octets):
            // no attribute or header can ride in on it.
            let octet = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | ',' | ';' | '\\');
            if token.is_empty() || !token.chars().all(octet) {
                return Ok(page(
                    StatusCode::BAD_REQUEST,
                    "login.html",
                    context! { error => "that is not a token (firedrill token issue prints one)" },
                ));
            }
            match authorize(&token, Role::Viewer).await {
                Ok(_) => {
                    // Over TLS (here or at a proxy in front): never sent in clear.
                    let https = headers
                        .get("origin")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|o| o.starts_with("https://"));
                    let secure = if https { "; Secure" } else { "" };
                    Ok(redirect(
                        "/ui",
                        Some(format!(
                            "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict{secure}"
                        )),
                    ))
                }
                Err(e) => Ok(page(
                    e.status,
                    "login.html",
                    context! { error => crate::telemetry::redactor().redact(&e.message) },
                )),
            }
        }
        ("POST", "/ui/logout") if !same_origin(&headers) => Ok(foreign()),
        ("POST", "/ui/logout") => Ok(redirect(
            "/ui/login",
            Some(format!(
                "{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"
            )),
        )),
        ("GET", "/ui" | "/ui/" | "/ui/report") => {
            let Some(token) = session_token(&headers) else {
                return Ok(redirect("/ui/login", None));
            };
            let principal = match authorize(&token, Role::Viewer).await {
                Ok(p) => p,
                Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                    return Ok(redirect("/ui/login", None))
                }
                Err(e) => return Ok(message(e.status, "Refused", &e.message)),
            };
            let q = |name: &str| super::query_param(query.as_deref(), name);
            if path == "/ui/report" {
                let (Some(source), Some(backup)) = (q("source"), q("backup")) else {
                    return Ok(message(
                        StatusCode::BAD_REQUEST,
                        "Which report?",
                        "name ?source= and ?backup=",
                    ));
                };
                // Names as the store's paths have them, never `..` or a path.
                let known = state
                    .agent
                    .config()
                    .sources
                    .iter()
                    .any(|s| s.name == source)
                    || (crate::config::check_source_name(&source).is_ok()
                        && !source.starts_with('.'));
                if !known || !archive::manifest::is_backup_id(&backup) {
                    return Ok(message(
                        StatusCode::BAD_REQUEST,
                        "No such report",
                        "name a source and a backup id",
                    ));
                }
                return report(state, &source, &backup).await;
            }
            let started = q("started").filter(|id| state.agent.jobs.get(id).is_some());
            Ok(overview(state, &principal, &csrf_of(&token), started).await)
        }
        ("POST", "/ui/run") => {
            let Some(token) = session_token(&headers) else {
                return Ok(message(
                    StatusCode::UNAUTHORIZED,
                    "Signed out",
                    "sign in again at /ui/login",
                ));
            };
            if !same_origin(&headers) {
                return Ok(foreign());
            }
            let f = form(req).await?;
            if !same_bytes(field(&f, "csrf").unwrap_or_default(), &csrf_of(&token)) {
                return Ok(message(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    "the form is not from this session's page: reload /ui and try again",
                ));
            }
            let principal = match authorize(&token, Role::Operator).await {
                Ok(p) => p,
                Err(e) => return Ok(message(e.status, "Refused", &e.message)),
            };
            let kind = match field(&f, "kind") {
                Some("backup") => Kind::Backup,
                Some("drill") => Kind::Drill,
                other => {
                    return Ok(message(
                        StatusCode::BAD_REQUEST,
                        "Which job?",
                        &format!("{other:?}: a backup or a drill"),
                    ))
                }
            };
            let source = field(&f, "source").unwrap_or_default();
            let request = JobRequest::new(kind, source, &format!("ui:{}", principal.name));
            match state.agent.spawn(request) {
                Ok(record) => Ok(redirect(&format!("/ui?started={}", record.id), None)),
                Err(e) => Ok(message(
                    StatusCode::NOT_FOUND,
                    "Not started",
                    &e.to_string(),
                )),
            }
        }
        _ => Ok(message(
            StatusCode::NOT_FOUND,
            "Not here",
            &format!("no page {path}"),
        )),
    }
}

#[derive(Serialize)]
struct SourceView {
    name: String,
    verdict: &'static str,
    backups: usize,
    last_backup: Option<String>,
    last_backup_age: Option<String>,
    last_drill: Option<DrillView>,
    rto_chart: String,
    rpo_chart: String,
    rows: Vec<BackupRow>,
    retention: Option<String>,
}

#[derive(Serialize)]
struct DrillView {
    backup: String,
    passed: bool,
    rto: String,
    finished: String,
}

#[derive(Serialize)]
struct BackupRow {
    id: String,
    created: String,
    size: String,
    complete: bool,
    drill: Option<bool>,
    keep: Option<String>,
}

async fn overview(
    state: &Arc<ApiState>,
    principal: &auth::Principal,
    csrf: &str,
    started: Option<String>,
) -> Response<Body> {
    let agent = &state.agent;
    // The page is needed most when the store is in trouble: it says so.
    let scan = match archive::scan_backups(agent.store()).await {
        Ok(s) => s,
        Err(e) => {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The store cannot be listed",
                &e.to_string(),
            )
        }
    };
    let now = archive::manifest::unix_now();
    let mut sources = Vec::new();
    let configured: Vec<String> = agent
        .config()
        .sources
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let health = health::summarize(&scan.listings, now);
    let names: std::collections::BTreeSet<String> = configured
        .iter()
        .cloned()
        .chain(health.iter().map(|h| h.source.clone()))
        .collect();
    for name in names {
        let h = health.iter().find(|h| h.source == name);
        let mine: Vec<&Listing> = scan.listings.iter().filter(|l| l.source == name).collect();
        let plan = retention_plan(state, &name).await;
        let since = now - WINDOW_DAYS * 86_400;
        let mut drills: Vec<(i64, f64)> = mine
            .iter()
            .filter_map(|l| l.last_drill.as_ref())
            .filter(|d| d.finished >= since)
            .map(|d| (d.finished, d.rto_seconds))
            .collect();
        drills.sort_by_key(|p| p.0);
        let mut created: Vec<i64> = mine
            .iter()
            .filter(|l| l.complete)
            .map(|l| l.created)
            .collect();
        created.sort_unstable();
        // The loss window each backup closed: the time since the one before.
        let rpo: Vec<(i64, f64)> = created
            .windows(2)
            .filter(|w| w[1] >= since)
            .map(|w| (w[1], (w[1] - w[0]) as f64))
            .collect();
        let mut rows: Vec<BackupRow> = mine
            .iter()
            .map(|l| BackupRow {
                id: l.id.clone(),
                created: time(l.created),
                size: bytes(l.size),
                complete: l.complete,
                drill: l.last_drill.as_ref().map(|d| d.passed),
                keep: plan.as_ref().ok().and_then(|p| {
                    p.iter().find(|d| d.id == l.id).map(|d| {
                        let reason = crate::telemetry::redactor().redact(&d.reason);
                        format!("{}: {reason}", if d.delete { "delete" } else { "keep" })
                    })
                }),
            })
            .collect();
        rows.sort_by(|a, b| b.id.cmp(&a.id));
        rows.truncate(50);
        sources.push(SourceView {
            verdict: h.map(|h| h.verdict.as_str()).unwrap_or("no backup"),
            backups: h.map(|h| h.backups).unwrap_or(0),
            last_backup: h.and_then(|h| h.last_backup.as_ref()).map(|b| b.id.clone()),
            last_backup_age: h
                .and_then(|h| h.rpo_seconds)
                .map(|s| format!("{} ago", duration(s as f64))),
            last_drill: h.and_then(|h| h.last_drill.as_ref()).map(|d| DrillView {
                backup: d.backup.clone(),
                passed: d.passed,
                rto: duration(d.rto_seconds),
                finished: time(d.finished),
            }),
            rto_chart: chart("RTO (restore time of each drill)", &drills, since, now),
            rpo_chart: chart("RPO (time between backups)", &rpo, since, now),
            rows,
            retention: plan.err().map(|e| crate::telemetry::redactor().redact(&e)),
            name,
        });
    }
    page(
        StatusCode::OK,
        "index.html",
        context! {
            sources,
            principal => principal.name,
            role => auth::role_name(principal.role),
            operator => matches!(principal.role, Role::Operator | Role::Admin),
            csrf,
            started,
            now => time(now),
        },
    )
}

/// What retention would do to each backup of `source` now (a dry run of
/// the policy in force, within the host's guards), or why it cannot say.
async fn retention_plan(
    state: &Arc<ApiState>,
    source: &str,
) -> Result<Vec<crate::jobs::prune::Decision>, String> {
    let agent = &state.agent;
    let Some(policy) = agent
        .policies()
        .current()
        .of_world(World::Retention)
        .next()
        .cloned()
    else {
        return Err("no retention policy: nothing is pruned".into());
    };
    let c = agent.config();
    let opts = crate::jobs::prune::PruneOptions {
        policy,
        min_age: c.min_age,
        abandon_after: c.abandon_after,
        max_deletions: c.max_deletions,
        dry_run: true,
        source: Some(source.to_string()),
        pitr_window: c.pitr_window,
    };
    crate::jobs::prune::run(agent.store(), &opts)
        .await
        .map(|r| r.decisions)
        .map_err(|e| format!("retention cannot say: {e}"))
}

async fn report(
    state: &Arc<ApiState>,
    source: &str,
    backup: &str,
) -> Result<Response<Body>, ApiError> {
    let Some(bytes) = archive::last_drill_report(state.agent.store(), source, backup).await else {
        return Ok(message(
            StatusCode::NOT_FOUND,
            "No report",
            &format!("backup {backup} of {source} has no drill report this store's keys accept"),
        ));
    };
    let r: crate::jobs::drill::DrillReport = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(500, format!("the report does not read: {e}")))?;
    let checks: Vec<minijinja::Value> = r
        .checks
        .iter()
        .map(|c| {
            context! {
                name => c.name,
                status => format!("{:?}", c.status).to_lowercase(),
                detail => crate::telemetry::redactor().redact(&c.detail),
            }
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "report.html",
        context! {
            source,
            backup,
            passed => r.passed,
            rto => duration(r.rto_seconds),
            rpo => duration(r.rpo_seconds as f64),
            checks,
        },
    ))
}

/// A line chart of `points` (time, seconds) from `since` to `now`, as SVG:
/// numbers only, so it is safe to place unescaped.
fn chart(title: &str, points: &[(i64, f64)], since: i64, now: i64) -> String {
    let (w, h, pad) = (560.0, 140.0, 30.0);
    let title = minijinja::HtmlEscape(title).to_string();
    if points.is_empty() {
        return format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{title}"><text x="{pad}" y="20" font-size="12">{title}</text><text x="{pad}" y="{}" font-size="12" fill="#666">no data in the last {WINDOW_DAYS} days</text></svg>"##,
            h / 2.0
        );
    }
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1.0) * 1.1;
    let span = (now - since).max(1) as f64;
    let xy = |(t, v): (i64, f64)| {
        (
            pad + (t - since) as f64 / span * (w - 2.0 * pad),
            h - pad - v / max * (h - 2.0 * pad),
        )
    };
    let line: Vec<String> = points
        .iter()
        .map(|p| {
            let (x, y) = xy(*p);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let dots: String = points
        .iter()
        .map(|p| {
            let (x, y) = xy(*p);
            format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5"/>"#)
        })
        .collect();
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{title}"><text x="{pad}" y="16" font-size="12">{title}</text><text x="{}" y="16" font-size="11" text-anchor="end" fill="#666">max {}</text><line x1="{pad}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#999"/><text x="{pad}" y="{}" font-size="10" fill="#666">{WINDOW_DAYS} days ago</text><text x="{x1}" y="{}" font-size="10" text-anchor="end" fill="#666">now</text><polyline fill="none" stroke="#2463eb" stroke-width="1.5" points="{}"/><g fill="#2463eb">{dots}</g></svg>"##,
        w - pad,
        duration(max / 1.1),
        h - 8.0,
        h - 8.0,
        line.join(" "),
        y0 = h - pad,
        x1 = w - pad,
    )
}

fn duration(s: f64) -> String {
    match s {
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86_400.0),
    }
}

fn bytes(b: u64) -> String {
    match b {
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

/// `YYYY-MM-DD HH:MM UTC` from seconds since the epoch.
fn time(t: i64) -> String {
    let (y, m, d) = crate::config::schedule::civil(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_charts_and_the_csrf_token() {
        assert_eq!(time(0), "1970-01-01 00:00 UTC");
        assert_eq!(time(1_796_273_750), "2026-12-03 04:55 UTC");
        let svg = chart("RTO <x>", &[(100, 5.0), (200, 9.0)], 0, 300);
        assert!(
            svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("RTO &lt;x&gt;"),
            "{svg}"
        );
        assert!(chart("RPO", &[], 0, 300).contains("no data"));
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert_eq!(csrf_of("a").len(), 64);
    }
}
