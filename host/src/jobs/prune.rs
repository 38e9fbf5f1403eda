//! Retention: the retention plugin proposes, the host guards, then deletes.
//!
//! Guards, whatever the plugin says: never the newest backup of a source whose
//! last drill passed; never a backup younger than the minimum age; never an
//! incomplete backup that may still be in progress (one older than the
//! abandon age is a leftover and goes); at most so many deletions per run.
//! A deletion removes the manifest first, so a half-deleted backup is never
//! listed as complete.
//!
//! With keys trusted, the plan is made from what they vouch for only
//! ([`arch::list_backups`]): a backup whose manifest is unsigned or badly
//! signed is neither shown to the plugin nor deleted (a planted one is
//! garbage that is safe to leave; deleting what cannot be verified is not),
//! and a drill report that is not signed by a trusted key does not make a
//! backup "drilled and passed" for the guard.

use super::JobError;
use crate::archive::{self as arch, manifest, Listing, Store};
use crate::caps::types::{Action, BackupInfo, BackupKind, DrillStatus};
use crate::caps::CallContext;
use crate::runtime::Plugin;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct PruneOptions {
    pub policy: Arc<Plugin>,
    /// Backups younger than this are never deleted.
    pub min_age: Duration,
    /// An incomplete backup older than this is a leftover of an interrupted run.
    pub abandon_after: Duration,
    pub max_deletions: usize,
    pub dry_run: bool,
    /// Only this source's backups (all sources when none).
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub source: String,
    pub delete: bool,
    /// The plugin's reason, or the guard's.
    pub reason: String,
    /// The plugin asked to delete and a guard kept it.
    pub guarded: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub policy: String,
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    pub deleted: Vec<String>,
}

#[tracing::instrument(name = "prune", skip_all, fields(source = opts.source.as_deref().unwrap_or("")))]
pub async fn run(store: &Store, opts: &PruneOptions) -> Result<PruneReport, JobError> {
    let mut listings = arch::list_backups(store).await?;
    if let Some(src) = &opts.source {
        listings.retain(|l| &l.source == src);
    }
    let now = manifest::unix_now();
    let infos: Vec<BackupInfo> = listings.iter().map(info).collect();
    let plugin = opts.policy.clone();
    let proposed = tokio::task::spawn_blocking(move || {
        plugin.plan_retention(&CallContext::default(), &infos, now)
    })
    .await
    .map_err(|e| JobError::Internal(e.to_string()))??;
    let mut said: HashMap<String, (Action, String)> = HashMap::new();
    for d in proposed {
        if !listings.iter().any(|l| l.id == d.id) {
            tracing::warn!(policy = opts.policy.name(), id = %d.id, "the retention plugin decided about a backup that does not exist; ignored");
            continue;
        }
        said.insert(d.id.clone(), (d.action, d.reason));
    }
    // Per source, the newest backup whose last drill passed.
    let mut proven: HashMap<&str, &str> = HashMap::new();
    for l in listings
        .iter()
        .filter(|l| l.complete && l.last_drill.as_ref().is_some_and(|d| d.passed))
    {
        proven.insert(&l.source, &l.id);
    }
    let mut decisions = Vec::new();
    let mut deletions = 0;
    for l in &listings {
        let age = (now - l.created).max(0) as u64;
        let (action, reason) = said
            .remove(&l.id)
            .unwrap_or((Action::Keep, "the plugin did not decide: kept".into()));
        let guard = if !l.complete {
            (age < opts.abandon_after.as_secs()).then(|| {
                format!(
                    "incomplete and younger than {}: may be in progress",
                    humantime::format_duration(opts.abandon_after)
                )
            })
        } else if action == Action::Keep {
            None
        } else if proven.get(l.source.as_str()) == Some(&l.id.as_str()) {
            Some("guard: the newest backup of this source that passed a drill".into())
        } else if age < opts.min_age.as_secs() {
            Some(format!(
                "guard: younger than the minimum age of {}",
                humantime::format_duration(opts.min_age)
            ))
        } else if deletions >= opts.max_deletions {
            Some(format!(
                "guard: at most {} deletions per run",
                opts.max_deletions
            ))
        } else {
            None
        };
        let (delete, reason, guarded) = match (l.complete, guard) {
            (false, None) => (
                true,
                format!(
                    "leftover of an interrupted backup, {}",
                    humantime::format_duration(Duration::from_secs(age))
                ),
                false,
            ),
            (false, Some(g)) => (false, g, false),
            (true, Some(g)) => (false, format!("{g} (the plugin said: {reason})"), true),
            (true, None) => (action == Action::Delete, reason, false),
        };
        if delete {
            deletions += 1;
        }
        decisions.push(Decision {
            id: l.id.clone(),
            source: l.source.clone(),
            delete,
            reason,
            guarded,
        });
    }
    let mut deleted = Vec::new();
    if !opts.dry_run {
        for d in decisions.iter().filter(|d| d.delete) {
            delete_backup(store, &d.source, &d.id).await?;
            tracing::info!(backup = %d.id, source = %d.source, reason = %d.reason, "backup deleted");
            deleted.push(d.id.clone());
        }
    }
    Ok(PruneReport {
        policy: opts.policy.version(),
        dry_run: opts.dry_run,
        decisions,
        deleted,
    })
}

fn info(l: &Listing) -> BackupInfo {
    BackupInfo {
        id: l.id.clone(),
        source: l.source.clone(),
        kind: BackupKind::Postgres,
        created: l.created,
        size_bytes: l.size,
        complete: l.complete,
        drill: match &l.last_drill {
            None => DrillStatus::Never,
            Some(d) if d.passed => DrillStatus::Passed,
            Some(_) => DrillStatus::Failed,
        },
        last_drill: None,
        labels: vec![],
    }
}

/// The manifest first: from then on the backup is no longer listed as complete.
pub async fn delete_backup(store: &Store, source: &str, id: &str) -> Result<(), JobError> {
    let dir = arch::backup_dir(source, id);
    store
        .delete(&format!("{dir}{}", manifest::MANIFEST))
        .await?;
    store.delete_all(&dir).await?;
    Ok(())
}
