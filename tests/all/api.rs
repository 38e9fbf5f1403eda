//! The HTTP API: every /v1 answer of the signed-token authorizer (401s, 403,
//! 429 with Retry-After), fail-closed 503s, the audit log, jobs started
//! through the API with their progress, restore for admins only, and the
//! event stream read by a late subscriber.

use crate::backup_restore::{fingerprint, seeded};
use crate::harness::{self, firedrill, http, output_text, start_agent, Reply};
use firedrill_token::{Claims, SigningKey};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const KEY: &str = "api-test-hmac-secret-0123456789abcdef";

/// A token signed with `key`, expiring at `exp`.
pub fn token_with(key: &str, sub: &str, role: &str, exp: i64) -> String {
    let claims = Claims {
        sub: sub.into(),
        role: role.into(),
        exp,
        iat: 0,
        jti: format!("{sub}-{}", rand::random::<u32>()),
        alg: String::new(),
    };
    firedrill_token::issue(claims, &SigningKey::hmac(key.as_bytes()).unwrap())
}

pub fn now() -> i64 {
    firedrill::archive::manifest::unix_now()
}

/// `firedrill token issue`: (token, id).
pub fn issue(role: &str, subject: &str) -> (String, String) {
    let o = firedrill(
        &[
            "token",
            "issue",
            "--role",
            role,
            "--ttl",
            "1h",
            "--subject",
            subject,
        ],
        &[("FIREDRILL_TOKEN_KEY", KEY.into())],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&o.stderr);
    let id = err.split_whitespace().nth(1).unwrap().to_string();
    (token, id)
}

pub fn get(port: u16, path: &str, token: &str) -> Reply {
    http(
        port,
        "GET",
        path,
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
}

pub fn post(port: u16, path: &str, token: &str, body: &str) -> Reply {
    http(
        port,
        "POST",
        path,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        body,
    )
}

pub struct Api {
    pub port: u16,
    pub child: std::process::Child,
    audit: PathBuf,
    namespace: String,
    pub store: String,
    pub db: String,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent on a seeded source (backups only when asked), with the given
/// policies and Redis coordination.
pub fn agent(label: &str, policies: &Path) -> Api {
    let (db, store, _) = seeded(label);
    let port = harness::free_port();
    let dir = harness::tempdir(label);
    let audit = dir.join("audit.jsonl");
    let namespace = format!("{label}-{}:", rand::random::<u32>());
    let config = dir.join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\n[store]\nurl = \"{store}\"\n[drill]\ntarget = \"{}\"\njobs = 2\n\
             [coordination]\nredis_url = \"{}\"\nnamespace = \"{namespace}\"\n[api]\naudit_log = \"{}\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"cron: 0 3 1 1 *\"\njobs = 2\n",
            policies.display(),
            harness::postgres().url("postgres"),
            harness::redis().url(),
            audit.display(),
            harness::postgres().url(&db),
        ),
    )
    .unwrap();
    let child = start_agent(
        &config,
        port,
        &[("FIREDRILL_TOKEN_KEY", KEY), ("RUST_LOG", "warn")],
    );
    Api {
        port,
        child,
        audit,
        namespace,
        store,
        db,
    }
}

pub fn signed_policies(limits: &str) -> PathBuf {
    harness::policy_dir(
        &["authorizer-signed", "verifier-sql", "retention-count"],
        &[
            ("auth.toml", &format!("world = \"authorizer\"\nwasm = \"authorizer_signed.wasm\"\n[limits]\ndeadline = \"500ms\"\n[grants]\nconfig = true\nlogging = true\nkeyvalue = {{ prefixes = [\"auth:\"], expire = \"5m\" }}\n[config]\nhmac_key = {{ env = \"FIREDRILL_TOKEN_KEY\" }}\n{limits}")),
            ("sql.toml", "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nconfig = true\nlogging = true\nsql = { database = \"drill\" }\n"),
            ("keep.toml", "world = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\nkeep = 5\n"),
        ],
    )
}

