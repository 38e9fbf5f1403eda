//! Built-in dump planner: everything, in full.
//!
//! Config: `exclude-schemas` (comma-separated), `schema-only` (comma-separated
//! `schema.table` names dumped without rows), `include-globals` (default true).

use firedrill_plugin_sdk::dump_planner::{
    export, Config, DatabaseInfo, DumpPlan, Guest, Log, TableMode, TablePlan, TableRef,
};

struct Everything;

fn list(key: &str) -> Vec<String> {
    Config::get(key)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Guest for Everything {
    fn plan(info: DatabaseInfo) -> Result<DumpPlan, String> {
        let exclude_schemas = list("exclude-schemas");
        let schema_only = list("schema-only");
        let include_globals = Config::parse_or("include-globals", true)?;
        let mut tables = Vec::new();
        for name in &schema_only {
            let (schema, table) = name
                .split_once('.')
                .ok_or_else(|| format!("config `schema-only`: {name:?} is not schema.table"))?;
            if !info
                .tables
                .iter()
                .any(|t| t.table.schema == schema && t.table.name == table)
            {
                Log::warn(&format!(
                    "schema-only table {name} does not exist in {}",
                    info.database
                ));
            }
            tables.push(TablePlan {
                table: TableRef {
                    schema: schema.to_string(),
                    name: table.to_string(),
                },
                mode: TableMode::SchemaOnly,
                chunk_rows: None,
                masks: Vec::new(),
            });
        }
        let mut notes = vec![format!(
            "all {} tables of {}",
            info.tables.len(),
            info.database
        )];
        if !exclude_schemas.is_empty() {
            notes.push(format!("schemas excluded: {}", exclude_schemas.join(", ")));
        }
        Ok(DumpPlan {
            tables,
            exclude_schemas,
            include_globals,
            notes,
        })
    }

    fn transform(
        _table: TableRef,
        _columns: Vec<String>,
        rows: Vec<Vec<Option<String>>>,
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        // This planner never asks for a transform; return rows as they are.
        Ok(rows)
    }
}

export!(Everything);
