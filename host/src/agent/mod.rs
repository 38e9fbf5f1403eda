//! The agent: every source's backups, drills and prunes on their schedules,
//! and the jobs the API asks for; both run through [`Agent::execute`].
//!
//! One task per (source, job kind), and one more for a physical source's
//! incremental backups. Each tick names its slot; the job takes the (job,
//! source) lease for that slot (a Redis lock across the fleet, or
//! in-process), so of several agents on the same source exactly one runs a
//! slot, and the others skip it once it is done or take it over if the
//! holder dies. Full and incremental backups share the backup lease, so an
//! incremental slot the full schedule also has is left to the full backup.
//! Drills also wait for a place in the fleet's drill quota. The jobs of one
//! source take turns on this agent (a per-source lock), so they never
//! overlap here. A failed job is logged, counted and published,
//! and the next tick tries again: the loop never dies of one failure. On
//! shutdown the step in progress is dropped where it stands: a backup
//! without its manifest is not a backup, a drill's database is dropped by
//! its session; then `run` returns.

mod assemble;
mod table;
pub mod wal;

pub use assemble::{assemble, Purpose, StartError};
pub use table::{JobRecord, JobTable};

use crate::archive::{self as arch, Store};
use crate::catalog::Catalog;
use crate::config::{Config, DrillTargetConfig, Schedule, SourceConfig};
use crate::coord::{CommitGuard, Coordinator};
use crate::jobs::backup::physical::{self as backup_physical, PhysicalBackupOptions};
use crate::jobs::backup::redis::{self as backup_redis, RedisBackupOptions};
use crate::jobs::backup::{self, BackupOptions, BackupSummary};
use crate::jobs::drill::{self, DrillOptions, DrillReport, DrillSession, DrillTarget, Pick};
use crate::jobs::prune::{self, PruneOptions, PruneReport};
use crate::jobs::restore::physical::{
    self as restore_physical, PhysicalRestoreOptions, PhysicalRestoreSummary, RecoveryTarget,
};
use crate::jobs::restore::{self, RestoreOptions, RestoreSummary};
use crate::jobs::status::{Kind, State};
use crate::jobs::wal::fetch::FetchServer;
use crate::jobs::JobError;
use crate::runtime::{Plugin, Policies, World};
use crate::servers::pg::PgUrl;
use crate::telemetry::metrics;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};
use tracing::Instrument;

/// How long a job asked for through the API waits for its lease or quota.
const API_WAIT: Duration = Duration::from_secs(600);

/// One job to run.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub kind: Kind,
    pub source: String,
    /// The schedule slot (its start, Unix seconds); none for one-off runs.
    pub slot: Option<i64>,
    /// Drill or restore this backup rather than the configured pick.
    pub backup: Option<String>,
    /// Drill only: which backup, when not `backup` nor the configured pick.
    pub pick: Option<Pick>,
    /// Restore only: where to.
    pub target: Option<PgUrl>,
    /// Restore only: the database of a backup of several (default: the only one).
    pub database: Option<String>,
    /// Restore only: replace a target database that is not empty.
    pub force: bool,
    /// Restore of a physical backup only: the new data directory, and
    /// where recovery stops (default: as far as the WAL archive goes).
    pub data_dir: Option<std::path::PathBuf>,
    pub recovery: Option<RecoveryTarget>,
    /// Physical backup only: incremental when the server allows it.
    pub incremental: bool,
    /// Prune only: decide, delete nothing.
    pub dry_run: bool,
    /// Prune only: at most this many deletions (default: the configuration's).
    pub max_deletions: Option<usize>,
    /// "schedule", "api:<principal>" or "cli".
    pub trigger: String,
    /// The trace of the API request that asked for it, if any.
    pub trace: Option<opentelemetry::Context>,
}

