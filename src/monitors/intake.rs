//! Intake (issue 18 §4): whether the host should take jobs now. `[intake] on_battery =
//! "stop"` closes it while the host runs on battery, `min_battery` while on battery below
//! that charge, and `quiet_hours` during local-time windows such as `22:00-07:00`.
//!
//! While intake is closed, idle listeners are stopped and their registrations deleted
//! (GitHub keeps the jobs queued for other runners or for later), busy ones finish their
//! job, and no slot registers again until intake reopens, which it does by itself. Closed
//! intake is a choice, not a fault: health stays healthy, and status, health, metrics and
//! the log say why it is closed.
//!
//! Power is read from `/sys/class/power_supply` (`[intake] power_supply_dir`): a `Mains`
//! (or `USB`) supply that is `online`, else a `Battery` whose `status` is `Discharging`,
//! with its `capacity`. A host with no supply there (a desktop, a server, most
//! containers) is on mains.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveTime, Timelike};
use tokio_util::sync::CancellationToken;

use crate::config::{IntakeConfig, OnBattery, QuietWindow};
use crate::status::host::Host;
use crate::status::Board;

/// What the power supplies say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Power {
    /// No mains supply online, and a battery discharging.
    pub on_battery: bool,
    /// The lowest charge of the batteries, percent.
    pub battery: Option<u8>,
}

/// Read the supplies under `dir` (`/sys/class/power_supply`).
pub fn read_power(dir: &Path) -> Power {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Power::default();
    };
    let read = |p: &Path, f: &str| {
        std::fs::read_to_string(p.join(f))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let (mut mains, mut discharging, mut battery) = (false, false, None::<u8>);
    for e in entries.flatten() {
        let p = e.path();
        match read(&p, "type").as_str() {
            "Mains" | "USB" | "USB_C" | "USB_PD" => mains |= read(&p, "online") == "1",
            "Battery" => {
                if read(&p, "present") == "0" {
                    continue;
                }
                discharging |= read(&p, "status") == "Discharging";
                if let Ok(c) = read(&p, "capacity").parse::<u8>() {
                    battery = Some(battery.map_or(c, |b| b.min(c)));
                }
            }
            _ => {}
        }
    }
    Power {
        on_battery: discharging && !mains,
        battery,
    }
}

/// Why intake is closed now, if it is: the first reason of battery, charge, quiet hours.
pub fn closed_because(cfg: &IntakeConfig, power: Power, local: NaiveTime) -> Option<String> {
    if power.on_battery && cfg.on_battery == OnBattery::Stop {
        return Some("the host is on battery ([intake] on_battery = \"stop\")".into());
    }
    if let (true, Some(min), Some(level)) = (power.on_battery, cfg.min_battery, power.battery) {
        if level < min {
            return Some(format!(
                "the battery is at {level}%, below [intake] min_battery = {min}"
            ));
        }
    }
    cfg.quiet_hours
        .iter()
        .find(|w| w.contains(local))
        .map(|w| format!("quiet hours {w} (local time)"))
}

/// How long until `local` next crosses the start or end of a quiet window.
fn until_next_boundary(windows: &[QuietWindow], local: NaiveTime) -> Option<Duration> {
    let now = local.num_seconds_from_midnight() as i64;
    windows
        .iter()
        .flat_map(|w| [w.start, w.end])
        .map(|t| {
            let d = (t.num_seconds_from_midnight() as i64 - now).rem_euclid(86_400);
            Duration::from_secs(if d == 0 { 86_400 } else { d as u64 })
        })
        .min()
}

/// Judge intake every `[intake] interval` (and at each quiet-hours boundary) until
/// cancelled; publish it to the host (the slots' gate) and the board.
pub async fn run(cfg: IntakeConfig, host: Arc<Host>, board: Arc<Board>, stop: CancellationToken) {
    let mut closed: Option<String> = None;
    let mut first = true;
    loop {
        let local = crate::os::clocks::wall_now()
            .with_timezone(&chrono::Local)
            .time();
        let power = read_power(&cfg.power_supply_dir);
        let now = closed_because(&cfg, power, local);
        board.set_intake(now.clone(), power.on_battery, power.battery);
        if now != closed || first {
            match &now {
                Some(why) => {
                    tracing::warn!(event = "intake_closed", reason = %why, on_battery = power.on_battery, battery = ?power.battery, "intake closed: {why}; idle listeners stop and their registrations are deleted (GitHub keeps the jobs queued), busy ones finish")
                }
                None if !first => {
                    tracing::info!(event = "intake_opened", on_battery = power.on_battery, battery = ?power.battery, "intake open again: the slots register and take jobs")
                }
                None => {}
            }
            host.set_intake(now.clone());
            closed = now;
            first = false;
        }
        let wait = until_next_boundary(&cfg.quiet_hours, local)
            .map_or(cfg.interval, |b| b.min(cfg.interval));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    fn cfg() -> IntakeConfig {
        IntakeConfig {
            on_battery: OnBattery::Continue,
            min_battery: None,
            quiet_hours: vec![],
            power_supply_dir: "/nonexistent".into(),
            interval: Duration::from_secs(30),
        }
    }

    #[test]
    fn battery_charge_and_quiet_hours_each_close_intake_with_their_reason() {
        let ac = Power::default();
        let bat = |c| Power {
            on_battery: true,
            battery: Some(c),
        };
        let mut c = cfg();
        assert_eq!(closed_because(&c, bat(50), t(12, 0)), None);
        c.min_battery = Some(20);
        assert_eq!(closed_because(&c, bat(50), t(12, 0)), None);
        assert!(closed_because(&c, bat(15), t(12, 0))
            .unwrap()
            .contains("15%"));
        // On mains a low charge is charging: intake stays open.
        assert_eq!(
            closed_because(
                &c,
                Power {
                    on_battery: false,
                    battery: Some(5)
                },
                t(12, 0)
            ),
            None
        );
        c.on_battery = OnBattery::Stop;
        assert!(closed_because(&c, bat(90), t(12, 0))
            .unwrap()
            .contains("on battery"));
        c.quiet_hours = vec!["22:00-07:00".parse().unwrap()];
        assert!(closed_because(&c, ac, t(23, 30))
            .unwrap()
            .contains("22:00-07:00"));
        assert!(closed_because(&c, ac, t(6, 59)).is_some());
        assert_eq!(closed_because(&c, ac, t(7, 0)), None);
        assert_eq!(closed_because(&c, ac, t(21, 59)), None);
        assert_eq!(
            until_next_boundary(&c.quiet_hours, t(21, 0)),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            until_next_boundary(&c.quiet_hours, t(23, 0)),
            Some(Duration::from_secs(8 * 3600))
        );
    }

    #[test]
    fn power_is_read_from_the_supplies_a_host_without_any_is_on_mains() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_power(dir.path()), Power::default());
        let put = |name: &str, files: &[(&str, &str)]| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            for (f, v) in files {
                std::fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
        };
        put("AC", &[("type", "Mains"), ("online", "0")]);
        put(
            "BAT0",
            &[
                ("type", "Battery"),
                ("status", "Discharging"),
                ("capacity", "42"),
                ("present", "1"),
            ],
        );
        assert_eq!(
            read_power(dir.path()),
            Power {
                on_battery: true,
                battery: Some(42)
            }
        );
        put("AC", &[("online", "1")]);
        put("BAT0", &[("status", "Charging")]);
        assert!(!read_power(dir.path()).on_battery);
    }
}
