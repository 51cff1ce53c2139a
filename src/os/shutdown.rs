//! Signals to supervisor modes: the first SIGTERM or SIGINT drains, the second forces
//! the stop (busy listeners get SIGINT now), the third kills (SIGKILL without grace).
//!
//! It must not: exit the process; only `main` does that.

use tokio::sync::watch;

pub use crate::policy::states::Mode;

/// Watch SIGTERM and SIGINT and escalate `tx` on each.
/// Wait for the first SIGTERM or SIGINT; its name. (Services that have nothing to drain.)
pub async fn first_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(event = "signals_failed", "cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

pub async fn run_signals(tx: std::sync::Arc<watch::Sender<Mode>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(event = "signals_failed", "cannot install signal handlers");
        return;
    };
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let next = tx.borrow().escalate();
        match next {
            Mode::Drain => tracing::info!(
                event = "drain",
                signal = name,
                "draining: no new jobs; idle runners stop now, busy ones may finish their job"
            ),
            Mode::Force => tracing::warn!(
                event = "force",
                signal = name,
                "second signal: stopping busy runners now (their jobs are cancelled)"
            ),
            _ => tracing::warn!(
                event = "kill",
                signal = name,
                "third signal: killing every listener now"
            ),
        }
        let _ = tx.send(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalation() {
        assert_eq!(Mode::Run.escalate(), Mode::Drain);
        assert_eq!(Mode::Drain.escalate(), Mode::Force);
        assert_eq!(Mode::Force.escalate(), Mode::Kill);
        assert_eq!(Mode::Kill.escalate(), Mode::Kill);
    }
}
