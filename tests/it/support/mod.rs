//! Test support: a sandbox with a fake runner install, the fake GitHub, and a driver for
//! the real `supervisor` binary that waits on explicit log lines, never on sleeps.

#![allow(dead_code)]

pub mod dockerd;
pub mod events;
pub mod rootfs;

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim::github::{FakeGithub, Options};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// The supervisor binary under test.
pub fn supervisor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_supervisor"))
}

/// A binary of the sim crate, built beside the supervisor by `cargo test --workspace`.
pub fn sim_bin(name: &str) -> PathBuf {
    let p = sim::fixture::sibling_binary(&supervisor_bin(), name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// A temporary runner install and state directory.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub install: PathBuf,
    pub state: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let install = dir.path().join("actions-runner");
        sim::fixture::install_runner(&install, &sim_bin("fake-runner"))
            .expect("install fake runner");
        let state = dir.path().join("state");
        Sandbox {
            dir,
            install,
            state,
        }
    }

    /// The environment for a supervisor against `gh`.
    pub fn env(&self, gh: &FakeGithub) -> BTreeMap<String, String> {
        let mut e: BTreeMap<String, String> =
            sim::fixture::supervisor_env(&gh.url(), "ci", &self.install, &self.state)
                .into_iter()
                .collect();
        e.remove("PATH");
        for (k, v) in [
            ("SUPERVISOR_RUNNER_STOP_GRACE", "5s"),
            ("SUPERVISOR_GITHUB_BACKOFF_BASE", "50ms"),
            ("SUPERVISOR_LOG", "info"),
        ] {
            e.insert(k.to_string(), v.to_string());
        }
        e
    }

    /// Slot `n`'s runner root.
    pub fn slot_root(&self, n: usize) -> PathBuf {
        self.state.join("slots").join(n.to_string())
    }
}

/// Start a fake GitHub with `f` applied to the default options.
pub async fn github(f: impl FnOnce(&mut Options)) -> FakeGithub {
    let mut o = Options::default();
    f(&mut o);
    FakeGithub::start(o).await.expect("fake github starts")
}

