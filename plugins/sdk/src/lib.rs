//! Guest side of the firedrill plugin contract (`wit/`, package
//! `firedrill:plugin@0.1.0`).
//!
//! Enable the one feature named after your plugin's world, implement its
//! `Guest` trait, and export it:
//!
//! ```ignore
//! use firedrill_plugin_sdk::redactor::{export, Guest};
//! struct Mine;
//! impl Guest for Mine {
//!     fn redact(lines: Vec<String>) -> Vec<String> { lines }
//! }
//! export!(Mine);
//! ```
//!
//! Each world module also carries `Config` (the policy's `[config]` table) and,
//! where the world imports logging, `Log`. The policy must still grant them.

/// One world's bindings plus the `Config` helper every world shares.
macro_rules! world {
    ($module:ident, $world:literal, $bindings:literal $(, $log:ident)?) => {
        pub mod $module {
            wit_bindgen::generate!({
                path: "../../wit",
                world: $world,
                pub_export_macro: true,
                default_bindings_module: $bindings,
                generate_all,
            });
            use self::wasi::config::store;

            /// The policy's `[config]` table.
            pub struct Config;
            impl Config {
                /// The value under `key`, if set.
                pub fn get(key: &str) -> Option<String> {
                    store::get(key).ok().flatten()
                }
                /// `key` parsed, `default` when unset; an unparsable value is an error naming the key.
                pub fn parse_or<T: core::str::FromStr>(key: &str, default: T) -> Result<T, String> {
                    match store::get(key) {
                        Ok(None) => Ok(default),
                        Ok(Some(v)) => v.trim().parse().map_err(|_| format!("config `{key}`: cannot parse {v:?}")),
                        Err(store::Error::Upstream(m) | store::Error::Io(m)) => Err(format!("config `{key}`: {m}")),
                    }
                }
                /// Every key and value.
                pub fn all() -> Vec<(String, String)> {
                    store::get_all().unwrap_or_default()
                }
            }
            $( log_helpers!($log); )?
        }
    };
}

#[allow(unused_macros)] // only the worlds that import logging use it
macro_rules! log_helpers {
    (log) => {
        pub use self::firedrill::plugin::types::*;

        /// Log records go to the agent's log, tagged with the plugin's name.
        pub struct Log;
        impl Log {
            pub fn debug(message: &str) {
                wasi::logging::logging::log(wasi::logging::logging::Level::Debug, "", message)
            }
            pub fn info(message: &str) {
                wasi::logging::logging::log(wasi::logging::logging::Level::Info, "", message)
            }
            pub fn warn(message: &str) {
                wasi::logging::logging::log(wasi::logging::logging::Level::Warn, "", message)
            }
        }
    };
}

#[cfg(feature = "dump-planner")]
world!(
    dump_planner,
    "firedrill:plugin/dump-planner",
    "firedrill_plugin_sdk::dump_planner",
    log
);
#[cfg(feature = "verifier")]
world!(
    verifier,
    "firedrill:plugin/verifier",
    "firedrill_plugin_sdk::verifier",
    log
);
#[cfg(feature = "retention")]
world!(
    retention,
    "firedrill:plugin/retention",
    "firedrill_plugin_sdk::retention",
    log
);
#[cfg(feature = "authorizer")]
world!(
    authorizer,
    "firedrill:plugin/authorizer",
    "firedrill_plugin_sdk::authorizer",
    log
);
#[cfg(feature = "redactor")]
world!(
    redactor,
    "firedrill:plugin/redactor",
    "firedrill_plugin_sdk::redactor"
);
#[cfg(feature = "notifier")]
world!(
    notifier,
    "firedrill:plugin/notifier",
    "firedrill_plugin_sdk::notifier",
    log
);
