//! A real `dbus-daemon` on a private bus (a Unix socket in a temporary directory, never
//! the machine's system bus) and the login1 test double on it (`sim`'s `fake-logind`),
//! which records every `Inhibit` call and every lock's release.

use std::path::PathBuf;
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

/// One line of the double's record.
#[derive(Debug, Clone, Deserialize)]
pub struct LogindRecord {
    /// `inhibit`, `released` or `denied`.
    pub event: String,
    /// The lock: a release names the call it ends.
    pub id: u64,
    pub what: Option<String>,
    pub who: Option<String>,
    pub why: Option<String>,
    pub mode: Option<String>,
    pub at: chrono::DateTime<chrono::FixedOffset>,
}

/// `fake-logind` owning `org.freedesktop.login1` on a [`PrivateBus`].
pub struct FakeLogind {
    child: Child,
    pub record: PathBuf,
}

impl FakeLogind {
    /// Start it (`deny`: refuse every lock) and wait until it owns the name.
    pub async fn start(bus: &PrivateBus, deny: bool) -> FakeLogind {
        let record = bus.dir.path().join("logind.jsonl");
        let mut cmd = Command::new(sim_bin("fake-logind"));
        cmd.arg(&bus.address).arg(&record);
        if deny {
            cmd.arg("--deny");
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
