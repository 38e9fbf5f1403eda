//! Calling the verifier plugins of a drill: what each is told (the
//! [`wit::DrillContext`]: the backup's tables and row counts, the previous
//! drill's) and what it may reach, and turning its results into checks.
//!
//! Invariants: a verifier reaches the drill database (or the drill's Redis
//! instance) only, through the role made for it; a verifier that fails,
//! panics or returns nothing is a failed (or warned) check, never a failed
//! drill.

use super::report::{Check, DrillReport, Status};
use crate::archive::manifest::{DatabaseEntry, Manifest, TableMode};
use crate::caps::sql::{SqlScope, SqlTarget};
use crate::caps::types::{self as wit, CheckStatus};
use crate::caps::CallContext;
use crate::runtime::Plugin;
use crate::servers::pg::PgUrl;
use std::sync::Arc;

/// What a verifier is told of the drill of the backup's database `entry`
/// (restored as `drill_db`): the row counts to expect, and the previous
/// drill's of the same database.
pub(super) fn drill_context(
    m: &Manifest,
    entry: &DatabaseEntry,
    drill_db: &str,
    started: i64,
    previous: Option<&DrillReport>,
) -> wit::DrillContext {
    let expectations = |tables: &mut dyn Iterator<Item = (String, String, u64)>| {
        tables
            .map(|(schema, name, rows)| wit::TableExpectation {
                table: wit::TableRef { schema, name },
                rows,
            })
            .collect::<Vec<_>>()
    };
    wit::DrillContext {
        backup_id: m.id.clone(),
        source: m.source.clone(),
        database: drill_db.into(),
        backup_created: m.timings.started,
        drill_started: started,
        tables: expectations(&mut entry.tables.iter().map(|t| {
            (
                t.schema.clone(),
                t.name.clone(),
                if t.mode == TableMode::Full { t.rows } else { 0 },
            )
        })),
        previous: previous.and_then(|p| {
            let db = p.databases.iter().find(|d| d.name == entry.name)?;
            Some(wit::PreviousDrill {
                backup_id: p.backup_id.clone(),
                drilled_at: p.started,
                passed: p.passed,
                tables: expectations(
                    &mut db
                        .tables
                        .iter()
                        .map(|t| (t.schema.clone(), t.name.clone(), t.rows)),
                ),
            })
        }),
        labels: vec![("database".into(), entry.name.clone())],
    }
}

/// What a verifier of a Postgres drill reaches: the drill database, read-only
/// unless its grant says otherwise.
pub(super) fn drill_call(target: &PgUrl) -> CallContext {
    CallContext {
        sql: Some(SqlTarget {
            scope: SqlScope::Drill,
            url: target.secret_url().to_string(),
        }),
        ..Default::default()
    }
}

/// Runs one verifier with `call`: what its grants reach (the drill database
/// or the drill instance, only).
#[tracing::instrument(name = "drill.verifier", skip_all, fields(plugin = plugin.name()))]
pub(in crate::jobs) async fn run_verifier(
    plugin: &Arc<Plugin>,
    call: CallContext,
    ctx: &wit::DrillContext,
    prefix: &str,
) -> Vec<Check> {
    let (p, ctx) = (plugin.clone(), ctx.clone());
    // The plugin call's span is a child of this one, on the blocking thread too.
    let span = tracing::Span::current();
    let result = tokio::task::spawn_blocking(move || span.in_scope(|| p.verify(&call, &ctx))).await;
    let by = plugin.name().to_string();
    match result {
        Ok(Ok(results)) if results.is_empty() => vec![Check {
            name: format!("{prefix}{by}"),
            status: Status::Warn,
            detail: "the verifier returned no checks".into(),
            by,
        }],
        Ok(Ok(results)) => results
            .into_iter()
            .map(|r| Check {
                name: format!("{prefix}{}", r.name),
                status: match r.status {
                    CheckStatus::Pass => Status::Pass,
                    CheckStatus::Fail => Status::Fail,
                    CheckStatus::Warn => Status::Warn,
                    CheckStatus::Skip => Status::Skip,
                },
                detail: r.detail,
                by: by.clone(),
            })
            .collect(),
        Ok(Err(e)) => vec![Check {
            name: format!("{prefix}{by}"),
            status: Status::Fail,
            detail: e.to_string(),
            by,
        }],
        Err(e) => vec![Check {
            name: format!("{prefix}{by}"),
            status: Status::Fail,
            detail: format!("the call did not finish: {e}"),
            by,
        }],
    }
}
