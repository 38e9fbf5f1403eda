//! What a backup dumps of one database: the catalog as the dump planner
//! sees it (`describe`), the planner plugin's answer (`ask_planner`),
//! the plan applied (`apply_plan`: tables copied whole, as schema only,
//! or left out), large tables cut into page ranges
//! (`split_large_tables`), and the refusals checked before anything is
//! copied (`refuse_incomplete`): tables the backup role may not read,
//! row-level security that applies to it, large objects it may not read,
//! subscriptions pg_dump would silently leave out.
//!
//! Invariants: the catalog queries only read, on the leader's connection
//! inside its snapshot transaction; a refusal names every table it concerns
//! and the fix, before the first object is written; a planner with a
//! `source` sql grant gets the operator's plugin role, never the backup
//! role, and without one configured the backup fails naming the setting.

use super::BackupOptions;
use crate::archive::manifest::TableMode;
use crate::caps::sql::{SqlScope, SqlTarget};
use crate::caps::types::{self as wit, DatabaseInfo, DumpPlan};
use crate::caps::CallContext;
use crate::jobs::JobError;
use crate::servers::pg::ident;
use std::collections::HashMap;

/// What to copy from one table.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) mode: TableMode,
    pub(super) size: u64,
    pub(super) chunk_rows: Option<u64>,
    /// Part of a large table: (index, first heap page, end page or open).
    pub(super) range: Option<(usize, u64, Option<u64>)>,
    /// The columns COPY writes (generated ones excluded), for range queries.
    pub(super) columns: Vec<String>,
    pub(super) indexes: Vec<String>,
    pub(super) constraints: Vec<String>,
    /// An extension's configuration table: the rows its extension marked
    /// as the user's (`pg_extension_config_dump`'s filter, `WHERE ...`).
    pub(super) condition: Option<String>,
}

/// What the backup needs about a table beyond what the planner sees.
pub(super) struct TableExtra {
    heap_pages: u64,
    copy_columns: Vec<String>,
    indexes: Vec<String>,
    constraints: Vec<String>,
    condition: Option<String>,
}

/// Ranges of heap pages can be scanned on their own from PostgreSQL 14 on.
pub(super) const TID_RANGE_SCANS: i32 = 140_000;

