//! Leases per (job, source) with fencing tokens.
//!
//! Taking a lease: `SET lock NX PX lease`, then `INCR fence` gives the token
//! (one Lua script, so both happen or neither). The lease is renewed every
//! third of its length while the job runs; if a renewal finds the lock gone
//! or held by someone else the lease is marked lost. Before committing (the
//! manifest write) a job calls [`Lease::check`], which asks Redis whether the
//! lock still carries this holder's value and the fence counter still equals
//! this token: a holder that stalled past its lease, while another agent took
//! over, is refused there. The token is recorded in the manifest.
//!
//! Slots: a schedule tick names its slot (the tick's start time); the agent
//! that finishes a slot marks it done, so the agents that wake for the same
//! slot later skip it, while a slot whose holder died is taken over once the
//! lease runs out.

use super::{Backend, CoordError, Coordinator};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ACQUIRE: &str = r#"
if ARGV[3] ~= '' then
  local d = redis.call('GET', KEYS[3])
  if d and tonumber(d) >= tonumber(ARGV[3]) then return -2 end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. '#' .. t, 'PX', ARGV[2])
  return t
end
return -1
"#;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const CHECK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
return 0
"#;

/// Releases the lock; with a slot, first marks the slot done.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) end
redis.call('DEL', KEYS[1])
return 1
"#;

/// How long a done-slot marker is kept: longer than any sane schedule gap.
const DONE_TTL_SECS: u64 = 8 * 86_400;

pub enum TryLock {
    Acquired(Lease),
    /// Another agent holds it now.
    Busy,
    /// This slot was already run to the end by someone.
    SlotDone,
}

