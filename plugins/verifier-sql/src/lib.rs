//! Built-in verifier: row counts and SQL assertions, run through the sql
//! capability against the restored drill database.
//!
//! - `rows.<schema>.<table>`: every table's `count(*)` must equal the rows
//!   the backup counted (skipped with `row-counts = "false"` in config).
//! - every config key `assert.<name>` holds a query that must return `true`
//!   in its first column, or no rows at all, to pass.

use firedrill_plugin_sdk::verifier::firedrill::plugin::sql::{self, Value};
use firedrill_plugin_sdk::verifier::{
    export, CheckResult, CheckStatus, Config, DrillContext, Guest, Log,
};

struct SqlChecks;

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn describe(e: &sql::Error) -> String {
    match e {
        sql::Error::NotGranted(m) => format!("not granted: {m}"),
        sql::Error::Query((code, m)) => format!("{m} (SQLSTATE {code})"),
        sql::Error::Conversion(m) => format!("conversion: {m}"),
        sql::Error::Timeout => "timed out".to_string(),
        sql::Error::Connection(m) => format!("connection: {m}"),
    }
}

fn check(name: String, status: CheckStatus, detail: String) -> CheckResult {
    CheckResult {
        name,
        status,
        detail,
    }
}

impl Guest for SqlChecks {
    fn verify(ctx: DrillContext) -> Vec<CheckResult> {
        let mut out = Vec::new();
        if Config::parse_or("row-counts", true).unwrap_or(true) {
            for t in &ctx.tables {
                let name = format!("rows.{}.{}", t.table.schema, t.table.name);
                let q = format!(
                    "SELECT count(*) FROM {}.{}",
                    ident(&t.table.schema),
                    ident(&t.table.name)
                );
                out.push(match sql::query(&q, &[]) {
                    Ok(r) => match r.rows.first().and_then(|row| row.first()) {
                        Some(Value::Int(n)) if *n as u64 == t.rows => check(
                            name,
                            CheckStatus::Pass,
                            format!("{n} rows, as at backup time"),
                        ),
                        Some(Value::Int(n)) => check(
                            name,
                            CheckStatus::Fail,
                            format!("{n} rows restored, {} counted at backup time", t.rows),
                        ),
                        other => check(
                            name,
                            CheckStatus::Fail,
                            format!("unexpected count result {other:?}"),
                        ),
                    },
                    Err(e) => check(name, CheckStatus::Fail, describe(&e)),
                });
            }
        }
        let mut asserts: Vec<(String, String)> = Config::all()
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("assert.").map(|n| (n.to_string(), v)))
            .collect();
        asserts.sort();
        for (name, q) in asserts {
            Log::debug(&format!("assertion {name}"));
            let name = format!("assert.{name}");
            out.push(match sql::query(&q, &[]) {
                Ok(r) => match r.rows.first().and_then(|row| row.first()) {
                    None => check(name, CheckStatus::Pass, "no rows".to_string()),
                    Some(Value::Boolean(true)) => {
                        check(name, CheckStatus::Pass, "true".to_string())
                    }
                    Some(v) => check(name, CheckStatus::Fail, format!("returned {v:?}")),
                },
                Err(e) => check(name, CheckStatus::Fail, describe(&e)),
            });
        }
        out
    }
}

export!(SqlChecks);
