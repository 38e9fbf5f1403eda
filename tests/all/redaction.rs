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