impl JobRequest {
    pub fn new(kind: Kind, source: &str, trigger: &str) -> JobRequest {
        JobRequest {
            kind,
            source: source.into(),
            slot: None,
            backup: None,
            pick: None,
            target: None,
            database: None,
            force: false,
            data_dir: None,
            recovery: None,
            incremental: false,
            dry_run: false,
            max_deletions: None,
            trigger: trigger.into(),
            trace: None,
        }
    }
}

fn record_backup(source: &str, bytes: u64, seconds: f64) {
    let m = metrics::global();
    m.observe(metrics::BACKUP_DURATION, &[("source", source)], seconds);
    m.set(metrics::BACKUP_SIZE, &[("source", source)], bytes as f64);
    m.set(
        metrics::BACKUP_LAST_SUCCESS,
        &[("source", source)],
        crate::archive::manifest::unix_now() as f64,
    );
}

/// What a job produced: its summary or report, whatever its trigger.
#[derive(Debug)]
pub enum JobResult {
    Backup(BackupSummary),
    Drill(Box<DrillReport>),
    Prune(PruneReport),
    Restore(RestoreSummary),
    PhysicalRestore(PhysicalRestoreSummary),
}

/// What a job produced, for its record and its event.
struct Outcome {
    backup: Option<String>,
    passed: Option<bool>,
    detail: Option<String>,
    result: JobResult,
}

pub struct Agent {
    config: Config,
    store: Store,
    /// The policies directory's plugins and the built-in defaults.
    policies: Arc<Policies>,
    /// The long-running agent's notifications (none for a CLI job: its
    /// operator is watching).
    notifier: Option<crate::notify::Notifier>,
    assertions: Vec<drill::Assertion>,
    coord: Coordinator,
    /// Where finished jobs, backups and drills are recorded, if anywhere.
    catalog: Option<Arc<Catalog>>,
    /// One lock per source: a source's jobs take turns on this agent.
    turns: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Turned true by [`Agent::shutdown`]; every job in progress watches it.
    stop: watch::Sender<bool>,
    /// Jobs started through the API, awaited at shutdown.
    spawned: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub jobs: JobTable,
}

impl Agent {
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn coord(&self) -> &Coordinator {
        &self.coord
    }
    pub fn policies(&self) -> &Arc<Policies> {
        &self.policies
    }
    pub fn catalog(&self) -> Option<&Arc<Catalog>> {
        self.catalog.as_ref()
    }

    /// Which backup a drill of `pick` (among `source`'s, or every source's)
    /// would take now: (source, backup id).
    pub async fn pick_backup(
        &self,
        pick: &Pick,
        source: Option<&str>,
    ) -> Result<(String, String), JobError> {
        drill::pick_backup(&self.store, pick, source).await
    }

