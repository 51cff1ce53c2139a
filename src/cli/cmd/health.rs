//! `supervisor health`: read the running supervisor's status file; exit 0 when healthy.

use std::process::ExitCode;

use crate::config::{CliInput, Purpose};
use crate::status::{Health, StatusFile, HEARTBEAT};

/// Check the status file of the configured state directory.
pub fn main(input: CliInput) -> ExitCode {
    let cfg = match super::resolve(&input, Purpose::Local) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = crate::supervisor::status_path(&cfg.state_dir);
    let status: StatusFile = match std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(s) => s,
        None => {
            println!(
                "unhealthy: no status at {} (is the supervisor running?)",
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(status.pid as i32), None).is_ok();
    let age = (crate::os::clocks::wall_now() - status.updated_at)
        .to_std()
        .unwrap_or_default();
    let verdict = if !alive || status.mode == "stopped" {
        println!("unhealthy: supervisor (pid {}) is not running", status.pid);
        Health::Unhealthy
    } else if age > HEARTBEAT * 3 {
        println!("unhealthy: status not updated for {}s", age.as_secs());
        Health::Unhealthy
    } else {
        let states: Vec<String> = status
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i}:{}", s.state))
            .collect();
        if states.is_empty() {
            println!("{:?}: mode {}", status.health, status.mode);
        } else {
            println!(
                "{:?}: mode {}, slots {}, jobs {}",
                status.health,
                status.mode,
                states.join(" "),
                status.jobs_completed
            );
        }
        for r in &status.reasons {
            println!("  {r}");
        }
        // Which runner each slot has, and its job.
        let now = crate::os::clocks::wall_now();
        for (i, s) in status.slots.iter().enumerate() {
            if let Some(runner) = &s.runner {
                let job = match (&s.job, s.job_started_at) {
                    (Some(j), Some(t)) => {
                        format!(", job {j:?} for {}", super::status::human(now - t))
                    }
                    (Some(j), None) => format!(", job {j:?}"),
                    _ => String::new(),
                };
                let keepalive = s
                    .keepalive
                    .as_ref()
                    .map(|k| format!(", keepalive {}", k.state.as_str()))
                    .unwrap_or_default();
                println!("  slot {i} {}: {runner}{job}{keepalive}", s.state);
            }
        }
        for (k, v) in &status.facts {
            if let Some(name) = ["disk_", "autoheal_", "listener_"]
                .iter()
                .find_map(|p| k.strip_prefix(p).map(|n| (p.trim_end_matches('_'), n)))
            {
                println!("  {} {}: {v}", name.0, name.1.replace('_', " "));
            }
        }
        status.health
    };
    if verdict == Health::Unhealthy {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
