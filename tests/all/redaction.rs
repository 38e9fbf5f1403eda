//! Secrets never leave the process: planted in a source URL, the
//! configuration, the data a verifier plugin quotes and API requests, none
//! of them shows up in the agent's output, what it exports over OTLP, the
//! audit log, API error bodies, drill reports or anything else in the store;
//! and the places they would have been show the redactor's work instead.

use crate::harness::{self, http, output_text, start_agent};
use std::time::Duration;

/// Every file under `dir`, as text (lossy), with its path.
fn texts(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((
                    p.display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
    }
    out
}

#[test]
fn planted_secrets_appear_nowhere_that_leaves_the_process() {
    let pg = harness::postgres();
    let tag = std::process::id();
    let pg_password = format!("Planted-Pg-Secret-{tag}");
    let s3_secret = format!("Planted-S3-Secret-{tag}");
    let plugin_secret = format!("Planted-Plugin-Secret-{tag}");
    let path_secret = format!("Planted-Path-Secret-{tag}");
    let query_secret = format!("Planted-Query-Secret-{tag}");
    let email = format!("ann.planted{tag}@example.com");
    let role = format!("planted_{tag}");
    let db = pg.fresh_database("redact");
    let mut c = pg.client(&db);
    c.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{pg_password}';
         CREATE TABLE people (id int PRIMARY KEY, email text, note text);
         INSERT INTO people VALUES (1, '{email}', 'api_key={plugin_secret}');"
    ))
    .unwrap();
    let source_url = pg
        .url(&db)
        .replacen("postgres@", &format!("{role}:{pg_password}@"), 1);
    assert!(source_url.contains(&pg_password), "{source_url}");

    let policies = harness::policy_dir(
        &["verifier-sql", "redactor-secrets"],
        &[
            // The verifier quotes the planted row in a failing check's detail.
            ("sql.toml", "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nconfig = true\nlogging = true\nsql = { database = \"drill\" }\n[config]\nrow-counts = \"false\"\n\"assert.leak\" = \"SELECT note || ' ' || email FROM people\"\n"),
            ("redact.toml", "world = \"redactor\"\nwasm = \"redactor_secrets.wasm\"\n[grants]\nconfig = true\n[config]\nmask = \"[redacted]\"\nemails = \"hash\"\n"),
        ],
    );
    // Before the agent's port is picked: rotel binds two of its own.
    let rotel = harness::Rotel::start();
    let work = harness::tempdir("redaction");
    let store_dir = work.join("store");
    let audit = work.join("audit.jsonl");
    let port = harness::free_port();
    let config = work.join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\n\
             [store]\nurl = \"file://{}\"\ns3_secret_access_key = \"{s3_secret}\"\n\
             [drill]\ntarget = \"{}\"\n[api]\naudit_log = \"{}\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{source_url}\"]\nbackup = \"1s\"\ndrill = \"2s\"\n",
            policies.display(),
            store_dir.display(),
            pg.url("postgres"),
            audit.display()
        ),
    )
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", rotel.grpc);
    let child = start_agent(
        &config,
        port,
        &[
            // Debug too: plugins' own log lines are output as well. The
            // test reads the agent's output only at the end: keep it short.
            ("RUST_LOG", "info,firedrill=debug"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    // Requests that carry secrets in the path and the query.
    let not_found = http(port, "GET", &format!("/password={path_secret}"), &[], "");
    assert_eq!(not_found.status, 404, "{not_found:?}");
    let v1 = http(
        port,
        "GET",
        &format!("/v1/backups?api_key={query_secret}"),
        &[],
        "",
    );
    let bodies = [not_found.body.clone(), v1.body.clone()];
    assert!(not_found.body.contains("[redacted]"), "{}", not_found.body);

    let o = harness::run_agent_for(child, 8);
    let log = output_text(&o);
    assert!(log.contains("backup done"), "{log}");

    let exported = rotel.wait_for(&["backup done"], Duration::from_secs(10));
    assert!(
        exported.contains("backup done"),
        "nothing exported over OTLP"
    );
    let mut places: Vec<(String, String)> = vec![
        ("OTLP export".into(), exported),
        ("agent output".into(), log.clone()),
        ("404 body".into(), bodies[0].clone()),
        ("/v1 body".into(), bodies[1].clone()),
    ];
    // The backed-up data holds the planted row, as it should: what the
    // store must not hold is a secret in what firedrill wrote about it.
    places.extend(
        texts(&store_dir)
            .into_iter()
            .filter(|(p, _)| !p.ends_with(".zst")),
    );
    if audit.exists() {
        places.push(("audit log".into(), std::fs::read_to_string(&audit).unwrap()));
    }
    let secrets = [
        &pg_password,
        &s3_secret,
        &plugin_secret,
        &path_secret,
        &query_secret,
        &email,
    ];
    for (place, text) in &places {
        for s in secrets {
            assert!(
                !text.contains(s.as_str()),
                "{s} leaked into {place}:\n{text}"
            );
        }
    }
    // The failing check was stored, quoting the row with both values redacted.
    let reports: Vec<&(String, String)> = places
        .iter()
        .filter(|(p, _)| p.contains("/drills/"))
        .collect();
    assert!(!reports.is_empty(), "no drill report:\n{log}");
    let report = &reports[0].1;
    assert!(
        report.contains("api_key=[redacted]") && report.contains("email:"),
        "{report}"
    );
}

/// The processes below `pid` (children, theirs, ...): (pid, command line).
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            parents.entry(ppid).or_default().push(child);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in parents.get(&p).into_iter().flatten() {
            let cmdline = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            out.push((c, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
            todo.push(c);
        }
    }
    out
}

/// Runs `firedrill args` while watching its child processes; returns its
/// output and every child command line seen. `hold` is called once with
/// the first command line that names `tool`, while the run waits on it.
fn run_watching(
    args: &[&str],
    env: &[(&str, String)],
    tool: &str,
    mut hold: impl FnMut(),
) -> (std::process::Output, Vec<String>, bool) {
    use std::process::Stdio;
    let child = harness::firedrill_command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut seen = Vec::new();
    let mut held = false;
    let start = std::time::Instant::now();
    // try_wait would need the Child by &mut while wait_with_output takes it.
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true)
    {
        for (_, cmdline) in descendants(pid) {
            if !held && cmdline.contains(tool) {
                held = true;
                seen.push(cmdline.clone());
                hold();
            }
            if !seen.contains(&cmdline) {
                seen.push(cmdline);
            }
        }
        if !held && start.elapsed() > Duration::from_secs(60) {
            // Never saw the tool: let the run go, the caller's assertion fails.
            hold();
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (child.wait_with_output().unwrap(), seen, held)
}

#[test]
fn a_password_url_parameter_reaches_no_output_store_or_command_line() {
    let pg = harness::postgres();
    let tag = std::process::id();
    let secret = format!("Param-Secret-{tag}");
    let role = format!("param_{tag}");
    let db = pg.fresh_database("pwparam");
    pg.client(&db)
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{secret}';
             CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g;
             CREATE TABLE held (id int) PARTITION BY RANGE (id);"
        ))
        .unwrap();
    // The harness server trusts local logins: the password is not needed
    // to connect, only planted. In the parameter form libpq also accepts.
    let url = format!(
        "postgres://{role}@127.0.0.1:{}/{db}?sslmode=disable&password={secret}",
        pg.port
    );
    let (store, store_dir) = crate::backup_restore::file_store();

    // pg_dump waits on this lock until the test has read its command line:
    // it locks every table it dumps, where firedrill's own queries read
    // only plain tables (the partitioned parent has no rows of its own).
    let mut locker = pg.client(&db);
    locker
        .batch_execute("BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let (o, children, held) = run_watching(
        &["backup", "--json", "--store", &store],
        &[("DATABASE_URL", url.clone())],
        "pg_dump",
        || locker.batch_execute("COMMIT").unwrap(),
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(held, "pg_dump was never seen among {children:?}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = summary["id"].as_str().unwrap().to_string();

    let (drill, drill_children, _) = run_watching(
        &[
            "drill",
            "--json",
            "--store",
            &store,
            &id,
            "--drill-url",
            &pg.url("postgres"),
            "-j",
            "1",
        ],
        &[("DATABASE_URL", url.clone())],
        "psql",
        || {},
    );
    assert!(drill.status.success(), "{}", output_text(&drill));
    let report: serde_json::Value = serde_json::from_slice(&drill.stdout).unwrap();
    assert_eq!(report["passed"], true, "{}", output_text(&drill));

    let mut places: Vec<(String, String)> = vec![
        ("backup output".into(), output_text(&o)),
        ("drill output".into(), output_text(&drill)),
    ];
    places.extend(
        children
            .iter()
            .chain(&drill_children)
            .map(|c| ("a child's command line".to_string(), c.clone())),
    );
    places.extend(
        texts(&store_dir)
            .into_iter()
            .filter(|(p, _)| !p.ends_with(".zst")),
    );
    assert!(
        places.iter().any(|(p, _)| p.ends_with("manifest.json"))
            && places.iter().any(|(p, _)| p.contains("/drills/")),
        "{places:?}"
    );
    for (place, text) in &places {
        assert!(
            !text.contains(&secret),
            "the password leaked into {place}:\n{text}"
        );
    }
    // pg_dump still got the rest of the URL.
    assert!(
        children
            .iter()
            .any(|c| c.contains("pg_dump") && c.contains(&role) && c.contains("sslmode=disable")),
        "{children:?}"
    );
}

#[test]
fn a_plugin_config_value_from_the_environment_is_scrubbed_where_it_is_quoted() {
    let tag = std::process::id();
    let secret = format!("Planted-Config-Secret-{tag}");
    // The authorizer quotes a bad `allow` value in its error: the value
    // comes from the environment, so it is a secret however it is used.
    let policies = harness::policy_dir(
        &["authorizer-signed"],
        &[(
            "auth.toml",
            "world = \"authorizer\"\nwasm = \"authorizer_signed.wasm\"\n[grants]\nconfig = true\nlogging = true\nkeyvalue = { prefixes = [\"auth:\"] }\n[config]\nhmac_key = { env = \"FIREDRILL_TOKEN_KEY\" }\nallow = { env = \"FD_PLANTED_ALLOW\" }\n",
        )],
    );
    let work = harness::tempdir("cfgsecret");
    let port = harness::free_port();
    let config = work.join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\n[store]\nurl = \"file://{}\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"cron: 0 3 1 1 *\"\n",
            policies.display(),
            work.join("store").display(),
            harness::postgres().url("postgres"),
        ),
    )
    .unwrap();
    let child = start_agent(
        &config,
        port,
        &[
            ("FIREDRILL_TOKEN_KEY", crate::api::KEY),
            ("FD_PLANTED_ALLOW", &secret),
            ("RUST_LOG", "info,firedrill=debug"),
        ],
    );
    let token = crate::api::token_with(crate::api::KEY, "ann", "viewer", crate::api::now() + 600);
    let r = crate::api::get(port, "/v1/backups", &token);
    assert_eq!(r.status, 503, "{r:?}");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("config `allow`")
            && message.contains("***")
            && message.contains("is not a CIDR"),
        "{message}"
    );
    let log = output_text(&harness::run_agent_for(child, 1));
    for (place, text) in [("the API error", &r.body), ("the agent's output", &log)] {
        assert!(
            !text.contains(&secret),
            "the config secret leaked into {place}:\n{text}"
        );
    }
}
