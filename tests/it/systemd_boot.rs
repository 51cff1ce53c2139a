//! The shipped unit under a real systemd: a Debian bookworm root (debootstrap, cached)
//! with systemd 252 as PID 1 in a container on the tests' own Docker engine, host
//! networking and loopback only, the supervisor installed as `systemd/README.md` says
//! (the `runner` user, the configuration file, the token as a `LoadCredential=`
//! credential, the unit). The fake GitHub runs in the test, on 127.0.0.1.
//!
//! What it shows: the unit is `activating` until READY, even while GitHub answers 503;
//! STATUS is set; the watchdog is fed, and a SIGSTOPped supervisor is killed by it and
//! restarted; `systemctl stop` during a job drains it past `TimeoutStopSec` and
//! deregisters; `sudo` works in a job under the default unit and is refused under the
//! hardening drop-in, whose jobs still run; keepalive is on for every listener; the live
//! `systemd-analyze security` scores of both. And the sleep inhibitor against the real
//! logind and polkit (`polkitd` 122), the shipped rule installed as step 9 says: during a
//! job `systemd-inhibit --list` shows the supervisor's two locks, after it none, and
//! nothing is said; without the rule a blocking lock is said once with the fix and jobs
//! run; `doctor` as `runner` asks for the real locks; and `sim`'s `fake-logind` answers
//! every request of a matrix (sleep, shutdown, both; block, delay; with and without the
//! rule) as the real logind does.
//!
//! The container's own setup (not something the unit needs on a real host): every
//! capability this machine has but NET_ADMIN, SYS_TIME, SYS_MODULE and SYS_RAWIO, Docker's
//! seccomp profile off (systemd applies the unit's own), a private cgroup namespace over a
//! tmpfs `/sys/fs/cgroup`, every device allowed to the cgroup (`DevicePolicy=`), tmpfs
//! `/run` and `/run/lock`, `container=docker`, SIGRTMIN+3 to stop, `/` made shared before
//! `exec /sbin/init` (Docker's propagation is private, and `LoadCredential=` needs it),
//! and every unit that would touch the host masked.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use runner_supervisor::status::{KeepaliveState, SlotState, StatusFile};
use sim::github::{FakeGithub, Fault, FaultKind};

use crate::support::dbus::{FakeLogind, Polkit, PrivateBus, AS_A_SERVICE};
use crate::support::dockerd::Dockerd;
use crate::support::events::{parse, Event};
use crate::support::rootfs::{debootstrap, runner_tarball, write_exec};
use crate::support::{github, job, supervisor_bin};

const T: Duration = Duration::from_secs(60);
const IMAGE: &str = "rs-systemd:bookworm";
const BOX: &str = "rs-systemd";
const UNIT: &str = "runner-supervisor";
const TOKEN: &str = "ghp_simulated_token_0000000000000000000000";
/// The test's own drop-in: short timers, and no core dump of the supervisor it kills.
const TIMERS: &str = "[Service]\nWatchdogSec=4s\nRestartSec=1s\nTimeoutStopSec=3s\nLimitCORE=0\n";
const WATCHDOG: Duration = Duration::from_secs(4);

/// Capability names by number, as far as Docker 20.10 knows them.
const CAPS: [&str; 38] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
];

/// Units that would touch the host (kernel settings, mounts, consoles, the network) or
/// wake up for nothing.
const MASKED: &[&str] = &[
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "systemd-modules-load.service",
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-network-generator.service",
    "systemd-networkd-wait-online.service",
    "systemd-remount-fs.service",
    "systemd-firstboot.service",
    "systemd-hwdb-update.service",
    "getty.target",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
];

/// `--cap-add` for every capability this process has, but the four that reach the host.
fn cap_args() -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap();
    CAPS.iter()
        .enumerate()
        .filter(|(i, c)| {
            bnd & (1 << i) != 0
                && !matches!(**c, "NET_ADMIN" | "SYS_TIME" | "SYS_MODULE" | "SYS_RAWIO")
        })
        .flat_map(|(_, c)| ["--cap-add".to_string(), c.to_string()])
        .collect()
}

