//! Events: published on Redis pub/sub (for live listeners) and appended to a
//! capped stream (`XADD MAXLEN ~`), so a subscriber that comes late, or
//! reconnects with the last id it saw, reads what it missed. Without Redis
//! the same lives in an in-process ring.

use super::{Backend, CoordError, Coordinator};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What happened. `kind`: backup.started, backup.finished, backup.failed,
/// drill.started, drill.passed, drill.failed, prune.finished, prune.failed,
/// restore.finished, restore.failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub kind: String,
    pub source: String,
    pub node: String,
    /// Seconds since the Unix epoch.
    pub time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Where a reader is in the event sequence: the id of the last event it
/// saw. Ids are Redis stream ids (`1700000000000-0`) or, single-node,
/// sequence numbers.
#[derive(Debug, Clone)]
pub struct EventCursor(pub String);

impl Coordinator {
    pub fn event(&self, kind: &str, source: &str) -> Event {
        Event {
            kind: kind.into(),
            source: source.into(),
            node: self.inner.opts.node.clone(),
            time: crate::archive::manifest::unix_now(),
            job: None,
            backup: None,
            detail: None,
        }
    }

    /// Publishes `event`. Failing to publish never fails a job: it is logged.
    pub async fn publish(&self, event: &Event) {
        let json = serde_json::to_string(event).expect("events serialize");
        match &self.inner.backend {
            Backend::Local(l) => {
                let mut s = l.state.lock().unwrap();
                let id = s.events.back().map(|(i, _)| i + 1).unwrap_or(1);
                s.events.push_back((id, event.clone()));
                while s.events.len() > l.cap {
                    s.events.pop_front();
                }
                l.seq.send_replace(id);
            }
            Backend::Redis(r) => {
                let key = self.key(&["events"]);
                let mut conn = r.conn.clone();
                let sent: Result<(), _> = redis::pipe()
                    .cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.inner.opts.stream_len)
                    .arg("*")
                    .arg("event")
                    .arg(&json)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&key)
                    .arg(&json)
                    .ignore()
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(event = %event.kind, "could not publish the event: {}", r.error(e));
                }
            }
        }
    }

    /// The pub/sub channel events are published on (the stream has the same name).
    pub fn events_channel(&self) -> String {
        self.key(&["events"])
    }

    /// Where "now" is: a cursor after the newest event.
    pub async fn events_now(&self) -> Result<EventCursor, CoordError> {
        match &self.inner.backend {
            Backend::Local(l) => Ok(EventCursor(
                l.state
                    .lock()
                    .unwrap()
                    .events
                    .back()
                    .map(|(i, _)| i.to_string())
                    .unwrap_or_else(|| "0".into()),
            )),
            Backend::Redis(r) => {
                let mut conn = r.conn.clone();
                let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                    .arg(self.key(&["events"]))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| r.error(e))?;
                Ok(EventCursor(
                    last.into_iter()
                        .next()
                        .map(|(id, _)| id)
                        .unwrap_or_else(|| "0".into()),
                ))
            }
        }
    }

    /// Opens a reader that returns the events after a cursor, waiting up to
    /// `wait` for new ones. With Redis every reader of this agent shares one
    /// tail of the stream (one connection, one blocking read, fanned out in
    /// process), so the number of readers never shows on the Redis server;
    /// a reader catches up from the capped stream with short commands.
    pub async fn events_reader(&self) -> Result<EventReader, CoordError> {
        let live = match &self.inner.backend {
            Backend::Local(_) => None,
            Backend::Redis(r) => Some(r.events.subscribe(self).await?),
        };
        Ok(EventReader {
            coord: self.clone(),
            live,
            catching_up: true,
            at: (0, 0),
        })
    }
}

/// What the shared tail hands every reader: one event, or why the tail
/// stopped.
type Tailed = Result<(EventCursor, Event), String>;

/// Events held for a slow reader before it falls back to reading the
/// stream (it then catches up from there, nothing is lost).
const FANOUT: usize = 256;

/// The one tail of the event stream per agent, started by the first reader
/// and stopped once the last one has gone.
#[derive(Default)]
pub(super) struct Hub {
    tail: tokio::sync::Mutex<Option<tokio::sync::broadcast::Sender<Tailed>>>,
}

impl Hub {
    async fn subscribe(
        &self,
        coord: &Coordinator,
    ) -> Result<tokio::sync::broadcast::Receiver<Tailed>, CoordError> {
        let mut slot = self.tail.lock().await;
        if let Some(tx) = slot.as_ref() {
            return Ok(tx.subscribe());
        }
        let Backend::Redis(r) = &coord.inner.backend else {
            unreachable!("only a Redis coordinator has a hub")
        };
        // The tail starts after what is in the stream now, found while the
        // slot is held: whatever a reader subscribing later misses of the
        // tail's past is in the stream for its catch-up.
        let from = coord.events_now().await?;
        let conn = r
            .client
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(Duration::from_secs(60))),
            )
            .await
            .map_err(|e| r.error(e))?;
        let (tx, rx) = tokio::sync::broadcast::channel(FANOUT);
        *slot = Some(tx.clone());
        tokio::spawn(tail(coord.clone(), conn, from, tx));
        Ok(rx)
    }
}

