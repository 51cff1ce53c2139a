//! The supervisor binary, running: its stderr kept line by line, its exit awaited, and the
//! listener processes it starts found by their executable.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner_supervisor::status::Summary;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use super::{supervisor_bin, Sandbox};

/// The supervisor binary, running.
pub struct Daemon {
    pub child: Child,
    pub pid: i32,
    log: Arc<Mutex<Vec<String>>>,
    pub(super) grew: Arc<Notify>,
    stdout: Arc<Mutex<String>>,
}

impl Daemon {
    /// Start `supervisor <args>` with exactly `env` (plus PATH and HOME).
    pub async fn start(env: &BTreeMap<String, String>, args: &[&str]) -> Daemon {
        Self::start_wrapped(env, &[], args).await
    }

    /// Start `<wrapper...> supervisor <args>`, e.g. under `unshare` to be PID 1.
    pub async fn start_wrapped(
        env: &BTreeMap<String, String>,
        wrapper: &[&str],
        args: &[&str],
    ) -> Daemon {
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(supervisor_bin());
                c
            }
            None => Command::new(supervisor_bin()),
        };
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "HOME",
                std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
            )
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn supervisor");
        let pid = child.id().unwrap() as i32;
        let log = Arc::new(Mutex::new(Vec::new()));
        let grew = Arc::new(Notify::new());
        let stdout = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let (l2, g2) = (log.clone(), grew.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                l2.lock().unwrap().push(line);
                g2.notify_waiters();
            }
            l2.lock().unwrap().push("<eof>".into());
            g2.notify_waiters();
        });
        let out = child.stdout.take().unwrap();
        let s2 = stdout.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = s2.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Daemon {
            child,
            pid,
            log,
            grew,
            stdout,
        }
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Lines containing every one of `parts`.
    pub fn count(&self, parts: &[&str]) -> usize {
        self.log()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// Wait until `n` lines contain every one of `parts`; panic with the log on timeout.
    pub async fn wait_lines(&self, parts: &[&str], n: usize, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.grew.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let matching: Vec<String> = self
                .log()
                .into_iter()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .collect();
            if matching.len() >= n {
                return matching[n - 1].clone();
            }
            if self.log().last().is_some_and(|l| l == "<eof>") {
                panic!(
                    "the supervisor exited before {n} line(s) with {parts:?}; log:\n{}",
                    self.log().join("\n")
                );
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {n} line(s) with {parts:?}; log:\n{}",
                    self.log().join("\n")
                );
            }
        }
    }

    /// Wait for one line with every one of `parts`.
    pub async fn wait_log(&self, parts: &[&str], timeout: Duration) -> String {
        self.wait_lines(parts, 1, timeout).await
    }

    /// Send a signal to the supervisor.
    /// SIGKILL the supervisor, as a power cut or the OOM killer would, then its listeners
    /// in `sb`'s `slots` slots (nothing is left to stop them), and wait until all are gone.
    pub async fn kill_with_listeners(&mut self, sb: &Sandbox, slots: usize, timeout: Duration) {
        let listeners = listeners(sb, slots);
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait_exit(timeout).await;
        for pid in listeners {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            assert!(wait_gone(pid, timeout).await, "listener {pid} is gone");
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig)
            .expect("signal supervisor");
    }

    /// Wait for the exit; returns (code, stdout).
    pub async fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => panic!(
                "supervisor did not exit within {timeout:?}; log:\n{}",
                self.log().join("\n")
            ),
        };
        // Let the pipe readers finish.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.log().last().is_none_or(|l| l != "<eof>")
            && tokio::time::Instant::now() < deadline
        {
            let n = self.grew.notified();
            let _ = tokio::time::timeout(Duration::from_millis(100), n).await;
        }
        (status.code(), self.stdout.lock().unwrap().clone())
    }
}

impl Daemon {
    /// Wait for the exit and read its summary: one JSON line on stdout, as the JSON log
    /// format prints it (README "The exit summary").
    pub async fn wait_summary(&mut self, timeout: Duration) -> (Option<i32>, Summary) {
        let (code, out) = self.wait_exit(timeout).await;
        let summary = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("the exit summary is not JSON ({e}): {out}"));
        (code, summary)
    }
}

/// PIDs of processes whose executable is `exe` (our fake listeners live in sandboxes).
pub fn pids_of(exe: &Path) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe) {
            out.push(pid);
        }
    }
    out
}

/// Listener processes running from a sandbox's slot roots.
pub fn listeners(sb: &Sandbox, slots: usize) -> Vec<i32> {
    (0..slots)
        .flat_map(|i| pids_of(&sb.slot_root(i).join("bin/Runner.Listener")))
        .collect()
}

/// Wait for a process we did not spawn to end, through a pidfd (an explicit signal).
pub async fn wait_gone(pid: i32, timeout: Duration) -> bool {
    // SAFETY: a plain syscall; a negative result is an error.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return true; // already gone
    }
    // SAFETY: the kernel just gave us this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: we own the pidfd and keep it open for as long as it is registered.
    let afd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.expect("pidfd");
    tokio::time::timeout(timeout, afd.readable()).await.is_ok()
}

impl Daemon {
    /// `supervisor run` with `env`, once `n` listeners have said `Listening for Jobs`.
    pub async fn run_listening(
        env: &BTreeMap<String, String>,
        n: usize,
        timeout: Duration,
    ) -> Daemon {
        let d = Daemon::start(env, &["run"]).await;
        d.wait_listening(n, timeout).await;
        d
    }
}

impl Daemon {
    /// The supervisor's own PID: this process, or, under a wrapper that forks (`unshare
    /// --fork`, which forwards no signal), its child running the supervisor binary.
    pub fn supervisor_pid(&self) -> i32 {
        let bin = supervisor_bin();
        let is_ours =
            |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == bin);
        if is_ours(self.pid) {
            return self.pid;
        }
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", self.pid, self.pid))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .find(|p| is_ours(*p))
            .unwrap_or_else(|| panic!("no supervisor under pid {}", self.pid))
    }
}