fn assert_error(r: &Reply, status: u16, words: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let e = &r.json()["error"];
    assert_eq!(e["status"], status, "{r:?}");
    assert!(
        e["code"].is_string() && e["request_id"].is_string(),
        "{r:?}"
    );
    assert!(
        e["message"].as_str().unwrap().contains(words),
        "{words:?} in {r:?}"
    );
}

#[test]
fn every_authorization_answer_and_the_audit_log() {
    let api = agent(
        "apiauth",
        &signed_policies("subject_limit = \"20/1m\"\naddress_limit = \"1000/1m\"\n"),
    );
    let p = api.port;
    // Outside /v1 nothing is asked.
    assert_eq!(http(p, "GET", "/health", &[], "").status, 200);
    assert!(http(p, "GET", "/metrics", &[], "")
        .body
        .contains("firedrill_api_requests_total"));

    assert_error(
        &http(p, "GET", "/v1/backups", &[], ""),
        401,
        "missing bearer token",
    );
    assert_error(&get(p, "/v1/backups", "not-a-token"), 401, "malformed");
    let forged = token_with(
        "some-other-secret-0123456789abcdef",
        "mallory",
        "admin",
        now() + 600,
    );
    assert_error(&get(p, "/v1/backups", &forged), 401, "bad token signature");
    let expired = token_with(KEY, "alice", "admin", now() - 5);
    assert_error(&get(p, "/v1/backups", &expired), 401, "expired");

    let (viewer, _) = issue("viewer", "vera");
    let who = get(p, "/v1/whoami", &viewer);
    assert_eq!(who.status, 200, "{who:?}");
    assert_eq!(who.json()["role"], "viewer");
    assert_eq!(get(p, "/v1/backups", &viewer).status, 200);
    assert_error(
        &post(p, "/v1/backups", &viewer, "{}"),
        403,
        "needs operator",
    );
    assert_error(&post(p, "/v1/restore", &viewer, "{}"), 403, "needs admin");

    let (operator, id) = issue("operator", "otto");
    assert_eq!(get(p, "/v1/jobs", &operator).status, 200);
    let o = firedrill(
        &["token", "revoke", &id, "--namespace", &api.namespace],
        &[("FIREDRILL_REDIS_URL", harness::redis().url())],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert_error(&get(p, "/v1/jobs", &operator), 401, "revoked");

    // Twenty requests a minute for one subject: the 21st is refused with a wait.
    let (flood, _) = issue("viewer", "flood");
    let answers: Vec<Reply> = (0..22).map(|_| get(p, "/v1/whoami", &flood)).collect();
    assert!(answers[..20].iter().all(|r| r.status == 200), "{answers:?}");
    let limited = &answers[21];
    assert_error(limited, 429, "too many requests for flood");
    let wait: u32 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another subject has its own bucket.
    assert_eq!(get(p, "/v1/whoami", &viewer).status, 200);

    // Unknown routes and methods are answered only after authorization.
    assert_error(&http(p, "GET", "/v1/nope", &[], ""), 401, "missing");
    assert_error(&get(p, "/v1/nope", &viewer), 404, "no route");
    assert_error(
        &http(
            p,
            "DELETE",
            "/v1/backups",
            &[("authorization", &format!("Bearer {viewer}"))],
            "",
        ),
        405,
        "GET, POST",
    );

    // Every decision is in the audit log; no token is.
    let audit = std::fs::read_to_string(&api.audit).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 15, "{audit}");
    assert!(lines
        .iter()
        .any(|l| l["decision"] == "allow" && l["principal"] == "vera" && l["role"] == "viewer"));
    assert!(lines
        .iter()
        .any(|l| l["status"] == 403 && l["required_role"] == "admin"));
    assert!(lines.iter().any(|l| l["status"] == 401
        && l["reason"].as_str().unwrap().contains("revoked")
        && l["credential_id"].is_null()));
    assert!(lines.iter().any(|l| l["status"] == 429));
    for t in [&viewer, &operator, &flood, &forged] {
        let sig = t.rsplit('.').next().unwrap();
        assert!(!audit.contains(sig), "a token leaked into the audit log");
    }
    assert!(!audit.contains(KEY));
}