/// Reads the stream from `from` on its own connection and hands each event
/// to every reader, until no reader is left or Redis fails.
async fn tail(
    coord: Coordinator,
    mut conn: redis::aio::MultiplexedConnection,
    mut from: EventCursor,
    tx: tokio::sync::broadcast::Sender<Tailed>,
) {
    let Backend::Redis(r) = &coord.inner.backend else {
        return;
    };
    let key = coord.key(&["events"]);
    loop {
        let read = xread(&mut conn, &key, &from, Some(Duration::from_secs(5))).await;
        match read {
            Ok(batch) => {
                for (id, event) in batch {
                    from = id.clone();
                    let _ = tx.send(Ok((id, event)));
                }
            }
            Err(e) => {
                let mut slot = r.events.tail.lock().await;
                *slot = None;
                let _ = tx.send(Err(r.error(e).to_string()));
                return;
            }
        }
        let mut slot = r.events.tail.lock().await;
        if tx.receiver_count() == 0 {
            *slot = None;
            return;
        }
    }
}

/// `XREAD` after `cursor`: at most 100 events, blocking up to `block` when
/// given (a blocking read needs a connection of its own).
async fn xread(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    cursor: &EventCursor,
    block: Option<Duration>,
) -> Result<Vec<(EventCursor, Event)>, redis::RedisError> {
    type Reply = Option<Vec<(String, Vec<(String, Vec<(String, String)>)>)>>;
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(100);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    let reply: Reply = cmd
        .arg("STREAMS")
        .arg(key)
        .arg(&cursor.0)
        .query_async(conn)
        .await?;
    let mut out = Vec::new();
    for (_, entries) in reply.unwrap_or_default() {
        for (id, fields) in entries {
            let event = fields
                .iter()
                .find(|(k, _)| k == "event")
                .and_then(|(_, v)| serde_json::from_str(v).ok());
            if let Some(event) = event {
                out.push((EventCursor(id), event));
            }
        }
    }
    Ok(out)
}

/// A Redis stream id (`ms-seq`) or a local sequence number, for ordering.
fn order(id: &EventCursor) -> (u64, u64) {
    let (ms, seq) = id.0.split_once('-').unwrap_or((&id.0, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

pub struct EventReader {
    coord: Coordinator,
    /// The shared tail (Redis only).
    live: Option<tokio::sync::broadcast::Receiver<Tailed>>,
    /// Reading the stream until it has given all it had after the cursor.
    catching_up: bool,
    /// Where the stream was read up to: a caller asking from anywhere else
    /// is served from the stream again.
    at: (u64, u64),
}

impl EventReader {
    /// Events after `cursor` (oldest first), at most 100, waiting up to
    /// `wait` when there are none yet.
    pub async fn next(
        &mut self,
        cursor: &EventCursor,
        wait: Duration,
    ) -> Result<Vec<(EventCursor, Event)>, CoordError> {
        match (&self.coord.inner.backend, &mut self.live) {
            (Backend::Redis(r), Some(live)) => {
                let after = order(cursor);
                if after != self.at {
                    self.catching_up = true;
                }
                if self.catching_up {
                    // A non-blocking read on the shared connection.
                    let mut conn = r.conn.clone();
                    let got = xread(&mut conn, &self.coord.key(&["events"]), cursor, None)
                        .await
                        .map_err(|e| r.error(e))?;
                    self.catching_up = got.len() >= 100;
                    self.at = got.last().map(|(id, _)| order(id)).unwrap_or(after);
                    if !got.is_empty() {
                        return Ok(got);
                    }
                }
                let mut out = Vec::new();
                // Every return below hands out `out`: the reader is then at its end.
                let reached = |out: &Vec<(EventCursor, Event)>| {
                    out.last().map(|(id, _)| order(id)).unwrap_or(after)
                };
                let first = match tokio::time::timeout(wait, live.recv()).await {
                    Err(_) => return Ok(out),
                    Ok(r) => r,
                };
                use tokio::sync::broadcast::error::{RecvError, TryRecvError};
                let mut next = first.map_err(|e| match e {
                    RecvError::Lagged(_) => None,
                    RecvError::Closed => Some("the event tail stopped".to_string()),
                });
                loop {
                    match next {
                        Ok(Ok((id, event))) => {
                            if order(&id) > after {
                                out.push((id, event));
                            }
                        }
                        Ok(Err(message)) | Err(Some(message)) => {
                            return Err(CoordError::Redis {
                                url: r.shown.clone(),
                                message,
                            })
                        }
                        // Fell behind the fan-out: read the stream again.
                        Err(None) => {
                            self.catching_up = true;
                            self.at = reached(&out);
                            return Ok(out);
                        }
                    }
                    if out.len() >= 100 {
                        self.at = reached(&out);
                        return Ok(out);
                    }
                    next = match live.try_recv() {
                        Ok(t) => Ok(t),
                        Err(TryRecvError::Empty) => {
                            self.at = reached(&out);
                            return Ok(out);
                        }
                        Err(TryRecvError::Lagged(_)) => Err(None),
                        Err(TryRecvError::Closed) => {
                            Err(Some("the event tail stopped".to_string()))
                        }
                    };
                }
            }
            (Backend::Local(l), _) => {
                let after: u64 = cursor.0.parse().unwrap_or(0);
                let mut seen = l.seq.subscribe();
                let take = |after: u64| -> Vec<(EventCursor, Event)> {
                    let s = l.state.lock().unwrap();
                    s.events
                        .iter()
                        .filter(|(i, _)| *i > after)
                        .take(100)
                        .map(|(i, e)| (EventCursor(i.to_string()), e.clone()))
                        .collect()
                };
                let now = take(after);
                if !now.is_empty() {
                    return Ok(now);
                }
                let _ = tokio::time::timeout(wait, seen.wait_for(|s| *s > after)).await;
                Ok(take(after))
            }
            (Backend::Redis(_), None) => unreachable!("a Redis reader has the tail"),
        }
    }
}
