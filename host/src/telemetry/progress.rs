//! Counters a job moves forward as it goes (phase, steps, bytes), read at any
//! time by the API without stopping the job.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
