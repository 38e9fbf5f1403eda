//! Log records leave the process through here: each formatted record is
//! queued, and one thread redacts the queue in batches (one redactor call
//! for many records) and writes them out.
//!
//! Invariants: a record is written only after redaction; records written
//! by the log thread itself (what the redactor plugin logs) are only
//! host-scrubbed and written at once, never queued behind themselves;
//! `flush` returns once everything queued before it is written.

use super::redact;
use std::io::Write;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

/// Records redacted together, at most.
const BATCH: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
}

enum Msg {
    Line(tracing::Level, String),
    Flush(mpsc::SyncSender<()>),
}

struct Sink {
    tx: mpsc::SyncSender<Msg>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    static LOG_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn write_out(target: Target, lines: &[String]) {
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        buf.extend_from_slice(l.as_bytes());
        buf.push(b'\n');
    }
    let _ = match target {
        Target::Stdout => std::io::stdout().lock().write_all(&buf),
        Target::Stderr => std::io::stderr().lock().write_all(&buf),
    };
}

fn start(target: Target) -> &'static Sink {
    SINK.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<Msg>(8192);
        std::thread::Builder::new()
            .name("firedrill-logs".into())
            .spawn(move || {
                LOG_THREAD.with(|f| f.set(true));
                while let Ok(first) = rx.recv() {
                    let mut lines = Vec::new();
                    let mut levels = Vec::new();
                    let mut acks = Vec::new();
                    let mut next = Some(first);
                    while let Some(msg) = next.take() {
                        match msg {
                            Msg::Line(level, l) => {
                                levels.push(level);
                                lines.push(l);
                            }
                            Msg::Flush(ack) => acks.push(ack),
                        }
                        if lines.len() < BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    let out = redact::global().redact_lines(lines);
                    write_out(target, &out);
                    let records: Vec<(tracing::Level, String)> =
                        levels.into_iter().zip(out).collect();
                    super::otlp::emit_logs(&records);
                    for ack in acks {
                        let _ = ack.send(());
                    }
                }
            })
            .expect("the log thread starts");
        Sink { tx }
    })
}

/// Waits until every record logged so far is written (at exit).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        let (ack, done) = mpsc::sync_channel(1);
        if sink.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// A `tracing_subscriber` writer whose records go through redaction.
#[derive(Clone, Copy)]
pub struct RedactedWriter(Target);

impl RedactedWriter {
    pub fn new(target: Target) -> RedactedWriter {
        start(target);
        RedactedWriter(target)
    }
}

/// One record, handed over when the formatter drops it.
pub struct Record {
    buf: Vec<u8>,
    target: Target,
    level: tracing::Level,
}

impl Write for Record {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let line = text.trim_end_matches('\n').to_string();
        if line.is_empty() {
            return;
        }
        if LOG_THREAD.with(|f| f.get()) {
            write_out(self.target, &[redact::global().scrub(&line)]);
            return;
        }
        match SINK.get() {
            Some(sink) => {
                let _ = sink.tx.send(Msg::Line(self.level, line));
            }
            None => write_out(self.target, &[redact::global().scrub(&line)]),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactedWriter {
    type Writer = Record;
    fn make_writer(&'a self) -> Record {
        Record {
            buf: Vec::with_capacity(256),
            target: self.0,
            level: tracing::Level::INFO,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Record {
        Record {
            buf: Vec::with_capacity(256),
            target: self.0,
            level: *meta.level(),
        }
    }
}
