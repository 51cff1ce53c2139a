//! Memory pressure (issue 18 §4): the kernel's pressure-stall information for memory
//! (`/proc/pressure/memory`, the `some avg10` share of the last 10 s in which some task
//! waited for memory), read every [`EVERY`], shown in status and metrics, and logged once
//! per episode: from the first reading above `[job] memory_pressure_warn` until one below
//! half of it. A kernel without PSI is said once and left alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::status::Board;

/// How often pressure is read: on the 4 s grid of the other periodic checks (a tick, so
/// the three wake the process once).
pub const EVERY: Duration = Duration::from_secs(8);

/// Debug builds only: read this file instead of `/proc/pressure/memory` (tests).
pub const PSI_ENV: &str = "SUPERVISOR_PSI_MEMORY";

fn source() -> PathBuf {
    #[cfg(debug_assertions)]
    if let Some(p) = std::env::var_os(PSI_ENV) {
        return PathBuf::from(p);
    }
    PathBuf::from("/proc/pressure/memory")
}

/// `some avg10` from the PSI text (`some avg10=1.23 avg60=… total=…`).
pub fn some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

/// Read, publish and judge until cancelled.
pub async fn run(board: Arc<Board>, warn: f64, stop: CancellationToken) {
    let path = source();
    let mut episode = false;
    let mut said_missing = false;
    loop {
        match std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| some_avg10(&t))
        {
            Some(p) => {
                board.system(|s| s.memory_pressure = Some(p));
                if !episode && p > warn {
                    episode = true;
                    tracing::warn!(event = "memory_pressure", some_avg10 = p, warn, "memory pressure: tasks waited for memory {p:.1}% of the last 10 s (warn above {warn}%); a job may be near the OOM killer");
                } else if episode && p < warn / 2.0 {
                    episode = false;
                    tracing::info!(
                        event = "memory_pressure_over",
                        some_avg10 = p,
                        "memory pressure is over ({p:.1}%)"
                    );
                }
            }
            None if !said_missing => {
                said_missing = true;
                tracing::info!(event = "memory_pressure_unavailable", path = %path.display(), "no memory pressure information ({}): PSI is off in this kernel", path.display());
            }
            None => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = crate::os::clocks::tick(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_some_share_of_the_last_10_s_is_read() {
        let t = "some avg10=12.50 avg60=3.10 avg300=0.80 total=123456\nfull avg10=4.00 avg60=1.00 avg300=0.20 total=6543\n";
        assert_eq!(some_avg10(t), Some(12.5));
        assert_eq!(some_avg10("full avg10=4.00"), None);
    }
}
