//! What the agent is doing and has done: one record per job (scheduled or
//! asked for through the API), with its progress, kept in memory for the
//! API's `/v1/jobs`. The store stays the record of what was committed.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Finished jobs kept for `/v1/jobs`.
const KEEP: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Backup,
    Drill,
    Prune,
    Restore,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Drill => "drill",
            Kind::Prune => "prune",
            Kind::Restore => "restore",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its lease or a place in the drill quota.
    Waiting,
    Running,
    Succeeded,
    Failed,
    /// Another agent ran this slot; nothing was done here.
    Skipped,
}

/// Counters a job moves forward as it goes; read at any time.
#[derive(Debug, Default)]
pub struct Progress {
    phase: Mutex<String>,
    done: AtomicU64,
    total: AtomicU64,
    bytes: AtomicU64,
}

impl Progress {
    pub fn phase(&self, p: impl Into<String>) {
        *self.phase.lock().unwrap() = p.into();
    }
    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    pub fn view(&self) -> ProgressView {
        ProgressView {
            phase: self.phase.lock().unwrap().clone(),
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgressView {
    pub phase: String,
    /// Steps done of `total` (tables for backups and restores).
    pub done: u64,
    pub total: u64,
    /// Bytes written to the store (backups) or read from it (restores).
    pub bytes: u64,
}

pub struct JobRecord {
    pub id: String,
    pub kind: Kind,
    pub source: String,
    /// "schedule" or "api:<principal>".
    pub trigger: String,
    pub created: i64,
    pub progress: Arc<Progress>,
    outcome: Mutex<Outcome>,
}

#[derive(Debug, Clone, Serialize)]
struct Outcome {
    state: State,
    started: Option<i64>,
    finished: Option<i64>,
    /// The backup made, drilled or restored.
    backup: Option<String>,
    /// For drills.
    passed: Option<bool>,
    error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub kind: Kind,
    pub source: String,
    pub trigger: String,
    pub created: i64,
    pub state: State,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub backup: Option<String>,
    pub passed: Option<bool>,
    pub error: Option<String>,
    pub progress: ProgressView,
}

impl JobRecord {
    pub fn state(&self) -> State {
        self.outcome.lock().unwrap().state
    }

    pub fn running(&self) {
        let mut o = self.outcome.lock().unwrap();
        o.state = State::Running;
        o.started = Some(crate::archive::manifest::unix_now());
    }

    pub fn finish(
        &self,
        state: State,
        backup: Option<String>,
        passed: Option<bool>,
        error: Option<String>,
    ) {
        let mut o = self.outcome.lock().unwrap();
        o.state = state;
        o.finished = Some(crate::archive::manifest::unix_now());
        o.backup = backup.or(o.backup.take());
        o.passed = passed;
        // Shown by the API: it leaves the process.
        o.error = error.map(|e| crate::telemetry::redactor().redact(&e));
    }

    pub fn view(&self) -> JobView {
        let o = self.outcome.lock().unwrap().clone();
        JobView {
            id: self.id.clone(),
            kind: self.kind,
            source: self.source.clone(),
            trigger: self.trigger.clone(),
            created: self.created,
            state: o.state,
            started: o.started,
            finished: o.finished,
            backup: o.backup,
            passed: o.passed,
            error: o.error,
            progress: self.progress.view(),
        }
    }
}

/// The jobs this agent knows, newest last.
#[derive(Default)]
pub struct JobTable {
    jobs: Mutex<VecDeque<Arc<JobRecord>>>,
}

impl JobTable {
    pub fn create(&self, kind: Kind, source: &str, trigger: &str) -> Arc<JobRecord> {
        let now = crate::archive::manifest::unix_now();
        let record = Arc::new(JobRecord {
            id: format!(
                "{}-{}-{:06x}",
                kind.as_str(),
                now,
                rand::random::<u32>() & 0xff_ffff
            ),
            kind,
            source: source.into(),
            trigger: trigger.into(),
            created: now,
            progress: Arc::default(),
            outcome: Mutex::new(Outcome {
                state: State::Waiting,
                started: None,
                finished: None,
                backup: None,
                passed: None,
                error: None,
            }),
        });
        let mut jobs = self.jobs.lock().unwrap();
        jobs.push_back(record.clone());
        // Forget the oldest finished ones; running jobs stay whatever their age.
        while jobs.len() > KEEP {
            match jobs
                .iter()
                .position(|j| !matches!(j.state(), State::Waiting | State::Running))
            {
                Some(i) => {
                    jobs.remove(i);
                }
                None => break,
            }
        }
        record
    }

    pub fn get(&self, id: &str) -> Option<Arc<JobRecord>> {
        self.jobs
            .lock()
            .unwrap()
            .iter()
            .find(|j| j.id == id)
            .cloned()
    }

    pub fn list(&self) -> Vec<JobView> {
        self.jobs.lock().unwrap().iter().map(|j| j.view()).collect()
    }
}
