//! What a job is and how it ended, as the API, the catalog and the events
//! name it: its kind, its state, and the view of one job's record.

use crate::telemetry::progress::ProgressView;
use serde::Serialize;
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
