//! systemd's notify protocol through the real binary and a real Unix datagram socket as
//! `NOTIFY_SOCKET`: READY, STATUS, WATCHDOG, STOPPING and EXTEND_TIMEOUT_USEC in order;
//! and a stalled main loop (a debug build's test hook) stops the watchdog pings. The
//! shipped unit and hardening drop-in verify, with their `systemd-analyze security` scores.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{eventually, github, listeners, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

/// Every datagram received on a fresh NOTIFY_SOCKET, with when it came.
struct NotifySocket {
    path: std::path::PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
        let got = Arc::new(Mutex::new(vec![]));
        let g = got.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf).await {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                g.lock().unwrap().push((Instant::now(), m));
            }
        });
        NotifySocket { path, got, task }
    }
    fn messages(&self) -> Vec<(Instant, String)> {
        self.got.lock().unwrap().clone()
    }
    fn texts(&self) -> Vec<String> {
        self.messages().into_iter().map(|m| m.1).collect()
    }
    fn index(&self, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.texts().iter().position(|m| pred(m))
    }
    fn pings(&self) -> Vec<Instant> {
        self.messages()
            .into_iter()
            .filter(|m| m.1 == "WATCHDOG=1\n")
            .map(|m| m.0)
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn ready_status_watchdog_stopping_and_extend_come_in_order() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let n = NotifySocket::bind(sb.dir.path());
    let mut env = sb.env(&gh);
    env.insert("NOTIFY_SOCKET".into(), n.path.display().to_string());
    // Pings every second.
    env.insert("WATCHDOG_USEC".into(), "2000000".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    assert!(eventually(T, || n.index(|m| m.starts_with("READY=1\n")).is_some()).await);
    let first = &n.texts()[0];
    assert!(
        first.starts_with("READY=1\nSTATUS=run: "),
        "READY comes first, with a status: {first:?}"
    );
    // The listener never sees the socket (its environment is an allow-list).
    let pid = listeners(&sb, 1)[0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains("NOTIFY_SOCKET"));

    gh.enqueue(crate::support::job("build", 2500), 1);
    d.wait_events("runner_job_started", |e| e.is("job", "build"), 1, T)
        .await;
    assert!(
        eventually(T, || n
            .index(|m| m.starts_with("STATUS=run: 1 busy"))
            .is_some())
        .await,
        "{:?}",
        n.texts()
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, _) = d.wait_exit(T).await;
    assert_eq!(code, Some(0));
    let texts = n.texts();
    let ready = n.index(|m| m.starts_with("READY=1")).unwrap();
    let busy = n.index(|m| m.starts_with("STATUS=run: 1 busy")).unwrap();
    let stopping = n
        .index(|m| m.starts_with("STOPPING=1\nSTATUS=drain: "))
        .unwrap_or_else(|| panic!("{texts:?}"));
    let extend = n
        .index(|m| m.starts_with("EXTEND_TIMEOUT_USEC="))
        .unwrap_or_else(|| panic!("{texts:?}"));
    assert!(
        ready < busy && busy < stopping && stopping < extend,
        "{texts:?}"
    );
    // While the job drains, the stop may take the drain budget: 15 min + 30 s grace + 30 s.
    let usec: u64 = texts[extend]
        .trim()
        .trim_start_matches("EXTEND_TIMEOUT_USEC=")
        .parse()
        .unwrap();
    assert!((900_000_000..=960_000_000).contains(&usec), "{usec}");
    assert!(
        texts.iter().all(|m| m.starts_with("READY=1")
            || m.starts_with("STATUS=")
            || m == "WATCHDOG=1\n"
            || m.starts_with("STOPPING=1")
            || m.starts_with("EXTEND_TIMEOUT_USEC=")),
        "{texts:?}"
    );
    // Pings all along, never further apart than WATCHDOG_USEC.
    let pings = n.pings();
    assert!(pings.len() >= 3, "{texts:?}");
    let gap = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        gap < Duration::from_secs(2),
        "a gap of {gap:?} between pings"
    );
}

