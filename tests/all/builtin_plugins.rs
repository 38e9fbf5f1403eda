//! The built-in plugins, one per world, through the runtime.

use crate::harness;
use firedrill::caps::types::*;
use firedrill::caps::CallContext;

pub fn drill_context(tables: Vec<(&str, &str, u64)>) -> DrillContext {
    DrillContext {
        backup_id: "20261122T210000Z-abcdef".into(),
        source: "app".into(),
        database: "firedrill_drill_x".into(),
        backup_created: 1_795_000_000,
        drill_started: 1_795_000_600,
        tables: tables
            .into_iter()
            .map(|(s, n, rows)| TableExpectation {
                table: TableRef {
                    schema: s.into(),
                    name: n.into(),
                },
                rows,
            })
            .collect(),
        previous: None,
        labels: vec![],
    }
}

fn backup(id: &str, source: &str, created: i64, complete: bool) -> BackupInfo {
    BackupInfo {
        id: id.into(),
        source: source.into(),
        kind: BackupKind::Postgres,
        created,
        size_bytes: 1000,
        complete,
        drill: DrillStatus::Passed,
        last_drill: None,
        labels: vec![],
    }
}

#[test]
fn retention_keeps_the_newest_n_per_source() {
    let p = harness::load(
        "retention-count",
        "world = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\nkeep = 2",
    )
    .unwrap();
    let backups = vec![
        backup("a1", "a", 100, true),
        backup("a2", "a", 200, true),
        backup("a3", "a", 300, true),
        backup("a4", "a", 400, false),
        backup("b1", "b", 50, true),
    ];
    let plan = p
        .plan_retention(&CallContext::default(), &backups, 1000)
        .unwrap();
    let action = |id: &str| plan.iter().find(|d| d.id == id).unwrap();
    assert_eq!(action("a1").action, Action::Delete);
    assert!(
        action("a1").reason.contains("beyond keep 2"),
        "{}",
        action("a1").reason
    );
    assert_eq!(action("a2").action, Action::Keep);
    assert_eq!(action("a3").action, Action::Keep);
    assert_eq!(
        action("a4").action,
        Action::Keep,
        "in progress: not retention's to delete"
    );
    assert_eq!(action("b1").action, Action::Keep);
    assert_eq!(plan.len(), 5);
}

#[test]
fn retention_with_a_bad_setting_deletes_nothing() {
    let p = harness::load(
        "retention-count",
        "world = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\nkeep = \"many\"",
    )
    .unwrap();
    let plan = p
        .plan_retention(&CallContext::default(), &[backup("a1", "a", 1, true)], 10)
        .unwrap();
    assert_eq!(plan[0].action, Action::Keep);
    assert!(plan[0].reason.contains("keep"), "{}", plan[0].reason);
}

#[test]
fn the_token_authorizer_checks_the_bearer_token() {
    std::env::set_var("FD_TEST_TOKEN", "s3cr3t-token");
    let p = harness::load(
        "authorizer-token",
        "world = \"authorizer\"\nwasm = \"authorizer_token.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ntoken = { env = \"FD_TEST_TOKEN\" }\nrole = \"operator\"\nprincipal = \"ops\"",
    )
    .unwrap();
    assert_eq!(
        p.policy().config.secrets().collect::<Vec<_>>(),
        ["s3cr3t-token"]
    );
    let with = |auth: Option<&str>| {
        let mut f = crate::hostile_plugins::facts("/v1/backups");
        if let Some(a) = auth {
            f.headers.push(Header {
                name: "authorization".into(),
                value: a.into(),
            });
        }
        p.authorize(&CallContext::default(), &f).unwrap()
    };
    match with(Some("Bearer s3cr3t-token")) {
        Decision::Allow(g) => {
            assert_eq!(g.principal, "ops");
            assert_eq!(g.role, Role::Operator);
        }
        d => panic!("{d:?}"),
    }
    for (auth, reason) in [
        (None, "missing"),
        (Some("Bearer wrong"), "invalid"),
        (Some("Basic s3cr3t-token"), "missing"),
    ] {
        match with(auth) {
            Decision::Deny(r) => {
                assert_eq!(r.status, 401);
                assert!(r.reason.contains(reason), "{auth:?}: {}", r.reason);
                assert!(
                    !r.reason.contains("s3cr3t"),
                    "the token leaked into a refusal"
                );
            }
            d => panic!("{auth:?} was allowed: {d:?}"),
        }
    }
}

#[test]
fn the_redactor_masks_url_passwords_line_by_line() {
    let p = harness::load(
        "redactor-secrets",
        "world = \"redactor\"\nwasm = \"redactor_secrets.wasm\"\n[grants]\nconfig = true\n[config]\nmask = \"[hidden]\"",
    )
    .unwrap();
    let lines = vec![
        "backup of postgres://app:hunter2@db.internal:5432/app failed".to_string(),
        "nothing to hide".to_string(),
        "redis://:pa55@cache:6379/0 and s3://bucket/path".to_string(),
    ];
    let out = p.redact(&CallContext::default(), &lines).unwrap();
    assert_eq!(
        out[0],
        "backup of postgres://app:[hidden]@db.internal:5432/app failed"
    );
    assert_eq!(out[1], "nothing to hide");
    assert_eq!(
        out[2],
        "redis://:[hidden]@cache:6379/0 and s3://bucket/path"
    );
}

#[test]
fn the_default_planner_dumps_everything_with_configured_exceptions() {
    let p = harness::load(
        "planner-all",
        "world = \"dump-planner\"\nwasm = \"planner_all.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\nexclude-schemas = \"audit, tmp\"\nschema-only = \"public.sessions\"",
    )
    .unwrap();
    let info = DatabaseInfo {
        source: "app".into(),
        database: "app".into(),
        server_version: "15.20".into(),
        schemas: vec!["public".into(), "audit".into()],
        tables: vec![TableInfo {
            table: TableRef {
                schema: "public".into(),
                name: "sessions".into(),
            },
            estimated_rows: 10,
            size_bytes: 8192,
            columns: vec![],
        }],
        labels: vec![],
    };
    let plan = p.plan_dump(&CallContext::default(), &info).unwrap();
    assert_eq!(plan.exclude_schemas, ["audit", "tmp"]);
    assert!(plan.include_globals);
    assert_eq!(plan.tables.len(), 1);
    assert_eq!(plan.tables[0].mode, TableMode::SchemaOnly);
    let bad = harness::load(
        "planner-all",
        "world = \"dump-planner\"\nwasm = \"planner_all.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\nschema-only = \"sessions\"",
    )
    .unwrap();
    let e = bad.plan_dump(&CallContext::default(), &info).unwrap_err();
    assert!(e.to_string().contains("schema.table"), "{e}");
}
