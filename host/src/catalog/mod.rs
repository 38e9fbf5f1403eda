//! The catalog: an optional PostgreSQL database holding job history, drill
//! results and the audit log (schema `firedrill`), for people and
//! dashboards to query. The store stays the source of truth: `sync`
//! rebuilds backups and drills from it; jobs and audit entries are
//! appended as they happen.
//!
//! Invariants: the schema changes only through [`Catalog::migrate`] /
//! [`Catalog::rollback`] (sqlx's migrator: one transaction per migration,
//! under its advisory lock, so two agents never migrate at once);
//! `--dry-run` changes nothing; the agent never migrates on its own (it
//! refuses a catalog at another version and says what to run); a catalog
//! that is down never fails a job: the write is logged and skipped.

mod connect;
pub mod migrations;

use crate::archive::{self as arch, Store};
use crate::jobs::status::JobView;
use crate::servers::pg::PgUrl;
use serde::Serialize;
use sqlx::migrate::MigrateError;
use sqlx::postgres::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {url}: {message}")]
    Db { url: String, message: String },
    #[error(
        "the catalog is at schema version {found}, this firedrill needs {wanted}: run `firedrill catalog migrate`"
    )]
    Version { found: u32, wanted: u32 },
    #[error("no migration {0} (this firedrill knows 0..={max})", max = migrations::latest())]
    NoSuchVersion(u32),
    #[error(transparent)]
    Archive(#[from] arch::ArchiveError),
}

pub struct Catalog {
    pool: PgPool,
    url: String,
}

/// One migration as a plan shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub version: u32,
    pub name: String,
    pub direction: &'static str,
    pub sql: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: u32,
    pub latest: u32,
    pub applied: Vec<(u32, String, String)>,
    pub pending: Vec<(u32, String)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub backups: usize,
    pub drills: usize,
    /// Rows of backups (and their drills) no longer in the store.
    pub removed: u64,
}

/// Where a catalog keeps its versions.
enum Versions {
    None,
    /// Before sqlx (`firedrill.schema_migrations`), until `migrate` adopts it.
    Old,
    Sqlx,
}

impl Catalog {
    pub async fn connect(url: &PgUrl) -> Result<Catalog, CatalogError> {
        let pool = connect::pool(url)
            .await
            .map_err(|message| CatalogError::Db {
                url: url.redacted(),
                message,
            })?;
        Ok(Catalog {
            pool,
            url: url.redacted(),
        })
    }

    fn db(&self, e: sqlx::Error) -> CatalogError {
        db_err(&self.url, e)
    }

    fn fail(&self, message: String) -> CatalogError {
        CatalogError::Db {
            url: self.url.clone(),
            message,
        }
    }

    async fn versions(&self) -> Result<Versions, CatalogError> {
        let (sqlx, old): (bool, bool) = sqlx::query_as(
            "SELECT to_regclass('firedrill._sqlx_migrations') IS NOT NULL,
                    to_regclass('firedrill.schema_migrations') IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(match (sqlx, old) {
            (true, _) => Versions::Sqlx,
            (false, true) => Versions::Old,
            (false, false) => Versions::None,
        })
    }

    /// The applied migrations: version, name, when.
    async fn applied(&self) -> Result<Vec<(u32, String, String)>, CatalogError> {
        let sql = match self.versions().await? {
            Versions::None => return Ok(vec![]),
            Versions::Old => {
                "SELECT version::bigint, name, applied::text FROM firedrill.schema_migrations ORDER BY version"
            }
            Versions::Sqlx => {
                "SELECT version, description, installed_on::text FROM firedrill._sqlx_migrations WHERE success ORDER BY version"
            }
        };
        let rows: Vec<(i64, String, String)> = sqlx::query_as(sql)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .into_iter()
            .map(|(v, name, at)| (v as u32, name, at))
            .collect())
    }

    /// The applied version (0 for an empty database).
    pub async fn version(&self) -> Result<u32, CatalogError> {
        Ok(self.applied().await?.last().map_or(0, |a| a.0))
    }

    pub async fn status(&self) -> Result<Status, CatalogError> {
        let applied = self.applied().await?;
        let version = applied.last().map_or(0, |a| a.0);
        Ok(Status {
            version,
            latest: migrations::latest(),
            pending: migrations::ups()
                .filter(|m| m.version > i64::from(version))
                .map(|m| (m.version as u32, m.description.to_string()))
                .collect(),
            applied,
        })
    }

