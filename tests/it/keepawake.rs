//! Keeping the machine awake while busy (issue 18 §4), through the binary: logind's
//! inhibitor lock is held exactly from the first busy slot to the last idle one, across
//! slots, against a real `dbus-daemon` on a private bus with `sim`'s `fake-logind`, which
//! records the calls and sees the lock's descriptor close; `inhibit = "off"` makes no
//! call; no logind (or a refusal) is said once and the jobs run as ever; on WSL2 (interop
//! made present for the test) a fake `powershell.exe` is started while busy and ended
//! when idle, killed if it lingers; and `doctor` says whether both are there.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use runner_supervisor::status::SlotState;

use crate::support::dbus::{FakeLogind, PrivateBus};
use crate::support::{eventually, job, setup, wait_gone, Daemon};

const T: Duration = Duration::from_secs(60);

/// A free loopback address for `[metrics] listen`.
fn metrics_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn scrape(addr: std::net::SocketAddr) -> String {
    crate::metrics::http_get(addr, "/metrics").2
}

#[tokio::test]
async fn the_inhibitor_is_held_from_the_first_busy_slot_to_the_last_idle_one() {
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, false).await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    let metrics = metrics_addr();
    for (k, v) in [
        ("SUPERVISOR_SLOTS", "2"),
        ("SUPERVISOR_HOST_INHIBIT", "block"),
        ("DBUS_SYSTEM_BUS_ADDRESS", bus.address.as_str()),
        ("SUPERVISOR_METRICS_LISTEN", &metrics.to_string()),
    ] {
        env.insert(k.into(), v.into());
    }
    let mut d = Daemon::run_listening(&env, 2, T).await;
    sb.wait_status(T, |s| s.system.inhibitor.as_deref() == Some("released"))
        .await;
    assert!(logind.records().is_empty(), "nothing is held while idle");

    // The first busy slot takes the lock.
    gh.enqueue(job("long", 6000), 1);
    let taken = d.wait_event("inhibitor_taken", T).await;
    assert!(
        taken.is("mode", "block")
            && taken.is("what", "sleep:shutdown")
            && taken.u64("slots_busy") == Some(1),
        "{taken:?}"
    );
    let call = logind.wait("inhibit", 1, T).await.remove(0);
    assert_eq!(call.what.as_deref(), Some("sleep:shutdown"));
    assert_eq!(call.who.as_deref(), Some("runner-supervisor"));
    assert_eq!(call.mode.as_deref(), Some("block"));
    let why = call.why.clone().unwrap();
    assert!(
        why.starts_with("a GitHub Actions job is running (slot "),
        "{why}"
    );
    sb.wait_status(T, |s| s.system.inhibitor.as_deref() == Some("held"))
        .await;
    let text = crate::support::cli(&env, &["status"]).stdout;
    assert!(text.contains("keep awake    inhibitor held"), "{text}");
    assert!(
        scrape(metrics).contains("runner_supervisor_inhibitor_held 1"),
        "{}",
        scrape(metrics)
    );

    // The second slot busy too: the same lock, no second call.
    gh.enqueue(job("short", 1000), 1);
    sb.wait_status(T, |s| {
        s.slots
            .iter()
            .filter(|x| x.state == SlotState::Busy)
            .count()
            == 2
    })
    .await;
    let first_idle = d
        .wait_events("job_completed", |e| e.is("job", "short"), 1, T)
        .await;
    if d.count_events("job_completed", |e| e.is("job", "long")) == 0 {
        assert!(
            logind.of("released").is_empty(),
            "released while a slot is still busy: {:#?}",
            logind.records()
        );
        assert_eq!(d.count_events("inhibitor_released", |_| true), 0);
    }
    let last_idle = d
        .wait_events("job_completed", |e| e.is("job", "long"), 1, T)
        .await;
    assert!(first_idle.at < last_idle.at, "the jobs overlapped");

    // The last slot idle: the descriptor is closed, after that and only then.
    let released = logind.wait("released", 1, T).await.remove(0);
    assert_eq!(released.id, call.id);
    assert!(
        released.at >= last_idle.at && call.at <= first_idle.at,
        "held {} .. {}, the jobs ended {} and {}",
        call.at,
        released.at,
        first_idle.at,
        last_idle.at
    );
    let said = d.wait_event("inhibitor_released", T).await;
    assert!(
        said.at >= last_idle.at && said.is("mode", "block"),
        "{said:?}"
    );
    assert_eq!(logind.of("inhibit").len(), 1, "one lock for both slots");
    sb.wait_status(T, |s| s.system.inhibitor.as_deref() == Some("released"))
        .await;
    assert!(scrape(metrics).contains("runner_supervisor_inhibitor_held 0"));

    // The next busy period takes a new one, released again when it ends.
    gh.enqueue(job("again", 300), 1);
    let second = logind.wait("inhibit", 2, T).await.remove(1);
    assert!(second.at > released.at && second.id != call.id);
    d.wait_events("job_completed", |e| e.is("job", "again"), 1, T)
        .await;
    let released = logind.wait("released", 2, T).await;
    assert_eq!(released[1].id, second.id);
    assert_eq!(d.count_events("inhibitor_taken", |_| true), 2);
    assert_eq!(logind.of("inhibit").len(), 2);

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    logind.stop().await;
    bus.stop().await;
}