/// The database as the dump planner sees it.
pub(super) async fn describe(
    client: &tokio_postgres::Client,
    db: &str,
    source: &str,
    version: &str,
    version_num: i32,
) -> Result<(DatabaseInfo, HashMap<(String, String), TableExtra>), JobError> {
    let generated = if version_num >= 120_000 {
        "a.attgenerated <> ''"
    } else {
        "false"
    };
    let tables_sql = format!("
        SELECT n.nspname, c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid)::bigint,
               coalesce((SELECT json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, {generated}) ORDER BY a.attnum)::text
                         FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
               (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint,
               ARRAY(SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid ORDER BY 1),
               ARRAY(SELECT con.conname::text FROM pg_constraint con WHERE con.conrelid = c.oid ORDER BY 1),
               (SELECT x.extcondition[array_position(x.extconfig, c.oid)] FROM pg_extension x WHERE c.oid = ANY (x.extconfig) LIMIT 1)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
          AND (NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
               -- An extension's member, but its data is the user's (as pg_dump does).
               OR EXISTS (SELECT 1 FROM pg_extension x WHERE c.oid = ANY (x.extconfig)))
        ORDER BY 1, 2");
    let rows = client
        .query(&tables_sql, &[])
        .await
        .map_err(|e| JobError::sql(db, "list the tables", e))?;
    let mut tables = Vec::new();
    let mut extras = HashMap::new();
    for r in rows {
        let columns: Vec<(String, String, bool, bool)> =
            serde_json::from_str(r.get::<_, &str>(4)).unwrap_or_default();
        let key: (String, String) = (r.get(0), r.get(1));
        extras.insert(
            key.clone(),
            TableExtra {
                heap_pages: r.get::<_, i64>(5).max(0) as u64,
                copy_columns: columns
                    .iter()
                    .filter(|c| !c.3)
                    .map(|c| c.0.clone())
                    .collect(),
                indexes: r.get(6),
                constraints: r.get(7),
                condition: r
                    .get::<_, Option<String>>(8)
                    .filter(|c| !c.trim().is_empty()),
            },
        );
        tables.push(wit::TableInfo {
            table: wit::TableRef {
                schema: key.0,
                name: key.1,
            },
            estimated_rows: r.get(2),
            size_bytes: r.get::<_, i64>(3).max(0) as u64,
            columns: columns
                .into_iter()
                .map(|(name, type_name, nullable, _)| wit::ColumnInfo {
                    name,
                    type_name,
                    nullable,
                })
                .collect(),
        });
    }
    let schemas = client
        .query("SELECT nspname FROM pg_namespace WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%' ORDER BY 1", &[])
        .await
        .map_err(|e| JobError::sql(db, "list the schemas", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok((
        DatabaseInfo {
            source: source.into(),
            database: db.into(),
            server_version: version.into(),
            schemas,
            tables,
            labels: vec![],
        },
        extras,
    ))
}

/// The dump planner's plan for this database; without a planner, everything.
pub(super) async fn ask_planner(
    opts: &BackupOptions,
    db: &str,
    info: &DatabaseInfo,
) -> Result<DumpPlan, JobError> {
    Ok(match &opts.planner {
        Some(p) => {
            // Never the backup role's URL: the operator's role for plugins, or none.
            let plugin_sql = opts.plugin_sql.as_ref().map(|u| u.with_database(db));
            let wants_source = p
                .policy()
                .grants
                .sql
                .as_ref()
                .is_some_and(|g| g.database == SqlScope::Source);
            if wants_source && plugin_sql.is_none() {
                return Err(JobError::Config(format!(
                    "the dump planner {} has a `sql = {{ database = \"source\" }}` grant: set plugin_sql_url on the source (FIREDRILL_PLUGIN_SQL_URL, or --plugin-sql-url) to a role of its own for plugins, never the backup role",
                    p.name()
                )));
            }
            let (p, info) = (p.clone(), info.clone());
            tokio::task::spawn_blocking(move || {
                let ctx = CallContext {
                    sql: plugin_sql.map(|u| SqlTarget {
                        scope: SqlScope::Source,
                        url: u.secret_url().to_string(),
                    }),
                    ..Default::default()
                };
                p.plan_dump(&ctx, &info)
            })
            .await
            .map_err(|e| JobError::Internal(e.to_string()))??
        }
        None => DumpPlan {
            tables: vec![],
            exclude_schemas: vec![],
            include_globals: true,
            notes: vec!["everything (no dump planner)".into()],
        },
    })
}

/// The tables to copy, and the (schema, table) pairs left out entirely.
pub(super) fn apply_plan(
    info: &DatabaseInfo,
    plan: &DumpPlan,
) -> Result<(Vec<Job>, Vec<(String, String)>), JobError> {
    if let Some(t) = plan.tables.iter().find(|t| !t.masks.is_empty()) {
        return Err(JobError::Plan(format!(
            "the dump plan masks columns of {}.{}; masking is not supported by this version of firedrill",
            t.table.schema, t.table.name
        )));
    }
    let mut jobs = Vec::new();
    let mut excluded = Vec::new();
    for t in &info.tables {
        let planned = plan
            .tables
            .iter()
            .find(|p| p.table.schema == t.table.schema && p.table.name == t.table.name);
        let mode = match planned.map(|p| p.mode) {
            _ if plan.exclude_schemas.contains(&t.table.schema) => None,
            Some(wit::TableMode::Exclude) => None,
            Some(wit::TableMode::SchemaOnly) => Some(TableMode::SchemaOnly),
            Some(wit::TableMode::Full) | None => Some(TableMode::Full),
        };
        match mode {
            None => excluded.push((t.table.schema.clone(), t.table.name.clone())),
            Some(mode) => jobs.push(Job {
                schema: t.table.schema.clone(),
                name: t.table.name.clone(),
                mode,
                size: t.size_bytes,
                chunk_rows: planned.and_then(|p| p.chunk_rows),
                range: None,
                columns: vec![],
                indexes: vec![],
                constraints: vec![],
                condition: None,
            }),
        }
    }
    // Largest first, so the long tables start early and the workers finish together.
    jobs.sort_by(|a, b| b.size.cmp(&a.size));
    Ok((jobs, excluded))
}

/// Fills in what the planner does not see: each job's indexes, constraints,
/// extension filter and the columns its COPY names.
pub(super) fn add_extras(jobs: &mut [Job], extras: &HashMap<(String, String), TableExtra>) {
    for job in jobs {
        if let Some(e) = extras.get(&(job.schema.clone(), job.name.clone())) {
            job.indexes = e.indexes.clone();
            job.constraints = e.constraints.clone();
            job.condition = e.condition.clone();
            // Named in the COPY and the manifest: restored, a table may
            // hold the same columns in another order.
            job.columns = e.copy_columns.clone();
        }
    }
}

/// Cuts each table with more heap than two chunks into page ranges, one per
/// job at most, so one large table is read by several connections at once
/// (pg_dump reads a table through one).
pub(super) fn split_large_tables(
    jobs: Vec<Job>,
    extras: &HashMap<(String, String), TableExtra>,
    workers: usize,
    chunk_bytes: u64,
) -> Vec<Job> {
    let mut out = Vec::new();
    for job in jobs {
        let extra = extras.get(&(job.schema.clone(), job.name.clone()));
        let pages = extra.map(|e| e.heap_pages).unwrap_or(0);
        let heap = pages * 8192;
        let parts = (heap / chunk_bytes.max(1)).min(workers as u64);
        if job.mode != TableMode::Full
            || parts < 2
            || job.condition.is_some()
            || extra.is_none_or(|e| e.copy_columns.is_empty())
        {
            out.push(job);
            continue;
        }
        for i in 0..parts {
            let from = pages * i / parts;
            // The last range is open: it also holds rows on pages added since the estimate.
            let to = (i + 1 < parts).then(|| pages * (i + 1) / parts);
            out.push(Job {
                range: Some((i as usize, from, to)),
                columns: extra.map(|e| e.copy_columns.clone()).unwrap_or_default(),
                size: job.size / parts,
                ..job.clone()
            });
        }
    }
    out.sort_by(|a, b| b.size.cmp(&a.size));
    out
}

/// Fails before anything is copied when the backup would fail halfway or
/// silently lack something, each check naming everything it concerns and
/// the fix (rather than whichever of pg_dump or a COPY happens to fail
/// first), in this order: tables the backup role may not read (pg_dump
/// locks each table whose definition it writes, and COPY reads the rows);
/// tables whose data is backed up with a row-level security policy that
/// applies to the role (their COPY would fail: row_security is off); large
/// objects it may not read; subscriptions pg_dump would leave out.
pub(super) async fn refuse_incomplete(
    client: &tokio_postgres::Client,
    db: &str,
    jobs: &[Job],
) -> Result<(), JobError> {
    refuse_tables_where(
        client,
        db,
        "c.relkind = 'r' AND NOT (pg_catalog.has_schema_privilege(n.oid, 'USAGE')
                                  AND pg_catalog.has_table_privilege(c.oid, 'SELECT'))",
        "check that the tables are readable",
        jobs.iter(),
        |hit, role| unreadable_refusal(db, hit, role),
    )
    .await?;
    refuse_tables_where(
        client,
        db,
        "c.relrowsecurity AND row_security_active(c.oid)",
        "look for row-level security policies",
        jobs.iter().filter(|j| j.mode == TableMode::Full),
        |hit, role| row_security_refusal(db, &hit.join(", "), role),
    )
    .await?;
    crate::jobs::large_objects::refuse_unreadable(client, db).await?;
    refuse_hidden_subscriptions(client, db).await
}

/// Fails with `refusal(tables, backup role)` when some user tables
/// (`schema.table`) among `jobs` match `condition`; the role is looked up
/// only then.
async fn refuse_tables_where(
    client: &tokio_postgres::Client,
    db: &str,
    condition: &str,
    what: &str,
    jobs: impl Iterator<Item = &Job>,
    refusal: impl FnOnce(&[String], &str) -> JobError,
) -> Result<(), JobError> {
    let wanted: std::collections::HashSet<(&str, &str)> =
        jobs.map(|j| (j.schema.as_str(), j.name.as_str())).collect();
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' AND {condition}
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(|e| JobError::sql(db, what, e))?;
    let hit: Vec<String> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(s, t)| wanted.contains(&(s.as_str(), t.as_str())))
        .map(|(s, t)| format!("{s}.{t}"))
        .collect();
    if hit.is_empty() {
        return Ok(());
    }
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| JobError::sql(db, what, e))?
        .get(0);
    Err(refusal(&hit, &role))
}