/// A held lease. Dropping it stops the renewals; [`Lease::release`] hands it
/// back at once (otherwise it runs out after the lease time).
pub struct Lease {
    guard: CommitGuard,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

/// What a job carries to its commit: the fencing token to record and the
/// check that the lease is still held. Cheap to clone.
#[derive(Clone)]
pub struct CommitGuard {
    coord: Coordinator,
    job: String,
    source: String,
    token: u64,
    /// The lock's value: `node/nonce#token`.
    value: String,
    lost: Arc<AtomicBool>,
}

impl Coordinator {
    /// Waits for the lease, polling until it is free, the slot is done or
    /// `give_up` passes.
    pub async fn wait_for_lease(
        &self,
        job: &str,
        source: &str,
        slot: Option<i64>,
        give_up: Duration,
    ) -> Result<Option<Lease>, CoordError> {
        let until = tokio::time::Instant::now() + give_up;
        let poll =
            (self.inner.opts.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut told = false;
        loop {
            match self.try_lock(job, source, slot).await? {
                TryLock::Acquired(l) => return Ok(Some(l)),
                TryLock::SlotDone => return Ok(None),
                TryLock::Busy if tokio::time::Instant::now() + poll >= until => return Ok(None),
                TryLock::Busy => {
                    if !told {
                        told = true;
                        tracing::info!(job, source, "waiting for the lease: another run of this job on this source holds it");
                    }
                    tokio::time::sleep(poll).await
                }
            }
        }
    }

    /// Tries once to take the (job, source) lease. `slot`: the schedule
    /// slot this run is for, or none for a one-off run.
    pub async fn try_lock(
        &self,
        job: &str,
        source: &str,
        slot: Option<i64>,
    ) -> Result<TryLock, CoordError> {
        let holder = format!("{}/{:08x}", self.inner.opts.node, rand::random::<u32>());
        let lease_ms = self.inner.opts.lease.as_millis() as u64;
        let token = match &self.inner.backend {
            Backend::Redis(r) => {
                let mut conn = r.conn.clone();
                let t: i64 = redis::Script::new(ACQUIRE)
                    .key(self.key(&["lock", job, source]))
                    .key(self.key(&["fence", job, source]))
                    .key(self.key(&["done", job, source]))
                    .arg(&holder)
                    .arg(lease_ms)
                    .arg(slot.map(|s| s.to_string()).unwrap_or_default())
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| r.error(e))?;
                t
            }
            Backend::Local(l) => {
                let mut s = l.state.lock().unwrap();
                let k = (job.to_string(), source.to_string());
                if slot.is_some_and(|slot| s.done.get(&k).is_some_and(|d| *d >= slot)) {
                    -2
                } else if s.locks.contains_key(&k) {
                    -1
                } else {
                    let fence = s.fences.get(&k).copied().unwrap_or(0);
                    match self.file_lock(job, source)? {
                        FileLock::Busy => -1,
                        held => {
                            let (file, t) = match held {
                                FileLock::Held(mut file, last, writable) => {
                                    let t = last.max(fence) + 1;
                                    // Another user's file is only locked:
                                    // the token stays in this process.
                                    if writable {
                                        write_token(&mut file, t)
                                            .map_err(|e| self.lock_file_error(job, source, e))?;
                                    }
                                    (Some(file), t)
                                }
                                _ => (None, fence + 1),
                            };
                            s.fences.insert(k.clone(), t);
                            s.locks.insert(k, (format!("{holder}#{t}"), t, file));
                            t as i64
                        }
                    }
                }
            }
        };
        Ok(match token {
            -2 => TryLock::SlotDone,
            t if t < 0 => TryLock::Busy,
            t => {
                let token = t as u64;
                let guard = CommitGuard {
                    coord: self.clone(),
                    job: job.into(),
                    source: source.into(),
                    token,
                    value: format!("{holder}#{token}"),
                    lost: Arc::default(),
                };
                let renewer = self.is_fleet().then(|| {
                    tokio::spawn(renew(
                        self.clone(),
                        guard.lock_key(),
                        guard.value.clone(),
                        guard.lost.clone(),
                    ))
                });
                let lease = Lease { guard, renewer };
                TryLock::Acquired(lease)
            }
        })
    }
}

/// A lease's file lock, taken beside the in-process one when the options
/// name a lock directory.
enum FileLock {
    /// No lock directory: in-process only.
    Off,
    /// Another process of this node holds it.
    Busy,
    /// Held, with the last fencing token written in the file, and whether
    /// this user owns the file (and so keeps the token in it).
    Held(std::fs::File, u64, bool),
}

impl Coordinator {
    /// `<lock_dir>/<job>.<source>.<scope hash>.lock`, locked without waiting.
    /// The file also keeps the last fencing token, so tokens grow across
    /// the processes of a node as they do through Redis.
    fn file_lock(&self, job: &str, source: &str) -> Result<FileLock, CoordError> {
        use sha2::Digest;
        use std::io::Read;
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
        let Some(dir) = &self.inner.opts.lock_dir else {
            return Ok(FileLock::Off);
        };
        let err = |e: std::io::Error| self.lock_file_error(job, source, e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let meta = std::fs::symlink_metadata(dir).map_err(err)?;
        // Another user's directory could hold a lock forever: only this
        // user's or root's (root trusts any owner, e.g. the agent's user's
        // /run/firedrill), and never one that others can write to.
        if !meta.is_dir() || meta.mode() & 0o022 != 0 || (me != 0 && ![me, 0].contains(&meta.uid()))
        {
            return Err(err(std::io::Error::other(
                "not a directory of this user (or root) that only its owner can write to",
            )));
        }
        // `s3://b` and `s3://b/` are one store.
        let scope = self.inner.opts.scope.trim_end_matches('/');
        let scope = hex::encode(&sha2::Sha256::digest(scope.as_bytes())[..6]);
        // A source's name comes from a store listing too: nothing in it may
        // reach outside the directory.
        let name: String = source
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{job}.{name}.{scope}.lock"));
        let open = |write: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .create(write)
                .truncate(false)
                .mode(0o644)
                // No symlink, and no blocking on a FIFO planted in its place.
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
        };
        // A lock file another user made (root's command beside the agent's
        // user) is locked read-only: the lock holds, the token is not kept.
        let mut file = match open(true) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => open(false),
            other => other,
        }
        .map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        if !meta.is_file() || meta.nlink() != 1 {
            return Err(err(std::io::Error::other(format!(
                "{} is not a plain lock file (a link or a special file): remove it",
                path.display()
            ))));
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(FileLock::Busy),
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
        let mut text = String::new();
        (&mut file)
            .take(64)
            .read_to_string(&mut text)
            .map_err(err)?;
        // A token that could not come from us (garbage, or near the top of
        // the range) starts the count again rather than wrapping it.
        let last = text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|t| *t < i64::MAX as u64 / 2)
            .unwrap_or(0);
        let writable = meta.uid() == me;
        Ok(FileLock::Held(file, last, writable))
    }

    fn lock_file_error(&self, job: &str, source: &str, e: std::io::Error) -> CoordError {
        CoordError::LockFile {
            job: job.into(),
            name: source.into(),
            dir: self
                .inner
                .opts
                .lock_dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            message: e.to_string(),
        }
    }
}

