//! The catalog's schema: reversible migrations in `host/migrations/`
//! (`NNNN_name.up.sql` / `NNNN_name.down.sql`), embedded at build time and
//! run by sqlx's migrator, which records them (with their checksums) in
//! `firedrill._sqlx_migrations`. Versions only grow; a released migration is
//! never edited (sqlx refuses a changed checksum): add the next one instead.
//!
//! Catalogs made before sqlx kept their versions in
//! `firedrill.schema_migrations`; [`adopt`] moves them over.

use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationSource, Migrator};
use sqlx::postgres::PgConnection;
use sqlx::Connection;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The version this firedrill writes to.
pub fn latest() -> u32 {
    ups().last().map_or(0, |m| m.version as u32)
}

/// The up migrations, oldest first.
pub fn ups() -> impl DoubleEndedIterator<Item = &'static Migration> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
}

/// The way back from `version`.
pub fn down(version: i64) -> Option<&'static Migration> {
    MIGRATOR
        .iter()
        .find(|m| m.version == version && m.migration_type.is_down_migration())
}

/// The migrations up to `to`, as a source for a migrator that stops there.
#[derive(Debug)]
struct UpTo(i64);

impl MigrationSource<'static> for UpTo {
    fn resolve(
        self,
    ) -> futures::future::BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        let kept = MIGRATOR
            .iter()
            .filter(|m| m.version <= self.0)
            .cloned()
            .collect();
        Box::pin(async move { Ok(kept) })
    }
}

/// A migrator that applies nothing past `to` (and does not mind the
/// applied migrations it no longer lists).
pub async fn up_to(to: u32) -> Result<Migrator, MigrateError> {
    let mut m = Migrator::new(UpTo(to.into())).await?;
    m.set_ignore_missing(true);
    Ok(m)
}

/// The pre-sqlx table's name and its migrations' names, by version.
const OLD_TABLE: &str = "firedrill.schema_migrations";
const OLD_NAMES: [&str; 3] = ["backups", "drills", "jobs and audit"];

/// Whether the catalog still keeps its versions the pre-sqlx way.
pub async fn old_style(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT to_regclass('firedrill.schema_migrations') IS NOT NULL
            AND to_regclass('firedrill._sqlx_migrations') IS NULL",
    )
    .fetch_one(conn)
    .await
}

/// Records the versions of a pre-sqlx catalog in sqlx's table (with the
/// checksums of today's files, whose SQL is the same) and drops the old
/// table, in one transaction under the migrator's lock; no table with
/// data is touched. Returns the versions adopted.
pub async fn adopt(conn: &mut PgConnection) -> Result<Vec<i64>, AdoptError> {
    conn.lock().await?;
    let result = adopt_locked(conn).await;
    conn.unlock().await?;
    result
}

async fn adopt_locked(conn: &mut PgConnection) -> Result<Vec<i64>, AdoptError> {
    let mut tx = conn.begin().await?;
    // Another firedrill may have adopted it while this one waited.
    if !old_style(&mut tx).await? {
        return Ok(vec![]);
    }
    // The time as text: no date crate for one column.
    let old: Vec<(i32, String, String)> = sqlx::query_as(&format!(
        "SELECT version, name, applied::text FROM {OLD_TABLE} ORDER BY version"
    ))
    .fetch_all(&mut *tx)
    .await?;
    tx.ensure_migrations_table().await?;
    let mut adopted = Vec::new();
    for (version, name, applied) in old {
        let known = usize::try_from(version - 1)
            .ok()
            .and_then(|i| OLD_NAMES.get(i))
            .is_some_and(|n| *n == name);
        let m = ups().find(|m| m.version == i64::from(version));
        let Some(m) = m.filter(|_| known) else {
            return Err(AdoptError::Unknown { version, name });
        };
        sqlx::query(
            "INSERT INTO firedrill._sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
             VALUES ($1, $2, $3::timestamptz, true, $4, -1)",
        )
        .bind(m.version)
        .bind(&*m.description)
        .bind(applied)
        .bind(&*m.checksum)
        .execute(&mut *tx)
        .await?;
        adopted.push(m.version);
    }
    sqlx::query(&format!("DROP TABLE {OLD_TABLE}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(adopted)
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(
        "firedrill.schema_migrations lists version {version} ({name:?}), which this firedrill does not know: use the firedrill that wrote it"
    )]
    Unknown { version: i32, name: String },
}
