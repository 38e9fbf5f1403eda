//! The policies in force, and their hot reload.
//!
//! Start-up and reload are one path ([`Policies::reload`]): the whole
//! directory is loaded aside (parse, compile, link, self-test), and swapped in
//! only when all of it is valid; otherwise the old set keeps serving and the
//! error is logged and counted. Calls in flight hold an `Arc` of the set they
//! started with, so they finish on the old version. A watcher (inotify,
//! recursive, so a Kubernetes ConfigMap's `..data` symlink swap is seen)
//! reloads after the directory has been quiet for a short debounce.

use super::builtin::Defaults;
use super::registry::{LoadErrors, PluginSet};
use super::Runtime;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Whether the directory as it stands failed to load: a state, which an
/// alert follows until the directory is fixed (the counter of failures only
/// says that one happened).
fn reload_failed(failed: bool) {
    crate::telemetry::metrics::global().set(
        crate::telemetry::metrics::RELOAD_FAILED,
        &[],
        f64::from(u8::from(failed)),
    );
}

#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Policies {
    /// None: the built-ins alone, nothing to watch.
    dir: Option<PathBuf>,
    defaults: Defaults,
    runtime: Runtime,
    current: RwLock<Arc<PluginSet>>,
    last_error: Mutex<Option<String>>,
    pub stats: ReloadStats,
}

impl Policies {
    /// Loads the directory (and the built-ins it leaves in force) for
    /// start-up: all of it valid, or an error.
    pub fn load(
        runtime: &Runtime,
        dir: Option<&Path>,
        defaults: Defaults,
    ) -> Result<Arc<Policies>, LoadErrors> {
        let set = PluginSet::load(runtime, dir, &defaults)?;
        let p = Policies {
            dir: dir.map(Path::to_path_buf),
            defaults,
            runtime: runtime.clone(),
            current: RwLock::new(Arc::new(set)),
            last_error: Mutex::new(None),
            stats: ReloadStats::default(),
        };
        p.stats.succeeded.fetch_add(1, Ordering::Relaxed);
        reload_failed(false);
        Ok(Arc::new(p))
    }

    /// The set in force; hold it for the length of a call.
    pub fn current(&self) -> Arc<PluginSet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The problems of the last failed reload, until a reload succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the directory aside and swaps it in if all of it is valid.
    pub fn reload(&self) -> Result<(), LoadErrors> {
        match PluginSet::load(&self.runtime, self.dir.as_deref(), &self.defaults) {
            Ok(set) => {
                let names: Vec<String> = set.all().iter().map(|p| p.version()).collect();
                // Cleared first: whoever sees the new set must not see the
                // old set's error next to it.
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::metrics::global().add(
                    crate::telemetry::metrics::RELOADS,
                    &[("result", "ok")],
                    1.0,
                );
                reload_failed(false);
                tracing::info!(dir = ?self.dir, plugins = ?names, "policies reloaded");
                Ok(())
            }
            Err(e) => {
                // The error is in place before anyone counting failures looks.
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::metrics::global().add(
                    crate::telemetry::metrics::RELOADS,
                    &[("result", "error")],
                    1.0,
                );
                reload_failed(true);
                tracing::error!(dir = ?self.dir, "policies not reloaded, the previous ones stay in force:\n{e}");
                Err(e)
            }
        }
    }

    /// Watches the directory and reloads once it has been quiet for `debounce`.
    /// Dropping the returned handle stops watching. No directory: None.
    pub fn watch(self: &Arc<Self>, debounce: Duration) -> notify::Result<Option<WatchHandle>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(tx)?;
        watcher.watch(dir, RecursiveMode::Recursive)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (me, halt) = (Arc::downgrade(self), stop.clone());
        std::thread::Builder::new()
            .name("firedrill-policies".into())
            .spawn(move || {
                while !halt.load(Ordering::Relaxed) {
                    // Wait for a first event, then for quiet.
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(_) => {}
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    let mut quiet_since = Instant::now();
                    while quiet_since.elapsed() < debounce {
                        if rx
                            .recv_timeout(debounce.saturating_sub(quiet_since.elapsed()))
                            .is_ok()
                        {
                            quiet_since = Instant::now();
                        }
                    }
                    let Some(policies) = me.upgrade() else { break };
                    let _ = policies.reload();
                }
            })
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(Some(WatchHandle {
            _watcher: watcher,
            stop,
        }))
    }
}

pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
    stop: Arc<AtomicBool>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