/// Overwrites the token in place with a fixed-width line, so a crash
/// mid-write never leaves the file empty or shorter (no `set_len(0)`).
fn write_token(file: &mut std::fs::File, token: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(format!("{token:020}\n").as_bytes(), 0)
}

/// Renews every third of the lease until aborted; marks the lease lost when
/// the lock is no longer ours or Redis cannot confirm it before it runs out.
async fn renew(coord: Coordinator, key: String, value: String, lost: Arc<AtomicBool>) {
    let Backend::Redis(r) = &coord.inner.backend else {
        return;
    };
    let lease = coord.inner.opts.lease;
    let mut confirmed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(lease / 3).await;
        let mut conn = r.conn.clone();
        let renewed: Result<i64, _> = redis::Script::new(RENEW)
            .key(&key)
            .arg(&value)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => confirmed = tokio::time::Instant::now(),
            Ok(_) => {
                tracing::warn!(lock = %key, "lease lost: the lock is gone or held by another agent");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) if confirmed.elapsed() >= lease => {
                tracing::warn!(lock = %key, "lease lost: could not renew it in time: {e}");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => tracing::warn!(lock = %key, "lease renewal failed, retrying: {e}"),
        }
    }
}

impl CommitGuard {
    pub fn token(&self) -> u64 {
        self.token
    }

    fn lock_key(&self) -> String {
        self.coord.key(&["lock", &self.job, &self.source])
    }

    fn lost_error(&self) -> CoordError {
        CoordError::LeaseLost {
            job: self.job.clone(),
            name: self.source.clone(),
            token: self.token,
        }
    }

    /// The commit guard: succeeds only while this lease is still the current
    /// holder of its lock (checked against Redis, not only locally).
    pub async fn check(&self) -> Result<(), CoordError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_error());
        }
        let held = match &self.coord.inner.backend {
            Backend::Redis(r) => {
                let mut conn = r.conn.clone();
                let ok: i64 = redis::Script::new(CHECK)
                    .key(self.lock_key())
                    .key(self.coord.key(&["fence", &self.job, &self.source]))
                    .arg(&self.value)
                    .arg(self.token)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| r.error(e))?;
                ok == 1
            }
            Backend::Local(l) => {
                let s = l.state.lock().unwrap();
                s.locks
                    .get(&(self.job.clone(), self.source.clone()))
                    .is_some_and(|(v, _, _)| *v == self.value)
            }
        };
        if held {
            Ok(())
        } else {
            self.lost.store(true, Ordering::SeqCst);
            Err(self.lost_error())
        }
    }
}

impl Lease {
    pub fn token(&self) -> u64 {
        self.guard.token
    }

    pub fn guard(&self) -> CommitGuard {
        self.guard.clone()
    }

    pub async fn check(&self) -> Result<(), CoordError> {
        self.guard.check().await
    }

    /// Stops renewing without releasing: the lease runs out on its own, as if
    /// this holder had stalled. For tests of what the others then do.
    pub fn stall(&mut self) {
        if let Some(t) = self.renewer.take() {
            t.abort();
        }
    }

