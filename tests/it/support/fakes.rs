//! The doubles and stand-ins: the fake GitHub and its jobs, a real chronyd on loopback
//! ports, and libfaketime for one process's wall clock.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sim::github::{FakeGithub, Options};

use super::{eventually, free_udp_port};

/// Start a fake GitHub with `f` applied to the default options.
pub async fn github(f: impl FnOnce(&mut Options)) -> FakeGithub {
    let mut o = Options::default();
    f(&mut o);
    FakeGithub::start(o).await.expect("fake github starts")
}

/// A job named `name` that takes `ms` and ends `Succeeded`.
pub fn job(name: &str, ms: u64) -> sim::github::JobSpec {
    sim::github::JobSpec {
        name: name.into(),
        duration_ms: ms,
        result: "Succeeded".into(),
        labels: vec![],
        workflow: None,
        run: None,
        actions: vec![],
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

/// `LD_PRELOAD=...,FAKETIME_TIMESTAMP_FILE=...`: the supervisor's clock follows the file.
pub fn faketime_file_env(file: &Path) -> String {
    format!("LD_PRELOAD={},FAKETIME_TIMESTAMP_FILE={},FAKETIME_NO_CACHE=1,FAKETIME_DONT_FAKE_MONOTONIC=1", libfaketime(), file.display())
}
