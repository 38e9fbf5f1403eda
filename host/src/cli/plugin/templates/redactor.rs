//! @NAME@: a firedrill redactor. Every log line, error, report and API
//! error body passes through it, in batches, after the host has replaced
//! the secrets it knows; it must return exactly one line per line. If it
//! fails, the lines are withheld, never let through.
//!
//! As scaffolded it replaces each of the comma-separated `words` of the
//! policy's config (customer names, internal host names ...) with
//! `[redacted]`. Replace `redact` with your rules; keep it fast.

wit_bindgen::generate!({ path: "wit", world: "firedrill:plugin/redactor", generate_all });

use wasi::config::store as config;

struct Plugin;

impl Guest for Plugin {
    fn redact(lines: Vec<String>) -> Vec<String> {
        let words: Vec<String> = config::get("words")
            .ok()
            .flatten()
            .unwrap_or_default()
            .split(',')
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty())
            .collect();
        lines
            .into_iter()
            .map(|line| {
                if words.iter().any(|w| line.contains(w.as_str())) {
                    words
                        .iter()
                        .fold(line, |l, w| l.replace(w.as_str(), "[redacted]"))
                } else {
                    // Most lines are clean: hand them back without a copy.
                    line
                }
            })
            .collect()
    }
}

export!(Plugin);