    /// Hands the lease back; with `slot`, marks that slot done first (only
    /// if this lease still holds the lock).
    pub async fn release(mut self, slot: Option<i64>) -> Result<(), CoordError> {
        self.stall();
        match &self.guard.coord.inner.backend {
            Backend::Redis(r) => {
                let mut conn = r.conn.clone();
                let _: i64 = redis::Script::new(RELEASE)
                    .key(self.guard.lock_key())
                    .key(
                        self.guard
                            .coord
                            .key(&["done", &self.guard.job, &self.guard.source]),
                    )
                    .arg(&self.guard.value)
                    .arg(slot.map(|s| s.to_string()).unwrap_or_default())
                    .arg(DONE_TTL_SECS)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| r.error(e))?;
            }
            Backend::Local(_) => self.release_local(slot),
        }
        Ok(())
    }

    fn release_local(&self, slot: Option<i64>) {
        if let Backend::Local(l) = &self.guard.coord.inner.backend {
            let mut s = l.state.lock().unwrap();
            let k = (self.guard.job.clone(), self.guard.source.clone());
            // Removing the entry closes its lock file, which frees the lock.
            if s.locks
                .get(&k)
                .is_some_and(|(v, _, _)| *v == self.guard.value)
            {
                s.locks.remove(&k);
                if let Some(slot) = slot {
                    s.done.insert(k, slot);
                }
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(t) = self.renewer.take() {
            t.abort();
        }
        // An in-process lock has no expiry: a dropped lease must free it.
        self.release_local(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What another local user could plant is refused, not waited on.
    #[tokio::test]
    async fn a_planted_lock_directory_or_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let coord = |d: &std::path::Path| {
            Coordinator::new(super::super::CoordOptions {
                lock_dir: Some(d.into()),
                scope: "file:///store".into(),
                ..Default::default()
            })
        };
        std::fs::create_dir(&locks).unwrap();
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let c = coord(&locks).await.unwrap();
        assert!(matches!(
            c.try_lock("backup", "app", None).await,
            Err(CoordError::LockFile { .. })
        ));
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A FIFO where the lock file goes: an error, never a hang.
        let TryLock::Acquired(l) = c.try_lock("backup", "app", None).await.unwrap() else {
            panic!("free")
        };
        drop(l);
        let file = std::fs::read_dir(&locks)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::remove_file(&file).unwrap();
        let fifo = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; mkfifo has no other precondition.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            c.try_lock("backup", "app", None).await,
            Err(CoordError::LockFile { .. })
        ));
        // A hard link to another file: refused (a write would reach it).
        std::fs::remove_file(&file).unwrap();
        let other = dir.path().join("precious");
        std::fs::write(&other, "keep me").unwrap();
        std::fs::hard_link(&other, &file).unwrap();
        assert!(matches!(
            c.try_lock("backup", "app", None).await,
            Err(CoordError::LockFile { .. })
        ));
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me");
    }

    /// Two coordinators stand for two processes of one node (an agent and a
    /// hand-run command): only the lock directory is between them.
    #[tokio::test]
    async fn a_lock_directory_is_one_lease_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |scope: &str| super::super::CoordOptions {
            lock_dir: Some(dir.path().join("locks")),
            scope: scope.into(),
            ..Default::default()
        };
        let (agent, cli) = (
            Coordinator::new(opts("file:///store")).await.unwrap(),
            Coordinator::new(opts("file:///store")).await.unwrap(),
        );
        let TryLock::Acquired(held) = agent.try_lock("backup", "app", None).await.unwrap() else {
            panic!("free at first")
        };
        assert!(matches!(
            cli.try_lock("backup", "app", None).await.unwrap(),
            TryLock::Busy
        ));
        // Another store's source of the same name is another lease.
        let other = Coordinator::new(opts("file:///elsewhere")).await.unwrap();
        assert!(matches!(
            other.try_lock("backup", "app", None).await.unwrap(),
            TryLock::Acquired(_)
        ));
        let first = held.token();
        held.release(None).await.unwrap();
        let TryLock::Acquired(next) = cli.try_lock("backup", "app", None).await.unwrap() else {
            panic!("free once released")
        };
        assert!(next.token() > first, "tokens grow across processes");
        next.check().await.unwrap();
        drop(next);
        assert!(matches!(
            agent.try_lock("backup", "app", None).await.unwrap(),
            TryLock::Acquired(_)
        ));
    }

    #[tokio::test]
    async fn single_node_locks_fence_and_remember_done_slots() {
        let c = Coordinator::local();
        let TryLock::Acquired(first) = c.try_lock("backup", "app", Some(60)).await.unwrap() else {
            panic!("free at first")
        };
        assert!(matches!(
            c.try_lock("backup", "app", Some(60)).await.unwrap(),
            TryLock::Busy
        ));
        // Other jobs and sources have their own locks.
        assert!(matches!(
            c.try_lock("drill", "app", None).await.unwrap(),
            TryLock::Acquired(_)
        ));
        first.check().await.unwrap();
        let token = first.token();
        first.release(Some(60)).await.unwrap();
        assert!(matches!(
            c.try_lock("backup", "app", Some(60)).await.unwrap(),
            TryLock::SlotDone
        ));
        let TryLock::Acquired(next) = c.try_lock("backup", "app", Some(120)).await.unwrap() else {
            panic!("a new slot is free")
        };
        assert_eq!(next.token(), token + 1, "tokens only grow");
        let guard = next.guard();
        drop(next);
        assert!(matches!(
            guard.check().await,
            Err(CoordError::LeaseLost { .. })
        ));
    }
}
