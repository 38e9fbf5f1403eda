//! `GET /v1/events`: the event stream as server-sent events. Each event's
//! `id:` is its position in the (capped) stream, so a client that
//! reconnects with `Last-Event-ID` (or `?after=ID`; `after=0` for all that
//! is kept) reads what it missed; without either it starts from now.
//!
//! At most `api.max_event_streams` streams are open at once (429 past it):
//! each holds a task and a socket, though not a Redis connection, as every
//! stream reads the agent's one shared tail of the event stream.

use super::{ApiError, ApiState, Body};
use crate::coord::EventCursor;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{HeaderMap, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub async fn stream(
    state: &Arc<ApiState>,
    headers: &HeaderMap,
    after: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let permit = state.event_streams.clone().try_acquire_owned().map_err(|_| {
        let cap = state.agent.config().max_event_streams;
        let mut e = ApiError::new(
            429,
            format!("too many event streams open ({cap}, api.max_event_streams): close one or retry later"),
        );
        e.retry_after = Some(5);
        e
    })?;
    let coord = state.agent.coord().clone();
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(after)
        .filter(|id| {
            !id.is_empty() && id.len() < 64 && id.chars().all(|c| c.is_ascii_digit() || c == '-')
        });
    let unavailable = |e: crate::coord::CoordError| ApiError::new(503, format!("events: {e}"));
    let mut cursor = match last {
        Some(id) => EventCursor(id),
        None => coord.events_now().await.map_err(unavailable)?,
    };
    let mut reader = coord.events_reader().await.map_err(unavailable)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        // Held until the stream's task ends, that is until the client goes.
        let _permit = permit;
        if tx
            .send(Bytes::from_static(b": firedrill events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let next = tokio::select! {
                n = reader.next(&cursor, KEEPALIVE) => n,
                // The client went away while nothing happened.
                _ = tx.closed() => return,
            };
            let batch = match next {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx
                        .send(Bytes::from(format!("event: error\ndata: {e}\n\n")))
                        .await;
                    return;
                }
            };
            let text = if batch.is_empty() {
                ": keepalive\n\n".to_string()
            } else {
                let mut text = String::new();
                for (id, event) in batch {
                    let data = serde_json::to_string(&event).expect("events serialize");
                    text.push_str(&format!(
                        "id: {}\nevent: {}\ndata: {data}\n\n",
                        id.0, event.kind
                    ));
                    cursor = id;
                }
                text
            };
            // The client went away: stop reading for it.
            if tx.send(Bytes::from(text)).await.is_err() {
                return;
            }
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(StreamBody::new(frames).boxed())
        .expect("a valid response"))
}
