//! A policies directory loaded as one set: every policy parsed, compiled and
//! linked, or none of them. Start-up and reload both go through
//! [`PluginSet::load`]; the caller swaps the whole set in only on success.
//!
//! At most one plugin per world, except verifiers (a drill runs them all).
//!
//! Invariant: a failure leaves nothing half-loaded; all problems are reported
//! together, one per line, each naming its file.

use super::builtin::Defaults;
use super::plugin::Plugin;
use super::policy::{Policy, PolicyError};
use super::worlds::World;
use super::Runtime;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct PluginSet {
    plugins: Vec<Arc<Plugin>>,
}

/// Everything wrong with a policies directory.
#[derive(Debug, thiserror::Error)]
pub struct LoadErrors(pub Vec<PolicyError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl PluginSet {
    /// Loads every `*.toml` in `dir` (not recursing; hidden entries such as a
    /// Kubernetes ConfigMap's `..data` are skipped, their files are reached
    /// through the visible symlinks), then the built-in of each world the
    /// directory leaves empty (`builtin::Defaults`). No directory: the
    /// built-ins alone.
    pub fn load(
        runtime: &Runtime,
        dir: Option<&Path>,
        defaults: &Defaults,
    ) -> Result<PluginSet, LoadErrors> {
        let files = match dir {
            Some(dir) => policy_files(dir)?,
            None => vec![],
        };
        let loaded = files.into_iter().map(|file| {
            let policy = Policy::load(&file);
            (file, policy)
        });
        let mut set = PluginSet::checked(runtime, loaded)?;
        let builtins = defaults
            .policies(&|v| std::env::var(v).ok())
            .map_err(|e| LoadErrors(vec![e]))?;
        // BACKUP_RETENTION_DAYS says how long to keep, over the directory
        // (a copy of the shipped policies holds a GFS one).
        if builtins.iter().any(|p| p.world == World::Retention) {
            if let Some(p) = set.of_world(World::Retention).next() {
                tracing::warn!(policy = %p.policy().file.display(), "BACKUP_RETENTION_DAYS is set: it decides retention, not this policy");
            }
            set.plugins.retain(|p| p.world() != World::Retention);
        }
        let builtins = builtins
            .into_iter()
            .filter(|p| set.of_world(p.world).next().is_none() && set.get(&p.name).is_none())
            .map(|p| (p.file.clone(), Ok(p)));
        let builtins = PluginSet::checked(runtime, builtins)?;
        set.plugins.extend(builtins.plugins);
        Ok(set)
    }

    /// Loads, links and self-tests each policy: every one of them, or all
    /// the problems.
    fn checked(
        runtime: &Runtime,
        policies: impl Iterator<Item = (PathBuf, Result<Policy, PolicyError>)>,
    ) -> Result<PluginSet, LoadErrors> {
        let mut errors = Vec::new();
        let mut plugins: Vec<Arc<Plugin>> = Vec::new();
        for (file, policy) in policies {
            let loaded = policy.and_then(|p| Plugin::load(runtime, p)).and_then(|p| {
                p.self_test()
                    .map_err(|e| PolicyError::new(&file, None, format!("self-test: {e}")))?;
                Ok(p)
            });
            match loaded {
                Ok(p) => {
                    if let Some(other) = plugins.iter().find(|o| o.name() == p.name()) {
                        errors.push(PolicyError::new(
                            &file,
                            Some("name"),
                            format!(
                                "{:?} is already the name of {}",
                                p.name(),
                                other.policy().file.display()
                            ),
                        ));
                    } else if let Some(other) = plugins
                        .iter()
                        .find(|o| o.world() == p.world() && p.world() != World::Verifier)
                    {
                        // Only verifiers add up; of two planners, retention
                        // policies, authorizers or redactors one would be
                        // silently ignored.
                        errors.push(PolicyError::new(
                            &file,
                            Some("world"),
                            format!(
                                "more than one {} policy ({} in {}, and {}); keep one",
                                p.world().name(),
                                other.name(),
                                other.policy().file.display(),
                                p.name()
                            ),
                        ));
                    } else {
                        plugins.push(Arc::new(p));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(LoadErrors(errors));
        }
        Ok(PluginSet { plugins })
    }

    pub fn all(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// The plugins of one world, in file-name order.
    pub fn of_world(&self, world: World) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.iter().filter(move |p| p.world() == world)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.iter().find(|p| p.name() == name)
    }
}

/// The policy files of `dir`, in name order.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, LoadErrors> {
    let read = std::fs::read_dir(dir).map_err(|e| {
        LoadErrors(vec![PolicyError::new(
            dir,
            None,
            format!("cannot read the policies directory: {e}"),
        )])
    })?;
    let mut files: Vec<PathBuf> = read
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            !name.starts_with('.') && p.extension().is_some_and(|x| x == "toml") && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}
