//! The catalog: an optional PostgreSQL database holding job history, drill
//! results and the audit log (schema `firedrill`), for people and
//! dashboards to query. The store stays the source of truth: `sync`
//! rebuilds backups and drills from it; jobs and audit entries are
//! appended as they happen.
//!
//! Invariants: the schema changes only through [`migrate`] / [`rollback`],
//! one transaction per migration under an advisory lock (two agents never
//! migrate at once); `--dry-run` changes nothing; the agent never migrates
//! on its own (it refuses a catalog at another version and says what to
//! run); a catalog that is down never fails a job: the write is logged and
//! skipped.

pub mod migrations;

use crate::archive::{self as arch, Store};
use crate::jobs::pg::PgUrl;
use crate::jobs::status::JobView;
use migrations::{Migration, MIGRATIONS};
use serde::Serialize;

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

/// Advisory lock key for migrations: "fdcatalog" as bytes.
const LOCK: i64 = 0x6664_6361_7461_6c6f;

pub struct Catalog {
    client: tokio_postgres::Client,
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

impl Catalog {
    pub async fn connect(url: &PgUrl) -> Result<Catalog, CatalogError> {
        let client = url.connect().await.map_err(|e| CatalogError::Db {
            url: url.redacted(),
            message: e.to_string(),
        })?;
        Ok(Catalog {
            client,
            url: url.redacted(),
        })
    }

    fn db(&self, e: tokio_postgres::Error) -> CatalogError {
        db_err(&self.url, e)
    }

