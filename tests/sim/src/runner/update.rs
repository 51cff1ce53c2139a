//! Self-update: the runner's lines, the detached update script that waits for the listener
//! to exit and then touches `update.finished`, and the exit code that asks for a restart.

use std::fs;
use std::time::Duration;

use chrono::Utc;

use super::{runner_root, utc, Args, Runner};

impl Runner {
    pub(super) async fn self_update(&mut self, code: i32) -> i32 {
        self.term
            .line("Runner update in progress, do not shutdown runner.");
        self.term.line("Downloading 2.337.0 runner");
        self.term.line("Waiting for current job finish running.");
        self.term.line("Generate and execute update script.");
        // The detached update script waits for us to exit, then touches update.finished
        // in its working directory, which it inherits from us.
        if let Ok(exe) = std::env::current_exe() {
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new(exe);
            cmd.arg("update-helper")
                .arg(std::process::id().to_string())
                .arg("--time-scale")
                .arg(self.scale.to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid().map_err(std::io::Error::from)?;
                    Ok(())
                });
            }
            let _ = cmd.spawn();
        }
        self.term
            .line("Runner will exit shortly for update, should be back online within 10 seconds.");
        self.delete_session().await;
        self.term.line("Runner update process finished.");
        code
    }
}

/// The detached update script: wait for the listener to exit, then `touch update.finished`.
pub(super) async fn update_helper(args: &Args) -> i32 {
    let Some(pid) = args.flags.first().and_then(|(p, _)| p.parse::<i32>().ok()) else {
        return 1;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    while nix::sys::signal::kill(pid, None).is_ok() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let root = runner_root();
    let scale = args.time_scale.unwrap_or(1.0);
    tokio::time::sleep(Duration::from_secs_f64(2.0 * scale)).await;
    let stamp = Utc::now().format("%Y%m%d-%H%M%S");
    let log = root.join("_diag").join(format!("SelfUpdate-{stamp}.log"));
    let _ = fs::write(&log, format!("[{}] Update finished.\n", utc()));
    let _ = fs::write("update.finished", b"");
    let _ = fs::rename(&log, log.with_extension("log.succeed"));
    0
}
