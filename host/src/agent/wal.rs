//! The agent's WAL streamers: one long-running task per physical source
//! with `wal_stream`, holding the source's `wal` lease (one streamer per
//! source across the fleet; the others wait for the lease and take over
//! when its holder goes away), publishing the archive's lag as metrics.
//!
//! Not a job of the job path: a streamer runs for the agent's lifetime, and
//! holding the source's turn would starve its backups and drills.

use super::Agent;
use crate::config::SourceConfig;
use crate::jobs::wal::stream::{self, StreamOptions, StreamStatus, StreamSummary};
use crate::jobs::JobError;
use crate::telemetry::metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The lease a source's streamer holds.
pub const WAL_JOB: &str = "wal";
/// How often the archive's lag is published.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);

impl Agent {
    /// Streams `source`'s WAL into the archive until `stop` turns true,
    /// under the source's `wal` lease (waiting up to `give_up` for it).
    /// `Ok(None)`: another streamer held the lease all that time.
    pub async fn stream_wal(
        &self,
        source: &SourceConfig,
        stop: watch::Receiver<bool>,
        give_up: Duration,
    ) -> Result<Option<StreamSummary>, JobError> {
        let url = source
            .urls
            .first()
            .cloned()
            .ok_or_else(|| JobError::Config(format!("source {} has no URL", source.name)))?;
        let Some(lease) = self
            .coord
            .wait_for_lease(WAL_JOB, &source.name, None, give_up)
            .await?
        else {
            return Ok(None);
        };
        let status = Arc::new(StreamStatus::default());
        let opts = StreamOptions {
            source: source.name.clone(),
            url,
            slot: source
                .slot
                .clone()
                .unwrap_or_else(|| crate::jobs::wal::default_slot(&source.name)),
            compression_level: source.compression_level,
            partial_every: source.wal_partial_every,
            heartbeat: source.heartbeat,
            guard: Some(lease.guard()),
            stop,
            status: status.clone(),
        };
        let publisher = tokio::spawn(publish(
            source.name.clone(),
            status,
            source.wal_warn_retained,
        ));
        // Only the lease holder beats: one writer per source.
        let heart = source
            .heartbeat
            .map(|every| tokio::spawn(heartbeat(source.name.clone(), opts.url.clone(), every)));
        let result = stream::run(&self.store, &opts).await;
        publisher.abort();
        if let Some(h) = heart {
            h.abort();
        }
        let _ = lease.release(None).await;
        result.map(Some)
    }

    /// The streamer of one source for the agent's lifetime: waits for the
    /// lease, streams, and after a failure that needs an operator (logged)
    /// tries again a minute later.
    pub(super) async fn wal_loop(&self, source: SourceConfig, stop: watch::Receiver<bool>) {
        // Where the archive's lag is measured from until a streamer of this
        // agent hears otherwise: a streamer that never gets going (no lease,
        // a server or store that refuses) shows a lag that grows, where a
        // lag gauge would keep its last value (or none) once its publisher
        // stops. In a fleet the newest of the agents' values counts, the
        // lease holder's.
        metrics::global().set(
            metrics::WAL_CAUGHT_UP,
            &[("source", source.name.as_str())],
            crate::archive::manifest::unix_now() as f64,
        );
        loop {
            if *stop.borrow() {
                return;
            }
            match self
                .stream_wal(&source, stop.clone(), Duration::from_secs(60))
                .await
            {
                Ok(Some(s)) => {
                    tracing::info!(source = %source.name, stopped_at = %s.stopped_at, "WAL streamer stopped");
                    return;
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(source = %source.name, "WAL streaming failed: {e}");
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }
}

async fn publish(source: String, status: Arc<StreamStatus>, warn_at: u64) {
    let m = metrics::global();
    let labels = [("source", source.as_str())];
    let mut segments = 0;
    let mut warned = false;
    let mut caught_up = 0;
    loop {
        tokio::time::sleep(PUBLISH_EVERY).await;
        let archived = status.archived_lsn.load(Ordering::Relaxed);
        let at = status.archived_at.load(Ordering::Relaxed);
        let pending = status.lag_bytes();
        m.set(metrics::WAL_ARCHIVED_LSN, &labels, archived as f64);
        m.set(metrics::WAL_PENDING, &labels, pending as f64);
        if pending > warn_at && !warned {
            tracing::warn!(source = %source, pending, "the server holds {pending} bytes of WAL the archive does not have yet (more than wal_warn_retained): the store is slow or unreachable, or the streamer falls behind; the slot keeps it on the server's disk");
            warned = true;
        } else if pending <= warn_at / 2 && warned {
            tracing::info!(source = %source, pending, "the archive has caught up with the server's WAL");
            warned = false;
        }
        let lag = if pending == 0 || at == 0 {
            0.0
        } else {
            (crate::archive::manifest::unix_now() as f64 - at as f64).max(0.0)
        };
        m.set(metrics::WAL_ARCHIVE_LAG, &labels, lag);
        // Caught up now when the server has said where it is and the archive
        // holds all of it; else (at best) when the newest segment was
        // stored. Only ever forward: a lag that follows does not undo an
        // earlier catch-up.
        let heard = status.server_lsn.load(Ordering::Relaxed) > 0;
        let since = if heard && pending == 0 {
            crate::archive::manifest::unix_now()
        } else {
            at as i64
        };
        if since > caught_up {
            caught_up = since;
            m.set(metrics::WAL_CAUGHT_UP, &labels, since as f64);
        }
        let now = status.segments.load(Ordering::Relaxed);
        if now > segments {
            m.add(metrics::WAL_SEGMENTS, &labels, (now - segments) as f64);
            segments = now;
        }
    }
}

/// Keeps `firedrill.heartbeat` in the source: one row per source, its time
/// updated every `every`; a point-in-time drill proves what it replayed by
/// the newest heartbeat it finds. Failures are logged (once per kind of
/// failure) and retried at the next beat: a heartbeat never stops the
/// streamer.
async fn heartbeat(source: String, url: crate::servers::pg::PgUrl, every: Duration) {
    let mut client = None;
    let mut told = String::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let beat = async {
            if client.is_none() {
                let c = url.connect().await.map_err(|e| e.to_string())?;
                c.batch_execute(
                    "CREATE SCHEMA IF NOT EXISTS firedrill;
                     CREATE TABLE IF NOT EXISTS firedrill.heartbeat (
                         source text PRIMARY KEY, at timestamptz NOT NULL, every_seconds int NOT NULL)",
                )
                .await
                .map_err(|e| crate::servers::pg_tls::full_error(&e))?;
                client = Some(c);
            }
            let c = client.as_ref().expect("connected above");
            c.execute(
                "INSERT INTO firedrill.heartbeat (source, at, every_seconds) VALUES ($1, now(), $2)
                 ON CONFLICT (source) DO UPDATE SET at = excluded.at, every_seconds = excluded.every_seconds",
                &[&source, &(every.as_secs().max(1) as i32)],
            )
            .await
            .map(drop)
            .map_err(|e| crate::servers::pg_tls::full_error(&e))
        }
        .await;
        match beat {
            Ok(()) => told.clear(),
            Err(e) => {
                client = None;
                if told != e {
                    tracing::warn!(source = %source, "cannot write the heartbeat (point-in-time drills cannot prove their replay without it; give the role CREATE on the database, or set heartbeat = \"off\"): {e}");
                    told = e;
                }
            }
        }
    }
}
