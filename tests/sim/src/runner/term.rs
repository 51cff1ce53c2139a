//! The runner's terminal: its lines on stdout and stderr, mirrored into the diag log
//! (`_diag/Runner_*.log`) as the real runner's trace does.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use chrono::Utc;

use super::utc;

/// The runner's `ITerminal`: stdout and stderr, mirrored into the diag log.
pub(super) struct Term {
    diag: Mutex<Option<File>>,
}

impl Term {
    pub(super) fn new(root: &Path) -> Term {
        let dir = root.join("_diag");
        let file = fs::create_dir_all(&dir).ok().and_then(|_| {
            let name = format!("Runner_{}-utc.log", Utc::now().format("%Y%m%d-%H%M%S"));
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .ok()
        });
        Term {
            diag: Mutex::new(file),
        }
    }

    pub(super) fn trace(&self, level: &str, source: &str, msg: &str) {
        if let Ok(mut g) = self.diag.lock() {
            if let Some(f) = g.as_mut() {
                let _ = writeln!(f, "[{} {level} {source}] {msg}", utc());
            }
        }
        // `ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT`: the same trace on stdout, as `[RUNNER …]`.
        if std::env::var("ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT")
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "[RUNNER {} {level} {source}] {msg}", utc());
            let _ = out.flush();
        }
    }

    /// A Worker trace line, relayed on the listener's stdout as `[WORKER …]` with
    /// `ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT` (the Worker's own diag log is not kept here).
    pub(super) fn worker_trace(&self, level: &str, source: &str, msg: &str) {
        if std::env::var("ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT")
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "[WORKER {} {level} {source}] {msg}", utc());
            let _ = out.flush();
        }
    }

    /// `WriteLine`: stdout, and `WRITE LINE:` in the diag log.
    pub(super) fn line(&self, s: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
        self.trace("INFO", "Terminal", &format!("WRITE LINE: {s}"));
    }

    /// `WriteError`: stderr, and `WRITE ERROR:` in the diag log.
    pub(super) fn error(&self, s: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{s}");
        self.trace("ERR ", "Terminal", &format!("WRITE ERROR: {s}"));
    }

    /// `WriteSuccessMessage`: `√ msg` on stdout, not in the diag log.
    pub(super) fn success(&self, s: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\u{221a} {s}");
        let _ = out.flush();
    }

    /// `WriteSection`: blank line, `# msg`, blank line.
    pub(super) fn section(&self, s: &str) {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\n# {s}\n\n");
        let _ = out.flush();
    }

    pub(super) fn raw(&self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
}
