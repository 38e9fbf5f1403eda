//! Built-in verifier: row counts and SQL assertions, run through the sql
//! capability against the restored drill database.
//!
//! - `rows.<schema>.<table>`: every table's own rows (`count(*) FROM ONLY`)
//!   must equal the rows the backup counted (skipped with `row-counts = "false"` in config).
//! - every config key `assert.<name>` holds a query that must return `true`
//!   in its first column, or no rows at all, to pass.

use firedrill_plugin_sdk::verifier::firedrill::plugin::sql::{self, Value};
use firedrill_plugin_sdk::verifier::{
    export, CheckResult, CheckStatus, Config, DrillContext, Guest, Log,
};

struct SqlChecks;

/// (schema, table, filter) of each extension configuration table with a
/// filter: the backup copied only the rows it selects (as pg_dump does);
/// the rows the extension itself inserts at restore do not match it.
fn extension_conditions() -> Vec<(String, String, String)> {
    let q = "SELECT n.nspname::text, c.relname::text, x.extcondition[array_position(x.extconfig, c.oid)]
             FROM pg_extension x CROSS JOIN LATERAL unnest(x.extconfig) AS cfg(oid)
             JOIN pg_class c ON c.oid = cfg.oid JOIN pg_namespace n ON n.oid = c.relnamespace";
    match sql::query(q, &[]) {
        Ok(r) => r
            .rows
            .into_iter()
            .filter_map(|row| match row.as_slice() {
                [Value::Text(s), Value::Text(n), Value::Text(c)] if !c.trim().is_empty() => {
                    Some((s.clone(), n.clone(), c.clone()))
                }
                _ => None,
            })
            .collect(),
        Err(e) => {
            // Counted without filters: a configuration table may then fail.
            Log::warn(&format!("extension configuration tables: {}", describe(&e)));
            vec![]
        }
    }
}

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
            let conditions = extension_conditions();
            for t in &ctx.tables {
                let name = format!("rows.{}.{}", t.table.schema, t.table.name);
                // ONLY: the backup counted a table's own rows, not those of
                // its inheritance children (each is listed on its own).
                let condition = conditions
                    .iter()
                    .find(|(s, n, _)| *s == t.table.schema && *n == t.table.name)
                    .map(|c| c.2.as_str())
                    .unwrap_or_default();
                let q = format!(
                    "SELECT count(*) FROM ONLY {}.{} {condition}",
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