#[test]
fn a_failing_or_slow_authorizer_fails_closed() {
    let hostile = harness::policy_dir(
        &["hostile"],
        &[("auth.toml", "world = \"authorizer\"\nwasm = \"hostile.wasm\"\n[limits]\ndeadline = \"100ms\"\n[grants]\nkeyvalue = { prefixes = [\"rl:\"] }\n")],
    );
    let api = agent("apifail", &hostile);
    let p = api.port;
    let started = Instant::now();
    assert_error(
        &http(p, "GET", "/v1/loop", &[], ""),
        503,
        "the authorizer failed",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline stops it"
    );
    assert_error(
        &http(p, "GET", "/v1/trap", &[], ""),
        503,
        "the authorizer failed",
    );
    // The agent is still up, and counted both.
    let metrics = http(p, "GET", "/metrics", &[], "").body;
    assert!(
        metrics.contains("firedrill_api_authorizations_total{decision=\"error\"} 2"),
        "{metrics}"
    );
    let audit = std::fs::read_to_string(&api.audit).unwrap();
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("\"status\":503"))
            .count(),
        2,
        "{audit}"
    );

    // No authorizer in the directory: the built-in one guards /v1 with the
    // same key (with no key at all, see agent::the_templates_environment_alone...).
    let none = harness::policy_dir(&["verifier-sql"], &[("sql.toml", "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nlogging = true\nconfig = true\nsql = { database = \"drill\" }\n")]);
    let api = agent("apinone", &none);
    assert_eq!(http(api.port, "GET", "/v1/backups", &[], "").status, 401);
    let (token, _) = issue("viewer", "built-in");
    assert_eq!(get(api.port, "/v1/backups", &token).status, 200);
    assert_eq!(http(api.port, "GET", "/health", &[], "").status, 200);
}

