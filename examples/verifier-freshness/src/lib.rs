//! An example verifier with two business checks a row count cannot make:
//!
//! - `freshness`: the newest value of `timestamp-column` in `table` is at most
//!   `max-age` older than the backup (a backup of a stale database is a
//!   useless backup, even if it restores);
//! - `growth.<table>`: each table's rows are within `max-change-percent` of
//!   the previous drill's count (a table that lost half its rows overnight
//!   deserves a look before it is the only backup left).

use firedrill_plugin_sdk::verifier::firedrill::plugin::sql::{self, Value};
use firedrill_plugin_sdk::verifier::{
    export, CheckResult, CheckStatus, Config, DrillContext, Guest, Log,
};

struct Freshness;

fn result(name: &str, status: CheckStatus, detail: String) -> CheckResult {
    CheckResult {
        name: name.to_string(),
        status,
        detail,
    }
}

fn ident(s: &str) -> String {
    s.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// "24h", "90m", "2d", "3600s" -> seconds.
fn seconds(s: &str) -> Option<i64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    Some(
        n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return None,
        },
    )
}

fn freshness(ctx: &DrillContext) -> Option<CheckResult> {
    let table = Config::get("table")?;
    let column = Config::get("timestamp-column").unwrap_or_else(|| "created_at".into());
    let max_age = Config::get("max-age").unwrap_or_else(|| "24h".into());
    let Some(limit) = seconds(&max_age) else {
        return Some(result(
            "freshness",
            CheckStatus::Fail,
            format!("config max-age {max_age:?} is not like 24h, 90m or 2d"),
        ));
    };
    // Verifiers run once per database of a backup: skip those without the table.
    match sql::query(
        "SELECT to_regclass($1) IS NOT NULL",
        &[Value::Text(table.clone())],
    ) {
        Ok(r)
            if matches!(
                r.rows.first().and_then(|row| row.first()),
                Some(Value::Boolean(false))
            ) =>
        {
            return Some(result(
                "freshness",
                CheckStatus::Skip,
                format!("no table {table} in {}", ctx.database),
            ));
        }
        Err(e) => {
            return Some(result(
                "freshness",
                CheckStatus::Fail,
                format!("cannot look for {table}: {e:?}"),
            ))
        }
        Ok(_) => {}
    }
    let q = format!("SELECT max({}) FROM {}", ident(&column), ident(&table));
    Some(match sql::query(&q, &[]) {
        Ok(r) => {
            match r.rows.first().and_then(|row| row.first()) {
                Some(Value::Timestamp(us)) => {
                    let age = ctx.backup_created - us / 1_000_000;
                    let detail = format!("newest {table}.{column} was {}h{:02}m old at backup time (limit {max_age})", age / 3600, age % 3600 / 60);
                    result(
                        "freshness",
                        if age <= limit {
                            CheckStatus::Pass
                        } else {
                            CheckStatus::Fail
                        },
                        detail,
                    )
                }
                Some(Value::Null) | None => {
                    result("freshness", CheckStatus::Fail, format!("{table} is empty"))
                }
                Some(other) => result(
                    "freshness",
                    CheckStatus::Fail,
                    format!("{table}.{column} is not a timestamp: {other:?}"),
                ),
            }
        }
        Err(e) => result("freshness", CheckStatus::Fail, format!("{q}: {e:?}")),
    })
}

fn growth(ctx: &DrillContext) -> Vec<CheckResult> {
    let max_change: f64 = Config::parse_or("max-change-percent", 5.0).unwrap_or(5.0);
    let Some(prev) = &ctx.previous else {
        return vec![result(
            "growth",
            CheckStatus::Skip,
            "no previous drill to compare with".into(),
        )];
    };
    Log::info(&format!("comparing with the drill of {}", prev.backup_id));
    ctx.tables
        .iter()
        .filter_map(|t| {
            let before = prev
                .tables
                .iter()
                .find(|p| p.table.schema == t.table.schema && p.table.name == t.table.name)?;
            let name = format!("growth.{}.{}", t.table.schema, t.table.name);
            let change = if before.rows == 0 {
                if t.rows == 0 {
                    0.0
                } else {
                    100.0
                }
            } else {
                (t.rows as f64 - before.rows as f64) / before.rows as f64 * 100.0
            };
            let detail = format!(
                "{} rows, {} at the previous drill ({change:+.1}%, limit ±{max_change}%)",
                t.rows, before.rows
            );
            Some(result(
                &name,
                if change.abs() <= max_change {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                },
                detail,
            ))
        })
        .collect()
}

impl Guest for Freshness {
    fn verify(ctx: DrillContext) -> Vec<CheckResult> {
        let mut out: Vec<CheckResult> = freshness(&ctx).into_iter().collect();
        out.extend(growth(&ctx));
        out
    }
}

export!(Freshness);
