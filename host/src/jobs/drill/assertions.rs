//! SQL assertions: the operator's own checks, read from an assertions file
//! ([`parse_assertions`]) and run in a drill database.
//!
//! Invariants: an assertion runs in a read-only transaction that is rolled
//! back, as the drill's role for that database (never the drill's own);
//! it passes only when its first column is true or it returns no rows.

use super::report::{Check, Status};

/// One SQL assertion: passes when its first column is true, or it returns no rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub name: String,
    pub sql: String,
    /// The backup's database to run it in (default: the first).
    pub database: Option<String>,
}

/// The assertions to run in the backup's database `name`, the `index`th
/// of the backup: those naming it, and, in the first, those naming none.
pub(super) fn for_database<'a>(
    all: &'a [Assertion],
    index: usize,
    name: &str,
) -> Vec<&'a Assertion> {
    all.iter()
        .filter(|a| a.database.as_deref().map_or(index == 0, |d| d == name))
        .collect()
}

pub(super) async fn run_assertion(
    client: &tokio_postgres::Client,
    a: &Assertion,
    prefix: &str,
) -> Check {
    let outcome = async {
        client.batch_execute("BEGIN READ ONLY").await?;
        let rows = client.query(a.sql.as_str(), &[]).await;
        client.batch_execute("ROLLBACK").await?;
        rows
    }
    .await;
    let (ok, detail) = match outcome {
        Ok(rows) if rows.is_empty() => (true, "no rows".to_string()),
        Ok(rows) => match rows[0].try_get::<_, bool>(0) {
            Ok(true) => (true, "true".to_string()),
            Ok(false) => (false, "false".to_string()),
            Err(_) => (
                false,
                format!("{} rows; the first column is not a boolean", rows.len()),
            ),
        },
        Err(e) => (
            false,
            e.as_db_error()
                .map(|d| format!("{} ({})", d.message(), d.code().code()))
                .unwrap_or_else(|| e.to_string()),
        ),
    };
    Check {
        name: format!("{prefix}assert.{}", a.name),
        status: if ok { Status::Pass } else { Status::Fail },
        detail,
        by: "assertions".into(),
    }
}

/// Reads an assertions file: statements ending with `;`, each optionally
/// preceded by `-- name: NAME` and `-- database: DB` lines.
pub fn parse_assertions(text: &str) -> Result<Vec<Assertion>, String> {
    let mut out = Vec::new();
    let (mut name, mut database, mut sql) = (None::<String>, None::<String>, String::new());
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("-- name:") {
            name = Some(v.trim().to_string());
            continue;
        }
        if let Some(v) = t.strip_prefix("-- database:") {
            database = Some(v.trim().to_string());
            continue;
        }
        if t.is_empty() || t.starts_with("--") {
            continue;
        }
        sql.push_str(line);
        sql.push('\n');
        if t.ends_with(';') {
            let statement = sql.trim().trim_end_matches(';').trim().to_string();
            let name = name.take().unwrap_or_else(|| format!("line-{}", n + 1));
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "line {}: assertion name {name:?}: use letters, digits, '-', '_' and '.'",
                    n + 1
                ));
            }
            out.push(Assertion {
                name,
                sql: statement,
                database: database.take(),
            });
            sql.clear();
        }
    }
    if !sql.trim().is_empty() {
        return Err("the last statement does not end with ';'".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_files_parse() {
        let a = parse_assertions(
            "-- checks for the orders database\n-- name: fresh\nSELECT max(created) > now() - interval '1 day'\n  FROM orders;\n\nSELECT id FROM orders WHERE amount < 0;\n-- database: auth\n-- name: users\nSELECT count(*) > 0 FROM users;\n",
        )
        .unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].name, "fresh");
        assert!(a[0].sql.starts_with("SELECT max(created)") && a[0].sql.ends_with("FROM orders"));
        assert_eq!(a[1].name, "line-6");
        assert_eq!(a[2].database.as_deref(), Some("auth"));
        assert!(parse_assertions("SELECT 1")
            .unwrap_err()
            .contains("does not end"));
        assert!(parse_assertions("-- name: bad name\nSELECT 1;").is_err());
    }
}
