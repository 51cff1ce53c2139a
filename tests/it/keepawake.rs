//! Keeping the machine awake while busy (issues 18 §4 and 25), through the binary:
//! logind's inhibitor locks, one on sleep and one on shutdown, are held exactly from the
//! first busy slot to the last idle one, across slots, against a real `dbus-daemon` on a
//! private bus with `sim`'s `fake-logind`, which authorises each call as systemd 252's
//! logind does (the polkit action chosen from the whole `what`, so a combined
//! `sleep:shutdown` is checked as the lid switch; a caller without `CAP_SYS_BOOT` needs
//! polkit's defaults or a rule), records the calls and sees each descriptor close. The
//! supervisor runs as a service's user is to logind (without `CAP_SYS_BOOT`): the shipped
//! rule grants block mode, polkit's defaults delay mode, no rule refuses block mode (said
//! once, jobs run as ever), root is granted anything. `inhibit = "off"` makes no call; no
//! logind is said once; `doctor` asks for the real locks and lets them go at once; on
//! WSL2 (interop made present for the test) a fake `powershell.exe` is started while busy
//! and ended when idle, killed if it lingers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use runner_supervisor::status::SlotState;

use crate::support::dbus::{FakeLogind, LogindRecord, Polkit, PrivateBus, AS_A_SERVICE};
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

/// `supervisor run` as a service's user is to logind (no `CAP_SYS_BOOT`), once `n`
/// listeners listen.
async fn run_as_a_service(env: &BTreeMap<String, String>, n: usize) -> Daemon {
    let d = Daemon::start_wrapped(env, &AS_A_SERVICE, &["run"]).await;
    d.wait_listening(n, T).await;
    d
}

/// The supervisor's environment for logind on `bus` in `mode`.
fn on_bus(env: &mut BTreeMap<String, String>, bus: &PrivateBus, mode: &str) {
    env.insert("SUPERVISOR_HOST_INHIBIT".into(), mode.into());
    env.insert("DBUS_SYSTEM_BUS_ADDRESS".into(), bus.address.clone());
}

const BLOCK_SLEEP: &str = "org.freedesktop.login1.inhibit-block-sleep";
const BLOCK_SHUTDOWN: &str = "org.freedesktop.login1.inhibit-block-shutdown";

/// The locks of one busy period: one on sleep, one on shutdown, each checked against its
/// own polkit action in `mode` and granted `by`.
fn one_lock_each(calls: &[LogindRecord], mode: &str, by: &str) {
    let mut whats: Vec<&str> = calls.iter().map(|c| c.what.as_deref().unwrap()).collect();
    whats.sort();
    assert_eq!(whats, ["shutdown", "sleep"], "{calls:#?}");
    for c in calls {
        let what = c.what.as_deref().unwrap();
        assert_eq!(
            c.action.as_deref(),
            Some(format!("org.freedesktop.login1.inhibit-{mode}-{what}").as_str()),
            "{c:?}"
        );
        assert_eq!(c.mode.as_deref(), Some(mode), "{c:?}");
        assert_eq!(c.granted_by.as_deref(), Some(by), "{c:?}");
        assert_eq!(c.who.as_deref(), Some("runner-supervisor"));
    }
}

/// SIGTERM: the supervisor exits 0; then the double and its bus are ended.
async fn stop(mut d: Daemon, logind: FakeLogind, bus: PrivateBus) {
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    logind.stop().await;
    bus.stop().await;
}

#[tokio::test]
async fn the_inhibitor_is_held_from_the_first_busy_slot_to_the_last_idle_one() {
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, Polkit::ShippedRule).await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    let metrics = metrics_addr();
    on_bus(&mut env, &bus, "block");
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    env.insert("SUPERVISOR_METRICS_LISTEN".into(), metrics.to_string());
    let d = run_as_a_service(&env, 2).await;
    sb.wait_status(T, |s| s.system.inhibitor.as_deref() == Some("released"))
        .await;
    assert!(logind.records().is_empty(), "nothing is held while idle");

    // The first busy slot takes the locks, one on sleep and one on shutdown, which the
    // shipped polkit rule grants to a service.
    gh.enqueue(job("long", 6000), 1);
    let taken = d.wait_event("inhibitor_taken", T).await;
    assert!(
        taken.is("mode", "block")
            && taken.is("what", "sleep:shutdown")
            && taken.u64("locks") == Some(2)
            && taken.u64("slots_busy") == Some(1),
        "{taken:?}"
    );
    let calls = logind.wait("inhibit", 2, T).await;
    one_lock_each(&calls, "block", "rule");
    assert!(logind.of("denied").is_empty(), "{:#?}", logind.records());
    let why = calls[0].why.clone().unwrap();
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

    // The second slot busy too: the same locks, no more calls.
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

    // The last slot idle: both descriptors closed, after that and only then.
    let released = logind.wait("released", 2, T).await;
    let mut ids: Vec<u64> = released.iter().map(|r| r.id).collect();
    ids.sort();
    assert_eq!(ids, [calls[0].id, calls[1].id]);
    for (r, c) in released.iter().zip(&calls) {
        assert!(
            r.at >= last_idle.at && c.at <= first_idle.at,
            "held {} .. {}, the jobs ended {} and {}",
            c.at,
            r.at,
            first_idle.at,
            last_idle.at
        );
    }
    let said = d.wait_event("inhibitor_released", T).await;
    assert!(
        said.at >= last_idle.at && said.is("mode", "block") && said.u64("locks") == Some(2),
        "{said:?}"
    );
    assert_eq!(
        logind.of("inhibit").len(),
        2,
        "one pair of locks for both slots"
    );
    sb.wait_status(T, |s| s.system.inhibitor.as_deref() == Some("released"))
        .await;
    assert!(scrape(metrics).contains("runner_supervisor_inhibitor_held 0"));

    // The next busy period takes new ones, released again when it ends.
    gh.enqueue(job("again", 300), 1);
    let second = logind.wait("inhibit", 4, T).await.split_off(2);
    one_lock_each(&second, "block", "rule");
    assert!(second.iter().all(|c| c.at > released[1].at));
    d.wait_events("job_completed", |e| e.is("job", "again"), 1, T)
        .await;
    logind.wait("released", 4, T).await;
    assert_eq!(d.count_events("inhibitor_taken", |_| true), 2);
    assert_eq!(d.count_events("inhibit_unavailable", |_| true), 0);
    assert_eq!(logind.of("inhibit").len(), 4);

    stop(d, logind, bus).await;
}