/// The supervisor binary, running.
pub struct Daemon {
    pub child: Child,
    pub pid: i32,
    log: Arc<Mutex<Vec<String>>>,
    grew: Arc<Notify>,
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

/// The runner name pattern: `<prefix>-<host>-<slot>-<6 chars>`.
pub fn looks_like_jit_name(name: &str, prefix: &str, slot: usize) -> bool {
    let host = runner_supervisor::naming::this_host();
    name.starts_with(&format!("{prefix}-{host}-{slot}-"))
        && runner_supervisor::naming::is_ours(name, prefix, &host)
}

/// Wait until `cond` holds, checking every 50 ms, for at most `timeout`.
/// For conditions with no event to wait on (a file another process rewrites).
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `supervisor health` with `env`: (exit code, stdout).
pub fn health(env: &BTreeMap<String, String>) -> (Option<i32>, String) {
    let out = std::process::Command::new(supervisor_bin())
        .arg("health")
        .env_clear()
        .envs(env)
        .output()
        .expect("run health");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Silently drop every TCP packet to and from one loopback port, until dropped.
/// Only the test's own port is touched; the rules are removed on drop.
pub struct Blackhole {
    rules: Vec<Vec<String>>,
}

impl Blackhole {
    pub fn port(port: u16) -> Blackhole {
        let p = port.to_string();
        let rules: Vec<Vec<String>> = [["--dport", p.as_str()], ["--sport", p.as_str()]]
            .iter()
            .map(|[k, v]| {
                ["INPUT", "-i", "lo", "-p", "tcp", k, v, "-j", "DROP"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
            .collect();
        for r in &rules {
            let st = std::process::Command::new("iptables")
                .arg("-I")
                .args(r)
                .status()
                .expect("iptables (apt-get install iptables; tests/run does)");
            assert!(st.success(), "iptables -I {r:?} failed");
        }
        Blackhole { rules }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for r in &self.rules {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(r)
                .status();
        }
    }
}

/// A real chronyd, started with `-x` (it never touches the system clock), serving NTP and
/// its command port on loopback ports. Killed (by its PID) on drop.
pub struct Chronyd {
    pub child: Option<std::process::Child>,
    pub ntp_port: u16,
    pub cmd_port: u16,
    pub dir: tempfile::TempDir,
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Chronyd {
    /// Start it with `extra` config lines first (a broken one makes it fail, as in scenario 1).
    /// Returns once chronyc can talk to it, or at once if it exited.
    pub async fn start(extra: &str) -> Chronyd {
        let dir = tempfile::tempdir().unwrap();
        let (ntp_port, cmd_port) = (free_udp_port(), free_udp_port());
        let conf = dir.path().join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "{extra}port {ntp_port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\ncmdport {cmd_port}\nbindcmdaddress 127.0.0.1\ncmdallow 127.0.0.1\nlocal stratum 8\npidfile {}\n",
                dir.path().join("chronyd.pid").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("chronyd")
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chronyd (apt-get install chrony; tests/run does)");
        let mut c = Chronyd {
            child: Some(child),
            ntp_port,
            cmd_port,
            dir,
        };
        let addr = c.cmd_address();
        let mut exited = false;
        let ready = eventually(Duration::from_secs(10), || {
            exited = c.child.as_mut().unwrap().try_wait().unwrap().is_some();
            exited
                || std::process::Command::new("chronyc")
                    .args([
                        "-n",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &c.cmd_port.to_string(),
                        "-c",
                        "tracking",
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success())
        })
        .await;
        assert!(ready, "chronyd did not come up on {addr}");
        c
    }

    pub fn cmd_address(&self) -> String {
        format!("127.0.0.1:{}", self.cmd_port)
    }

    pub fn ntp_address(&self) -> String {
        format!("127.0.0.1:{}", self.ntp_port)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Kill it (our own child, by PID) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The libfaketime library, for shifting one process's wall clock.
pub fn libfaketime() -> String {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libfaketime is missing: apt-get install faketime (tests/run does)")
    .to_string()
}

/// Environment that shifts a process's wall clock by `offset` (libfaketime syntax, e.g.
/// `+7s`) and leaves its monotonic clock alone.
pub fn faketime_env(offset: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), libfaketime()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Wait until `supervisor health` prints `needle`; returns its (exit code, stdout).
pub async fn wait_health(
    env: &BTreeMap<String, String>,
    needle: &str,
    timeout: Duration,
) -> (Option<i32>, String) {
    let mut last = (None, String::new());
    let found = eventually(timeout, || {
        last = health(env);
        last.1.contains(needle)
    })
    .await;
    assert!(found, "health never said {needle:?}: {last:?}");
    last
}

/// `LD_PRELOAD=...,FAKETIME_TIMESTAMP_FILE=...`: the supervisor's clock follows the file.
pub fn faketime_file_env(file: &Path) -> String {
    format!("LD_PRELOAD={},FAKETIME_TIMESTAMP_FILE={},FAKETIME_NO_CACHE=1,FAKETIME_DONT_FAKE_MONOTONIC=1", libfaketime(), file.display())
}

/// Insert `K=V,K=V` pairs into `env`.
pub fn apply(env: &mut BTreeMap<String, String>, kvs: &str) {
    for kv in kvs.split(',') {
        let (k, v) = kv.split_once('=').unwrap();
        env.insert(k.into(), v.into());
    }
}

/// Run a command as nobody: `setpriv` with uid and gid 65534 and no groups.
pub const NOBODY: [&str; 5] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--",
];

/// Give `env` a state directory nobody owns, in a sandbox nobody can enter.
pub fn as_nobody(sb: &Sandbox, env: &mut BTreeMap<String, String>) {
    use std::os::unix::fs::PermissionsExt;
    let state = sb.dir.path().join("nobody-state");
    std::fs::create_dir_all(&state).unwrap();
    nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.insert("SUPERVISOR_STATE_DIR".into(), state.display().to_string());
}

/// A job named `name` that takes `ms` and ends `Succeeded`.
pub fn job(name: &str, ms: u64) -> sim::github::JobSpec {
    sim::github::JobSpec {
        name: name.into(),
        duration_ms: ms,
        result: "Succeeded".into(),
        labels: vec![],
    }
}