#[tokio::test]
async fn inhibit_off_makes_no_call() {
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, false).await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_HOST_INHIBIT".into(), "off".into());
    env.insert("DBUS_SYSTEM_BUS_ADDRESS".into(), bus.address.clone());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    gh.enqueue(job("quick", 300), 1);
    d.wait_event("job_completed", T).await;
    let s = sb.wait_status(T, |s| s.system.inhibitor.is_some()).await;
    assert_eq!(s.system.inhibitor.as_deref(), Some("off"));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(logind.records().is_empty(), "{:#?}", logind.records());
    assert_eq!(d.count_events("inhibitor_taken", |_| true), 0);
    logind.stop().await;
    bus.stop().await;
}

/// Two busy periods, one after the other, on one slot.
async fn two_jobs(d: &Daemon, gh: &sim::github::FakeGithub) {
    gh.enqueue(job("one", 200), 1);
    d.wait_events("job_completed", |e| e.is("job", "one"), 1, T)
        .await;
    gh.enqueue(job("two", 200), 1);
    d.wait_events("job_completed", |e| e.is("job", "two"), 1, T)
        .await;
}

#[tokio::test]
async fn without_logind_jobs_run_as_ever_and_it_is_said_once() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_HOST_INHIBIT".into(), "block".into());
    env.insert(
        "DBUS_SYSTEM_BUS_ADDRESS".into(),
        PrivateBus::nowhere(sb.dir.path()),
    );
    let mut d = Daemon::run_listening(&env, 1, T).await;
    two_jobs(&d, &gh).await;
    let said = d.wait_event("inhibit_unavailable", T).await;
    assert_eq!(said.level, "WARN");
    assert!(said.has("reason", "no system D-Bus"), "{said:?}");
    assert!(said.has("fix", "inhibit = \"off\""), "{said:?}");
    assert_eq!(d.count_events("inhibit_unavailable", |_| true), 1);
    let s = sb.wait_status(T, |s| s.jobs_completed == 2).await;
    let word = s.system.inhibitor.unwrap_or_default();
    assert!(word.starts_with("unavailable (no system D-Bus"), "{word}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_refused_lock_is_said_once_with_the_polkit_fix_and_asked_again_each_busy_period() {
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, true).await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_HOST_INHIBIT".into(), "block".into());
    env.insert("DBUS_SYSTEM_BUS_ADDRESS".into(), bus.address.clone());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    two_jobs(&d, &gh).await;
    logind.wait("denied", 2, T).await;
    let said = d.wait_event("inhibit_unavailable", T).await;
    assert!(said.has("reason", "logind refused the lock"), "{said:?}");
    assert!(
        said.has("fix", "polkit") && said.has("fix", "inhibit = \"delay\""),
        "{said:?}"
    );
    assert_eq!(d.count_events("inhibit_unavailable", |_| true), 1);
    sb.wait_status(T, |s| s.jobs_completed == 2).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    logind.stop().await;
    bus.stop().await;
}

