//! @NAME@: a firedrill dump planner. Before each backup it sees the source
//! database (schemas, tables with sizes, estimated rows and columns) and
//! says what to dump: per table full, schema-only or excluded, chunk sizes,
//! and column masks (NULL, a fixed value, a keyed hash, or rows passed
//! through `transform`). Its notes go into the backup's manifest.
//!
//! As scaffolded it dumps everything except the tables listed in
//! `schema-only` and `exclude` (comma-separated `schema.table`). Replace
//! `plan` with your rules.

wit_bindgen::generate!({ path: "wit", world: "firedrill:plugin/dump-planner", generate_all });

use firedrill::plugin::types::{TableMode, TablePlan};
use wasi::config::store as config;
use wasi::logging::logging::{log, Level};

struct Plugin;

impl Guest for Plugin {
    fn plan(info: DatabaseInfo) -> Result<DumpPlan, String> {
        let schema_only = list("schema-only");
        let exclude = list("exclude");
        let mut notes = Vec::new();
        let mut tables = Vec::new();
        for t in &info.tables {
            let name = format!("{}.{}", t.table.schema, t.table.name);
            let (mode, why) = if exclude.contains(&name) {
                (TableMode::Exclude, "excluded")
            } else if schema_only.contains(&name) {
                (TableMode::SchemaOnly, "schema only")
            } else {
                continue;
            };
            notes.push(format!("{name}: {why}, as the policy's config says"));
            tables.push(TablePlan {
                table: t.table.clone(),
                mode,
                chunk_rows: None,
                masks: vec![],
            });
        }
        log(
            Level::Info,
            "",
            &format!("{}: {} of {} tables not dumped in full", info.database, tables.len(), info.tables.len()),
        );
        Ok(DumpPlan {
            tables,
            exclude_schemas: vec![],
            include_globals: false,
            notes,
        })
    }

    /// Only called for tables whose plan has a `transform` mask: none here.
    fn transform(
        _table: TableRef,
        _columns: Vec<String>,
        rows: Vec<Vec<Option<String>>>,
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        Ok(rows)
    }
}

fn list(key: &str) -> Vec<String> {
    config::get(key)
        .ok()
        .flatten()
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

export!(Plugin);
