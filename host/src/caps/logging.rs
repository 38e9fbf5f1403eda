//! `wasi:logging/logging`: a plugin's log records become the agent's, tagged
//! with the plugin's name.
//!
//! Grant: `logging = true`. Bounds: at most 1000 records per call, 4 KiB per
//! message; the rest is dropped and the drop itself logged once.

use super::bindings::wasi::logging::logging::{self, Level};
use super::{Call, CapState, Capability};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

const MAX_RECORDS_PER_CALL: u32 = 1000;
const MAX_MESSAGE_BYTES: usize = 4096;

pub struct LoggingCap {
    plugin: Arc<str>,
    records: u32,
}

impl LoggingCap {
    pub(crate) fn new(plugin: Arc<str>) -> LoggingCap {
        LoggingCap { plugin, records: 0 }
    }
}

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl logging::Host for LoggingCap {
    fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
        self.records += 1;
        if self.records > MAX_RECORDS_PER_CALL {
            if self.records == MAX_RECORDS_PER_CALL + 1 {
                tracing::warn!(target: "firedrill::plugin", plugin = %self.plugin, "plugin logs more than {MAX_RECORDS_PER_CALL} records in one call; dropping the rest");
            }
            return Ok(());
        }
        let plugin = &*self.plugin;
        let context = clip(&context, 256);
        let message = clip(&message, MAX_MESSAGE_BYTES);
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "firedrill::plugin", $lvl, plugin, context, "{message}")
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error | Level::Critical => emit!(tracing::Level::ERROR),
        }
        Ok(())
    }
}

struct Data;
impl HasData for Data {
    type Data<'a> = &'a mut LoggingCap;
}

impl Capability for LoggingCap {
    type Grant = bool;
    const IMPORTS: &'static [&'static str] = &["wasi:logging/logging@0.1.0-draft"];
    const EXAMPLE: &'static str = "logging = true";

    fn granted(grant: &bool) -> bool {
        *grant
    }

    fn for_call(_: &bool, call: &Call<'_>) -> LoggingCap {
        LoggingCap::new(call.plugin.clone())
    }

    fn add_to_linker(
        linker: &mut Linker<CapState>,
        get: fn(&mut CapState) -> &mut LoggingCap,
    ) -> wasmtime::Result<()> {
        logging::add_to_linker::<CapState, Data>(linker, get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logging::Host;
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_are_tagged_clipped_and_bounded() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let mut cap = LoggingCap::new("my-verifier".into());
            cap.log(Level::Info, "ctx".into(), "hello".into()).unwrap();
            cap.log(Level::Warn, "".into(), "é".repeat(5000)).unwrap();
            for _ in 0..2000 {
                cap.log(Level::Info, "".into(), "spam".into()).unwrap();
            }
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.contains("my-verifier") && out.contains("hello"),
            "{out}"
        );
        let longest = out.lines().map(|l| l.len()).max().unwrap();
        assert!(
            longest < MAX_MESSAGE_BYTES + 300,
            "a line of {longest} bytes"
        );
        assert_eq!(out.matches("spam").count() as u32, MAX_RECORDS_PER_CALL - 2);
        assert_eq!(out.matches("dropping the rest").count(), 1);
    }
}