    /// One connection for the migrator, with a pre-sqlx catalog adopted first.
    async fn migrating(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, CatalogError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.db(e))?;
        if migrations::old_style(&mut conn)
            .await
            .map_err(|e| self.db(e))?
        {
            let adopted = migrations::adopt(&mut conn)
                .await
                .map_err(|e| self.fail(connect::full_error(&e)))?;
            tracing::info!(
                versions = ?adopted,
                "catalog: versions adopted from firedrill.schema_migrations into firedrill._sqlx_migrations"
            );
        }
        Ok(conn)
    }

    /// Applies migrations up to `to` (default: the latest); with `dry_run`
    /// returns the plan and changes nothing.
    pub async fn migrate(
        &mut self,
        to: Option<u32>,
        dry_run: bool,
    ) -> Result<Vec<Step>, CatalogError> {
        let to = to.unwrap_or_else(migrations::latest);
        if to > migrations::latest() {
            return Err(CatalogError::NoSuchVersion(to));
        }
        let from = self.version().await?;
        let steps: Vec<Step> = migrations::ups()
            .filter(|m| m.version > i64::from(from) && m.version <= i64::from(to))
            .map(|m| step(m, "up"))
            .collect();
        if dry_run {
            return Ok(steps);
        }
        let mut conn = self.migrating().await?;
        if steps.is_empty() {
            return Ok(steps);
        }
        // sqlx's table is found through the connection's search_path.
        sqlx::query("CREATE SCHEMA IF NOT EXISTS firedrill")
            .execute(&mut *conn)
            .await
            .map_err(|e| self.db(e))?;
        let migrator = migrations::up_to(to)
            .await
            .map_err(|e| self.migrate_err(e, "up"))?;
        migrator
            .run(&mut *conn)
            .await
            .map_err(|e| self.migrate_err(e, "up"))?;
        log(&steps);
        Ok(steps)
    }

    /// Undoes migrations down to version `to` (applied ones above it, newest first).
    pub async fn rollback(&mut self, to: u32, dry_run: bool) -> Result<Vec<Step>, CatalogError> {
        if to > migrations::latest() {
            return Err(CatalogError::NoSuchVersion(to));
        }
        let from = self.version().await?;
        let mut steps = Vec::new();
        for m in migrations::ups()
            .rev()
            .filter(|m| m.version > i64::from(to) && m.version <= i64::from(from))
        {
            let down = migrations::down(m.version).ok_or_else(|| {
                self.fail(format!(
                    "migration {} ({}) has no down file",
                    m.version, m.description
                ))
            })?;
            steps.push(step(down, "down"));
        }
        if dry_run {
            return Ok(steps);
        }
        let mut conn = self.migrating().await?;
        if steps.is_empty() {
            return Ok(steps);
        }
        migrations::MIGRATOR
            .undo(&mut *conn, i64::from(to))
            .await
            .map_err(|e| self.migrate_err(e, "down"))?;
        log(&steps);
        Ok(steps)
    }

    fn migrate_err(&self, e: MigrateError, direction: &str) -> CatalogError {
        match e {
            MigrateError::ExecuteMigration(e, version) => {
                let name = migrations::ups()
                    .find(|m| m.version == version)
                    .map_or_else(String::new, |m| m.description.to_string());
                let message = match e.as_database_error() {
                    Some(d) => d.message().to_string(),
                    None => connect::full_error(&e),
                };
                self.fail(format!("migration {version} ({name}) {direction}: {message}"))
            }
            MigrateError::VersionMismatch(v) => self.fail(format!(
                "migration {v} as applied differs from this firedrill's (a released migration was edited): restore its file, or roll back with the firedrill that applied it"
            )),
            e => self.fail(connect::full_error(&e)),
        }
    }

    /// Refuses a catalog this firedrill cannot write to.
    pub async fn check_version(&self) -> Result<(), CatalogError> {
        let found = self.version().await?;
        if found != migrations::latest() {
            return Err(CatalogError::Version {
                found,
                wanted: migrations::latest(),
            });
        }
        Ok(())
    }

    /// Rebuilds the backups and drills tables from the store.
    pub async fn sync(&self, store: &Store) -> Result<SyncReport, CatalogError> {
        self.check_version().await?;
        let listings = arch::list_backups(store).await?;
        let mut report = SyncReport::default();
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut drills = Vec::new();
        for l in listings.iter().filter(|l| l.complete) {
            seen.push((l.source.clone(), l.id.clone()));
            let dir = format!("{}drills/", arch::backup_dir(&l.source, &l.id));
            for name in store.list(&dir).await.unwrap_or_default() {
                if name.ends_with(".json") {
                    // With keys trusted, only reports they vouch for.
                    let path = format!("{dir}{name}");
                    if let Some(bytes) =
                        arch::read_drill_report(store, &l.source, &l.id, &path).await
                    {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                            drills.push((format!("{dir}{name}"), v));
                        }
                    }
                }
            }
            self.record_backup(store, &l.source, &l.id).await?;
            report.backups += 1;
        }
        for (path, v) in &drills {
            self.record_drill(path, v).await?;
            report.drills += 1;
        }
        // Pruned backups go, with their drills.
        let sources: Vec<String> = seen.iter().map(|(s, i)| format!("{s}/{i}")).collect();
        report.removed =
            sqlx::query("DELETE FROM firedrill.backups WHERE NOT (source || '/' || id = ANY($1))")
                .bind(&sources)
                .execute(&self.pool)
                .await
                .map_err(|e| self.db(e))?
                .rows_affected();
        sqlx::query(
            "DELETE FROM firedrill.drills WHERE NOT (source || '/' || backup_id = ANY($1))",
        )
        .bind(&sources)
        .execute(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(report)
    }

    /// One complete backup, from its manifest.
    pub async fn record_backup(
        &self,
        store: &Store,
        source: &str,
        id: &str,
    ) -> Result<(), CatalogError> {
        let m = arch::read_manifest(store, source, id).await?;
        let created = crate::archive::manifest::id_time(id).unwrap_or(m.timings.started);
        sqlx::query(
            "INSERT INTO firedrill.backups (source, id, kind, created, size_bytes, tables, seconds, encrypted, signed)
             VALUES ($1, $2, $3, to_timestamp($4), $5, $6, $7, $8, $9)
             ON CONFLICT (source, id) DO UPDATE SET size_bytes = EXCLUDED.size_bytes,
                 encrypted = EXCLUDED.encrypted, signed = EXCLUDED.signed, synced = now()",
        )
        .bind(source)
        .bind(id)
        .bind(&m.kind)
        .bind(created as f64)
        .bind(m.size() as i64)
        .bind(m.table_count() as i32)
        .bind(m.timings.seconds)
        .bind(m.encryption.is_some())
        .bind(m.signature.is_some())
        .execute(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// One drill report (as stored), keyed by its path.
    pub async fn record_drill(
        &self,
        path: &str,
        v: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        let failed = v["checks"]
            .as_array()
            .map_or(0, |c| c.iter().filter(|c| c["status"] == "fail").count())
            as i32;
        sqlx::query(
            "INSERT INTO firedrill.drills (report, source, backup_id, started, finished, passed,
                 rto_seconds, rpo_seconds, failed_checks, error, body)
             VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($5), $6, $7, $8, $9, $10, $11::text::jsonb)
             ON CONFLICT (report) DO NOTHING",
        )
        .bind(path)
        .bind(v["source"].as_str().unwrap_or_default())
        .bind(v["backup_id"].as_str().unwrap_or_default())
        .bind(v["started"].as_f64().unwrap_or_default())
        .bind(v["finished"].as_f64().unwrap_or_default())
        .bind(v["passed"].as_bool().unwrap_or(false))
        .bind(v["rto_seconds"].as_f64().unwrap_or_default())
        .bind(v["rpo_seconds"].as_i64().unwrap_or_default())
        .bind(failed)
        .bind(v["error"].as_str())
        .bind(v.to_string())
        .execute(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// A finished job (the agent's history).
    pub async fn record_job(&self, job: &JobView, node: &str) -> Result<(), CatalogError> {
        let t = |s: Option<i64>| s.map(|s| s as f64);
        let state = serde_json::to_value(job.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO firedrill.jobs (id, kind, source, trigger, state, created, started, finished, backup_id, passed, error, node)
             VALUES ($1, $2, $3, $4, $5, to_timestamp($6), to_timestamp($7), to_timestamp($8), $9, $10, $11, $12)
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, finished = EXCLUDED.finished,
                 backup_id = EXCLUDED.backup_id, passed = EXCLUDED.passed, error = EXCLUDED.error",
        )
        .bind(&job.id)
        .bind(job.kind.as_str())
        .bind(&job.source)
        .bind(&job.trigger)
        .bind(state)
        .bind(job.created as f64)
        .bind(t(job.started))
        .bind(t(job.finished))
        .bind(&job.backup)
        .bind(job.passed)
        .bind(&job.error)
        .bind(node)
        .execute(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// One audit entry (already redacted JSON).
    pub async fn record_audit(&self, entry: &str) -> Result<(), CatalogError> {
        sqlx::query("INSERT INTO firedrill.audit (entry) VALUES ($1::text::jsonb)")
            .bind(entry)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }
}

fn step(m: &sqlx::migrate::Migration, direction: &'static str) -> Step {
    Step {
        version: m.version as u32,
        name: m.description.to_string(),
        direction,
        sql: m.sql.to_string(),
    }
}

fn log(steps: &[Step]) {
    for s in steps {
        tracing::info!(
            version = s.version,
            name = s.name,
            direction = s.direction,
            "catalog migrated"
        );
    }
}

fn db_err(url: &str, e: sqlx::Error) -> CatalogError {
    CatalogError::Db {
        url: url.to_string(),
        message: match e.as_database_error() {
            Some(d) => d.message().to_string(),
            None => connect::full_error(&e),
        },
    }
}