    async fn bootstrap(&self) -> Result<(), CatalogError> {
        self.client
            .batch_execute(
                "CREATE SCHEMA IF NOT EXISTS firedrill;
                 CREATE TABLE IF NOT EXISTS firedrill.schema_migrations (
                     version integer PRIMARY KEY,
                     name text NOT NULL,
                     applied timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(|e| self.db(e))
    }

    /// The applied version (0 for an empty database).
    pub async fn version(&self) -> Result<u32, CatalogError> {
        let exists: bool = self
            .client
            .query_one(
                "SELECT to_regclass('firedrill.schema_migrations') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| self.db(e))?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let row = self
            .client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM firedrill.schema_migrations",
                &[],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.get::<_, i32>(0) as u32)
    }

    pub async fn status(&self) -> Result<Status, CatalogError> {
        let version = self.version().await?;
        let applied = if version == 0 {
            vec![]
        } else {
            self.client
                .query(
                    "SELECT version, name, applied::text FROM firedrill.schema_migrations ORDER BY version",
                    &[],
                )
                .await
                .map_err(|e| self.db(e))?
                .into_iter()
                .map(|r| (r.get::<_, i32>(0) as u32, r.get(1), r.get(2)))
                .collect()
        };
        Ok(Status {
            version,
            latest: migrations::latest(),
            pending: MIGRATIONS
                .iter()
                .filter(|m| m.version > version)
                .map(|m| (m.version, m.name.to_string()))
                .collect(),
            applied,
        })
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
        let plan: Vec<&Migration> = MIGRATIONS
            .iter()
            .filter(|m| m.version > from && m.version <= to)
            .collect();
        self.run(plan, "up", dry_run).await
    }

    /// Undoes migrations down to version `to` (applied ones above it, newest first).
    pub async fn rollback(&mut self, to: u32, dry_run: bool) -> Result<Vec<Step>, CatalogError> {
        if to > migrations::latest() {
            return Err(CatalogError::NoSuchVersion(to));
        }
        let from = self.version().await?;
        let plan: Vec<&Migration> = MIGRATIONS
            .iter()
            .rev()
            .filter(|m| m.version > to && m.version <= from)
            .collect();
        self.run(plan, "down", dry_run).await
    }

    async fn run(
        &mut self,
        plan: Vec<&Migration>,
        direction: &'static str,
        dry_run: bool,
    ) -> Result<Vec<Step>, CatalogError> {
        let steps: Vec<Step> = plan
            .iter()
            .map(|m| Step {
                version: m.version,
                name: m.name.into(),
                direction,
                sql: if direction == "up" { m.up } else { m.down }.into(),
            })
            .collect();
        if dry_run || steps.is_empty() {
            return Ok(steps);
        }
        self.bootstrap().await?;
        for (m, step) in plan.iter().zip(&steps) {
            let tx = self
                .client
                .transaction()
                .await
                .map_err(|e| db_err(&self.url, e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
                .await
                .map_err(|e| db_err(&self.url, e))?;
            tx.batch_execute(&step.sql)
                .await
                .map_err(|e| CatalogError::Db {
                    url: self.url.clone(),
                    message: format!(
                        "migration {} ({}) {direction}: {}",
                        m.version,
                        m.name,
                        e.as_db_error()
                            .map(|d| d.message().to_string())
                            .unwrap_or_else(|| e.to_string())
                    ),
                })?;
            let v = m.version as i32;
            if direction == "up" {
                tx.execute(
                    "INSERT INTO firedrill.schema_migrations (version, name) VALUES ($1, $2)",
                    &[&v, &m.name],
                )
                .await
            } else {
                tx.execute(
                    "DELETE FROM firedrill.schema_migrations WHERE version = $1",
                    &[&v],
                )
                .await
            }
            .map_err(|e| db_err(&self.url, e))?;
            tx.commit().await.map_err(|e| db_err(&self.url, e))?;
            tracing::info!(
                version = m.version,
                name = m.name,
                direction,
                "catalog migrated"
            );
        }
        Ok(steps)
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
        report.removed = self
            .client
            .execute(
                "DELETE FROM firedrill.backups WHERE NOT (source || '/' || id = ANY($1))",
                &[&sources],
            )
            .await
            .map_err(|e| self.db(e))?;
        self.client
            .execute(
                "DELETE FROM firedrill.drills WHERE NOT (source || '/' || backup_id = ANY($1))",
                &[&sources],
            )
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
        self.client
            .execute(
                "INSERT INTO firedrill.backups (source, id, kind, created, size_bytes, tables, seconds, encrypted, signed)
                 VALUES ($1, $2, $3, to_timestamp($4), $5, $6, $7, $8, $9)
                 ON CONFLICT (source, id) DO UPDATE SET size_bytes = EXCLUDED.size_bytes,
                     encrypted = EXCLUDED.encrypted, signed = EXCLUDED.signed, synced = now()",
                &[
                    &source,
                    &id,
                    &m.kind,
                    &(created as f64),
                    &(m.size() as i64),
                    &(m.table_count() as i32),
                    &m.timings.seconds,
                    &m.encryption.is_some(),
                    &m.signature.is_some(),
                ],
            )
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
        self.client
            .execute(
                "INSERT INTO firedrill.drills (report, source, backup_id, started, finished, passed,
                     rto_seconds, rpo_seconds, failed_checks, error, body)
                 VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($5), $6, $7, $8, $9, $10, $11::text::jsonb)
                 ON CONFLICT (report) DO NOTHING",
                &[
                    &path,
                    &v["source"].as_str().unwrap_or_default(),
                    &v["backup_id"].as_str().unwrap_or_default(),
                    &v["started"].as_f64().unwrap_or_default(),
                    &v["finished"].as_f64().unwrap_or_default(),
                    &v["passed"].as_bool().unwrap_or(false),
                    &v["rto_seconds"].as_f64().unwrap_or_default(),
                    &v["rpo_seconds"].as_i64().unwrap_or_default(),
                    &failed,
                    &v["error"].as_str(),
                    &v.to_string(),
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// A finished job (the agent's history).
    pub async fn record_job(&self, job: &JobView, node: &str) -> Result<(), CatalogError> {
        let t = |s: Option<i64>| s.map(|s| s as f64);
        self.client
            .execute(
                "INSERT INTO firedrill.jobs (id, kind, source, trigger, state, created, started, finished, backup_id, passed, error, node)
                 VALUES ($1, $2, $3, $4, $5, to_timestamp($6), to_timestamp($7), to_timestamp($8), $9, $10, $11, $12)
                 ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, finished = EXCLUDED.finished,
                     backup_id = EXCLUDED.backup_id, passed = EXCLUDED.passed, error = EXCLUDED.error",
                &[
                    &job.id,
                    &job.kind.as_str(),
                    &job.source,
                    &job.trigger,
                    &serde_json::to_value(job.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                    &(job.created as f64),
                    &t(job.started),
                    &t(job.finished),
                    &job.backup,
                    &job.passed,
                    &job.error,
                    &node,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// One audit entry (already redacted JSON).
    pub async fn record_audit(&self, entry: &str) -> Result<(), CatalogError> {
        self.client
            .execute(
                "INSERT INTO firedrill.audit (entry) VALUES ($1::text::jsonb)",
                &[&entry],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }
}

fn db_err(url: &str, e: tokio_postgres::Error) -> CatalogError {
    CatalogError::Db {
        url: url.to_string(),
        message: e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}
