//! Protect the listener from its job (issue 18 §4): as soon as a job's `Runner.Worker`
//! (the listener's child that runs the job) appears, its `oom_score_adj` is raised to
//! `[job] oom_score_adj` and its nice value to `[job] nice`. Everything the job starts
//! inherits both, so under memory pressure the kernel's OOM killer picks the job, not the
//! listener or the supervisor. Raising either needs no privilege.

use std::time::Duration;

/// How long after `Running job` the worker is looked for.
const FIND_FOR: Duration = Duration::from_secs(10);
const EVERY: Duration = Duration::from_millis(50);

/// The pid of `parent`'s child whose command is `Runner.Worker`, if it runs.
pub fn find_worker(parent: i32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the command may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if comm == "Runner.Worker" && ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// Wait for `listener`'s `Runner.Worker` and set its `oom_score_adj` and nice value;
/// the worker's pid, or why not.
pub async fn protect(listener: i32, oom_score_adj: i32, nice: i32) -> Result<i32, String> {
    let start = tokio::time::Instant::now();
    let pid = loop {
        if let Some(pid) = find_worker(listener) {
            break pid;
        }
        if start.elapsed() >= FIND_FOR {
            return Err(format!(
                "no Runner.Worker under listener {listener} within {} s",
                FIND_FOR.as_secs()
            ));
        }
        tokio::time::sleep(EVERY).await;
    };
    std::fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        oom_score_adj.to_string(),
    )
    .map_err(|e| format!("cannot set oom_score_adj of Runner.Worker {pid}: {e}"))?;
    // SAFETY: setpriority on one process id; an error is reported through errno.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) };
    if rc != 0 {
        return Err(format!(
            "cannot set the nice value of Runner.Worker {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(pid)
}

/// Debug builds only: read this file instead of this cgroup's `memory.events` (tests).
pub const MEMORY_EVENTS_ENV: &str = "SUPERVISOR_MEMORY_EVENTS";

/// This process's cgroup (v2) `memory.events`, where the kernel counts its OOM kills
/// (`oom_kill`); the listeners and their jobs live in the same cgroup.
fn memory_events() -> Option<std::path::PathBuf> {
    #[cfg(debug_assertions)]
    if let Some(p) = std::env::var_os(MEMORY_EVENTS_ENV) {
        return Some(p.into());
    }
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(
        std::path::Path::new("/sys/fs/cgroup")
            .join(path.trim_start_matches('/'))
            .join("memory.events"),
    )
}

/// How many times the kernel's OOM killer has killed in this cgroup, where it says.
pub fn oom_kills() -> Option<u64> {
    let text = std::fs::read_to_string(memory_events()?).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}
