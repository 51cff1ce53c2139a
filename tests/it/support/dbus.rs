//! A real `dbus-daemon` on a private bus (a Unix socket in a temporary directory, never
//! the machine's system bus) and the login1 test double on it (`sim`'s `fake-logind`),
//! which authorises every `Inhibit` call as systemd 252's logind does (the polkit action
//! chosen from the whole `what`; `CAP_SYS_BOOT` or a polkit rule needed for a blocking
//! lock), records it, and sees each lock's release.
//!
//! The tests run as root, and logind grants root anything (`CAP_SYS_BOOT`): a supervisor
//! meant to be asked as a service is asked is started under [`AS_A_SERVICE`], which drops
//! that one capability, as a service's user (`User=runner`) has none of it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::sim_bin;

const READY: Duration = Duration::from_secs(20);

/// Kill a child of ours by its PID, and reap it.
async fn end(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// `dbus-daemon` on a private bus, ended (by its PID) by [`PrivateBus::stop`] or on drop.
pub struct PrivateBus {
    child: Child,
    /// The bus's address as the daemon printed it (with its guid), for
    /// `DBUS_SYSTEM_BUS_ADDRESS`.
    pub address: String,
    pub dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Start it from a configuration of its own; returns once it printed its address.
    pub async fn start() -> PrivateBus {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                dir.path().join("bus").display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--nosyslog", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("dbus-daemon (apt-get install dbus-daemon; tests/run does)");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let address = tokio::time::timeout(READY, out.next_line())
            .await
            .expect("dbus-daemon printed no address in time")
            .unwrap()
            .expect("dbus-daemon exited before it was ready");
        assert!(address.starts_with("unix:"), "{address}");
        PrivateBus {
            child,
            address,
            dir,
        }
    }

    /// An address where no bus listens.
    pub fn nowhere(dir: &std::path::Path) -> String {
        format!("unix:path={}", dir.join("no-system-bus").display())
    }

    pub async fn stop(mut self) {
        end(&mut self.child).await;
    }
}

/// A wrapper that starts a program without `CAP_SYS_BOOT` (effective, permitted,
/// inheritable and bounding), so that logind (and its double) ask polkit about it as
/// about a service's user.
pub const AS_A_SERVICE: [&str; 3] = [
    "setpriv",
    "--inh-caps=-sys_boot",
    "--bounding-set=-sys_boot",
];

/// The shipped polkit rule, `systemd/runner-supervisor-inhibit.rules`.
pub fn shipped_rule() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/runner-supervisor-inhibit.rules")
}

/// The actions the shipped rule grants (each `action.id == "…"` it compares with).
pub fn shipped_rule_actions() -> Vec<String> {
    let text = std::fs::read_to_string(shipped_rule()).unwrap();
    let actions: Vec<String> = text
        .split("action.id == \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(String::from)
        .collect();
    assert!(!actions.is_empty(), "no action in {text}");
    actions
}

/// What polkit grants in the double, beyond systemd 252's defaults for a caller with no
/// session.
#[derive(Debug, Clone)]
pub enum Polkit {
    /// No rule installed: the defaults only (a blocking lock is refused).
    NoRule,
    /// `systemd/runner-supervisor-inhibit.rules` installed: the actions it names.
    ShippedRule,
    /// A rule granting exactly these actions.
    Allow(Vec<String>),
}

impl Polkit {
    fn actions(&self) -> Vec<String> {
        match self {
            Polkit::NoRule => vec![],
            Polkit::ShippedRule => shipped_rule_actions(),
            Polkit::Allow(a) => a.clone(),
        }
    }
}

/// One line of the double's record.
#[derive(Debug, Clone, Deserialize)]
pub struct LogindRecord {
    /// `inhibit`, `released`, `denied` or `invalid`.
    pub event: String,
    /// The lock: a release names the call it ends.
    pub id: u64,
    pub what: Option<String>,
    pub who: Option<String>,
    pub why: Option<String>,
    pub mode: Option<String>,
    /// The polkit action logind checked.
    pub action: Option<String>,
    /// `CAP_SYS_BOOT`, `rule`, `default` or `implied`, for a granted lock.
    pub granted_by: Option<String>,
    pub at: chrono::DateTime<chrono::FixedOffset>,
}

/// `fake-logind` owning `org.freedesktop.login1` on a [`PrivateBus`].
pub struct FakeLogind {
    child: Child,
    pub record: PathBuf,
}

impl FakeLogind {
    /// Start it with what `polkit` grants, and wait until it owns the name.
    pub async fn start(bus: &PrivateBus, polkit: Polkit) -> FakeLogind {
        // A new record for each double (one owns the name at a time).
        let record = bus.dir.path().join("logind.jsonl");
        let _ = std::fs::remove_file(&record);
        let mut cmd = Command::new(sim_bin("fake-logind"));
        cmd.arg(&bus.address).arg(&record);
        for a in polkit.actions() {
            cmd.arg("--allow").arg(a);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("fake-logind");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(READY, out.next_line())
            .await
            .expect("fake-logind not ready in time")
            .unwrap();
        assert_eq!(ready.as_deref(), Some("ready"));
        FakeLogind { child, record }
    }

    /// Every call and release so far.
    pub fn records(&self) -> Vec<LogindRecord> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Those of one kind.
    pub fn of(&self, event: &str) -> Vec<LogindRecord> {
        self.records()
            .into_iter()
            .filter(|r| r.event == event)
            .collect()
    }

    /// Wait until `n` records of `event` are there (another process writes the file).
    pub async fn wait(&self, event: &str, n: usize, timeout: Duration) -> Vec<LogindRecord> {
        let ok = super::eventually(timeout, || self.of(event).len() >= n).await;
        assert!(ok, "no {n} {event} record(s): {:#?}", self.records());
        self.of(event)
    }

    pub async fn stop(mut self) {
        end(&mut self.child).await;
    }
}