#[tokio::test]
async fn delay_locks_are_granted_by_polkits_defaults_without_a_rule() {
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, Polkit::NoRule).await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    on_bus(&mut env, &bus, "delay");
    let d = run_as_a_service(&env, 1).await;
    gh.enqueue(job("build", 1500), 1);
    let taken = d.wait_event("inhibitor_taken", T).await;
    assert!(
        taken.is("mode", "delay") && taken.u64("locks") == Some(2),
        "{taken:?}"
    );
    one_lock_each(&logind.wait("inhibit", 2, T).await, "delay", "default");
    sb.wait_status(T, |s| s.system.inhibitor.as_deref() == Some("held"))
        .await;
    d.wait_event("job_completed", T).await;
    logind.wait("released", 2, T).await;
    assert!(logind.of("denied").is_empty(), "{:#?}", logind.records());
    assert_eq!(d.count_events("inhibit_unavailable", |_| true), 0);
    stop(d, logind, bus).await;
}

#[tokio::test]
async fn root_is_granted_every_lock_without_asking_polkit() {
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, Polkit::NoRule).await;
    let (_sb, gh, mut env) = setup(|_| {}).await;
    on_bus(&mut env, &bus, "block");
    // The test's own user, root, with CAP_SYS_BOOT: no wrapper.
    let d = Daemon::run_listening(&env, 1, T).await;
    // Long enough that the slot is still busy when the monitor looks, under any load.
    gh.enqueue(job("build", 1500), 1);
    one_lock_each(&logind.wait("inhibit", 2, T).await, "block", "CAP_SYS_BOOT");
    d.wait_event("job_completed", T).await;
    logind.wait("released", 2, T).await;
    assert_eq!(d.count_events("inhibit_unavailable", |_| true), 0);
    stop(d, logind, bus).await;
}

#[tokio::test]
async fn inhibit_off_makes_no_call() {
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, Polkit::ShippedRule).await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    on_bus(&mut env, &bus, "off");
    let mut d = run_as_a_service(&env, 1).await;
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

/// Two busy periods, one after the other, on one slot (each long enough that the slot is
/// still busy when the monitor looks, under any load).
async fn two_jobs(d: &Daemon, gh: &sim::github::FakeGithub) {
    gh.enqueue(job("one", 1000), 1);
    d.wait_events("job_completed", |e| e.is("job", "one"), 1, T)
        .await;
    gh.enqueue(job("two", 1000), 1);
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
    let logind = FakeLogind::start(&bus, Polkit::NoRule).await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    on_bus(&mut env, &bus, "block");
    let d = run_as_a_service(&env, 1).await;
    two_jobs(&d, &gh).await;
    // Each busy period asks for both locks again; polkit refuses each by its own action.
    let denied = logind.wait("denied", 4, T).await;
    for pair in denied.chunks(2) {
        let mut actions: Vec<&str> = pair.iter().map(|r| r.action.as_deref().unwrap()).collect();
        actions.sort();
        assert_eq!(actions, [BLOCK_SHUTDOWN, BLOCK_SLEEP], "{denied:#?}");
    }
    let said = d.wait_event("inhibit_unavailable", T).await;
    assert!(
        said.has("reason", "logind refused the lock on sleep"),
        "{said:?}"
    );
    assert!(said.has("reason", BLOCK_SHUTDOWN), "{said:?}");
    assert!(
        said.has("reason", "AccessDenied: Permission denied"),
        "{said:?}"
    );
    assert!(said.is("what", "sleep:shutdown"), "{said:?}");
    assert!(
        said.has("fix", "50-runner-supervisor-inhibit.rules")
            && said.has("fix", "inhibit = \"delay\""),
        "{said:?}"
    );
    assert_eq!(
        d.count_events("inhibit_unavailable", |e| e.level == "WARN"),
        1
    );
    let s = sb.wait_status(T, |s| s.jobs_completed == 2).await;
    let word = s.system.inhibitor.unwrap_or_default();
    assert!(word.starts_with("unavailable (logind refused"), "{word}");
    stop(d, logind, bus).await;
}

