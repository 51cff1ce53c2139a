//! Logging: tracing to stderr, text or JSON, filtered by `log.level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Initialise the global subscriber once. Later calls do nothing.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
