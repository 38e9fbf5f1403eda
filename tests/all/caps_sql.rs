//! The sql capability against a real Postgres, through the built-in verifier:
//! scoped to the granted database, read-only unless granted otherwise, typed
//! values both ways.

use crate::builtin_plugins::drill_context;
use crate::harness;
use firedrill::caps::sql::{SqlScope, SqlTarget};
use firedrill::caps::types::{CheckResult, CheckStatus};
use firedrill::caps::CallContext;
use firedrill::runtime::Plugin;

fn verifier(extra_config: &str, grant: &str) -> Plugin {
    harness::load(
        "verifier-sql",
        &format!(
            "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nlogging = true\nconfig = true\n{grant}\n[config]\n{extra_config}"
        ),
    )
    .unwrap()
}

fn seeded() -> (String, CallContext) {
    let pg = harness::postgres();
    let db = pg.fresh_database("sqlcap");
    pg.client(&db)
        .batch_execute(
            "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, created timestamptz NOT NULL DEFAULT now());
             INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 25) g;
             CREATE SCHEMA \"Odd Schema\";
             CREATE TABLE \"Odd Schema\".\"Mixed \"\"Case\" (v numeric(10,2));
             INSERT INTO \"Odd Schema\".\"Mixed \"\"Case\" VALUES (12.5), (-0.01);",
        )
        .unwrap();
    let ctx = CallContext {
        sql: Some(SqlTarget {
            scope: SqlScope::Drill,
            url: pg.url(&db),
        }),
        ..Default::default()
    };
    (db, ctx)
}

fn by_name<'a>(results: &'a [CheckResult], name: &str) -> &'a CheckResult {
    results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {results:?}"))
}

#[test]
fn row_counts_pass_and_fail_against_the_real_database() {
    let (_db, ctx) = seeded();
    let p = verifier("", "sql = { database = \"drill\" }");
    let results = p
        .verify(
            &ctx,
            &drill_context(vec![
                ("public", "users", 25),
                ("Odd Schema", "Mixed \"Case", 3),
                ("public", "gone", 1),
            ]),
        )
        .unwrap();
    assert_eq!(
        by_name(&results, "rows.public.users").status,
        CheckStatus::Pass
    );
    let odd = by_name(&results, "rows.Odd Schema.Mixed \"Case");
    assert_eq!(odd.status, CheckStatus::Fail);
    assert!(
        odd.detail.contains("2 rows restored, 3 counted"),
        "{}",
        odd.detail
    );
    let gone = by_name(&results, "rows.public.gone");
    assert_eq!(gone.status, CheckStatus::Fail);
    assert!(
        gone.detail.contains("42P01"),
        "a missing table is named by its SQLSTATE: {}",
        gone.detail
    );
}

#[test]
fn assertions_pass_on_true_or_no_rows() {
    let (_db, ctx) = seeded();
    let p = verifier(
        "row-counts = false\n\"assert.fresh\" = \"SELECT max(created) > now() - interval '1 day' FROM users\"\n\"assert.no-dupes\" = \"SELECT email FROM users GROUP BY email HAVING count(*) > 1\"\n\"assert.false\" = \"SELECT count(*) > 1000 FROM users\"",
        "sql = { database = \"drill\" }",
    );
    let results = p.verify(&ctx, &drill_context(vec![])).unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(by_name(&results, "assert.fresh").status, CheckStatus::Pass);
    assert_eq!(
        by_name(&results, "assert.no-dupes").status,
        CheckStatus::Pass
    );
    assert_eq!(by_name(&results, "assert.false").status, CheckStatus::Fail);
}

