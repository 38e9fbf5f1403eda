//! What leaves the process: log records (through [`logs`], redacted in
//! batches), error messages, API error bodies, audit lines and drill reports
//! (through [`redact`]).
//!
//! Invariants: nothing is written out, returned to a client or stored as a
//! report without passing [`redact::global`]. The lowest layer (see
//! `src/layers.rs`): nothing here imports another module of the crate; what
//! it needs from above (the redactor plugin) comes in through a trait
//! ([`redact::PluginRedactor`]) that the higher module implements.

pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod progress;
pub mod redact;

pub use redact::{global as redactor, Redactor};
