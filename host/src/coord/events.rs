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
    /// `wait` for new ones. The reader holds its own Redis connection, as a
    /// blocking read would stall every other command on a shared one.
    pub async fn events_reader(&self) -> Result<EventReader, CoordError> {
        let conn = match &self.inner.backend {
            Backend::Local(_) => None,
            Backend::Redis(r) => Some(
                r.client
                    .get_multiplexed_async_connection_with_config(
                        &redis::AsyncConnectionConfig::new()
                            .set_connection_timeout(Some(Duration::from_secs(5)))
                            .set_response_timeout(Some(Duration::from_secs(60))),
                    )
                    .await
                    .map_err(|e| r.error(e))?,
            ),
        };
        Ok(EventReader {
            coord: self.clone(),
            conn,
        })
    }
}

pub struct EventReader {
    coord: Coordinator,
    conn: Option<redis::aio::MultiplexedConnection>,
}

impl EventReader {
    /// Events after `cursor` (oldest first), at most 100, waiting up to
    /// `wait` (under 60 s) when there are none yet.
    pub async fn next(
        &mut self,
        cursor: &EventCursor,
        wait: Duration,
    ) -> Result<Vec<(EventCursor, Event)>, CoordError> {
        match (&self.coord.inner.backend, &mut self.conn) {
            (Backend::Redis(r), Some(conn)) => {
                type Reply = Option<Vec<(String, Vec<(String, Vec<(String, String)>)>)>>;
                let reply: Reply = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(100)
                    .arg("BLOCK")
                    .arg(wait.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(self.coord.key(&["events"]))
                    .arg(&cursor.0)
                    .query_async(conn)
                    .await
                    .map_err(|e| r.error(e))?;
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
            (Backend::Redis(_), None) => unreachable!("a Redis reader has its connection"),
        }
    }
}