/// The booted container, removed when dropped.
struct Booted {
    dk: Dockerd,
}

impl Booted {
    /// Boot systemd as PID 1 with `src` at /src (read-only).
    async fn boot(mut dk: Dockerd, src: &Path) -> Booted {
        let init = format!(
            "mount --make-rshared / && for u in {}; do ln -sf /dev/null /etc/systemd/system/$u; done && exec /sbin/init",
            MASKED.join(" ")
        );
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            BOX,
            "--network",
            "host",
            "--cgroupns",
            "private",
            "--tmpfs",
            "/sys/fs/cgroup",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--security-opt",
            "seccomp=unconfined",
            "--device-cgroup-rule",
            "a *:* rwm",
            "-e",
            "container=docker",
            "--stop-signal",
            "SIGRTMIN+3",
            "--entrypoint",
            "/bin/sh",
        ]
        .map(String::from)
        .to_vec();
        args.extend(cap_args());
        args.extend([
            "-v".into(),
            format!("{}:/src:ro", src.display()),
            IMAGE.into(),
            "-c".into(),
            init,
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        dk.must(&refs);
        let b = Booted { dk };
        // Until PID 1 is systemd and has finished booting.
        let deadline = Instant::now() + T;
        let state = loop {
            let up = b.run("systemctl is-system-running --wait").await;
            let state = String::from_utf8_lossy(&up.stdout).trim().to_string();
            if matches!(state.as_str(), "running" | "degraded") || Instant::now() > deadline {
                break state;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            state,
            "running",
            "{}",
            b.sh("systemctl --failed --no-pager; journalctl -b --no-pager | tail -40")
                .await
        );
        b
    }

    /// `bash -c script` in the container.
    async fn run(&self, script: &str) -> std::process::Output {
        tokio::process::Command::new("docker")
            .env("DOCKER_HOST", self.dk.host())
            .args(["exec", BOX, "bash", "-c", script])
            .output()
            .await
            .expect("docker exec")
    }

    /// `bash -c script`, which must succeed: its stdout.
    async fn sh(&self, script: &str) -> String {
        let out = self.run(script).await;
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The unit's properties.
    async fn show(&self, props: &[&str]) -> BTreeMap<String, String> {
        let ps: Vec<String> = props.iter().map(|p| format!("-p {p}")).collect();
        self.sh(&format!("systemctl show {UNIT} {}", ps.join(" ")))
            .await
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    async fn prop(&self, p: &str) -> String {
        self.show(&[p]).await.remove(p).unwrap_or_default()
    }

    /// The supervisor's status file, typed.
    async fn status(&self) -> Option<StatusFile> {
        let out = self.run("cat /var/lib/runner-supervisor/status.json").await;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Wait until every slot listens with keepalive on its listener: the status then.
    async fn settled(&self) -> StatusFile {
        let deadline = Instant::now() + T;
        loop {
            let s = self.status().await;
            if let Some(s) = s.filter(|s| {
                s.slots.iter().all(|x| {
                    x.state == SlotState::Listening
                        && x.keepalive.as_ref().map(|k| k.state) == Some(KeepaliveState::On)
                })
            }) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{:#?}",
                self.status().await.map(|s| s.slots)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `systemd-analyze security` of the loaded unit, live.
    async fn exposure(&self) -> (f64, String) {
        let text = self
            .sh(&format!("systemd-analyze security {UNIT} --no-pager"))
            .await;
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("{text}"))
            .trim_start_matches('→')
            .trim()
            .to_string();
        let score = line
            .split(": ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        (score, line)
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = self.dk.docker(&["rm", "-f", BOX]);
    }
}

/// The inhibitor requests that the real logind and its double must answer alike, as the
/// service's user (no session, no capability) asks them.
const MATRIX: [(&str, &str); 6] = [
    ("sleep", "block"),
    ("shutdown", "block"),
    ("sleep:shutdown", "block"),
    ("sleep", "delay"),
    ("shutdown", "delay"),
    ("sleep:shutdown", "delay"),
];

/// As the service's user: `setpriv` (no PAM, so no login session), as systemd starts it.
const AS_RUNNER: &str = "setpriv --reuid=runner --regid=runner --init-groups";

/// The double's answers to [`MATRIX`], asked by `busctl` without `CAP_SYS_BOOT`.
async fn double_grants(polkit: Polkit) -> Vec<bool> {
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, polkit).await;
    let mut grants = vec![];
    for (what, mode) in MATRIX {
        let out = tokio::process::Command::new(AS_A_SERVICE[0])
            .args(&AS_A_SERVICE[1..])
            .arg("busctl")
            .arg(format!("--address={}", bus.address))
            .args([
                "call",
                "org.freedesktop.login1",
                "/org/freedesktop/login1",
                "org.freedesktop.login1.Manager",
                "Inhibit",
                "ssss",
                what,
                "matrix",
                "matrix",
                mode,
            ])
            .output()
            .await
            .expect("busctl");
        grants.push(out.status.success());
    }
    logind.stop().await;
    bus.stop().await;
    grants
}

/// How many `name` events there are.
fn count(events: &[Event], name: &str) -> usize {
    events.iter().filter(|e| e.name == name).count()
}

impl Booted {
    /// The supervisor's typed events, from the journal.
    async fn events(&self) -> Vec<Event> {
        self.sh(&format!("journalctl -u {UNIT} -o cat --no-pager"))
            .await
            .lines()
            .filter_map(parse)
            .collect()
    }

    /// `systemd-inhibit --list`, as root.
    async fn inhibit_list(&self) -> String {
        self.sh("systemd-inhibit --list --no-pager").await
    }

    /// The real logind's answers to [`MATRIX`], asked by `systemd-inhibit` as `runner`.
    async fn real_grants(&self) -> Vec<bool> {
        let mut grants = vec![];
        for (what, mode) in MATRIX {
            let out = self
                .run(&format!(
                    "{AS_RUNNER} systemd-inhibit --what={what} --mode={mode} --who=matrix --why=matrix true"
                ))
                .await;
            grants.push(out.status.success());
        }
        grants
    }

    /// Wait until polkit has (re)read its rules: a blocking sleep lock granted to
    /// `runner` or not.
    async fn until_polkit(&self, grants: bool) {
        let deadline = Instant::now() + T;
        let probe = format!(
            "{AS_RUNNER} systemd-inhibit --what=sleep --mode=block --who=probe --why=probe true"
        );
        while self.run(&probe).await.status.success() != grants {
            assert!(Instant::now() < deadline, "polkit never granted={grants}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `supervisor doctor` as `runner` with `[host] inhibit = mode`: its inhibit check.
    async fn doctor_as_runner(&self, mode: &str) -> serde_json::Value {
        let out = self
            .run(&format!(
                "cat /etc/runner-supervisor/github_pat | {AS_RUNNER} env HOME=/home/runner SUPERVISOR_CONFIG=/etc/runner-supervisor/supervisor.toml SUPERVISOR_STATE_DIR=/tmp/doctor-state SUPERVISOR_HOST_INHIBIT={mode} supervisor doctor --json --token-stdin"
            ))
            .await;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "inhibit")
            .cloned()
            .unwrap_or_else(|| panic!("{json}"))
    }

    /// A 3 s job named `name`: `systemd-inhibit --list` once the supervisor's locks are
    /// seen (or, when they never come, as the job ends), and once the job is done and
    /// every lock of the supervisor is gone.
    async fn locks_during_a_job(&self, gh: &FakeGithub, name: &str) -> (String, String) {
        gh.enqueue(job(name, 3000), 1);
        assert!(
            gh.wait_for(T, |s| s.running.values().any(|r| r.1.name == name))
                .await
        );
        let deadline = Instant::now() + T;
        let during = loop {
            let list = self.inhibit_list().await;
            let ours = list
                .lines()
                .filter(|l| l.contains("runner-supervisor"))
                .count();
            let done = results(gh, name).len() == 1;
            if ours == 2 || done {
                break list;
            }
            assert!(Instant::now() < deadline, "{list}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            gh.wait_for(T, |s| s.completed.iter().any(|j| j.name == name))
                .await
        );
        let deadline = Instant::now() + T;
        let after = loop {
            let list = self.inhibit_list().await;
            if !list.contains("runner-supervisor") {
                break list;
            }
            assert!(
                Instant::now() < deadline,
                "still held after the job: {list}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if results(gh, name) == ["Succeeded"] && during.contains("runner-supervisor") {
            let ours: Vec<&str> = during
                .lines()
                .filter(|l| l.contains("runner-supervisor"))
                .collect();
            assert_eq!(ours.len(), 2, "{during}");
            for what in ["sleep", "shutdown"] {
                assert!(
                    ours.iter().any(|l| {
                        let cols: Vec<&str> = l.split_whitespace().collect();
                        cols.get(2) == Some(&"runner")
                            && cols.contains(&what)
                            && cols.last() == Some(&"block")
                            && l.contains("a GitHub Actions job is running (slot ")
                    }),
                    "{what}: {during}"
                );
            }
        }
        (during, after)
    }
}

/// The job-started hook: a setuid program (sudo) as a job's step would run it.
const HOOK: &str = "#!/bin/bash\n# The job-started hook: sudo, as a job's `sudo apt-get install` step would.\necho \"$GITHUB_JOB uid=$(id -u) sudo=$(sudo -n id -u 2>/dev/null || echo refused)\" >> /home/runner/jobs.log\n";

/// What the test installs from: the binary, the runner tarball, the repository's unit and
/// drop-in, a configuration, the token, the hook and the test's timers.
fn source_dir(work: &Path, gh: &FakeGithub) -> std::path::PathBuf {
    let src = work.join("src");
    std::fs::create_dir_all(src.join("systemd/runner-supervisor.service.d")).unwrap();
    std::fs::copy(supervisor_bin(), src.join("supervisor")).unwrap();
    runner_tarball(work, &src.join("actions-runner.tar.gz"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for f in [
        "runner-supervisor.service",
        "runner-supervisor.service.d/hardening.conf",
        "runner-supervisor-inhibit.rules",
    ] {
        std::fs::copy(repo.join(f), src.join("systemd").join(f)).unwrap();
    }
    std::fs::write(
        src.join("supervisor.toml"),
        format!(
            r#"# The test's configuration: the fake GitHub on loopback, two slots, the job hook.
[github]
api_url = "{}"
owner = "octo"
repo = "app"
backoff_base = "100ms"

[runner]
dir = "/home/runner/actions-runner"
slots = 2
stop_grace = "2s"
env = {{ ACTIONS_RUNNER_HOOK_JOB_STARTED = "/home/runner/job-started.sh" }}

[network]
# The container shares the host's network namespace: its sysctls are not ours.
set_sysctls = "off"

[clock]
ntp_servers = []
chronyc = "off"

[disk]
prune = "off"

[log]
# Typed events in the journal, read back by the test.
format = "json"
"#,
            gh.url()
        ),
    )
    .unwrap();
    std::fs::write(src.join("github_pat"), format!("{TOKEN}\n")).unwrap();
    write_exec(&src.join("job-started.sh"), HOOK);
    std::fs::write(src.join("timers.conf"), TIMERS).unwrap();
    src
}

/// systemd/README.md steps 2 to 5 and 9 (the polkit rule), as written (the release download replaced by the
/// test's tarball), then the test's own: a timers drop-in and sudo for `runner`, as a
/// self-hosted host that lets jobs `sudo` has.
const INSTALL: &str = r#"set -eux
useradd --system --create-home --shell /bin/bash runner
sudo -u runner -i sh -c 'mkdir -p ~/actions-runner && cd ~/actions-runner && tar xzf /src/actions-runner.tar.gz'
/home/runner/actions-runner/bin/installdependencies.sh
install -m 0755 /src/supervisor /usr/local/bin/supervisor
install -d -m 0750 -o root -g runner /etc/runner-supervisor
install -m 0640 -o root -g runner /src/supervisor.toml /etc/runner-supervisor/
cat /src/github_pat | install -m 0600 -o root -g root /dev/stdin /etc/runner-supervisor/github_pat
install -m 0644 /src/systemd/runner-supervisor.service /etc/systemd/system/
install -m 0644 /src/systemd/runner-supervisor-inhibit.rules /etc/polkit-1/rules.d/50-runner-supervisor-inhibit.rules
install -d /etc/systemd/system/runner-supervisor.service.d
install -m 0644 /src/timers.conf /etc/systemd/system/runner-supervisor.service.d/
install -m 0755 -o runner -g runner /src/job-started.sh /home/runner/job-started.sh
echo 'runner ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/runner
chmod 0440 /etc/sudoers.d/runner
systemctl daemon-reload
systemctl enable runner-supervisor
"#;

/// Monotonic microseconds, the clock systemd's `*TimestampMonotonic` use (one kernel).
fn monotonic_us() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000
}

/// Jobs the fake GitHub saw completed, by result.
fn results(gh: &FakeGithub, prefix: &str) -> Vec<String> {
    gh.state(|s| {
        s.completed
            .iter()
            .filter(|j| j.name.starts_with(prefix))
            .map(|j| j.result.clone())
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_unit_under_a_real_systemd() {
    let began = Instant::now();
    let rootfs = debootstrap(
        "bookworm-systemd-polkit",
        // polkitd needs a logind (`default-logind`), which libpam-systemd provides.
        &[
            "systemd",
            "systemd-sysv",
            "sudo",
            "dbus",
            "libpam-systemd",
            "polkitd",
        ],
    );
    let work = tempfile::Builder::new()
        .prefix("rssd")
        .tempdir_in("/tmp")
        .unwrap();
    let gh = github(|o| o.poll_timeout = Duration::from_secs(5)).await;
    let src = source_dir(work.path(), &gh);
    let mut dk = Dockerd::start().await;
    dk.import_rootfs(&rootfs, IMAGE, &[]);
    let mut b = Booted::boot(dk, &src).await;
    let booted = began.elapsed();
    b.sh(INSTALL).await;

    // 1. Active only after READY: GitHub answers the first three requests with 503.
    gh.fault(Fault {
        method: None,
        path: None,
        body: None,
        kind: FaultKind::Status { status: 503 },
        times: 3,
    });
    let refused =
        |gh: &FakeGithub| gh.state(|s| s.calls.iter().filter(|c| c.status == 503).count());
    b.sh(&format!("systemctl start --no-block {UNIT}")).await;
    let mut activating_after_503 = false;
    let deadline = Instant::now() + T;
    loop {
        let seen_503 = refused(&gh);
        let state = b.prop("ActiveState").await;
        if state == "active" {
            break;
        }
        assert_eq!(
            state,
            "activating",
            "{}",
            b.sh(&format!("journalctl -u {UNIT} --no-pager | tail -20"))
                .await
        );
        activating_after_503 |= seen_503 > 0;
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(activating_after_503, "activating while GitHub answered 503");
    assert_eq!(refused(&gh), 3, "every 503 came before READY");
    let p = b
        .show(&[
            "ExecMainStartTimestampMonotonic",
            "ActiveEnterTimestampMonotonic",
            "StatusText",
            "MainPID",
            "NRestarts",
        ])
        .await;
    let us = |k: &str| p[k].parse::<u64>().unwrap();
    let start_to_active =
        us("ActiveEnterTimestampMonotonic") - us("ExecMainStartTimestampMonotonic");
    // 2. STATUS.
    assert!(p["StatusText"].starts_with("run: "), "{p:?}");
    let main_pid = p["MainPID"].clone();
    let (default_score, default_line) = b.exposure().await;

    // 3. Twenty jobs, each running sudo in its started hook; the watchdog fed meanwhile.
    let pinged_from = b.prop("WatchdogTimestampMonotonic").await;
    let pings_began = Instant::now();
    gh.enqueue(job("cycle", 100), 20);
    let mut pings = std::collections::BTreeSet::from([pinged_from]);
    while results(&gh, "cycle").len() < 20 || pings_began.elapsed() < 2 * WATCHDOG {
        pings.insert(b.prop("WatchdogTimestampMonotonic").await);
        assert!(pings_began.elapsed() < 2 * T, "{:?}", results(&gh, "cycle"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ping_window = pings_began.elapsed();
    let s = b.settled().await;
    let p = b.show(&["MainPID", "NRestarts", "StatusText"]).await;
    assert_eq!(
        (p["MainPID"].as_str(), p["NRestarts"].as_str()),
        (main_pid.as_str(), "0")
    );
    // At half of WatchdogSec: at least one ping every 2 s of the window, bar the edges.
    let expected = (ping_window.as_secs_f64() / (WATCHDOG.as_secs_f64() / 2.0)) as usize;
    assert!(
        pings.len() >= expected.saturating_sub(1).max(3),
        "{} pings in {ping_window:?}",
        pings.len()
    );
    assert!(results(&gh, "cycle").iter().all(|r| r == "Succeeded"));
    let uid = b.sh("id -u runner").await;
    let log = b.sh("cat /home/runner/jobs.log").await;
    assert_eq!(
        log.lines()
            .filter(|l| *l == format!("cycle uid={uid} sudo=0"))
            .count(),
        20,
        "sudo works in every job under the default unit: {log}"
    );
    // Keepalive on for every listener of the run, as the unprivileged `runner`.
    let k = &s.system.keepalive;
    assert_eq!(
        k.listeners_refused,
        0,
        "{k:?}\n{}",
        b.sh(&format!(
            "journalctl -u {UNIT} --no-pager | grep -i -e refus -e cannot | tail -5"
        ))
        .await
    );
    assert_eq!(k.listeners_on, s.counts.listeners_started, "{k:?}");
    assert!(k.listeners_on >= 22, "{k:?}");
    let status_text = b
        .sh("sudo -u runner SUPERVISOR_CONFIG=/etc/runner-supervisor/supervisor.toml SUPERVISOR_STATE_DIR=/var/lib/runner-supervisor supervisor status")
        .await;
    let keepalive_line = status_text
        .lines()
        .find(|l| l.contains("keepalive     listener:"))
        .unwrap_or_else(|| panic!("{status_text}"))
        .trim()
        .to_string();
    assert!(keepalive_line.contains(" 0 refused"), "{keepalive_line}");

    // 3b. The sleep inhibitor against the real logind and polkit, with the shipped rule
    // installed as systemd/README.md says: during a job `systemd-inhibit --list` shows the
    // supervisor's two locks (sleep, shutdown; block; user runner), after it none, and
    // the supervisor never said `inhibit_unavailable`.
    assert_eq!(b.sh("systemctl is-active systemd-logind").await, "active");
    let (inhibit_list, inhibit_after) = b.locks_during_a_job(&gh, "awake").await;
    let events = b.events().await;
    assert_eq!(count(&events, "inhibit_unavailable"), 0, "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.name == "inhibitor_taken" && e.u64("locks") == Some(2)),
        "{events:#?}"
    );
    // The double answers as the real logind and polkit do, with the rule and without.
    let with_rule = b.real_grants().await;
    assert_eq!(
        with_rule,
        [true, true, false, true, true, false],
        "as runner, the rule installed: {MATRIX:?}"
    );
    assert_eq!(double_grants(Polkit::ShippedRule).await, with_rule);
    // doctor, as the service's user, asks for the real locks: granted in both modes.
    for mode in ["block", "delay"] {
        let d = b.doctor_as_runner(mode).await;
        assert_eq!(d["status"], "pass", "{mode}: {d}");
    }

    // 3c. Without the rule: a blocking lock is refused, said once with the fix; jobs run.
    b.sh("rm /etc/polkit-1/rules.d/50-runner-supervisor-inhibit.rules")
        .await;
    b.until_polkit(false).await;
    let without_rule = b.real_grants().await;
    assert_eq!(
        without_rule,
        [false, false, false, true, true, false],
        "as runner, no rule: {MATRIX:?}"
    );
    assert_eq!(double_grants(Polkit::NoRule).await, without_rule);
    let d = b.doctor_as_runner("block").await;
    assert_eq!(d["status"], "warn", "{d}");
    assert!(
        d["fix"]
            .as_str()
            .is_some_and(|f| f.contains("50-runner-supervisor-inhibit.rules")),
        "{d}"
    );
    assert_eq!(b.doctor_as_runner("delay").await["status"], "pass");
    let (none_list, _) = b.locks_during_a_job(&gh, "unruled").await;
    assert!(!none_list.contains("runner-supervisor"), "{none_list}");
    gh.enqueue(job("unruled-again", 200), 1);
    assert!(
        gh.wait_for(T, |s| s.completed.iter().any(|j| j.name == "unruled-again"))
            .await
    );
    assert_eq!(results(&gh, "unruled"), ["Succeeded", "Succeeded"]);
    let events = b.events().await;
    let said: Vec<_> = events
        .iter()
        .filter(|e| e.name == "inhibit_unavailable" && e.level == "WARN")
        .collect();
    assert_eq!(said.len(), 1, "said once: {said:#?}");
    assert!(
        said[0].has("reason", "logind refused the lock on sleep")
            && said[0].has("fix", "50-runner-supervisor-inhibit.rules")
            && said[0].has(
                "fix",
                "it grants the user runner, which this supervisor runs as"
            ),
        "{:?}",
        said[0]
    );
    // The rule back, for the rest of the run.
    b.sh("install -m 0644 /src/systemd/runner-supervisor-inhibit.rules /etc/polkit-1/rules.d/50-runner-supervisor-inhibit.rules").await;
    b.until_polkit(true).await;

    // 4. `systemctl stop` during a job: it drains past TimeoutStopSec=3s and deregisters.
    gh.enqueue(job("drain", 5000), 1);
    assert!(
        gh.wait_for(T, |s| s.running.values().any(|r| r.1.name == "drain"))
            .await
    );
    let stopping = Instant::now();
    b.sh(&format!("systemctl stop {UNIT}")).await;
    let stop_took = stopping.elapsed();
    let p = b.show(&["ActiveState", "Result"]).await;
    assert_eq!(
        (p["ActiveState"].as_str(), p["Result"].as_str()),
        ("inactive", "success")
    );
    assert_eq!(results(&gh, "drain"), ["Succeeded"], "the job finished");
    assert!(
        stop_took > Duration::from_secs(3),
        "past TimeoutStopSec: {stop_took:?}"
    );
    assert!(gh.runners().is_empty(), "deregistered: {:?}", gh.runners());

    // 5. A stopped (SIGSTOP) supervisor is killed by the watchdog and restarted.
    b.sh(&format!("systemctl start {UNIT}")).await;
    b.settled().await;
    let pid = b.prop("MainPID").await;
    let stopped_at = monotonic_us();
    b.sh(&format!("systemctl kill --kill-who=main -s SIGSTOP {UNIT}"))
        .await;
    let deadline = Instant::now() + T;
    let mut killed_after = None;
    loop {
        let p = b
            .show(&[
                "Result",
                "ActiveState",
                "MainPID",
                "NRestarts",
                "InactiveEnterTimestampMonotonic",
                "ExecMainExitTimestampMonotonic",
            ])
            .await;
        let exit: u64 = p["ExecMainExitTimestampMonotonic"].parse().unwrap_or(0);
        if killed_after.is_none() && p["Result"] == "watchdog" && exit > stopped_at {
            killed_after = Some(Duration::from_micros(exit - stopped_at));
        }
        if p["ActiveState"] == "active" && p["MainPID"] != pid && p["NRestarts"] == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "{p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_after = killed_after.expect("Result=watchdog");
    assert!(
        killed_after <= WATCHDOG + Duration::from_secs(1),
        "{killed_after:?}"
    );
    b.settled().await;

    // 6. With the hardening drop-in: jobs still run; sudo is refused, as it says.
    b.sh(&format!("systemctl stop {UNIT} && install -m 0644 /src/systemd/runner-supervisor.service.d/hardening.conf /etc/systemd/system/runner-supervisor.service.d/ && systemctl daemon-reload && systemctl start {UNIT}")).await;
    let (hardened_score, hardened_line) = b.exposure().await;
    gh.enqueue(job("hardened", 100), 2);
    assert!(
        gh.wait_for(T, |s| s
            .completed
            .iter()
            .filter(|j| j.name == "hardened")
            .count()
            == 2)
            .await
    );
    assert_eq!(results(&gh, "hardened"), ["Succeeded", "Succeeded"]);
    let log = b.sh("cat /home/runner/jobs.log").await;
    assert_eq!(
        log.lines()
            .filter(|l| *l == format!("hardened uid={uid} sudo=refused"))
            .count(),
        2,
        "{log}"
    );
    let s = b.settled().await;
    assert_eq!(
        s.system.keepalive.listeners_refused, 0,
        "{:?}",
        s.system.keepalive
    );
    b.sh(&format!("systemctl stop {UNIT}")).await;
    assert!(
        gh.runners().is_empty(),
        "{:?}\n{}",
        gh.runners(),
        b.sh(&format!("systemctl status {UNIT} --no-pager -n 0; journalctl --no-pager -o short-monotonic | grep -v 'INFO.*stream=' | tail -60")).await
    );

    // Every busy period since the rule came back held both locks, hardened ones too.
    let events = b.events().await;
    assert_eq!(count(&events, "inhibit_unavailable"), 1, "{events:#?}");
    assert!(default_score > 8.0, "{default_line}");
    assert!(hardened_score <= 2.5, "{hardened_line}");
    eprintln!(
        "figures: booted in {:.1}s; start -> active {:.2}s (3 answers of 503 first); {} watchdog pings in {:.1}s at WatchdogSec=4s, no restart; SIGSTOP -> killed by the watchdog {:.2}s, restarted; stop during a 5 s job {:.2}s (TimeoutStopSec=3s), job Succeeded, no runner left; live: {default_line}; with hardening.conf: {hardened_line}; after 20 jobs as `runner`: {keepalive_line}; whole test {:.1}s",
        booted.as_secs_f64(),
        start_to_active as f64 / 1e6,
        pings.len(),
        ping_window.as_secs_f64(),
        killed_after.as_secs_f64(),
        stop_took.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    eprintln!(
        "systemd-inhibit --list during a job (the shipped rule installed):\n{inhibit_list}\nafter it:\n{inhibit_after}"
    );
    let _ = b.dk.docker(&["stop", "-t", "20", BOX]);
}
