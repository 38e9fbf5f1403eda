//! The agent: every source's backups, drills and prunes on their schedules.
//!
//! One task per (source, job kind); the jobs of one source take turns (a
//! per-source lock), so they never overlap. A failed job is logged and
//! counted, and the next tick tries again: the loop never dies of one
//! failure. On shutdown the step in progress is dropped where it stands: a
//! backup without its manifest is not a backup, a drill's database is dropped
//! by its session; then `run` returns.

use super::backup::{self, BackupOptions};
use super::drill::{self, DrillOptions, DrillSession, DrillTarget};
use super::prune::{self, PruneOptions};
use super::JobError;
use crate::archive::Store;
use crate::config::{Config, DrillTargetConfig, Schedule, SourceConfig};
use crate::runtime::{Plugin, Policies, World};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

#[derive(Debug, Default)]
pub struct AgentStats {
    pub backups: AtomicU64,
    pub drills: AtomicU64,
    pub prunes: AtomicU64,
    pub failures: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Backup,
    Drill,
    Prune,
}

pub struct Agent {
    config: Config,
    store: Store,
    policies: Option<Arc<Policies>>,
    /// The retention policy to use when the policies directory has none (BACKUP_RETENTION_DAYS).
    fallback_retention: Option<Arc<Plugin>>,
    assertions: Vec<drill::Assertion>,
    pub stats: AgentStats,
}

impl Agent {
    pub fn new(
        config: Config,
        store: Store,
        policies: Option<Arc<Policies>>,
        fallback_retention: Option<Arc<Plugin>>,
        assertions: Vec<drill::Assertion>,
    ) -> Agent {
        Agent {
            config,
            store,
            policies,
            fallback_retention,
            assertions,
            stats: AgentStats::default(),
        }
    }

    /// Runs every schedule until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for source in self.config.sources.clone() {
            let turn = Arc::new(Mutex::new(()));
            let jobs = [
                (Kind::Backup, Some(source.backup.clone())),
                (Kind::Drill, source.drill.clone()),
                (Kind::Prune, source.prune.clone()),
            ];
            for (kind, schedule) in jobs {
                let Some(schedule) = schedule else { continue };
                let (me, source, turn, stop) =
                    (self.clone(), source.clone(), turn.clone(), shutdown.clone());
                tasks.push(tokio::spawn(async move {
                    me.loop_of(kind, source, schedule, turn, stop).await
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn loop_of(
        &self,
        kind: Kind,
        source: SourceConfig,
        schedule: Schedule,
        turn: Arc<Mutex<()>>,
        mut stop: watch::Receiver<bool>,
    ) {
        // Intervals start with a run (a fresh agent backs up at once); cron waits for its minute.
        let mut first = matches!(schedule, Schedule::Every(_));
        loop {
            if !first {
                let wait = schedule.wait_from(crate::archive::manifest::unix_now());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
            first = false;
            let _turn = tokio::select! {
                g = turn.lock() => g,
                _ = stopped(&mut stop) => return,
            };
            let session = DrillSession::new();
            let job = self.once(kind, &source, &session);
            tokio::select! {
                r = job => match r {
                    Ok(()) => {}
                    Err(e) => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(source = %source.name, job = ?kind, "job failed, retrying at the next tick: {e}");
                    }
                },
                _ = stopped(&mut stop) => {
                    tracing::info!(source = %source.name, job = ?kind, "shutting down: the step in progress is abandoned");
                    session.cleanup().await;
                    return;
                }
            }
        }
    }

    async fn once(
        &self,
        kind: Kind,
        source: &SourceConfig,
        session: &Arc<DrillSession>,
    ) -> Result<(), JobError> {
        let set = self.policies.as_ref().map(|p| p.current());
        let of_world = |w: World| -> Vec<Arc<Plugin>> {
            set.as_ref()
                .map(|s| s.of_world(w).cloned().collect())
                .unwrap_or_default()
        };
        match kind {
            Kind::Backup => {
                let opts = BackupOptions {
                    source: source.name.clone(),
                    databases: source.urls.clone(),
                    jobs: source.jobs,
                    compression_level: source.compression_level,
                    chunk_bytes: source.chunk_bytes,
                    globals: true,
                    role_passwords: false,
                    planner: of_world(World::DumpPlanner).into_iter().next(),
                };
                let s = backup::run(&self.store, &opts).await?;
                self.stats.backups.fetch_add(1, Ordering::Relaxed);
                tracing::info!(source = %source.name, backup = %s.id, bytes = s.bytes, seconds = s.seconds, "backup done");
            }
            Kind::Drill => {
                let opts = DrillOptions {
                    target: match &self.config.drill_target {
                        DrillTargetConfig::Local => DrillTarget::Local(std::env::temp_dir()),
                        DrillTargetConfig::Server(u) => DrillTarget::Server(u.clone()),
                    },
                    jobs: self.config.drill_jobs,
                    source: Some(source.name.clone()),
                    verifiers: of_world(World::Verifier),
                    assertions: self.assertions.clone(),
                };
                let r = drill::run(&self.store, &self.config.drill_pick, &opts, session).await?;
                self.stats.drills.fetch_add(1, Ordering::Relaxed);
                if r.passed {
                    tracing::info!(source = %source.name, backup = %r.backup_id, rto = r.rto_seconds, rpo = r.rpo_seconds, "drill passed");
                } else {
                    let failed: Vec<String> = r
                        .failed_checks()
                        .map(|c| format!("{}: {}", c.name, c.detail))
                        .collect();
                    tracing::error!(source = %source.name, backup = %r.backup_id, "drill FAILED: {}", failed.join("; "));
                }
            }
            Kind::Prune => {
                let Some(policy) = of_world(World::Retention)
                    .into_iter()
                    .next()
                    .or_else(|| self.fallback_retention.clone())
                else {
                    return Err(JobError::Config(
                        "prune is scheduled but no retention policy is loaded".into(),
                    ));
                };
                let opts = PruneOptions {
                    policy,
                    min_age: self.config.min_age,
                    abandon_after: self.config.abandon_after,
                    max_deletions: self.config.max_deletions,
                    dry_run: false,
                    source: Some(source.name.clone()),
                };
                let r = prune::run(&self.store, &opts).await?;
                self.stats.prunes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(source = %source.name, deleted = r.deleted.len(), "prune done");
            }
        }
        Ok(())
    }
}

/// Resolves once shutdown is asked for (or the sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(drop);
}