    /// Asks every schedule and every job in progress to stop.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Runs every schedule until [`Agent::shutdown`]; then waits for the jobs
    /// the API started to drop what they were doing.
    pub async fn run(self: Arc<Self>) {
        self.publish_schedules();
        let shutdown = self.stop.subscribe();
        let mut tasks = Vec::new();
        for source in self.config.sources.clone() {
            // (kind, schedule, incremental): a physical source's incremental
            // backups are backups on a schedule of their own.
            let jobs = [
                (Kind::Backup, source.backup.clone(), false),
                (Kind::Backup, source.incremental.clone(), true),
                (Kind::Drill, source.drill.clone(), false),
                (Kind::Prune, source.prune.clone(), false),
            ];
            if source.physical && source.wal_stream {
                let (me, source, stop) = (self.clone(), source.clone(), shutdown.clone());
                tasks.push(tokio::spawn(async move { me.wal_loop(source, stop).await }));
            }
            for (kind, schedule, incremental) in jobs {
                let Some(schedule) = schedule else { continue };
                let (me, source, stop) = (self.clone(), source.clone(), shutdown.clone());
                tasks.push(tokio::spawn(async move {
                    me.loop_of(kind, source, schedule, incremental, stop).await
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        let spawned = std::mem::take(&mut *self.spawned.lock().unwrap());
        for t in spawned {
            let _ = t.await;
        }
    }

    /// What the alert rules measure lateness against
    /// (`deploy/helm/firedrill/files/prometheus/firedrill.rules.yml`): when
    /// this agent started, how long each schedule may go between runs, and
    /// each source's RPO target. From these a rule knows when a source is
    /// overdue without repeating every schedule, and a source that has not
    /// run since the start is not overdue before its first gap has passed.
    fn publish_schedules(&self) {
        let m = metrics::global();
        let now = crate::archive::manifest::unix_now();
        m.set(metrics::START_TIME, &[], now as f64);
        for source in &self.config.sources {
            let schedules = [
                ("backup", &source.backup),
                ("incremental", &source.incremental),
                ("drill", &source.drill),
                ("prune", &source.prune),
            ];
            for (kind, schedule) in schedules {
                if let Some(schedule) = schedule {
                    m.set(
                        metrics::SCHEDULE_INTERVAL,
                        &[("source", &source.name), ("kind", kind)],
                        schedule.longest_gap(now).as_secs_f64(),
                    );
                }
            }
            if let Some(rpo) = source.rpo_target {
                m.set(
                    metrics::RPO_TARGET,
                    &[("source", &source.name)],
                    rpo.as_secs_f64(),
                );
            }
        }
    }

    /// The newest backup and drill of each source as the store has them:
    /// an agent that restarts (or replaces another) must not hide a missing
    /// backup behind an absent series, nor clear a failed drill by forgetting.
    /// `launch` awaits it before the agent says it is ready.
    pub async fn publish_store_state(&self) {
        // Before the first job, so no job's newer value is overwritten; bounded,
        // so a slow store does not hold the schedules back.
        let scan = crate::archive::scan_backups(&self.store);
        let scan = match tokio::time::timeout(std::time::Duration::from_secs(30), scan).await {
            Ok(Ok(s)) => s,
            Err(_) => {
                tracing::warn!("the store took more than 30 s to list, so the last backup and drill gauges start empty");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!("the store cannot be listed, so the last backup and drill gauges start empty: {e}");
                return;
            }
        };
        let m = metrics::global();
        let now = crate::archive::manifest::unix_now();
        for h in crate::archive::health::summarize(&scan.listings, now) {
            if !self.config.sources.iter().any(|s| s.name == h.source) {
                continue;
            }
            let labels = [("source", h.source.as_str())];
            if let Some(b) = &h.last_backup {
                m.set(metrics::BACKUP_LAST_SUCCESS, &labels, b.created as f64);
                m.set(metrics::BACKUP_SIZE, &labels, b.size as f64);
            }
            if let Some(d) = &h.last_drill {
                if let Some(n) = &self.notifier {
                    n.remember(&h.source, Kind::Drill.as_str(), !d.passed);
                }
                m.set(metrics::DRILL_PASSED, &labels, u8::from(d.passed) as f64);
                m.set(metrics::DRILL_LAST_RUN, &labels, d.finished as f64);
                m.set(metrics::DRILL_RTO, &labels, d.rto_seconds);
            }
        }
    }

    /// `kind`'s runs on `schedule`; `incremental`: the source's incremental
    /// backups, whose slots the full backups' schedule also has are left to
    /// the full backup.
    async fn loop_of(
        &self,
        kind: Kind,
        source: SourceConfig,
        schedule: Schedule,
        incremental: bool,
        mut stop: watch::Receiver<bool>,
    ) {
        // Intervals start with a run (a fresh agent backs up at once, unless
        // the fleet already did this slot); cron waits for its minute.
        // Incrementals wait for their next slot: full and incremental
        // backups share one done-slot marker, and an incremental of a slot
        // later than the full's first (already started) one would, finishing
        // first, make that full backup look done.
        let mut first = matches!(schedule, Schedule::Every(_)) && !incremental;
        loop {
            if !first {
                let wait = schedule.wait_from(crate::archive::manifest::unix_now());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
            first = false;
            let now = crate::archive::manifest::unix_now();
            let slot = schedule.slot_of(now);
            // Both would take the (backup, source, slot) lease, and whichever
            // came second would find the slot done: the full backup is the
            // one that must run, and it covers the slot. (A slot's window is
            // its minute, or a shorter interval's own length.)
            if incremental
                && source
                    .backup
                    .as_ref()
                    .is_some_and(|full| full.fires_between(slot, slot + schedule.slot_window()))
            {
                tracing::info!(source = %source.name, slot, "incremental backup skipped: the full backup's schedule takes this slot");
                continue;
            }
            let mut req = JobRequest::new(kind, &source.name, "schedule");
            req.slot = Some(slot);
            req.incremental = incremental;
            // Waiting for the lease is worth it until the next tick.
            let give_up = schedule.wait_from(now);
            let record = self.jobs.create(kind, &source.name, "schedule");
            if !self.until_stopped(&req, &record, give_up).await {
                return;
            }
        }
    }

    /// Executes `req` unless shutdown comes first, in which case the step in
    /// progress is dropped and what its drill created is removed. False when
    /// stopped.
    async fn until_stopped(&self, req: &JobRequest, record: &JobRecord, give_up: Duration) -> bool {
        let mut stop = self.stop.subscribe();
        let session = DrillSession::new();
        tokio::select! {
            _ = self.execute(req, record, &session, give_up) => true,
            _ = stopped(&mut stop) => {
                tracing::info!(source = %req.source, job = req.kind.as_str(), "shutting down: the step in progress is abandoned");
                record.finish(State::Failed, None, None, Some("abandoned at shutdown".into()));
                session.cleanup().await;
                false
            }
        }
    }

    /// Starts a job in the background (the API's way in).
    pub fn spawn(self: &Arc<Self>, req: JobRequest) -> Result<Arc<JobRecord>, JobError> {
        if !self.config.sources.iter().any(|s| s.name == req.source) {
            return Err(JobError::Config(format!(
                "no source named {:?} in this agent's configuration",
                req.source
            )));
        }
        let record = self.jobs.create(req.kind, &req.source, &req.trigger);
        let (me, r) = (self.clone(), record.clone());
        let task = tokio::spawn(async move {
            me.until_stopped(&req, &r, API_WAIT).await;
        });
        let mut spawned = self.spawned.lock().unwrap();
        spawned.retain(|t| !t.is_finished());
        spawned.push(task);
        Ok(record)
    }

    /// Runs one job now and returns what it produced: the CLI's way in.
    /// The same path as a tick or an API call (turn, lease, quota, events,
    /// counters, job table, catalog); waits up to `give_up` for the lease.
    /// `Ok(None)`: another run held the lease all that time.
    pub async fn run_now(
        &self,
        req: &JobRequest,
        give_up: Duration,
    ) -> Result<Option<JobResult>, JobError> {
        let record = self.jobs.create(req.kind, &req.source, &req.trigger);
        let session = DrillSession::new();
        self.execute(req, &record, &session, give_up).await
    }

    /// The one way a job runs: its turn, its lease (and quota), the work,
    /// then the record, the counters and the events. The outcome is also in
    /// `record`.
    pub async fn execute(
        &self,
        req: &JobRequest,
        record: &JobRecord,
        session: &Arc<DrillSession>,
        give_up: Duration,
    ) -> Result<Option<JobResult>, JobError> {
        // One trace per job; a job an API request started continues the
        // request's trace (W3C trace context).
        let span = tracing::info_span!("job", job = req.kind.as_str(), source = %req.source, id = %record.id, trigger = %req.trigger);
        if let Some(parent) = &req.trace {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let _ = span.set_parent(parent.clone());
        }
        let result = async {
            let source = &req.source;
            let job = req.kind.as_str();
            let turn = self
                .turns
                .lock()
                .unwrap()
                .entry(source.clone())
                .or_default()
                .clone();
            let _turn = turn.lock().await;
            let waited = std::time::Instant::now();
            let lease = self
                .coord
                .wait_for_lease(job, source, req.slot, give_up)
                .await;
            metrics::global().observe(
                metrics::LOCK_WAIT,
                // Not `job`: Prometheus gives that label to the scrape target.
                &[("kind", job)],
                waited.elapsed().as_secs_f64(),
            );
            let lease = match lease {
                Ok(Some(l)) => l,
                Ok(None) => {
                    metrics::global().add(metrics::JOBS_SKIPPED, &[], 1.0);
                    tracing::info!(source = %source, job, "another agent ran this slot (or still holds it): skipped");
                    record.finish(State::Skipped, None, None, None);
                    return Ok(None);
                }
                Err(e) => return Err(self.failed(req, record, e.into()).await),
            };
            let _permit = if req.kind == Kind::Drill {
                match self.coord.drill_permit(give_up).await {
                    Ok(Some(p)) => Some(p),
                    Ok(None) => {
                        let e = JobError::Config(format!(
                            "the fleet's drill quota ({} at once) stayed full; try again later",
                            self.coord.options().drill_quota
                        ));
                        let _ = lease.release(None).await;
                        return Err(self.failed(req, record, e).await);
                    }
                    Err(e) => {
                        let _ = lease.release(None).await;
                        return Err(self.failed(req, record, e.into()).await);
                    }
                }
            } else {
                None
            };
            record.running();
            let mut started = self.coord.event(&format!("{job}.started"), source);
            started.job = Some(record.id.clone());
            self.coord.publish(&started).await;
            let result = self.once(req, record, session, lease.guard()).await;
            match result {
                Ok(out) => {
                    let _ = lease.release(req.slot).await;
                    metrics::global().add(metrics::JOBS, &[("kind", job)], 1.0);
                    let kind = match (req.kind, out.passed) {
                        (Kind::Drill, Some(true)) => "drill.passed".to_string(),
                        (Kind::Drill, _) => "drill.failed".to_string(),
                        _ => format!("{job}.finished"),
                    };
                    let failed_checks = match &out.result {
                        JobResult::Drill(r) => r
                            .failed_checks()
                            .map(|c| format!("{}: {}", c.name, c.detail))
                            .collect(),
                        _ => vec![],
                    };
                    self.notify(
                        req,
                        out.passed == Some(false),
                        out.backup.clone(),
                        out.detail.clone().unwrap_or_default(),
                        failed_checks,
                    );
                    let mut ev = self.coord.event(&kind, source);
                    (ev.job, ev.backup, ev.detail) =
                        (Some(record.id.clone()), out.backup.clone(), out.detail);
                    self.coord.publish(&ev).await;
                    record.finish(State::Succeeded, out.backup, out.passed, None);
                    Ok(Some(out.result))
                }
                Err(JobError::NothingToDrill(why)) if req.slot.is_some() => {
                    // A tick between backups (or before the first): no news,
                    // and no alarm.
                    let _ = lease.release(req.slot).await;
                    metrics::global().add(metrics::JOBS_SKIPPED, &[], 1.0);
                    tracing::info!(source = %source, job, "nothing to drill: {why}");
                    record.finish(State::Skipped, None, None, None);
                    Ok(None)
                }
                Err(e) => {
                    let _ = lease.release(None).await;
                    // The job's own failure; a lease or quota that was not
                    // to be had is no news of the data.
                    self.notify(req, true, None, e.to_string(), vec![]);
                    Err(self.failed(req, record, e).await)
                }
            }
        }
        .instrument(span)
        .await;
        if let Some(c) = &self.catalog {
            if let Err(e) = c
                .record_job(&record.view(), &self.coord.options().node)
                .await
            {
                tracing::warn!("job {} not recorded in the catalog: {e}", record.id);
            }
        }
        result
    }

    async fn catalog_backup(&self, source: &str, id: &str) {
        if let Some(c) = &self.catalog {
            if let Err(e) = c.record_backup(&self.store, source, id).await {
                tracing::warn!("backup {id} not recorded in the catalog: {e}");
            }
        }
    }

    /// Tells the notifier how a job ended (the agent's own jobs only).
    fn notify(
        &self,
        req: &JobRequest,
        failed: bool,
        backup: Option<String>,
        detail: String,
        failed_checks: Vec<String>,
    ) {
        if let Some(n) = &self.notifier {
            n.notify(crate::notify::Outcome {
                job: req.kind.as_str(),
                source: &req.source,
                failed,
                backup,
                detail,
                failed_checks,
            });
        }
    }

    /// Logs, counts, publishes and records a failure; hands the error back.
    async fn failed(&self, req: &JobRequest, record: &JobRecord, e: JobError) -> JobError {
        metrics::global().add(metrics::JOB_FAILURES, &[], 1.0);
        let job = req.kind.as_str();
        if req.slot.is_some() {
            tracing::error!(source = %req.source, job, "job failed, retrying at the next tick: {e}");
        } else {
            tracing::error!(source = %req.source, job, trigger = %req.trigger, "job failed: {e}");
        }
        let mut ev = self.coord.event(&format!("{job}.failed"), &req.source);
        (ev.job, ev.detail) = (Some(record.id.clone()), Some(e.to_string()));
        self.coord.publish(&ev).await;
        record.finish(State::Failed, None, None, Some(e.to_string()));
        e
    }

    async fn once(
        &self,
        req: &JobRequest,
        record: &JobRecord,
        session: &Arc<DrillSession>,
        guard: CommitGuard,
    ) -> Result<Outcome, JobError> {
        // Backups need the source's settings; the other jobs only its name
        // (a CLI drill of any backup in the store has no configured source).
        let configured = self.config.sources.iter().find(|s| s.name == req.source);
        let source = match configured {
            Some(s) => s.clone(),
            None if req.kind != Kind::Backup => SourceConfig::new(&req.source, vec![], None),
            None => {
                return Err(JobError::Config(format!(
                    "no source named {:?}",
                    req.source
                )))
            }
        };
        let set = self.policies.current();
        let of_world = |w: World| -> Vec<Arc<Plugin>> { set.of_world(w).cloned().collect() };
        let progress = record.progress.clone();
        match req.kind {
            Kind::Backup if source.redis.is_some() => {
                let opts = RedisBackupOptions {
                    source: source.name.clone(),
                    url: source.redis.clone().expect("a redis source"),
                    compression_level: source.compression_level,
                    guard: Some(guard),
                    progress,
                };
                let s = backup_redis::run(&self.store, &opts).await?;
                record_backup(&source.name, s.bytes, s.seconds);
                self.catalog_backup(&source.name, &s.id).await;
                Ok(Outcome {
                    detail: Some(format!(
                        "{} keys, {} bytes in {:.1}s",
                        s.keys, s.bytes, s.seconds
                    )),
                    backup: Some(s.id.clone()),
                    passed: None,
                    result: JobResult::Backup(s),
                })
            }
            Kind::Backup if source.physical => {
                let url = source.urls.first().cloned().ok_or_else(|| {
                    JobError::Config(format!("source {} has no URL", source.name))
                })?;
                let opts = PhysicalBackupOptions {
                    source: source.name.clone(),
                    url,
                    compression_level: source.compression_level,
                    part_bytes: source.chunk_bytes,
                    fast_checkpoint: true,
                    incremental: req.incremental,
                    max_chain: source.max_chain,
                    guard: Some(guard),
                    progress,
                };
                let s = backup_physical::run(&self.store, &opts).await?;
                record_backup(&source.name, s.bytes, s.seconds);
                self.catalog_backup(&source.name, &s.id).await;
                // Whether an incremental was asked for and what came of it.
                let chain = match (&s.parent, &s.full_because) {
                    (Some(parent), _) => format!(", incremental on {parent}"),
                    (None, Some(why)) => format!(", full ({why})"),
                    (None, None) => String::new(),
                };
                tracing::info!(source = %source.name, backup = %s.id, bytes = s.bytes, seconds = s.seconds, parent = s.parent.as_deref(), full_because = s.full_because.as_deref(), "physical backup done");
                Ok(Outcome {
                    detail: Some(format!(
                        "physical{chain}, {} bytes in {:.1}s",
                        s.bytes, s.seconds
                    )),
                    backup: Some(s.id.clone()),
                    passed: None,
                    result: JobResult::Backup(s),
                })
            }
            Kind::Backup => {
                let opts = BackupOptions {
                    source: source.name.clone(),
                    databases: source.urls.clone(),
                    jobs: source.jobs,
                    compression_level: source.compression_level,
                    chunk_bytes: source.chunk_bytes,
                    globals: source.globals,
                    role_passwords: source.role_passwords,
                    planner: of_world(World::DumpPlanner).into_iter().next(),
                    plugin_sql: source.plugin_sql.clone(),
                    guard: Some(guard),
                    progress,
                };
                let s = backup::run(&self.store, &opts).await?;
                record_backup(&source.name, s.bytes, s.seconds);
                self.catalog_backup(&source.name, &s.id).await;
                tracing::info!(source = %source.name, backup = %s.id, bytes = s.bytes, seconds = s.seconds, "backup done");
                Ok(Outcome {
                    detail: Some(format!("{} bytes in {:.1}s", s.bytes, s.seconds)),
                    backup: Some(s.id.clone()),
                    passed: None,
                    result: JobResult::Backup(s),
                })
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
                    guard: Some(guard),
                    progress,
                };
                let pick = match (&req.backup, &req.pick) {
                    (Some(id), _) => Pick::Id(id.clone()),
                    (None, Some(p)) => p.clone(),
                    (None, None) => self.config.drill_pick.clone(),
                };
                let r = drill::run(&self.store, &pick, &opts, session).await?;
                if let Some(c) = &self.catalog {
                    let body = serde_json::to_value(&r).expect("a report serializes");
                    if let Err(e) = c.record_drill(&r.report, &body).await {
                        tracing::warn!("drill {} not recorded in the catalog: {e}", r.report);
                    }
                }
                let m = metrics::global();
                let result = if r.passed { "passed" } else { "failed" };
                m.add(
                    metrics::DRILLS,
                    &[("source", &source.name), ("result", result)],
                    1.0,
                );
                m.set(
                    metrics::DRILL_PASSED,
                    &[("source", &source.name)],
                    r.passed as u8 as f64,
                );
                // With the time, a rule finds the fleet's newest drill of a
                // source (another agent's may be newer than this one's).
                m.set(
                    metrics::DRILL_LAST_RUN,
                    &[("source", &source.name)],
                    r.finished as f64,
                );
                m.set(
                    metrics::DRILL_RTO,
                    &[("source", &source.name)],
                    r.rto_seconds,
                );
                m.set(
                    metrics::DRILL_RPO,
                    &[("source", &source.name)],
                    r.rpo_seconds as f64,
                );
                let failed: Vec<String> = r
                    .failed_checks()
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                if r.passed {
                    tracing::info!(source = %source.name, backup = %r.backup_id, rto = r.rto_seconds, rpo = r.rpo_seconds, "drill passed");
                } else {
                    tracing::error!(source = %source.name, backup = %r.backup_id, "drill FAILED: {}", failed.join("; "));
                }
                Ok(Outcome {
                    backup: Some(r.backup_id.clone()),
                    passed: Some(r.passed),
                    detail: Some(if r.passed {
                        format!("rto {:.1}s, rpo {}s", r.rto_seconds, r.rpo_seconds)
                    } else {
                        failed.join("; ")
                    }),
                    result: JobResult::Drill(Box::new(r)),
                })
            }
            Kind::Prune => {
                let Some(policy) = of_world(World::Retention).into_iter().next() else {
                    return Err(JobError::Config(
                        "no retention policy (world = \"retention\") in agent.policies, and no BACKUP_RETENTION_DAYS; prune decides nothing without one".into(),
                    ));
                };
                let opts = PruneOptions {
                    policy,
                    min_age: self.config.min_age,
                    abandon_after: self.config.abandon_after,
                    max_deletions: req.max_deletions.unwrap_or(self.config.max_deletions),
                    dry_run: req.dry_run,
                    source: Some(source.name.clone()),
                    pitr_window: self.config.pitr_window,
                };
                guard.check().await?;
                let r = prune::run(&self.store, &opts).await?;
                tracing::info!(source = %source.name, deleted = r.deleted.len(), "prune done");
                Ok(Outcome {
                    detail: Some(format!(
                        "{} deleted{}",
                        r.deleted.len(),
                        if r.dry_run { " (dry run)" } else { "" }
                    )),
                    backup: None,
                    passed: None,
                    result: JobResult::Prune(r),
                })
            }
            Kind::Restore if req.data_dir.is_some() => {
                let (src, id) =
                    arch::find_backup(&self.store, req.backup.as_deref(), Some(&source.name))
                        .await?;
                let backup = arch::open_backup(&self.store, &src, &id).await?;
                let system_id = match &backup.manifest.physical {
                    Some(p) => p.system_id.clone(),
                    None => {
                        return Err(JobError::Config(format!(
                            "backup {id} is a logical backup: restore it into a database (--target-url), not a data directory"
                        )))
                    }
                };
                let exe = std::env::current_exe().map_err(|e| {
                    JobError::Internal(format!("cannot find the firedrill binary: {e}"))
                })?;
                let (_wal, restore_command) =
                    FetchServer::for_restore(&self.store, &src, &system_id, &exe)?;
                let opts = PhysicalRestoreOptions {
                    data_dir: req.data_dir.clone().expect("checked above"),
                    force: req.force,
                    target: req.recovery.clone().unwrap_or(RecoveryTarget::Latest),
                    restore_command: Some(restore_command),
                    env: vec![],
                    progress,
                    keep_running: false,
                };
                let (r, _) = restore_physical::run(&self.store, &backup, &opts).await?;
                Ok(Outcome {
                    detail: Some(format!(
                        "recovered to {} into {}",
                        r.reached_lsn,
                        r.data_dir.display()
                    )),
                    backup: Some(id),
                    passed: None,
                    result: JobResult::PhysicalRestore(r),
                })
            }
            Kind::Restore => {
                let target = req.target.clone().ok_or_else(|| {
                    JobError::Config("a restore needs a target database URL".into())
                })?;
                let (src, id) =
                    arch::find_backup(&self.store, req.backup.as_deref(), Some(&source.name))
                        .await?;
                let backup = arch::open_backup(&self.store, &src, &id).await?;
                let opts = RestoreOptions {
                    target,
                    jobs: self.config.drill_jobs,
                    force: req.force,
                    database: req.database.clone(),
                    comment: None,
                    progress,
                    create_missing_roles: false,
                };
                let r = restore::run(&self.store, &backup, &opts).await?;
                Ok(Outcome {
                    detail: Some(format!("{} rows into {}", r.rows, r.target)),
                    backup: Some(id),
                    passed: None,
                    result: JobResult::Restore(r),
                })
            }
        }
    }
}

/// Resolves once shutdown is asked for (or the sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(drop);
}
