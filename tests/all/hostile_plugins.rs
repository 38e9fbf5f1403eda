//! A misbehaving plugin is contained: each misbehaviour is an error of that
//! call, named for what happened, and the next call of a well-behaved plugin
//! (and of the same plugin) succeeds.

use crate::harness;
use firedrill::caps::types::{Decision, RequestFacts};
use firedrill::caps::CallContext;
use firedrill::runtime::{CallError, Plugin};
use std::time::{Duration, Instant};

const HOSTILE: &str = r#"
world = "authorizer"
wasm = "hostile.wasm"
[limits]
memory = "32MiB"
deadline = "300ms"
output = "1MiB"
[grants]
keyvalue = { prefixes = ["rl:"] }
"#;

pub fn facts(path: &str) -> RequestFacts {
    RequestFacts {
        method: "GET".into(),
        path: path.into(),
        query: None,
        headers: vec![],
        peer: "127.0.0.1".into(),
        time: 0,
        request_id: "t".into(),
    }
}

fn hostile() -> Plugin {
    harness::load("hostile", HOSTILE).unwrap()
}

fn well_behaved() -> Plugin {
    let p = harness::load(
        "authorizer-token",
        "world = \"authorizer\"\nwasm = \"authorizer_token.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ntoken = \"t0k\"\nrole = \"admin\"",
    )
    .unwrap();
    p
}

