//! The outbox: a bounded queue per destination, each drained by a worker
//! of its own with retries and a doubling pause, so a destination that is
//! down or slow holds up neither a job nor the other destinations.
//!
//! - webhook: `POST` of a JSON body (destination, source, event, subject,
//!   text, backup_id, time), signed when the destination has an `hmac_key`:
//!   `X-Firedrill-Signature: sha256=<hex HMAC-SHA256 of the body>`.
//! - slack: `POST {"text": "*subject*\ntext"}` (Slack-compatible incoming
//!   webhooks: Slack, Mattermost, Rocket.Chat ...), `&`, `<`, `>` escaped.
//! - email: SMTP with STARTTLS (or implicit TLS, or none), the system's
//!   roots plus the destination's `ca_file`.
//!
//! Invariant: an error that is logged names the destination, never its URL
//! or credentials (the redactor knows them too); redirects are not followed
//! (the body and its signature go where the policy says, nowhere else).

use crate::runtime::destination::{Destination, Email, Security};
use crate::telemetry::metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// One message for one destination, redacted.
#[derive(Debug, Clone)]
pub struct Item {
    pub destination: String,
    pub target: Destination,
    pub source: String,
    pub event: &'static str,
    pub backup: Option<String>,
    pub time: i64,
    pub subject: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Messages waiting per destination; more are dropped (and counted).
    pub capacity: usize,
    /// Tries per message, the first included.
    pub attempts: u32,
    /// The pause after the first failed try, doubled after each.
    pub backoff: Duration,
    /// One try's limit, all of it.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            capacity: 64,
            attempts: 5,
            backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(20),
        }
    }
}

/// Cheap to clone: the queues are shared.
#[derive(Clone)]
pub struct Outbox {
    opts: Options,
    http: reqwest::Client,
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Item>>>>,
}

impl Outbox {
    pub fn new(opts: Options) -> Outbox {
        let http = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client with timeouts builds");
        Outbox {
            opts,
            http,
            queues: Arc::default(),
        }
    }

    /// Queues `item` for its destination (starting the destination's worker
    /// on the current tokio runtime at its first message); a full queue
    /// drops it, counts and says so.
    pub fn send(&self, item: Item) {
        let destination = item.destination.clone();
        let tx = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            queues
                .entry(destination.clone())
                .or_insert_with(|| {
                    let (tx, mut rx) = mpsc::channel::<Item>(self.opts.capacity.max(1));
                    let (http, opts) = (self.http.clone(), self.opts.clone());
                    tokio::spawn(async move {
                        while let Some(item) = rx.recv().await {
                            deliver_with_retries(&http, &opts, &item).await;
                        }
                    });
                    tx
                })
                .clone()
        };
        if tx.try_send(item).is_err() {
            count(&destination, "dropped");
            tracing::warn!(destination = %destination, "the destination's notification queue is full: a message is dropped");
        }
    }
}

fn count(destination: &str, result: &str) {
    metrics::global().add(
        metrics::NOTIFICATIONS,
        &[("destination", destination), ("result", result)],
        1.0,
    );
}

async fn deliver_with_retries(http: &reqwest::Client, opts: &Options, item: &Item) {
    let mut pause = opts.backoff;
    for attempt in 1..=opts.attempts.max(1) {
        let tried = tokio::time::timeout(opts.timeout, deliver(http, item)).await;
        let tried = tried.unwrap_or_else(|_| Err(format!("no answer within {:?}", opts.timeout)));
        match tried {
            Ok(()) => {
                count(&item.destination, "delivered");
                tracing::info!(destination = %item.destination, event = item.event, source = %item.source, attempt, "notification delivered");
                return;
            }
            Err(e) if attempt < opts.attempts => {
                count(&item.destination, "retried");
                tracing::warn!(destination = %item.destination, attempt, retry_in = ?pause, "notification not delivered, trying again: {e}");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => {
                count(&item.destination, "failed");
                tracing::error!(destination = %item.destination, attempts = attempt, "notification not delivered, given up: {e}");
            }
        }
    }
}

async fn deliver(http: &reqwest::Client, item: &Item) -> Result<(), String> {
    match &item.target {
        Destination::Webhook { url, hmac_key } => {
            let body = serde_json::to_vec(&serde_json::json!({
                "destination": item.destination,
                "source": item.source,
                "event": item.event,
                "subject": item.subject,
                "text": item.text,
                "backup_id": item.backup,
                "time": item.time,
            }))
            .expect("a message serializes");
            let mut req = http
                .post(url)
                .header("content-type", "application/json")
                .header(
                    "user-agent",
                    concat!("firedrill/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(key) = hmac_key {
                req = req.header(
                    "x-firedrill-signature",
                    format!("sha256={}", sign(key, &body)),
                );
            }
            post(req.body(body)).await
        }
        Destination::Slack { url } => {
            // Slack's mrkdwn reads <...> as links and mentions (<!channel>):
            // what a failing check quotes must stay text.
            let esc = |t: &str| {
                t.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
            };
            let text = format!("*{}*\n{}", esc(&item.subject), esc(&item.text));
            let body = serde_json::json!({ "text": text });
            post(
                http.post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            )
            .await
        }
        Destination::Email(e) => send_mail(e, item).await,
    }
}

/// The hex HMAC-SHA256 of `body` under `key`: what a receiver recomputes.
pub fn sign(key: &str, body: &[u8]) -> String {
    use hmac::{Mac, SimpleHmac};
    let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn post(req: reqwest::RequestBuilder) -> Result<(), String> {
    // Without the URL: it is the destination's credential.
    let r = req.send().await.map_err(|e| {
        // The causes (refused, timed out, TLS) carry no URL; the error itself would.
        let e = e.without_url();
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            why.push_str(&format!(": {c}"));
            cause = c.source();
        }
        format!("cannot reach it: {why}")
    })?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("it answered {}", r.status()))
    }
}

async fn send_mail(e: &Email, item: &Item) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let mut m = Message::builder()
        .from(
            e.from
                .parse()
                .map_err(|x| format!("from {:?}: {x}", e.from))?,
        )
        .subject(&item.subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &e.to {
        m = m.to(to.parse().map_err(|x| format!("to {to:?}: {x}"))?);
    }
    let message = m.body(item.text.clone()).map_err(|x| x.to_string())?;
    let tls = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(e.host.clone());
        if let Some(ca) = &e.ca_file {
            let pem = std::fs::read(ca).map_err(|x| format!("ca_file {}: {x}", ca.display()))?; // small, local
            b = b.add_root_certificate(
                Certificate::from_pem(&pem)
                    .map_err(|x| format!("ca_file {}: {x}", ca.display()))?,
            );
        }
        b.build_rustls().map_err(|x| x.to_string())
    };
    let mut t =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(e.host.as_str()).port(e.port);
    t = match e.security {
        Security::StartTls => t.tls(Tls::Required(tls()?)),
        Security::Tls => t.tls(Tls::Wrapper(tls()?)),
        Security::None => t.tls(Tls::None),
    };
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        t = t.credentials(Credentials::new(u.clone(), p.clone()));
    }
    t.build()
        .send(message)
        .await
        .map(drop)
        .map_err(|x| format!("SMTP {}:{}: {x}", e.host, e.port))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_signature_is_the_rfc_4231_hmac() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