#[tokio::test]
async fn a_stalled_main_loop_stops_the_watchdog_pings() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let n = NotifySocket::bind(sb.dir.path());
    let mut env = sb.env(&gh);
    env.insert("NOTIFY_SOCKET".into(), n.path.display().to_string());
    env.insert("WATCHDOG_USEC".into(), "400000".into());
    // The test build's hook: block the runtime's one thread 1.5 s after start, as a
    // hung supervisor would.
    env.insert("SUPERVISOR_TEST_STALL_AFTER".into(), "1500".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("test_stall", T).await;
    let before = n.pings();
    assert!(
        before.len() >= 3,
        "it pinged until the stall: {:?}",
        n.texts()
    );
    // Ten ping intervals (200 ms each) with none: systemd would kill it after 400 ms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        let next = n.got.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            n.pings().len() == before.len(),
            "a ping after the stall (message {next})"
        );
    }
    // What systemd does then: SIGKILL (SIGABRT first, which a blocked thread cannot
    // catch either).
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(T).await;
}

/// Settings that make systemd set NoNewPrivileges for an unprivileged service.
pub const NNP_IMPLIED_BY: &[&str] = &[
    "NoNewPrivileges",
    "SystemCallFilter",
    "SystemCallArchitectures",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictFileSystems",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectClock",
    "ProtectHostname",
    "MemoryDenyWriteExecute",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "DynamicUser",
];

/// `systemd-analyze security --offline` of `unit`: its overall exposure.
fn exposure(dir: &std::path::Path, name: &str, unit: &str) -> f64 {
    let path = dir.join(name);
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    println!("{name}: {}", line.trim_start_matches('→').trim());
    score
}

/// The unit with the drop-in's [Service] lines added, as systemd merges them.
fn with_drop_in(unit: &str, drop_in: &str) -> String {
    let extra: String = drop_in
        .lines()
        .filter(|l| !l.starts_with('[') && !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    unit.replace("\n[Install]", &format!("{extra}\n[Install]"))
}

#[test]
fn the_unit_is_type_notify_and_the_hardening_drop_in_scores_ok() {
    let unit = include_str!("../../systemd/runner-supervisor.service");
    let drop_in = include_str!("../../systemd/runner-supervisor.service.d/hardening.conf");
    assert!(unit.contains("\nType=notify\n") && unit.contains("\nNotifyAccess=main\n"));
    assert!(unit.contains("\nWatchdogSec="));
    let t = tempfile::tempdir().unwrap();
    let local = |u: &str| {
        u.replace(
            "ExecStart=/usr/local/bin/supervisor",
            &format!("ExecStart={}", crate::support::supervisor_bin().display()),
        )
    };
    let default = exposure(t.path(), "default.service", &local(unit));
    let hardened = exposure(
        t.path(),
        "hardened.service",
        &local(&with_drop_in(unit, drop_in)),
    );
    // The default unit sandboxes only what costs a job nothing (RemoveIPC=): its score is
    // that of an unsandboxed service, as jobs run inside it with sudo.
    assert!(default > hardened + 5.0, "default unit {default}");
    assert!(hardened <= 2.5, "hardened {hardened}");
    // For a service with User=, each of these implies NoNewPrivileges=yes (systemd's
    // exec_context_get_effective_nnp / context_has_no_new_privileges): sudo and every
    // setuid program in every job would fail. None is in the default unit.
    for implies_nnp in NNP_IMPLIED_BY {
        assert!(
            !unit
                .lines()
                .any(|l| l.starts_with(&format!("{implies_nnp}="))),
            "{implies_nnp}= in the default unit breaks sudo in jobs"
        );
    }
    assert!(unit.contains("\nRemoveIPC=yes\n"));
    // The drop-in keeps what the supervisor needs: pidfd_getfd and netlink (sock_diag).
    assert!(drop_in.contains("SystemCallFilter=@system-service pidfd_getfd"));
    assert!(drop_in.contains("AF_NETLINK"));
    assert!(
        !drop_in.contains("\nMemoryDenyWriteExecute=yes"),
        "the runner JITs"
    );
    // Both verify as systemd would load them.
    for (name, u) in [
        ("a.service", local(unit)),
        ("b.service", local(&with_drop_in(unit, drop_in))),
    ] {
        let u = u
            .replace("User=runner", "User=root")
            .replace("Group=runner", "Group=root");
        let p = t.path().join(name);
        std::fs::write(&p, u).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{name}: {err}"
        );
    }
}
