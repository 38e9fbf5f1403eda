//! Continuous WAL archiving over the replication protocol: a physical slot,
//! each completed segment compressed, (encrypted,) checksummed and stored
//! with its record, and only then confirmed to the server, so the slot
//! never lets go of WAL the archive does not hold. Timeline switches are
//! followed (history file stored, streaming goes on on the new timeline);
//! on stop the segment in progress is stored as `.partial`.
//!
//! Resuming after a crash or a restart needs nothing but the slot: its
//! `restart_lsn` is at most the end of the last stored segment, and
//! streaming restarts at the start of the segment holding it (a segment
//! stored twice is the same bytes).
//!
//! Invariants: the server is told a position is flushed only after the
//! segment ending there is in the store (record included); the streamer
//! writes only while its lease is held (the guard is checked before each
//! record); a gap in what the server sends is an error, never skipped.

use crate::archive::manifest::unix_now;
use crate::archive::wal::{self, Lsn, Segment, SegmentRecord};
use crate::archive::Store;
use crate::coord::CommitGuard;
use crate::jobs::JobError;
use crate::servers::pg::PgUrl;
use crate::servers::replication::{ReplicationConn, WalMessage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the server hears from us when it does not ask.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// After WAL arrives and the server goes quiet, it hears where we are this
/// soon (so `pg_stat_replication` shows what the streamer has received).
const REPORT_AFTER: Duration = Duration::from_secs(1);
/// Silence from the server this long means the connection is gone
/// (servers send keepalives every `wal_sender_timeout / 2`, 30 s by default).
const SILENCE: Duration = Duration::from_secs(120);

pub struct StreamOptions {
    pub source: String,
    pub url: PgUrl,
    /// The physical replication slot (created when missing).
    pub slot: String,
    pub compression_level: i32,
    /// The segment in progress is stored as `.partial` this often while WAL
    /// arrives: the archive's lag (the RPO) stays within it even when a
    /// segment takes hours to fill.
    pub partial_every: Duration,
    /// The heartbeat written into the source alongside (recorded with each
    /// segment for the drills).
    pub heartbeat: Option<Duration>,
    pub guard: Option<CommitGuard>,
    /// Flips to true to stop: the partial segment is stored and the
    /// stream ends cleanly.
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub status: Arc<StreamStatus>,
}

/// What the streamer has done, for metrics and `/metrics`.
#[derive(Default)]
pub struct StreamStatus {
    /// The end of the newest stored segment (an LSN).
    pub archived_lsn: AtomicU64,
    /// When the newest segment was stored (unix seconds).
    pub archived_at: AtomicU64,
    /// The newest position the server said it has written (an LSN).
    pub server_lsn: AtomicU64,
    pub segments: AtomicU64,
    pub bytes: AtomicU64,
    pub timeline: AtomicU64,
}

impl StreamStatus {
    /// WAL the server has written that the archive does not hold yet.
    pub fn lag_bytes(&self) -> u64 {
        self.server_lsn
            .load(Ordering::Relaxed)
            .saturating_sub(self.archived_lsn.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamSummary {
    pub source: String,
    pub slot: String,
    pub timeline: u32,
    pub segments: u64,
    /// Where streaming stopped (the partial segment stored ends here).
    pub stopped_at: String,
}

enum Step {
    Message(WalMessage),
    Report,
    Stop,
}

/// Streams until told to stop (or the connection fails: the caller
/// reconnects, see [`run`]).
pub async fn stream_once(store: &Store, opts: &StreamOptions) -> Result<StreamSummary, JobError> {
    let mut conn = ReplicationConn::connect(&opts.url).await?;
    let system = conn.identify_system().await?;
    let size = conn.segment_size().await?;
    // A slot keeps WAL until the archive has it: with no cap, a stalled
    // archive fills the server's disk.
    if let Ok(rows) = conn.simple_query("SHOW max_slot_wal_keep_size").await {
        if rows
            .first()
            .and_then(|r| r.first())
            .cloned()
            .flatten()
            .as_deref()
            == Some("-1")
        {
            tracing::warn!(source = %opts.source, "max_slot_wal_keep_size is unlimited on the server: if WAL archiving stalls, slot {} keeps WAL until the server's disk is full; set it (e.g. max_slot_wal_keep_size = 50GB)", opts.slot);
        }
    }
    let slot = match conn.read_replication_slot(&opts.slot).await? {
        // An invalidated slot (max_slot_wal_keep_size) has no restart_lsn:
        // the server dropped WAL the archive never got. Going on from now
        // would leave a gap nobody asked for.
        Some(s) if s.restart_lsn.is_none() => {
            return Err(JobError::Config(format!(
                "replication slot {} of source {} no longer holds WAL (invalidated: the archive fell behind by more than max_slot_wal_keep_size); \
                 the WAL since the archive's end is lost: take a new base backup, then drop the slot (SELECT pg_drop_replication_slot('{}')) so that streaming starts again",
                opts.slot, opts.source, opts.slot
            )))
        }
        Some(s) => s,
        None => {
            tracing::info!(slot = %opts.slot, "creating the physical replication slot");
            conn.create_physical_slot(&opts.slot).await?;
            conn.read_replication_slot(&opts.slot)
                .await?
                .ok_or_else(|| JobError::Internal(format!("slot {} vanished", opts.slot)))?
        }
    };
    let restart = slot.restart_lsn.unwrap_or(system.xlogpos);
    let mut timeline = slot.timeline.unwrap_or(system.timeline);
    if timeline > 1 {
        store_history(store, &mut conn, opts, &system.system_id, timeline).await?;
    }
    let mut segment = Segment::of(timeline, restart, size);
    tracing::info!(source = %opts.source, slot = %opts.slot, timeline, from = %segment.start(size), "WAL streaming started");
    let mut buf: Vec<u8> = Vec::with_capacity(size as usize);
    let mut stop = opts.stop.clone();
    loop {
        let mut s = conn
            .start_replication(Some(&opts.slot), segment.start(size), timeline)
            .await?;
        let mut received = segment.start(size);
        let mut flushed = segment.start(size);
        let mut last_status = Instant::now();
        let mut unreported = false;
        // What the last `.partial` of the segment in progress held.
        let mut partial_len = 0;
        let mut partial_at = Instant::now();
        let (next_timeline, next_start) = loop {
            // Reading is cancel-safe (bytes read stay in the connection's
            // buffer), so a tick or a stop may interrupt it.
            let step = tokio::select! {
                m = tokio::time::timeout(SILENCE, s.next()) => Step::Message(match m {
                    Ok(m) => m?,
                    Err(_) => return Err(JobError::Internal(format!(
                        "the server sent nothing for {} s: the connection is gone", SILENCE.as_secs()))),
                }),
                _ = tokio::time::sleep(REPORT_AFTER), if unreported => Step::Report,
                _ = async { let _ = stop.wait_for(|v| *v).await; } => Step::Stop,
            };
            let msg = match step {
                Step::Message(m) => m,
                Step::Report => {
                    s.status_update(received, flushed, flushed, false).await?;
                    last_status = Instant::now();
                    unreported = false;
                    continue;
                }
                Step::Stop => {
                    if !buf.is_empty() {
                        let end = Lsn(segment.start(size).0 + buf.len() as u64);
                        put_segment(store, opts, &system.system_id, size, segment, &buf, true)
                            .await?;
                        s.status_update(end, flushed, flushed, false).await?;
                    }
                    s.stop().await?;
                    let at = Lsn(segment.start(size).0 + buf.len() as u64);
                    tracing::info!(source = %opts.source, at = %at, "WAL streaming stopped");
                    return Ok(StreamSummary {
                        source: opts.source.clone(),
                        slot: opts.slot.clone(),
                        timeline,
                        segments: opts.status.segments.load(Ordering::Relaxed),
                        stopped_at: at.to_string(),
                    });
                }
            };
            let mut reply = false;
            match msg {
                WalMessage::Data {
                    start,
                    server_end,
                    bytes,
                } => {
                    opts.status
                        .server_lsn
                        .fetch_max(server_end.0, Ordering::Relaxed);
                    if start != received {
                        return Err(JobError::Internal(format!(
                            "the server sent WAL from {start} where {received} was expected: refusing a gap"
                        )));
                    }
                    let mut rest = &bytes[..];
                    while !rest.is_empty() {
                        let room = (size as usize) - buf.len();
                        let take = room.min(rest.len());
                        buf.extend_from_slice(&rest[..take]);
                        rest = &rest[take..];
                        if buf.len() == size as usize {
                            put_segment(store, opts, &system.system_id, size, segment, &buf, false)
                                .await?;
                            flushed = segment.end(size);
                            buf.clear();
                            partial_len = 0;
                            segment = segment.next();
                            reply = true;
                        }
                    }
                    received = Lsn(start.0 + bytes.len() as u64);
                    unreported = true;
                }
                WalMessage::Keepalive {
                    server_end,
                    reply_requested,
                } => {
                    opts.status
                        .server_lsn
                        .fetch_max(server_end.0, Ordering::Relaxed);
                    reply = reply_requested;
                    // A server shutting down waits until what it sent is
                    // flushed (and asks again and again): store the segment
                    // in progress and say so, or its shutdown never ends.
                    if reply_requested && received > flushed && !buf.is_empty() {
                        if buf.len() > partial_len {
                            put_segment(store, opts, &system.system_id, size, segment, &buf, true)
                                .await?;
                            partial_len = buf.len();
                            partial_at = Instant::now();
                        }
                        flushed = received;
                    }
                }
                WalMessage::EndOfTimeline {
                    next_timeline,
                    next_start,
                } => break (next_timeline, next_start),
            }
            if buf.len() > partial_len && partial_at.elapsed() >= opts.partial_every {
                put_segment(store, opts, &system.system_id, size, segment, &buf, true).await?;
                partial_len = buf.len();
                partial_at = Instant::now();
            }
            if reply || last_status.elapsed() >= STATUS_EVERY {
                s.status_update(received, flushed, flushed, false).await?;
                last_status = Instant::now();
                unreported = false;
            }
        };
        drop(s);
        // The old timeline's last segment ends at the switch; the new
        // timeline's segment of the same number holds the same WAL up to
        // there and goes on (recovery follows the history to it).
        if !buf.is_empty() {
            put_segment(store, opts, &system.system_id, size, segment, &buf, true).await?;
            buf.clear();
        }
        tracing::info!(source = %opts.source, from = timeline, to = next_timeline, at = %next_start, "following a timeline switch");
        timeline = next_timeline;
        store_history(store, &mut conn, opts, &system.system_id, timeline).await?;
        segment = Segment::of(timeline, next_start, size);
        opts.status
            .timeline
            .store(timeline.into(), Ordering::Relaxed);
    }
}

/// Streams until told to stop, reconnecting after a failure (a server
/// restart, a network cut) with a growing pause; gives up only on errors
/// that another attempt cannot fix (a lost lease, a refused role).
pub async fn run(store: &Store, opts: &StreamOptions) -> Result<StreamSummary, JobError> {
    let mut pause = Duration::from_secs(1);
    let mut stop = opts.stop.clone();
    loop {
        let started = Instant::now();
        match stream_once(store, opts).await {
            Ok(s) => return Ok(s),
            Err(e) if !retryable(&e) => return Err(e),
            Err(e) => {
                if started.elapsed() > Duration::from_secs(60) {
                    pause = Duration::from_secs(1);
                }
                tracing::warn!(source = %opts.source, error = %e, retry_in = ?pause, "WAL streaming interrupted; resuming from the slot");
                // A stop while the server is away is a clean stop: what
                // was received is stored (the partial, before the loss).
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|v| *v) => return Ok(StreamSummary {
                        source: opts.source.clone(),
                        slot: opts.slot.clone(),
                        timeline: opts.status.timeline.load(Ordering::Relaxed) as u32,
                        segments: opts.status.segments.load(Ordering::Relaxed),
                        stopped_at: format!(
                            "{} (the server was away: {e})",
                            Lsn(opts.status.archived_lsn.load(Ordering::Relaxed))
                        ),
                    }),
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn retryable(e: &JobError) -> bool {
    match e {
        JobError::Coord(_) | JobError::Config(_) => false,
        JobError::Server(crate::servers::ServerError::Config(_)) => false,
        JobError::Server(crate::servers::ServerError::Replication { message, .. }) => {
            // Authentication and permission failures need an operator;
            // anything else (a lingering walsender, a terminated one, a
            // restart) is worth another try.
            !["28P01", "28000", "42501"]
                .iter()
                .any(|code| message.contains(&format!("[SQLSTATE {code}]")))
        }
        _ => true,
    }
}

async fn put_segment(
    store: &Store,
    opts: &StreamOptions,
    system_id: &str,
    size: u64,
    seg: Segment,
    data: &[u8],
    partial: bool,
) -> Result<(), JobError> {
    if let Some(g) = &opts.guard {
        g.check().await?;
    }
    let object = wal::segment_path(&opts.source, &seg, size, partial);
    let end = Lsn(seg.start(size).0 + data.len() as u64);
    let mut record = SegmentRecord::segment(&opts.source, system_id, &seg, size, end);
    // A `.partial` the streamer stores may hold a whole segment's bytes
    // (stopped right at its end); the name says what it is.
    record.partial = partial;
    record.fencing_token = opts.guard.as_ref().map(|g| g.token());
    record.heartbeat_seconds = opts.heartbeat.map(|h| h.as_secs().max(1));
    let rec = wal::put(store, &object, data, opts.compression_level, record).await?;
    if !partial {
        // A partial copy of this segment is stale now.
        let stale = wal::segment_path(&opts.source, &seg, size, true);
        let _ = store.delete(&format!("{stale}.json")).await;
        let _ = store.delete(&stale).await;
        opts.status.segments.fetch_add(1, Ordering::Relaxed);
    }
    opts.status.archived_lsn.fetch_max(end.0, Ordering::Relaxed);
    opts.status
        .archived_at
        .store(unix_now().max(0) as u64, Ordering::Relaxed);
    opts.status.bytes.fetch_add(rec.size, Ordering::Relaxed);
    tracing::debug!(segment = %rec.segment, partial, bytes = rec.size, "WAL segment stored");
    Ok(())
}

/// Stores timeline `tli`'s history file (recovery reads it to follow the
/// switch), unless the archive has it.
async fn store_history(
    store: &Store,
    conn: &mut ReplicationConn,
    opts: &StreamOptions,
    system_id: &str,
    tli: u32,
) -> Result<(), JobError> {
    let object = wal::history_path(&opts.source, tli);
    if wal::read_record(store, &object).await.is_ok() {
        return Ok(());
    }
    let (_, content) = conn.timeline_history(tli).await?;
    let mut record = SegmentRecord::history(&opts.source, system_id, tli);
    record.fencing_token = opts.guard.as_ref().map(|g| g.token());
    wal::put(store, &object, &content, opts.compression_level, record).await?;
    Ok(())
}