#[test]
fn a_read_only_grant_cannot_write_even_by_switching_the_transaction() {
    let (db, ctx) = seeded();
    let p = verifier(
        "row-counts = false\n\"assert.insert\" = \"INSERT INTO users (email) VALUES ('evil') RETURNING true\"\n\"assert.switch\" = \"SET TRANSACTION READ WRITE\"\n\"assert.drop\" = \"DROP TABLE users\"\n\"assert.two\" = \"SELECT true; DELETE FROM users\"",
        "sql = { database = \"drill\" }",
    );
    let results = p.verify(&ctx, &drill_context(vec![])).unwrap();
    for name in [
        "assert.insert",
        "assert.switch",
        "assert.drop",
        "assert.two",
    ] {
        assert_eq!(
            by_name(&results, name).status,
            CheckStatus::Fail,
            "{name}: {:?}",
            by_name(&results, name)
        );
    }
    assert!(
        by_name(&results, "assert.insert")
            .detail
            .contains("read-only transaction"),
        "{results:?}"
    );
    let n: i64 = harness::postgres()
        .client(&db)
        .query_one("SELECT count(*) FROM users", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 25, "nothing was written");
}

#[test]
fn a_write_grant_commits() {
    let (db, mut ctx) = seeded();
    ctx.sql.as_mut().unwrap().scope = SqlScope::Source;
    let p = verifier(
        "row-counts = false\n\"assert.insert\" = \"INSERT INTO users (email) VALUES ('new') RETURNING true\"",
        "sql = { database = \"source\", write = true, allow_superuser = true }",
    );
    let results = p.verify(&ctx, &drill_context(vec![])).unwrap();
    assert_eq!(
        by_name(&results, "assert.insert").status,
        CheckStatus::Pass,
        "{results:?}"
    );
    let n: i64 = harness::postgres()
        .client(&db)
        .query_one("SELECT count(*) FROM users", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 26);
}

#[test]
fn a_grant_reaches_only_its_own_scope() {
    let (_db, mut ctx) = seeded();
    ctx.sql.as_mut().unwrap().scope = SqlScope::Source;
    let p = verifier("", "sql = { database = \"drill\" }");
    let results = p
        .verify(&ctx, &drill_context(vec![("public", "users", 25)]))
        .unwrap();
    let r = by_name(&results, "rows.public.users");
    assert_eq!(r.status, CheckStatus::Fail);
    assert!(r.detail.starts_with("not granted"), "{}", r.detail);
    // No database in the call at all.
    let results = p
        .verify(
            &CallContext::default(),
            &drill_context(vec![("public", "users", 25)]),
        )
        .unwrap();
    assert!(by_name(&results, "rows.public.users")
        .detail
        .starts_with("not granted"));
}

#[test]
fn values_arrive_typed() {
    let (_db, ctx) = seeded();
    // The verifier quotes a non-true first column, which shows how it arrived.
    let cases = [
        (
            "numeric",
            "SELECT sum(v) FROM \"Odd Schema\".\"Mixed \"\"Case\"",
            "Numeric(\"12.49\")",
        ),
        ("int", "SELECT count(*) FROM users", "Int(25)"),
        ("float", "SELECT 0.5::float8", "Float(0.5)"),
        (
            "text",
            "SELECT email FROM users ORDER BY id LIMIT 1",
            "Text(\"u1@example.com\")",
        ),
        ("null", "SELECT NULL::int", "Null"),
        (
            "timestamp",
            "SELECT '2026-11-22 21:00:00+00'::timestamptz",
            "Timestamp(1795381200000000)",
        ),
        ("date", "SELECT '1970-01-11'::date", "Date(10)"),
        (
            "uuid",
            "SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
            "Uuid(\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\")",
        ),
        (
            "jsonb",
            "SELECT '{\"a\": 1}'::jsonb",
            "Json(\"{\\\"a\\\": 1}\")",
        ),
        ("bytes", "SELECT '\\x0102'::bytea", "Bytes([1, 2])"),
        ("unsupported", "SELECT '(1,2)'::point", "cast it to text"),
    ];
    let config: String = cases
        .iter()
        .map(|(n, q, _)| format!("\"assert.{n}\" = '''{q}'''\n"))
        .collect::<String>();
    let p = verifier(
        &format!("row-counts = false\n{config}"),
        "sql = { database = \"drill\" }",
    );
    let results = p.verify(&ctx, &drill_context(vec![])).unwrap();
    for (n, _, shown) in cases {
        let r = by_name(&results, &format!("assert.{n}"));
        assert!(
            r.detail.contains(shown),
            "{n}: expected {shown} in {:?}",
            r.detail
        );
    }
}
