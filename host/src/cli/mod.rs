//! One file per command group; each returns the process exit code.

pub mod demo;
pub mod plugin;
pub mod policy;

/// Logs go to stderr (stdout is for results), as text unless
/// `FIREDRILL_LOG_FORMAT=json`; the level comes from `RUST_LOG` (default warn).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("FIREDRILL_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