/// pg_dump leaves out a database's subscriptions unless it runs as a
/// superuser, with only a warning ("subscriptions not dumped"): the backup
/// would lack them and still succeed, so it fails here instead, naming them.
async fn refuse_hidden_subscriptions(
    client: &tokio_postgres::Client,
    db: &str,
) -> Result<(), JobError> {
    let rows = client
        .query(
            "SELECT s.subname::text, current_user::text FROM pg_catalog.pg_subscription s
             WHERE s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
               AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| JobError::sql(db, "look for subscriptions", e))?;
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let names: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    Err(JobError::refused(
        db,
        "back up the subscriptions",
        format!(
            "the database has subscriptions ({}) and pg_dump writes them only for a superuser, which role {} is not: back it up as a superuser; a backup without them would be incomplete",
            names.join(", "),
            first.get::<_, String>(1)
        ),
    ))
}

/// Tables the backup role may not read (`hit`, at least one): the first
/// ten, and the fix.
fn unreadable_refusal(db: &str, hit: &[String], role: &str) -> JobError {
    let shown = match hit.len() > 10 {
        true => format!("{} and {} more", hit[..10].join(", "), hit.len() - 10),
        false => hit.join(", "),
    };
    JobError::refused(
        db,
        "back up its tables",
        format!(
            "role {role} may not read {shown}: grant it pg_read_all_data (GRANT pg_read_all_data TO {}; PostgreSQL 14 and later), or USAGE on their schemas and SELECT on each (such as {}); see docs/ROLES.md",
            ident(role),
            hit[0]
        ),
    )
}

