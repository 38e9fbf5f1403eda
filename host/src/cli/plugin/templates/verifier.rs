//! @NAME@: a firedrill verifier. It runs after every drill with the
//! restored database reachable, read-only, through `sql`; each check it
//! returns is shown in the drill report, and one `fail` fails the drill.
//!
//! As scaffolded it counts each table's rows and compares them with the count
//! taken at backup time, and fails tables with fewer than `min-rows` rows.
//! Replace `verify` with the checks a row count cannot make.

wit_bindgen::generate!({ path: "wit", world: "firedrill:plugin/verifier", generate_all });

use firedrill::plugin::sql::{self, Value};
use firedrill::plugin::types::{CheckStatus, TableExpectation};
use wasi::config::store as config;
use wasi::logging::logging::{log, Level};

struct Plugin;

impl Guest for Plugin {
    fn verify(ctx: DrillContext) -> Vec<CheckResult> {
        let min_rows = match setting("min-rows", 0u64) {
            Ok(n) => n,
            // A bad setting is the operator's to fix: say so in the report.
            Err(detail) => return vec![check("config", CheckStatus::Fail, detail)],
        };
        let checks: Vec<CheckResult> = ctx.tables.iter().map(|t| count(t, min_rows)).collect();
        log(
            Level::Info,
            "",
            &format!("checked {} tables of {}", checks.len(), ctx.database),
        );
        checks
    }
}

fn count(t: &TableExpectation, min_rows: u64) -> CheckResult {
    let name = format!("{}.{}", t.table.schema, t.table.name);
    let statement = format!(
        "SELECT count(*) FROM {}.{}",
        ident(&t.table.schema),
        ident(&t.table.name)
    );
    let (status, detail) = match sql::query(&statement, &[]) {
        Ok(rows) => match rows.rows.first().and_then(|r| r.first()) {
            Some(Value::Int(n)) => {
                let n = *n as u64;
                if n != t.rows {
                    (
                        CheckStatus::Fail,
                        format!("{n} rows restored, {} at backup time", t.rows),
                    )
                } else if n < min_rows {
                    (
                        CheckStatus::Fail,
                        format!("{n} rows, fewer than min-rows = {min_rows}"),
                    )
                } else {
                    (CheckStatus::Pass, format!("{n} rows, as at backup time"))
                }
            }
            other => (CheckStatus::Fail, format!("count(*) returned {other:?}")),
        },
        Err(e) => (CheckStatus::Fail, format!("cannot count its rows: {e:?}")),
    };
    check(&format!("rows.{name}"), status, detail)
}

fn check(name: &str, status: CheckStatus, detail: String) -> CheckResult {
    CheckResult {
        name: name.to_string(),
        status,
        detail,
    }
}

/// `key` from the policy's `[config]`, `default` when unset.
fn setting<T: std::str::FromStr>(key: &str, default: T) -> Result<T, String> {
    match config::get(key) {
        Ok(Some(v)) => v
            .trim()
            .parse()
            .map_err(|_| format!("config `{key}` = {v:?} is not valid")),
        _ => Ok(default),
    }
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

export!(Plugin);
