//! Logging: tracing to stderr, text or JSON, filtered by `log.level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Initialise the global subscriber once. Later calls do nothing.
///
/// A failed write to stderr (its reader gone: a closed pipe, a restarted journald) is
/// dropped silently. tracing-subscriber would otherwise report it with `eprintln!`, which
/// panics on the same broken stderr and kills whichever task was logging: once, the
/// signal task, so SIGTERM went unheard.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