/// After a failure, both a good plugin and the same hostile one still serve.
fn still_serving(hostile: &Plugin, good: &Plugin) {
    let mut f = facts("/v1/backups");
    f.headers.push(firedrill::caps::types::Header {
        name: "authorization".into(),
        value: "Bearer t0k".into(),
    });
    assert!(matches!(
        good.authorize(&CallContext::default(), &f).unwrap(),
        Decision::Allow(_)
    ));
    match hostile
        .authorize(&CallContext::default(), &facts("/ok"))
        .unwrap()
    {
        Decision::Allow(g) => assert_eq!(g.principal, "ok"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline() {
    let (p, good) = (hostile(), well_behaved());
    let start = Instant::now();
    let e = p
        .authorize(&CallContext::default(), &facts("/loop"))
        .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, CallError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("limits.deadline"), "{e}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "stopped after {took:?}"
    );
    assert_eq!(
        p.stats()
            .timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    still_serving(&p, &good);
}

#[test]
fn fuel_bounds_instructions_when_a_policy_sets_it() {
    let p = harness::load(
        "hostile",
        &HOSTILE.replace("output = \"1MiB\"", "output = \"1MiB\"\nfuel = 5_000_000"),
    )
    .unwrap();
    let e = p
        .authorize(&CallContext::default(), &facts("/loop"))
        .unwrap_err();
    assert!(
        matches!(
            e,
            CallError::OutOfFuel {
                fuel: 5_000_000,
                ..
            }
        ),
        "{e}"
    );
    still_serving(&p, &well_behaved());
}

#[test]
fn unbounded_memory_growth_is_stopped_at_its_limit() {
    let (p, good) = (hostile(), well_behaved());
    let e = p
        .authorize(&CallContext::default(), &facts("/grow"))
        .unwrap_err();
    assert!(
        matches!(e, CallError::OutOfMemory { limit, .. } if limit == 32 << 20),
        "{e}"
    );
    still_serving(&p, &good);
}

#[test]
fn a_trap_is_an_error_quoting_the_panic() {
    let (p, good) = (hostile(), well_behaved());
    let e = p
        .authorize(&CallContext::default(), &facts("/trap"))
        .unwrap_err();
    let CallError::Trap { message, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        message.contains("hostile plugin panics on purpose"),
        "{message}"
    );
    still_serving(&p, &good);
}

#[test]
fn deep_recursion_is_a_trap() {
    let (p, good) = (hostile(), well_behaved());
    let e = p
        .authorize(&CallContext::default(), &facts("/recurse"))
        .unwrap_err();
    assert!(matches!(e, CallError::Trap { .. }), "{e}");
    still_serving(&p, &good);
}

#[test]
fn an_oversized_output_is_refused() {
    let (p, good) = (hostile(), well_behaved());
    let e = p
        .authorize(&CallContext::default(), &facts("/big/4"))
        .unwrap_err();
    assert!(
        matches!(e, CallError::OutputTooLarge { size, limit, .. } if size > 4 << 20 && limit == 1 << 20),
        "{e}"
    );
    // Under the limit the same call passes.
    assert!(p
        .authorize(&CallContext::default(), &facts("/big/0"))
        .is_ok());
    still_serving(&p, &good);
}

#[test]
fn an_ungranted_import_is_refused_at_load_naming_it() {
    let e = harness::load("hostile", "world = \"authorizer\"\nwasm = \"hostile.wasm\"")
        .err()
        .expect("must be refused");
    assert_eq!(e.field.as_deref(), Some("grants"));
    assert!(
        e.message.contains("wasi:keyvalue/store@0.2.0-draft") && e.message.contains("keyvalue"),
        "{e}"
    );
    still_serving(&hostile(), &well_behaved());
}

#[test]
fn the_sandbox_has_no_environment_and_no_files() {
    std::env::set_var("FIREDRILL_SECRET_PROBE", "do-not-leak");
    match hostile()
        .authorize(&CallContext::default(), &facts("/env"))
        .unwrap()
    {
        Decision::Allow(g) => assert_eq!(g.principal, "env=0 files=0"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn host_files_and_sockets_are_out_of_reach() {
    let (p, good) = (hostile(), well_behaved());
    let refused = |path: &str| match p.authorize(&CallContext::default(), &facts(path)) {
        Ok(Decision::Deny(r)) => r.reason,
        other => panic!("{path}: {other:?}"),
    };
    let why = refused("/read");
    assert!(why.starts_with("read: "), "{why}");
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let why = refused(&format!("/net/{port}"));
    assert!(
        why.starts_with("net: ") && why.contains("access-denied"),
        "{why}"
    );
    assert!(
        listener.accept().is_err(),
        "the plugin reached a host socket"
    );
    still_serving(&p, &good);
}

#[test]
fn a_plugin_of_another_world_is_not_called() {
    let p = hostile();
    let e = p
        .verify(
            &CallContext::default(),
            &crate::builtin_plugins::drill_context(vec![]),
        )
        .unwrap_err();
    assert!(matches!(e, CallError::WrongWorld { .. }), "{e}");
}

#[test]
fn calls_share_no_state() {
    let p = hostile();
    for _ in 0..3 {
        // A static counter inside the plugin: a reused instance would count up.
        match p
            .authorize(&CallContext::default(), &facts("/count"))
            .unwrap()
        {
            Decision::Allow(g) => assert_eq!(g.principal, "1"),
            d => panic!("{d:?}"),
        }
        assert!(p
            .authorize(&CallContext::default(), &facts("/trap"))
            .is_err());
        assert!(p.authorize(&CallContext::default(), &facts("/ok")).is_ok());
    }
    assert_eq!(
        p.stats().calls.load(std::sync::atomic::Ordering::Relaxed),
        9
    );
    assert_eq!(
        p.stats().traps.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

// ----- plugin SQL never acts with the drill's or the backup's privileges -----

/// Attacks a verifier's (or a planner's) SQL could try with a superuser's
/// connection, as `assert.*` lines of the built-in verifier-sql. `pwned` is
/// the file `COPY ... TO PROGRAM` would create.
fn attack_lines(pwned: &std::path::Path) -> String {
    [
        (
            "program",
            format!("COPY (SELECT 1) TO PROGRAM 'touch {}'", pwned.display()),
        ),
        (
            "read-file",
            "SELECT pg_read_file('/etc/hostname') IS NULL".into(),
        ),
        (
            "lo-import",
            "SELECT lo_import('/etc/hostname') IS NULL".into(),
        ),
        (
            "terminate",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity".into(),
        ),
        ("create", "CREATE TABLE x()".into()),
        ("set-role", "SET ROLE postgres".into()),
        ("reset-role", "RESET ROLE".into()),
        (
            "after-reset",
            "SELECT pg_read_file('/etc/hostname') IS NULL".into(),
        ),
    ]
    .iter()
    .map(|(n, q)| format!("\"assert.{n}\" = '''{q}'''\n"))
    .collect()
}

/// The attacks that must fail, and how: (check, what its detail must hold).
const REFUSED: &[(&str, &[&str])] = &[
    ("assert.program", &["42501"]),
    ("assert.read-file", &["42501"]),
    ("assert.lo-import", &["42501"]),
    // Refused for the superuser's sessions, or the role ends its own session.
    ("assert.terminate", &["42501", "57P01", "connection"]),
    // A read-only transaction, and no CREATE on the schema either.
    ("assert.create", &["25006", "42501"]),
    ("assert.set-role", &["42501"]),
    ("assert.after-reset", &["42501"]),
];

fn refused_in(checks: &[serde_json::Value], prefix: &str) {
    for (name, codes) in REFUSED {
        let c = checks
            .iter()
            .find(|c| c["name"] == format!("{prefix}{name}").as_str())
            .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"));
        let detail = c["detail"].as_str().unwrap_or_default();
        assert_eq!(c["status"], "fail", "{name} was not refused: {c}");
        assert!(
            codes.iter().any(|code| detail.contains(code)),
            "{name}: {detail}"
        );
    }
}

fn drill_roles_of(db: &str) -> Vec<String> {
    harness::postgres()
        .client("postgres")
        .query(
            "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)",
            &[&db],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_verifier_and_an_assertions_file_cannot_act_as_the_drills_superuser() {
    use crate::backup_restore::{backup_id, seeded};
    let pg = harness::postgres();
    let (db, store, _) = seeded("attacked");
    let id = backup_id(&["--database-url", &pg.url(&db), "--store", &store], &[]);
    let drill_db = format!(
        "firedrill_drill_{}",
        id.to_ascii_lowercase().replace('-', "_")
    );
    let tmp = harness::tempdir("attacks");
    let pwned = tmp.join("pwned");
    let policies = harness::policy_dir(
        &["verifier-sql"],
        &[(
            "sql.toml",
            &format!(
                "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nlogging = true\nconfig = true\nsql = {{ database = \"drill\" }}\n[config]\n{}",
                attack_lines(&pwned)
            ),
        )],
    );
    let assertions = tmp.join("checks.sql");
    std::fs::write(
        &assertions,
        format!(
            "-- name: program\nCOPY (SELECT 1) TO PROGRAM 'touch {}';\n-- name: read-file\nSELECT pg_read_file('/etc/hostname') IS NULL;\n-- name: set-role\nSET ROLE postgres;\n-- name: users\nSELECT count(*) > 0 FROM users;\n",
            pwned.display()
        ),
    )
    .unwrap();
    let local = harness::tempdir("attacks-local");
    // On a private local cluster, and on a drill server.
    for (label, target, env) in [
        (
            "local",
            vec!["--local"],
            vec![("TMPDIR", local.display().to_string())],
        ),
        ("server", vec!["--drill-url", &pg.url("postgres")], vec![]),
    ] {
        let mut args = vec![
            "drill",
            "--json",
            "--store",
            &store,
            &id,
            "--policies",
            policies.to_str().unwrap(),
            "--assertions",
            assertions.to_str().unwrap(),
        ];
        args.extend(target.iter().copied());
        let env: Vec<(&str, String)> = env;
        let o = harness::firedrill(&args, &env);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{label}: not JSON ({e}): {}", harness::output_text(&o)));
        let checks = r["checks"].as_array().unwrap();
        refused_in(checks, "");
        for (name, status) in [
            ("tables.present", "pass"),
            ("rows.public.users", "pass"),
            ("sequences", "pass"),
            ("assert.users", "pass"),
            ("assert.program", "fail"),
        ] {
            assert!(
                checks
                    .iter()
                    .any(|c| c["name"] == name && c["status"] == status),
                "{label}: {name} is not {status}: {r:#}"
            );
        }
        // The plugin's genuine row count passes next to its refused attacks.
        assert!(
            checks.iter().any(|c| c["by"] == "sql"
                && c["name"] == "rows.public.users"
                && c["status"] == "pass"),
            "{label}: {r:#}"
        );
        assert_eq!(r["passed"], false, "{label}: the attacks fail the drill");
        assert!(
            !pwned.exists(),
            "{label}: COPY TO PROGRAM ran a shell command"
        );
        assert_eq!(
            drill_roles_of(&drill_db),
            Vec::<String>::new(),
            "{label}: a role was left"
        );
    }
    assert_eq!(
        std::fs::read_dir(&local).unwrap().count(),
        0,
        "the local cluster is gone"
    );
    let left: i64 = pg
        .client("postgres")
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&drill_db],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the drill database is dropped");
}

fn source_verifier(grant: &str, config: &str) -> Plugin {
    harness::load(
        "verifier-sql",
        &format!(
            "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nlogging = true\nconfig = true\n{grant}\n[config]\nrow-counts = false\n{config}"
        ),
    )
    .unwrap()
}

fn source_call(url: String) -> CallContext {
    CallContext {
        sql: Some(firedrill::caps::sql::SqlTarget {
            scope: firedrill::caps::sql::SqlScope::Source,
            url,
        }),
        ..Default::default()
    }
}

fn results_json(r: Vec<firedrill::caps::types::CheckResult>) -> Vec<serde_json::Value> {
    r.into_iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "status": match c.status {
                    firedrill::caps::types::CheckStatus::Pass => "pass",
                    firedrill::caps::types::CheckStatus::Fail => "fail",
                    firedrill::caps::types::CheckStatus::Warn => "warn",
                    firedrill::caps::types::CheckStatus::Skip => "skip",
                },
                "detail": c.detail,
            })
        })
        .collect()
}

#[test]
fn a_source_grant_refuses_a_superuser_and_its_own_role_cannot_attack() {
    let pg = harness::postgres();
    let db = pg.fresh_database("plannersrc");
    let role = format!("planner_{}", std::process::id());
    let mut admin = pg.client(&db);
    admin
        .batch_execute(&format!(
            "CREATE TABLE users (id int); INSERT INTO users SELECT generate_series(1, 7);
             DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;
             GRANT SELECT ON users TO {role};"
        ))
        .unwrap();
    let tmp = harness::tempdir("planner-attacks");
    let pwned = tmp.join("pwned");
    let count = "\"assert.count\" = \"SELECT count(*) = 7 FROM users\"\n";
    // The harness connects as postgres, a superuser: refused, naming the fix.
    let p = source_verifier("sql = { database = \"source\" }", count);
    let r = results_json(
        p.verify(
            &source_call(pg.url(&db)),
            &crate::builtin_plugins::drill_context(vec![]),
        )
        .unwrap(),
    );
    assert_eq!(r[0]["status"], "fail", "{r:#?}");
    let d = r[0]["detail"].as_str().unwrap();
    assert!(
        d.contains("superuser") && d.contains("plugin_sql_url") && d.contains("allow_superuser"),
        "{d}"
    );
    // ... unless the policy says so.
    let p = source_verifier(
        "sql = { database = \"source\", allow_superuser = true }",
        count,
    );
    let r = results_json(
        p.verify(
            &source_call(pg.url(&db)),
            &crate::builtin_plugins::drill_context(vec![]),
        )
        .unwrap(),
    );
    assert_eq!(r[0]["status"], "pass", "{r:#?}");
    // The operator's role for plugins: the genuine query works, the attacks do not.
    let p = source_verifier(
        "sql = { database = \"source\" }",
        &format!("{count}{}", attack_lines(&pwned)),
    );
    let url = format!("postgres://{role}@127.0.0.1:{}/{db}", pg.port);
    let r = results_json(
        p.verify(
            &source_call(url),
            &crate::builtin_plugins::drill_context(vec![]),
        )
        .unwrap(),
    );
    refused_in(&r, "");
    assert!(
        r.iter()
            .any(|c| c["name"] == "assert.count" && c["status"] == "pass"),
        "{r:#?}"
    );
    assert!(!pwned.exists(), "COPY TO PROGRAM ran a shell command");
    // The harness's other sessions survived the attempt to end them.
    assert_eq!(
        admin.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0),
        1
    );
    drop(admin);
    pg.client("postgres")
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
    pg.client("postgres")
        .batch_execute(&format!("DROP ROLE {role}"))
        .unwrap();
}

#[test]
fn a_huge_result_is_refused_while_it_streams_and_the_next_statement_is_served() {
    let pg = harness::postgres();
    let db = pg.fresh_database("hugeresult");
    pg.client(&db)
        .batch_execute(
            "CREATE TABLE users (id int); INSERT INTO users SELECT generate_series(1, 25);",
        )
        .unwrap();
    let peak = || -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let before = peak();
    let call = CallContext {
        sql: Some(firedrill::caps::sql::SqlTarget {
            scope: firedrill::caps::sql::SqlScope::Drill,
            url: pg.url(&db),
        }),
        ..Default::default()
    };
    let gig = "SELECT repeat('x', 1000000) FROM generate_series(1, 1000)";
    for (grant, limit) in [
        ("sql = { database = \"drill\" }", "more than 16 MiB"),
        (
            "sql = { database = \"drill\", max_bytes = \"2MiB\" }",
            "more than 2 MiB",
        ),
        (
            "sql = { database = \"drill\", max_rows = 10 }",
            "more than 10 rows",
        ),
    ] {
        let p = harness::load(
            "verifier-sql",
            &format!(
                "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[limits]\nmemory = \"256MiB\"\ndeadline = \"2m\"\n[grants]\nlogging = true\nconfig = true\n{grant}\n[config]\nrow-counts = false\n\"assert.a-huge\" = \"{gig}\"\n\"assert.b-after\" = \"SELECT count(*) = 25 FROM users\"\n"
            ),
        )
        .unwrap();
        let r = results_json(
            p.verify(&call, &crate::builtin_plugins::drill_context(vec![]))
                .unwrap(),
        );
        let huge = r.iter().find(|c| c["name"] == "assert.a-huge").unwrap();
        assert_eq!(huge["status"], "fail");
        let d = huge["detail"].as_str().unwrap();
        assert!(
            d.contains(limit) && d.contains("add a LIMIT"),
            "{grant}: {d}"
        );
        let after = r.iter().find(|c| c["name"] == "assert.b-after").unwrap();
        assert_eq!(after["status"], "pass", "{r:#?}");
    }
    let grew = peak().saturating_sub(before);
    println!("peak RSS grew by {} MiB", grew >> 20);
    // A whole gigabyte never sat in memory (tests beside this one share the process).
    assert!(grew < 512 << 20, "peak RSS grew by {} MiB", grew >> 20);
}

#[test]
fn the_local_drill_cluster_refuses_other_processes() {
    use crate::backup_restore::{backup_id, seeded};
    let pg = harness::postgres();
    let (db, store, _) = seeded("private");
    let id = backup_id(&["--database-url", &pg.url(&db), "--store", &store], &[]);
    // A verifier that keeps the drill (and its cluster) alive for a while.
    let policies = harness::policy_dir(
        &["verifier-sql"],
        &[(
            "slow.toml",
            "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[limits]\ndeadline = \"1m\"\n[grants]\nlogging = true\nconfig = true\nsql = { database = \"drill\" }\n[config]\nrow-counts = false\n\"assert.wait\" = \"SELECT pg_sleep(5) IS NOT NULL\"\n",
        )],
    );
    let tmp = harness::tempdir("private-drill");
    let mut child = harness::firedrill_command(
        &[
            "drill",
            "--json",
            "--store",
            &store,
            &id,
            "--local",
            "--policies",
            policies.to_str().unwrap(),
        ],
        &[("TMPDIR", tmp.display().to_string())],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // The cluster's directory, once its server accepts connections
    // (postmaster.pid's eighth line says "ready").
    let ready = |p: &std::path::Path| {
        std::fs::read_to_string(p.join("data/postmaster.pid"))
            .is_ok_and(|t| t.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
    };
    let start = std::time::Instant::now();
    let dir = loop {
        let found = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| ready(p));
        if let Some(d) = found {
            break d;
        }
        if child.try_wait().unwrap().is_some() {
            let o = child.wait_with_output().unwrap();
            panic!(
                "the drill ended before its cluster was seen: {}",
                harness::output_text(&o)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no cluster appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("firedrill-local-"), "{name}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // On its socket, as postgres, without the password (or with a guess): refused.
    for password in [None, Some("postgres")] {
        let mut cfg = postgres::Config::new();
        cfg.host_path(&dir)
            .port(5432)
            .user("postgres")
            .dbname("postgres");
        if let Some(p) = password {
            cfg.password(p);
        }
        let e = cfg
            .connect(postgres::NoTls)
            .err()
            .unwrap_or_else(|| panic!("{password:?} got in"));
        // 28P01 (a wrong password), or refused before asking: none given.
        assert!(format!("{e:?}").contains("password"), "{e:?}");
    }
    // No TCP: postmaster.pid's sixth line is the address it listens on.
    let pidfile = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap();
    let lines: Vec<&str> = pidfile.lines().collect();
    if let Some(addr) = lines.get(5).filter(|a| !a.trim().is_empty()) {
        let port = lines[3].trim();
        let tcp = postgres::Client::connect(
            &format!(
                "host={} port={port} user=postgres dbname=postgres connect_timeout=5",
                addr.trim()
            ),
            postgres::NoTls,
        );
        assert!(
            tcp.is_err(),
            "connected over TCP at {addr}:{port} without a password"
        );
        panic!("the drill cluster listens on TCP at {addr}:{port}");
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", harness::output_text(&o));
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the cluster is gone"
    );
}

#[test]
fn a_planners_source_grant_never_gets_the_backup_role() {
    use crate::backup_restore::seeded;
    let pg = harness::postgres();
    let (db, store, _) = seeded("plannergrant");
    let policies = harness::policy_dir(
        &["planner-all"],
        &[(
            "planner.toml",
            "world = \"dump-planner\"\nwasm = \"planner_all.wasm\"\n[grants]\nconfig = true\nlogging = true\nsql = { database = \"source\" }\n",
        )],
    );
    let args = [
        "backup",
        "--json",
        "--database-url",
        &pg.url(&db),
        "--store",
        &store,
        "--policies",
        policies.to_str().unwrap(),
    ];
    // No role for plugins configured: refused, naming the setting.
    let o = harness::firedrill(&args, &[]);
    assert!(!o.status.success(), "{}", harness::output_text(&o));
    let said = harness::output_text(&o);
    assert!(
        said.contains("plugin_sql_url") && said.contains("planner"),
        "{said}"
    );
    // With one, the backup runs.
    let mut with = args.to_vec();
    let url = format!("postgres://someone_else@127.0.0.1:{}/{db}", pg.port);
    with.extend(["--plugin-sql-url", &url]);
    let o = harness::firedrill(&with, &[]);
    assert!(o.status.success(), "{}", harness::output_text(&o));
}

#[test]
fn a_drill_sweeps_the_roles_of_crashed_drills() {
    use crate::backup_restore::{backup_id, seeded};
    let pg = harness::postgres();
    let (db, store, _) = seeded("rolesweep");
    let id = backup_id(&["--database-url", &pg.url(&db), "--store", &store], &[]);
    // What a drill killed between dropping its database and its role leaves.
    let orphan = format!("firedrill_drill_gone{}_r0123abcd", std::process::id());
    pg.client("postgres")
        .batch_execute(&format!("CREATE ROLE {orphan} LOGIN"))
        .unwrap();
    let o = harness::firedrill(
        &[
            "drill",
            "--json",
            "--store",
            &store,
            &id,
            "--drill-url",
            &pg.url("postgres"),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", harness::output_text(&o));
    assert_eq!(drill_roles_of(&orphan), Vec::<String>::new());
}
