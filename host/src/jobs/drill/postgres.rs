//! The Postgres side of a drill: the drill databases (their names, the
//! marker that tells a run's own, the sweep of crashed runs' orphans), the
//! restore of one backed-up database into one, and the built-in checks run
//! there (tables present, row counts, indexes valid and present, constraints
//! present, sequence positions, large objects).
//!
//! Invariants: a drill database's name starts with `firedrill_drill_` and
//! it carries the marker of the run that made it; the sweep drops only such
//! databases, of dead runs on this host or older than a week; the checks
//! only read.

use super::report::{verdict, Check, TableCount};
use super::{DrillOptions, DrillTarget};
use crate::archive::manifest::{self, DatabaseEntry, TableMode};
use crate::archive::{self as arch, Store};
use crate::jobs::restore::{self, RestoreOptions};
use crate::jobs::JobError;
use crate::servers::pg::{ident, PgUrl};
use std::collections::BTreeSet;
use std::time::Instant;

const DRILL_PREFIX: &str = "firedrill_drill_";

/// The drill database for the backup's `index`th database (`None` when it
/// has only one).
pub(super) fn database_name(backup_id: &str, index: Option<usize>) -> String {
    match index {
        Some(i) => format!("{DRILL_PREFIX}{}_{i}", sanitize(backup_id)),
        None => format!("{DRILL_PREFIX}{}", sanitize(backup_id)),
    }
}

/// Restores the backup's database `entry` into the drill database
/// `target`, marked as this run's; returns how long it took, in seconds.
pub(super) async fn restore(
    store: &Store,
    backup: &arch::Backup,
    entry: &DatabaseEntry,
    target: &PgUrl,
    opts: &DrillOptions,
) -> Result<f64, JobError> {
    let clock = Instant::now();
    let ropts = RestoreOptions {
        target: target.clone(),
        jobs: opts.jobs,
        force: false,
        database: Some(entry.name.clone()),
        comment: Some(marker()),
        progress: opts.progress.clone(),
        create_missing_roles: matches!(opts.target, DrillTarget::Local(_)),
    };
    restore::run(store, backup, &ropts).await?;
    Ok(clock.elapsed().as_secs_f64())
}

fn sanitize(id: &str) -> String {
    id.to_ascii_lowercase().replace('-', "_")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Written on each drill database, so that a later run can tell its own orphans.
fn marker() -> String {
    format!(
        "firedrill drill host={} pid={} started={}",
        hostname(),
        std::process::id(),
        manifest::unix_now()
    )
}

/// Drops drill databases left by crashed runs: those this host made whose
/// process is gone, and any older than a week; then the drill roles whose
/// database is gone.
pub async fn sweep_orphans(server: &PgUrl) {
    let Ok(admin) = server.with_database("postgres").connect().await else {
        return;
    };
    let Ok(rows) = admin
        .query(
            "SELECT d.datname, coalesce(shobj_description(d.oid, 'pg_database'), '') FROM pg_database d WHERE d.datname LIKE 'firedrill\\_drill\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    let host = hostname();
    for r in rows {
        let (name, comment): (String, String) = (r.get(0), r.get(1));
        let field = |k: &str| {
            comment
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        let Some(pid) = field("pid=").and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let started = field("started=")
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0);
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        let dead = field("host=").as_deref() == Some(host.as_str()) && gone;
        let stale = manifest::unix_now() - started > 7 * 24 * 3600;
        if dead || stale {
            tracing::warn!(database = %name, "dropping a drill database left by a crashed run");
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&name)
                ))
                .await;
        }
    }
    // Their roles, and any other whose database is gone.
    crate::jobs::drill::role::sweep_orphans(&admin).await;
}

/// The filter of each extension configuration table that has one: the
/// backup copied only the rows it selects (as pg_dump does), and the rows
/// the extension's own script inserted at restore do not match it. Read
/// from the drill database, which holds only what the restore put there.
async fn extension_conditions(
    client: &tokio_postgres::Client,
) -> Result<std::collections::HashMap<(String, String), String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT n.nspname::text, c.relname::text, x.extcondition[array_position(x.extconfig, c.oid)]
             FROM pg_extension x CROSS JOIN LATERAL unnest(x.extconfig) AS cfg(oid)
             JOIN pg_class c ON c.oid = cfg.oid JOIN pg_namespace n ON n.oid = c.relnamespace",
            &[],
        )
        .await?
        .into_iter()
        .filter_map(|r| {
            let condition: Option<String> = r.get(2);
            let condition = condition.filter(|c| !c.trim().is_empty())?;
            Some(((r.get(0), r.get(1)), condition))
        })
        .collect())
}