pub fn wait_job(port: u16, token: &str, id: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let r = get(port, &format!("/v1/jobs/{id}"), token);
        assert_eq!(r.status, 200, "{r:?}");
        let j = r.json();
        if j["state"] != "waiting" && j["state"] != "running" {
            return j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "job never finished: {j}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads an SSE stream until `until` appears (or fails after 30 s).
fn sse(port: u16, path: &str, token: &str, until: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\naccept: text/event-stream\r\n\r\n").unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(until) {
        let n = s.read(&mut buf).expect("the stream goes on");
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    seen
}

#[test]
fn jobs_through_the_api_with_progress_restore_and_events() {
    let api = agent("apijobs", &signed_policies(""));
    let p = api.port;
    let (operator, _) = issue("operator", "ops");
    let (admin, _) = issue("admin", "root");

    let r = post(p, "/v1/backups", &operator, "{\"source\": \"app\"}");
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    let job = wait_job(p, &operator, &id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["trigger"], "api:ops");
    let progress = &job["progress"];
    assert!(
        progress["total"].as_u64().unwrap() > 0 && progress["done"] == progress["total"],
        "{job}"
    );
    assert!(progress["bytes"].as_u64().unwrap() > 0, "{job}");
    let backup = job["backup"].as_str().unwrap().to_string();
    let listed = get(p, "/v1/backups?source=app", &operator).json();
    assert_eq!(listed["backups"][0]["id"], backup.as_str(), "{listed}");
    assert_eq!(listed["backups"][0]["complete"], true);

    let r = post(
        p,
        "/v1/drills",
        &operator,
        &format!("{{\"backup\": \"{backup}\"}}"),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let drill = wait_job(p, &operator, r.json()["id"].as_str().unwrap());
    assert_eq!(drill["passed"], true, "{drill}");
    let drills = get(p, "/v1/drills", &operator).json();
    assert_eq!(drills["drills"][0]["passed"], true, "{drills}");

    assert_error(
        &post(p, "/v1/backups", &operator, "{\"source\": \"nope\"}"),
        404,
        "no source named \"nope\"",
    );
    assert_error(
        &post(p, "/v1/backups", &operator, "{\"sauce\": 1}"),
        400,
        "unknown field",
    );

    // Restore: admins only, into a new database.
    let target = format!("{}_restored", api.db);
    let body = format!(
        "{{\"backup\": \"{backup}\", \"target\": \"{}\"}}",
        harness::postgres().url(&target)
    );
    assert_error(
        &post(p, "/v1/restore", &operator, &body),
        403,
        "needs admin",
    );
    let r = post(p, "/v1/restore", &admin, &body);
    assert_eq!(r.status, 202, "{r:?}");
    let restored = wait_job(p, &admin, r.json()["id"].as_str().unwrap());
    assert_eq!(restored["state"], "succeeded", "{restored}");
    assert_eq!(fingerprint(&target), fingerprint(&api.db));

    // A subscriber that comes late reads what it missed, in order.
    let seen = sse(
        p,
        "/v1/events?after=0",
        &operator,
        "event: restore.finished",
    );
    let kinds: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "backup.started",
            "backup.finished",
            "drill.started",
            "drill.passed",
            "restore.started",
            "restore.finished"
        ],
        "{seen}"
    );
    assert!(
        seen.contains(&backup) && seen.contains("\"source\":\"app\""),
        "{seen}"
    );
    // Resuming from the second event's id skips the first two.
    let second = seen
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .nth(1)
        .unwrap()
        .to_string();
    let resumed = sse(
        p,
        &format!("/v1/events?after={second}"),
        &operator,
        "event: drill.passed",
    );
    assert!(
        !resumed.contains("backup.started") && resumed.contains("drill.started"),
        "{resumed}"
    );
    assert!(api.store.starts_with("file://"));

    // Prune, as an operator; a dry run deletes nothing.
    let r = post(p, "/v1/prune", &operator, "{\"dry_run\": true}");
    assert_eq!(r.status, 202, "{r:?}");
    let pruned = wait_job(p, &operator, r.json()["id"].as_str().unwrap());
    assert_eq!(pruned["state"], "succeeded", "{pruned}");
    assert_eq!(
        get(p, "/v1/backups", &operator).json()["backups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        sse(p, "/v1/events?after=0", &operator, "event: prune.finished").contains("prune.started")
    );
}

#[test]
fn the_signed_authorizer_takes_ed25519_keys_ip_lists_and_address_limits() {
    use firedrill::caps::keyvalue::KvTarget;
    use firedrill::caps::types::{Decision, Header};
    use firedrill::caps::CallContext;
    let o = firedrill(&["token", "keygen"], &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let (private, public) = (field("private"), field("public"));
    let key_file = harness::tempdir("ed25519").join("private.key");
    std::fs::write(&key_file, &private).unwrap();
    let o = firedrill(
        &[
            "token",
            "issue",
            "--role",
            "admin",
            "--subject",
            "eddie",
            "--ed25519-key",
            key_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();

    let p = harness::load(
        "authorizer-signed",
        &format!("world = \"authorizer\"\nwasm = \"authorizer_signed.wasm\"\n[grants]\nconfig = true\nlogging = true\nkeyvalue = {{ prefixes = [\"auth:\"], expire = \"5m\" }}\n[config]\ned25519_public_key = \"{public}\"\nallow = \"127.0.0.0/8, 10.0.0.0/8\"\ndeny = \"10.6.6.0/24\"\naddress_limit = \"3/1m\"\n"),
    )
    .unwrap();
    let ctx = CallContext {
        keyvalue: Some(
            KvTarget::new(
                &harness::redis().url(),
                &format!("ed-{}:plugin:", rand::random::<u32>()),
            )
            .unwrap(),
        ),
        ..Default::default()
    };
    let ask = |peer: &str| {
        let mut f = crate::hostile_plugins::facts("/v1/backups");
        f.peer = peer.into();
        f.time = now();
        f.headers.push(Header {
            name: "authorization".into(),
            value: format!("Bearer {token}"),
        });
        p.authorize(&ctx, &f).unwrap()
    };
    match ask("127.0.0.1") {
        Decision::Allow(g) => assert_eq!(g.principal, "eddie"),
        d => panic!("{d:?}"),
    }
    let refused = |d: Decision| match d {
        Decision::Deny(r) => (r.status, r.reason, r.retry_after),
        d => panic!("allowed: {d:?}"),
    };
    let (status, reason, _) = refused(ask("10.6.6.7"));
    assert_eq!(
        (status, reason.contains("deny list")),
        (403, true),
        "{reason}"
    );
    let (status, reason, _) = refused(ask("192.168.1.1"));
    assert_eq!(
        (status, reason.contains("not on the allow list")),
        (403, true),
        "{reason}"
    );
    // Three a minute per address: 10.1.1.1 gets three, 127.0.0.1 had one already.
    for _ in 0..3 {
        assert!(matches!(ask("10.1.1.1"), Decision::Allow(_)));
    }
    let (status, reason, wait) = refused(ask("10.1.1.1"));
    assert_eq!(status, 429, "{reason}");
    assert!(wait.is_some_and(|w| (1..=60).contains(&w)), "{wait:?}");
    assert!(matches!(ask("127.0.0.1"), Decision::Allow(_)));
    // An HMAC token is refused by an Ed25519-only authorizer.
    let hmac = token_with(KEY, "mallory", "admin", now() + 600);
    let mut f = crate::hostile_plugins::facts("/v1/backups");
    f.time = now();
    f.headers.push(Header {
        name: "authorization".into(),
        value: format!("Bearer {hmac}"),
    });
    let (status, reason, _) = refused(p.authorize(&ctx, &f).unwrap());
    assert_eq!(status, 401, "{reason}");
}

/// Opens `/v1/events` and reads up to the end of the response head (and the
/// stream's first comment, for a 200): (status, the socket, what was read).
fn open_events(port: u16, token: &str) -> (u16, std::net::TcpStream, String) {
    try_open_events(port, token).unwrap_or_else(|e| panic!("{e}"))
}

fn try_open_events(port: u16, token: &str) -> Result<(u16, std::net::TcpStream, String), String> {
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\naccept: text/event-stream\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let status: u16 = seen
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let done = match (status, seen.split_once("\r\n\r\n")) {
            (200, _) => seen.contains(": firedrill events"),
            (0, _) | (_, None) => false,
            (_, Some((head, body))) => {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                body.len() >= length
            }
        };
        if done {
            return Ok((status, s, seen));
        }
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("the API does not answer ({e}): {seen:?}"))?;
        if n == 0 {
            return Err(format!("the connection closed: {seen:?}"));
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Whether `ok` holds within 10 s (a closed socket takes a moment to be
/// counted out by the server).
fn settles(mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// `connected_clients` of a Redis server.
fn redis_clients(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn five_hundred_event_streams_are_capped_over_one_redis_tail() {
    const CAP: usize = 40;
    let redis = harness::OwnRedis::start(&[]);
    let port = harness::free_port();
    let dir = harness::tempdir("ssecap");
    let store = harness::tempdir("ssecap-store");
    let config = dir.join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\n[store]\nurl = \"file://{}\"\n[drill]\ntarget = \"{}\"\n\
             [coordination]\nredis_url = \"{}\"\nnamespace = \"ssecap:\"\n[api]\nmax_event_streams = {CAP}\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"cron: 0 3 1 1 *\"\n",
            signed_policies("").display(),
            store.display(),
            harness::postgres().url("postgres"),
            redis.url(""),
            harness::postgres().url("postgres"),
        ),
    )
    .unwrap();
    let mut child = start_agent(
        &config,
        port,
        &[("FIREDRILL_TOKEN_KEY", KEY), ("RUST_LOG", "warn")],
    );
    let (viewer, _) = issue("viewer", "watcher");
    let mut probe = redis.connection("");
    let before = redis_clients(&mut probe);

    // 500 clients at once.
    let answers: Vec<Result<_, String>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..500)
            .map(|_| s.spawn(|| try_open_events(port, &viewer)))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    if !failed.is_empty() {
        let alive = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let mut out = String::new();
        let _ = child.stdout.take().unwrap().read_to_string(&mut out);
        let _ = child.stderr.take().unwrap().read_to_string(&mut out);
        panic!(
            "{} of 500 clients got no answer (agent alive: {alive}), first: {}\nagent: {}",
            failed.len(),
            failed[0],
            &out[out.len().saturating_sub(4000)..]
        );
    }
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    let (open, refused): (Vec<_>, Vec<_>) = answers.into_iter().partition(|(st, _, _)| *st == 200);
    assert_eq!(open.len(), CAP, "streams admitted");
    assert_eq!(refused.len(), 500 - CAP);
    for (status, _, text) in &refused {
        assert_eq!(*status, 429, "{text}");
        assert!(
            text.contains("too many event streams") && text.contains("api.max_event_streams"),
            "{text}"
        );
    }
    // Every open stream shares one tail: one more connection than before,
    // not one per stream, plus what the authorizer's keyvalue pool keeps
    // idle (at most 16) after 500 authorizations at once.
    let bound = before + 1 + 16;
    eprintln!(
        "Redis clients: {before} before, {} with {CAP} streams open",
        redis_clients(&mut probe)
    );
    assert!(
        settles(|| redis_clients(&mut probe) <= bound),
        "{before} Redis clients before, {} with {CAP} streams",
        redis_clients(&mut probe)
    );

    // An event reaches every open stream.
    let event = r#"{"kind":"test.ping","source":"app","node":"t","time":0}"#;
    let _: String = redis::cmd("XADD")
        .arg("ssecap:events")
        .arg("*")
        .arg("event")
        .arg(event)
        .query(&mut probe)
        .unwrap();
    let mut open: Vec<_> = open.into_iter().map(|(_, s, _)| s).collect();
    for s in &mut open {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("event: test.ping") {
            let n = s.read(&mut buf).expect("the stream goes on");
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    // Once the clients have gone, streams are admitted again, up to the cap.
    drop(open);
    drop(refused);
    let start = Instant::now();
    let mut again = Vec::new();
    while again.len() < CAP {
        let (status, s, text) = open_events(port, &viewer);
        match status {
            200 => again.push(s),
            429 => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "closed streams were never released: {text}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => panic!("{text}"),
        }
    }
    assert_eq!(open_events(port, &viewer).0, 429);
    assert!(settles(|| redis_clients(&mut probe) <= bound));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn hmac_keys_shorter_than_32_bytes_are_refused_by_the_cli_and_the_authorizer() {
    use firedrill::caps::types::{Decision, Header};
    use firedrill::caps::CallContext;
    let (short, enough) = ("k".repeat(31), "k".repeat(32));
    let issue_with = |key: &str| {
        firedrill(
            &["token", "issue", "--role", "viewer"],
            &[("FIREDRILL_TOKEN_KEY", key.to_string())],
        )
    };
    let o = issue_with(&short);
    assert!(!o.status.success(), "a 31-byte key issued a token");
    let text = output_text(&o);
    assert!(
        text.contains("FIREDRILL_TOKEN_KEY") && text.contains("at least 32 bytes"),
        "{text}"
    );
    let o = issue_with(&enough);
    assert!(o.status.success(), "{}", output_text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();

    // The authorizer holds the same floor, naming its setting.
    let ask = |key: &str| {
        let p = harness::load(
            "authorizer-signed",
            &format!("world = \"authorizer\"\nwasm = \"authorizer_signed.wasm\"\n[grants]\nconfig = true\nlogging = true\nkeyvalue = {{ prefixes = [\"auth:\"] }}\n[config]\nhmac_key = \"{key}\"\n"),
        )
        .unwrap();
        let mut f = crate::hostile_plugins::facts("/v1/backups");
        f.time = now();
        f.headers.push(Header {
            name: "authorization".into(),
            value: format!("Bearer {token}"),
        });
        p.authorize(&CallContext::default(), &f).unwrap()
    };
    match ask(&short) {
        Decision::Deny(r) => assert!(
            r.status == 503
                && r.reason.contains("hmac_key")
                && r.reason.contains("at least 32 bytes"),
            "{r:?}"
        ),
        d => panic!("a 31-byte hmac_key allowed a request: {d:?}"),
    }
    match ask(&enough) {
        Decision::Allow(g) => assert_eq!(g.principal, "operator"),
        d => panic!("{d:?}"),
    }
}