/// A fake `powershell.exe` in `dir` that records its start (PID, arguments, how many of
/// our variables it got) and its end in `record`, says `held`, waits for the end of its
/// standard input, and then runs `after`.
fn fake_powershell(dir: &Path, record: &Path, after: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("powershell.exe");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nrec={}\necho \"start $$ $*\" >> \"$rec\"\necho \"env $(env | grep -c -e GITHUB -e SUPERVISOR_)\" >> \"$rec\"\necho held\ncat > /dev/null\necho \"end $$\" >> \"$rec\"\n{after}\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The supervisor's environment on a made-up WSL2 with interop and the fake on PATH.
fn on_wsl(env: &mut BTreeMap<String, String>, dir: &Path) {
    env.insert(
        "PATH".into(),
        format!("{}:{}", dir.display(), std::env::var("PATH").unwrap()),
    );
    env.insert("SUPERVISOR_TEST_WSL_INTEROP".into(), "1".into());
    env.insert("SUPERVISOR_HOST_WINDOWS_KEEP_AWAKE".into(), "auto".into());
}

#[tokio::test]
async fn windows_is_kept_awake_while_busy_by_a_helper_that_ends_when_idle() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    let (dir, record) = (sb.dir.path().join("win"), sb.dir.path().join("ps.log"));
    fake_powershell(&dir, &record, "");
    on_wsl(&mut env, &dir);
    let mut d = Daemon::run_listening(&env, 1, T).await;
    sb.wait_status(T, |s| {
        s.system.windows_keep_awake.as_deref() == Some("released")
    })
    .await;
    assert!(!record.exists(), "no helper while idle");
    gh.enqueue(job("build", 1500), 1);
    let held = d.wait_event("windows_keep_awake_held", T).await;
    let pid = held.u64("pid").unwrap() as i32;
    let log = std::fs::read_to_string(&record).unwrap();
    let start = log.lines().next().unwrap();
    assert!(start.starts_with(&format!("start {pid} ")), "{log}");
    assert!(log.contains("\nenv 0\n"), "none of our variables: {log}");
    // The script it runs, as -EncodedCommand carries it (UTF-16LE, base64).
    let encoded = start.split_whitespace().last().unwrap();
    assert!(start.contains("-NoProfile -NonInteractive -EncodedCommand"));
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let units: Vec<u16> = raw
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let script = String::from_utf16(&units).unwrap();
    assert!(
        script.contains("SetThreadExecutionState([uint32]2147483649)")
            && script.contains("[Console]::In.ReadToEnd()"),
        "{script}"
    );
    sb.wait_status(T, |s| {
        s.system.windows_keep_awake.as_deref() == Some("held")
    })
    .await;
    let done = d.wait_event("job_completed", T).await;
    let released = d.wait_event("windows_keep_awake_released", T).await;
    assert!(released.is("ended", "exited"), "{released:?}");
    assert!(released.at >= done.at);
    assert!(wait_gone(pid, T).await);
    let log = std::fs::read_to_string(&record).unwrap();
    assert!(log.contains(&format!("end {pid}")), "{log}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_windows_helper_that_lingers_after_its_input_closed_is_killed() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    let (dir, record) = (sb.dir.path().join("win"), sb.dir.path().join("ps.log"));
    fake_powershell(&dir, &record, "exec sleep 600");
    on_wsl(&mut env, &dir);
    let mut d = Daemon::run_listening(&env, 1, T).await;
    gh.enqueue(job("build", 300), 1);
    let pid = d
        .wait_event("windows_keep_awake_held", T)
        .await
        .u64("pid")
        .unwrap() as i32;
    let released = d.wait_event("windows_keep_awake_released", T).await;
    assert!(released.is("ended", "killed"), "{released:?}");
    assert!(wait_gone(pid, T).await);
    assert!(
        eventually(T, || std::fs::read_to_string(&record)
            .is_ok_and(|l| l.contains(&format!("end {pid}"))))
        .await
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn doctor_says_whether_logind_and_windows_interop_are_there() {
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, false).await;
    let (sb, _gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_HOST_INHIBIT".into(), "block".into());
    env.insert("DBUS_SYSTEM_BUS_ADDRESS".into(), bus.address.clone());
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(d.status("inhibit"), "pass", "{}", d.check("inhibit"));
    assert!(d
        .reason("inhibit")
        .contains("systemd-logind is on the system bus"));
    env.insert(
        "DBUS_SYSTEM_BUS_ADDRESS".into(),
        PrivateBus::nowhere(sb.dir.path()),
    );
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(d.status("inhibit"), "warn", "{}", d.check("inhibit"));
    assert!(d.reason("inhibit").contains("no system D-Bus"));
    assert!(d.fix("inhibit").contains("inhibit = \"off\""));
    assert!(logind.records().is_empty(), "doctor takes no lock");

    // A made-up WSL2 host: interop and powershell.exe, then interop off.
    let root = sb.dir.path().join("wsl");
    let w = |p: &str, s: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w(
        "proc/sys/kernel/osrelease",
        "5.15.167.4-microsoft-standard-WSL2\n",
    );
    w(
        "mnt/c/Windows/System32/WindowsPowerShell/v1.0/powershell.exe",
        "",
    );
    w(
        "proc/sys/fs/binfmt_misc/WSLInterop",
        "enabled\ninterpreter /init\n",
    );
    env.insert(
        "SUPERVISOR_DOCTOR_HOST_ROOT".into(),
        root.display().to_string(),
    );
    env.insert("SUPERVISOR_HOST_WINDOWS_KEEP_AWAKE".into(), "auto".into());
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(
        d.status("windows awake"),
        "pass",
        "{}",
        d.check("windows awake")
    );
    w("proc/sys/fs/binfmt_misc/WSLInterop", "disabled\n");
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(d.status("windows awake"), "warn");
    assert!(d.fix("windows awake").contains("[interop]"));
    // Off WSL2 there is nothing to say.
    w("proc/sys/kernel/osrelease", "6.1.0-28-amd64\n");
    let d = crate::doctor::doctor(&env).await;
    assert!(d.json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["name"] != "windows awake"));
    logind.stop().await;
    bus.stop().await;
}

#[tokio::test]
async fn a_bad_host_value_is_refused_naming_the_key_and_its_values() {
    let (_sb, _gh, env) = setup(|_| {}).await;
    for (var, key, words) in [
        (
            "SUPERVISOR_HOST_INHIBIT",
            "host.inhibit",
            &["block", "delay", "off"][..],
        ),
        (
            "SUPERVISOR_HOST_WINDOWS_KEEP_AWAKE",
            "host.windows_keep_awake",
            &["auto", "off"][..],
        ),
    ] {
        let mut env = env.clone();
        env.insert(var.into(), "sometimes".into());
        let out = crate::support::Cli::new(&env, &["config"])
            .run_async()
            .await;
        assert_eq!(out.code, Some(64), "{out:?}");
        for part in [key, var].iter().chain(words) {
            assert!(out.stderr.contains(part), "{part}: {}", out.stderr);
        }
    }
}