#[tokio::test]
async fn a_rule_for_sleep_alone_holds_sleep_and_names_the_shutdown_lock_it_lacks() {
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, Polkit::Allow(vec![BLOCK_SLEEP.into()])).await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    on_bus(&mut env, &bus, "block");
    let d = run_as_a_service(&env, 1).await;
    gh.enqueue(job("build", 1500), 1);
    let taken = d.wait_event("inhibitor_taken", T).await;
    assert!(
        taken.is("what", "sleep") && taken.u64("locks") == Some(1),
        "{taken:?}"
    );
    let said = d.wait_event("inhibit_unavailable", T).await;
    assert!(
        said.is("what", "shutdown") && said.has("reason", BLOCK_SHUTDOWN),
        "{said:?}"
    );
    let s = sb
        .wait_status(T, |s| {
            s.system.inhibitor.as_deref().is_some_and(|w| {
                w.starts_with(
                    "held on sleep only; unavailable (logind refused the lock on shutdown",
                )
            })
        })
        .await;
    assert!(s.system.inhibitor.is_some());
    let held = logind.of("inhibit");
    assert_eq!(held.len(), 1, "{held:#?}");
    assert_eq!(held[0].what.as_deref(), Some("sleep"));
    d.wait_event("job_completed", T).await;
    assert_eq!(logind.wait("released", 1, T).await[0].id, held[0].id);
    stop(d, logind, bus).await;
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

/// `supervisor doctor` as a service's user is to logind.
async fn doctor_as_a_service(env: &BTreeMap<String, String>) -> crate::doctor::Doctor {
    crate::doctor::doctor_as(env, &AS_A_SERVICE, &[], None).await
}

#[tokio::test]
async fn doctor_tries_the_real_locks_and_releases_them_at_once() {
    // The shipped rule installed: doctor asks for both locks, gets them, lets them go.
    let bus = PrivateBus::start().await;
    let logind = FakeLogind::start(&bus, Polkit::ShippedRule).await;
    let (_sb, _gh, mut env) = setup(|_| {}).await;
    on_bus(&mut env, &bus, "block");
    let d = doctor_as_a_service(&env).await;
    assert_eq!(d.status("inhibit"), "pass", "{}", d.check("inhibit"));
    assert!(
        d.reason("inhibit")
            .contains("systemd-logind grants the user root the locks on sleep and shutdown (block"),
        "{}",
        d.check("inhibit")
    );
    one_lock_each(&logind.of("inhibit"), "block", "rule");
    let released = logind.wait("released", 2, T).await;
    assert!(released
        .iter()
        .all(|r| logind.of("inhibit").iter().any(|c| c.id == r.id)));
    logind.stop().await;

    // No rule: a blocking lock is a warning before the first job, with the fix.
    let logind = FakeLogind::start(&bus, Polkit::NoRule).await;
    let d = doctor_as_a_service(&env).await;
    assert_eq!(d.status("inhibit"), "warn", "{}", d.check("inhibit"));
    assert!(d
        .reason("inhibit")
        .contains("logind refused the lock on sleep"));
    assert!(d.reason("inhibit").contains(BLOCK_SHUTDOWN));
    assert!(d
        .fix("inhibit")
        .contains("50-runner-supervisor-inhibit.rules"));
    assert_eq!(logind.of("denied").len(), 2);
    // In delay mode polkit's defaults grant it.
    env.insert("SUPERVISOR_HOST_INHIBIT".into(), "delay".into());
    let d = doctor_as_a_service(&env).await;
    assert_eq!(d.status("inhibit"), "pass", "{}", d.check("inhibit"));
    assert_eq!(logind.of("inhibit").len(), 2);
    logind.wait("released", 2, T).await;
    // As root logind asks no polkit, and doctor says so.
    env.insert("SUPERVISOR_HOST_INHIBIT".into(), "block".into());
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(d.status("inhibit"), "pass", "{}", d.check("inhibit"));
    assert!(
        d.reason("inhibit").contains("as root"),
        "{}",
        d.check("inhibit")
    );
    logind.stop().await;
    bus.stop().await;
}

#[tokio::test]
async fn doctor_says_whether_logind_and_windows_interop_are_there() {
    let (sb, _gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_HOST_INHIBIT".into(), "block".into());
    env.insert(
        "DBUS_SYSTEM_BUS_ADDRESS".into(),
        PrivateBus::nowhere(sb.dir.path()),
    );
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(d.status("inhibit"), "warn", "{}", d.check("inhibit"));
    assert!(d.reason("inhibit").contains("no system D-Bus"));
    assert!(d.fix("inhibit").contains("inhibit = \"off\""));

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