/// The checks every drill runs; returns the restored row counts.
#[tracing::instrument(name = "drill.checks", skip_all, fields(database = drill_db))]
pub(super) async fn builtin_checks(
    client: &tokio_postgres::Client,
    drill_db: &str,
    entry: &DatabaseEntry,
    prefix: &str,
    checks: &mut Vec<Check>,
) -> Result<Vec<TableCount>, JobError> {
    let sql = |what: &str, e| JobError::sql(drill_db, what, e);
    let present: BTreeSet<(String, String)> = client
        .query("SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')", &[])
        .await
        .map_err(|e| sql("list the tables", e))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<String> = entry
        .tables
        .iter()
        .filter(|t| !present.contains(&(t.schema.clone(), t.name.clone())))
        .map(|t| t.qualified())
        .collect();
    checks.push(verdict(
        format!("{prefix}tables.present"),
        missing.is_empty(),
        if missing.is_empty() {
            format!("all {} tables", entry.tables.len())
        } else {
            format!("missing: {}", missing.join(", "))
        },
    ));
    let conditions = extension_conditions(client)
        .await
        .map_err(|e| sql("list the extensions' configuration tables", e))?;
    let mut counts = Vec::new();
    for t in &entry.tables {
        if missing.contains(&t.qualified()) {
            continue;
        }
        let condition = conditions
            .get(&(t.schema.clone(), t.name.clone()))
            .map(String::as_str)
            .unwrap_or_default();
        // ONLY: the backup copied this table's own rows, never its
        // inheritance children's (each child is a table of its own).
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM ONLY {}.{} {condition}",
                    ident(&t.schema),
                    ident(&t.name)
                ),
                &[],
            )
            .await
            .map_err(|e| sql(&format!("count {}", t.qualified()), e))?
            .get(0);
        let expected = if t.mode == TableMode::Full { t.rows } else { 0 };
        checks.push(verdict(
            format!("{prefix}rows.{}", t.qualified()),
            n as u64 == expected,
            if n as u64 == expected {
                format!("{n} rows, as counted at backup time")
            } else {
                format!("{n} rows restored, {expected} counted at backup time")
            },
        ));
        counts.push(TableCount {
            schema: t.schema.clone(),
            name: t.name.clone(),
            rows: n as u64,
        });
    }
    let invalid: Vec<String> = client
        .query("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid OR NOT indisready ORDER BY 1", &[])
        .await
        .map_err(|e| sql("check the indexes", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    checks.push(verdict(
        format!("{prefix}indexes.valid"),
        invalid.is_empty(),
        if invalid.is_empty() {
            "every index is valid".into()
        } else {
            format!("invalid: {}", invalid.join(", "))
        },
    ));
    let named = |q: &'static str| async move {
        client.query(q, &[]).await.map(|rows| {
            rows.into_iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                    )
                })
                .collect::<BTreeSet<_>>()
        })
    };
    let indexes = named("SELECT n.nspname::text, t.relname::text, c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace")
        .await
        .map_err(|e| sql("list the indexes", e))?;
    let constraints = named("SELECT n.nspname::text, t.relname::text, con.conname::text FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace")
        .await
        .map_err(|e| sql("list the constraints", e))?;
    for (what, expected_of, found) in [
        (
            "indexes.present",
            (|t: &manifest::TableEntry| &t.indexes) as fn(&manifest::TableEntry) -> &Vec<String>,
            &indexes,
        ),
        (
            "constraints.present",
            |t: &manifest::TableEntry| &t.constraints,
            &constraints,
        ),
    ] {
        let expected: Vec<(String, String, String)> = entry
            .tables
            .iter()
            .flat_map(|t| {
                expected_of(t)
                    .iter()
                    .map(move |n| (t.schema.clone(), t.name.clone(), n.clone()))
            })
            .collect();
        let lost: Vec<String> = expected
            .iter()
            .filter(|e| !found.contains(e))
            .map(|(s, t, n)| format!("{n} on {s}.{t}"))
            .collect();
        checks.push(verdict(
            format!("{prefix}{what}"),
            lost.is_empty(),
            if lost.is_empty() {
                format!("all {} from the backup", expected.len())
            } else {
                format!("missing: {}", lost.join(", "))
            },
        ));
    }
    let mut off = Vec::new();
    for s in &entry.sequences {
        let r = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}.{}",
                    ident(&s.schema),
                    ident(&s.name)
                ),
                &[],
            )
            .await
            .map_err(|e| sql(&format!("read sequence {}.{}", s.schema, s.name), e))?;
        let (v, called): (i64, bool) = (r.get(0), r.get(1));
        if v != s.last_value || called != s.is_called {
            off.push(format!(
                "{}.{} at {v}, backed up at {}",
                s.schema, s.name, s.last_value
            ));
        }
    }
    crate::jobs::large_objects::check(client, drill_db, entry, prefix, checks).await?;
    checks.push(verdict(
        format!("{prefix}sequences"),
        off.is_empty(),
        if off.is_empty() {
            format!("all {} where the backup left them", entry.sequences.len())
        } else {
            off.join("; ")
        },
    ));
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_names_are_lowercase_identifiers() {
        assert_eq!(
            sanitize("20261122T210000Z-k3x9qa"),
            "20261122t210000z_k3x9qa"
        );
        assert!(format!("{DRILL_PREFIX}{}_12", sanitize("20261122T210000Z-k3x9qa")).len() < 64);
    }
}
