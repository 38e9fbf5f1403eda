//! What leaves the process: log records (through [`logs`], redacted in
//! batches), error messages, API error bodies, audit lines and drill reports
//! (through [`redact`]).
//!
//! Invariant: nothing is written out, returned to a client or stored as a
//! report without passing [`redact::global`].

pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod progress;
pub mod redact;

pub use redact::{global as redactor, Redactor};
