//! The agent's job table: one record per job (scheduled, asked for through
//! the API or run by the CLI), with its progress, kept in memory for the
//! API's `/v1/jobs`. The store stays the record of what was committed.

use crate::jobs::status::{JobView, Kind, State};
use crate::telemetry::progress::Progress;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Finished jobs kept for `/v1/jobs`.
const KEEP: usize = 200;

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
