//! Child processes: spawning with the guarantees every child needs, and reaping orphans.
//!
//! Every child is spawned through [`spawn`]: its own process group, a parent-death signal
//! (SIGKILL, so no listener outlives the supervisor even when the supervisor is SIGKILLed),
//! and registration in the tracked set so the orphan reaper never steals its exit status.
//! Invariant: only this module calls `waitpid` on PIDs it did not spawn through tokio.

use std::collections::HashSet;
use std::io;
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

fn tracked() -> &'static Mutex<HashSet<i32>> {
    static T: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Spawn `cmd` in its own process group with a parent-death SIGKILL, tracked.
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    let parent = nix::unistd::getpid();
    cmd.process_group(0);
    // SAFETY: between fork and exec only async-signal-safe calls are allowed, and no
    // allocation (another thread may have held the allocator's lock at fork). prctl and
    // getppid are system calls; errors are built with `from_raw_os_error`, which stores the
    // number inline and does not allocate (unlike `io::Error::other` or `new`).
    unsafe {
        cmd.pre_exec(move || {
            if let Err(errno) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
                return Err(io::Error::from_raw_os_error(errno as i32));
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut set = tracked().lock().unwrap_or_else(|p| p.into_inner());
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        set.insert(pid as i32);
    }
    Ok(child)
}

/// Forget a child once its status has been collected.
pub fn untrack(pid: i32) {
    tracked()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&pid);
}

/// Become a child subreaper, so orphaned descendants are re-parented to us (PID 1 is one already).
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Reap zombie children that are not ours to wait for (orphans re-parented to us).
/// Returns the PIDs reaped.
pub fn reap_orphans() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut reaped = vec![];
    for pid in children().unwrap_or_else(every_pid) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the last ')': state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<i32>().ok()));
        if state != Some("Z") || ppid != Some(me) {
            continue;
        }
        let set = tracked().lock().unwrap_or_else(|p| p.into_inner());
        if set.contains(&pid) {
            continue;
        }
        if let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
            waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))
        {
            reaped.push(pid);
        }
    }
    reaped
}

/// Our children, from `/proc/self/task/*/children` (only they can be our zombies); `None`
/// when the kernel does not list them.
fn children() -> Option<Vec<i32>> {
    let mut out = vec![];
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let text = std::fs::read_to_string(t.path().join("children")).ok()?;
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// Every PID (the fallback: a scan of /proc).
fn every_pid() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Reap orphans on every SIGCHLD until cancelled (each pass reaps every zombie child, so
/// coalesced signals lose nothing).
pub async fn run_reaper(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut sigchld) = signal(SignalKind::child()) else {
        tracing::warn!(
            event = "reaper_failed",
            "cannot watch SIGCHLD; orphaned processes will not be reaped"
        );
        return;
    };
    // Once at start (orphans adopted before we watched), then on every SIGCHLD: the
    // kernel tells us when there is something to reap; no timer, no scan of /proc.
    for pid in reap_orphans() {
        tracing::debug!(event = "orphan_reaped", pid, "reaped an orphaned process");
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = sigchld.recv() => {}
        }
        for pid in reap_orphans() {
            tracing::debug!(event = "orphan_reaped", pid, "reaped an orphaned process");
        }
    }
}

/// PIDs of `bin/Runner.Listener` processes running from under any of `roots` that are not
/// our own children: strays of an earlier supervisor or of ghostrunner, holding sessions.
pub fn strays(roots: &[std::path::PathBuf]) -> Vec<i32> {
    let roots: Vec<std::path::PathBuf> = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    let me = std::process::id() as i32;
    let set = tracked().lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || set.contains(&pid) {
            continue;
        }
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        if exe.file_name().is_some_and(|n| n == "Runner.Listener")
            && roots.iter().any(|r| exe.starts_with(r))
        {
            out.push(pid);
        }
    }
    out
}

/// Stop strays: SIGINT (so they delete their sessions), then SIGKILL after `grace`.
pub async fn stop_strays(roots: &[std::path::PathBuf], grace: std::time::Duration) -> usize {
    let pids = strays(roots);
    for &pid in &pids {
        tracing::warn!(event = "stray_stop", pid, "a stray Runner.Listener from this runner install holds a session: stopping it (SIGINT)");
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGINT);
    }
    let deadline = tokio::time::Instant::now() + grace;
    for &pid in &pids {
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && tokio::time::Instant::now() < deadline
        {
            // Not our child: no exit notification to wait on but its /proc entry.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::warn!(
                event = "stray_kill",
                pid,
                "the stray ignored SIGINT: SIGKILL"
            );
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    pids.len()
}
