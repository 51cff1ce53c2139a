//! Taking jobs only when the host should (issue 18 §4), through the binary: power from a
//! made-up sysfs root (`[intake] power_supply_dir`), quiet hours in local time.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use runner_supervisor::status::{Health, SlotState};

use crate::support::{job, setup, Cli, Daemon};

const T: Duration = Duration::from_secs(60);

/// A laptop's supplies: an AC adapter and a battery at 80 %.
fn power(dir: &Path, on_battery: bool) {
    let put = |name: &str, files: &[(&str, &str)]| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in files {
            std::fs::write(d.join(f), format!("{v}\n")).unwrap();
        }
    };
    put(
        "AC",
        &[
            ("type", "Mains"),
            ("online", if on_battery { "0" } else { "1" }),
        ],
    );
    put(
        "BAT0",
        &[
            ("type", "Battery"),
            ("present", "1"),
            ("capacity", "80"),
            (
                "status",
                if on_battery {
                    "Discharging"
                } else {
                    "Charging"
                },
            ),
        ],
    );
}

#[tokio::test]
async fn on_battery_intake_closes_idle_registrations_go_and_on_ac_it_reopens() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.insert("SUPERVISOR_METRICS_LISTEN".into(), metrics.to_string());
    let sys = sb.dir.path().join("power_supply");
    power(&sys, false);
    for (k, v) in [
        ("SUPERVISOR_SLOTS", "2"),
        ("SUPERVISOR_INTAKE_ON_BATTERY", "stop"),
        ("SUPERVISOR_INTAKE_INTERVAL", "200ms"),
    ] {
        env.insert(k.into(), v.into());
    }
    env.insert(
        "SUPERVISOR_INTAKE_POWER_SUPPLY_DIR".into(),
        sys.display().to_string(),
    );
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_listening(2, T).await;
    gh.enqueue(job("e2e", 3_000), 1);
    let s = sb
        .wait_status(T, |s| s.slots.iter().any(|x| x.job_of.is_some()))
        .await;
    let busy = s.slots.iter().position(|x| x.job_of.is_some()).unwrap();
    let idle_runner = s.slots[1 - busy].runner.clone().unwrap();
    // Unplugged: intake closes; the idle listener stops and its registration goes; the
    // busy one finishes its job.
    power(&sys, true);
    let closed = d.wait_event("intake_closed", T).await;
    assert!(closed.has("reason", "on battery"), "{closed:?}");
    assert!(gh.wait_for(T, |s| s.deleted.contains(&idle_runner)).await);
    gh.enqueue(job("later", 100), 1);
    let done = d.wait_event("job_completed", T).await;
    assert!(
        done.is("result", "Succeeded") && done.is("job", "e2e"),
        "{done:?}"
    );
    let s = sb
        .wait_status(T, |s| s.slots.iter().all(|x| x.state == SlotState::Closed))
        .await;
    // No runner is registered, the new job waits at GitHub, and health stays healthy
    // while saying why.
    assert!(gh.runners().is_empty(), "{:?}", gh.runners());
    assert_eq!(gh.state(|s| s.queue.len()), 1);
    let intake = s.system.intake.clone().unwrap();
    assert!(!intake.open && intake.on_battery && intake.battery == Some(80));
    assert_eq!(s.health, Health::Ok);
    let health = Cli::new(&env, &["health"]).run_async().await;
    assert_eq!(health.code, Some(0), "{health:?}");
    let text = crate::support::cli(&env, &["status"]).stdout;
    assert!(text.contains("intake        closed"), "{text}");
    let scrape = crate::metrics::http_get(metrics, "/metrics").2;
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("runner_supervisor_intake_open{")
                && l.contains("on battery")
                && l.ends_with(" 0")),
        "{scrape}"
    );
    // Plugged in: intake reopens by itself and the waiting job runs.
    power(&sys, false);
    d.wait_event("intake_opened", T).await;
    let later = d
        .wait_events("job_completed", |e| e.is("job", "later"), 1, T)
        .await;
    assert!(later.is("result", "Succeeded"));
    let s = crate::support::status(&env);
    assert!(s.system.intake.unwrap().open);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn during_quiet_hours_nothing_registers_and_health_stays_healthy() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    // A window from an hour ago to an hour from now, local time.
    let now = chrono::Local::now().time();
    let hm = |t: chrono::NaiveTime| t.format("%H:%M").to_string();
    let window = format!(
        "{}-{}",
        hm(now - chrono::Duration::hours(1)),
        hm(now + chrono::Duration::hours(1))
    );
    env.insert("SUPERVISOR_INTAKE_QUIET_HOURS".into(), window.clone());
    let mut d = Daemon::start(&env, &["run"]).await;
    let closed = d.wait_event("intake_closed", T).await;
    assert!(
        closed.has("reason", &format!("quiet hours {window}")),
        "{closed:?}"
    );
    let s = sb
        .wait_status(T, |s| s.slots[0].state == SlotState::Closed)
        .await;
    assert_eq!(s.health, Health::Ok);
    assert!(s.slots[0].error.as_deref().unwrap().contains("quiet hours"));
    assert!(gh.runners().is_empty());
    assert_eq!(
        gh.calls()
            .iter()
            .filter(|c| c.path.ends_with("/generate-jitconfig"))
            .count(),
        0
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_bad_quiet_hours_window_is_refused_naming_the_key() {
    let (_sb, _gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_INTAKE_QUIET_HOURS".into(), "22:00-7".into());
    let out = Cli::new(&env, &["config"]).run_async().await;
    assert_eq!(out.code, Some(64), "{out:?}");
    assert!(
        out.stderr.contains("intake.quiet_hours") && out.stderr.contains("HH:MM-HH:MM"),
        "{}",
        out.stderr
    );
}