/// A table the backup role would read only part of: which, and the fix.
pub(super) fn row_security_refusal(db: &str, tables: &str, role: &str) -> JobError {
    let (noun, verb) = match tables.contains(", ") {
        true => ("tables", "have"),
        false => ("table", "has"),
    };
    JobError::refused(
        db,
        format!("back up {tables}"),
        format!(
            "{noun} {tables} {verb} row-level security and role {role} is subject to it: grant BYPASSRLS to the backup role (ALTER ROLE {} BYPASSRLS) or use a superuser; a backup without it would hold only the rows the policy shows",
            ident(role)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::{Chunk, TableEntry};
    use crate::archive::ObjectRef;

    fn job(name: &str, mode: TableMode, size: u64) -> Job {
        Job {
            schema: "public".into(),
            name: name.into(),
            mode,
            size,
            chunk_rows: None,
            range: None,
            columns: vec!["id".into()],
            indexes: vec![],
            constraints: vec![],
            condition: None,
        }
    }

    fn extra(heap_pages: u64, copy_columns: &[&str]) -> TableExtra {
        TableExtra {
            heap_pages,
            copy_columns: copy_columns.iter().map(|c| c.to_string()).collect(),
            indexes: vec![],
            constraints: vec![],
            condition: None,
        }
    }

    #[test]
    fn large_tables_are_cut_into_contiguous_page_ranges_and_joined_back() {
        let chunk = 8192 * 100;
        let extras = HashMap::from([
            (("public".into(), "big".into()), extra(1000, &["id", "v"])),
            (("public".into(), "small".into()), extra(150, &["id"])),
            (("public".into(), "shape".into()), extra(1000, &["id"])),
            (("public".into(), "empty".into()), extra(1000, &[])),
        ]);
        let jobs = vec![
            job("big", TableMode::Full, 8_000_000),
            job("small", TableMode::Full, 1_000_000),
            job("shape", TableMode::SchemaOnly, 8_000_000),
            job("empty", TableMode::Full, 8_000_000),
        ];
        let out = split_large_tables(jobs, &extras, 4, chunk);
        let big: Vec<&Job> = out.iter().filter(|j| j.name == "big").collect();
        // Ten chunks of heap, four workers: four ranges, the last one open.
        assert_eq!(
            big.iter().map(|j| j.range).collect::<Vec<_>>(),
            vec![
                Some((0, 0, Some(250))),
                Some((1, 250, Some(500))),
                Some((2, 500, Some(750))),
                Some((3, 750, None)),
            ]
        );
        assert!(big
            .iter()
            .all(|j| j.columns == ["id", "v"] && j.size == 2_000_000));
        // Under two chunks, schema only, or no column to name: read whole.
        for name in ["small", "shape", "empty"] {
            let whole: Vec<&Job> = out.iter().filter(|j| j.name == name).collect();
            assert_eq!(whole.len(), 1, "{name}");
            assert_eq!(whole[0].range, None, "{name}");
        }

        let part = |i: usize, rows: u64| TableEntry {
            schema: "public".into(),
            name: "big".into(),
            mode: TableMode::Full,
            rows,
            raw_bytes: rows * 10,
            chunks: vec![Chunk {
                object: ObjectRef {
                    path: format!("app/data/public.big/r{i:03}-00000.copy.zst"),
                    size: 1,
                    sha256: String::new(),
                    raw: None,
                },
                rows,
                raw_bytes: rows * 10,
            }],
            indexes: vec![],
            constraints: vec![],
            columns: vec![],
        };
        // Workers finish in any order.
        let joined = super::super::postgres::merge_ranges(vec![part(2, 5), part(0, 7), part(1, 3)]);
        assert_eq!(joined.len(), 1);
        assert_eq!((joined[0].rows, joined[0].raw_bytes), (15, 150));
        let paths: Vec<&str> = joined[0]
            .chunks
            .iter()
            .map(|c| c.object.path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "app/data/public.big/r000-00000.copy.zst",
                "app/data/public.big/r001-00000.copy.zst",
                "app/data/public.big/r002-00000.copy.zst",
            ]
        );
    }
}
