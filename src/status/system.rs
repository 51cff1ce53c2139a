//! The host-wide state the monitors write, typed: the token, the clock and chronyd, the
//! disk and the pruner, autoheal, resolvers, dependencies, keepalive, the runner's
//! version. Monitors write it through [`Board::system`] (a misspelt field does not
//! compile); `status.json`, `/v1/status`, `status --json` and the metrics are rendered
//! from it, and the schema's `facts` map is generated from it for compatibility.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{
    Board, ClockInfo, Condition, Dependency, DiskInfo, Health, KeepaliveInfo, RunnerStatus,
    SystemStatus, TokenStatus,
};

/// What the monitors know of the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SystemState {
    /// `pat` or `app`.
    pub token_kind: Option<&'static str>,
    /// Preflight found the token valid.
    pub token_checked: bool,
    pub token_expires_at: Option<DateTime<Utc>>,
    /// Seconds, positive when the local clock is ahead.
    pub clock_offset_s: Option<f64>,
    pub clock_source: Option<String>,
    /// `synchronised`, `not synchronised` or `down`.
    pub chronyd: Option<String>,
    pub chronyd_last_offset_s: Option<f64>,
    pub disk_free_bytes: Option<u64>,
    /// Who prunes this engine.
    pub disk_pruner: Option<String>,
    pub disk_last_prune: Option<String>,
    pub disk_pruned_bytes: Option<u64>,
    pub autoheal_restarts: Option<u64>,
    pub autoheal_last: Option<String>,
    /// `primary` or `fallback first`.
    pub resolvers: Option<String>,
    /// Address → reachable.
    pub dependencies: BTreeMap<String, bool>,
    pub tcp_keepalive_sysctls: Option<String>,
    /// The connection watch's summary of the listeners' keepalive.
    pub listener_keepalive: Option<String>,
    pub listeners_keepalive_on: u64,
    pub listeners_keepalive_refused: u64,
    pub runner_version: Option<String>,
    /// The newest release the downloads endpoint lists.
    pub runner_latest: Option<String>,
    /// GitHub's deadline for [`Self::runner_deadline_for`] (the deprecations endpoint).
    pub runner_deadline: crate::runner::version::Deadline,
    /// The version the deadline was read for.
    pub runner_deadline_for: Option<String>,
    /// When the deadline was read.
    pub runner_checked_at: Option<DateTime<Utc>>,
    /// The last upgrade the autopilot proved: `2.339.0 at 2026-12-03 09:10 UTC`.
    pub runner_upgraded: Option<String>,
    /// The version being tried on a canary slot, and which slot.
    pub runner_canary: Option<String>,
    /// Versions rolled back, with the reason.
    pub runner_bad: Vec<String>,
    /// `[runner] auto_update`.
    pub runner_auto_update: Option<&'static str>,
    /// Memory pressure: PSI `some avg10`, percent.
    pub memory_pressure: Option<f64>,
    /// logind's inhibitor locks: `held`, `held on WHAT only; unavailable (reason)`,
    /// `released`, `off` or `unavailable (reason)`.
    pub inhibitor: Option<String>,
    /// The Windows keep-awake helper (WSL2): the same words; `None` off WSL2.
    pub windows_keep_awake: Option<String>,
    /// Intake (`[intake]`), once judged.
    pub intake: Option<crate::status::IntakeStatus>,
    /// Scale-set mode's session and statistics.
    pub scaleset: Option<crate::status::ScaleSetStatus>,
}

impl SystemState {
    /// The schema's `facts` map (kept from before v1), generated: the same keys and
    /// formats as the monitors once wrote.
    pub fn facts(&self) -> BTreeMap<String, String> {
        let mut f = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                f.insert(k.to_string(), v);
            }
        };
        put("token_kind", self.token_kind.map(str::to_string));
        put("token", self.token_checked.then(|| "valid".into()));
        put(
            "token_expires_at",
            self.token_expires_at.map(|t| t.to_rfc3339()),
        );
        put(
            "clock_offset_s",
            self.clock_offset_s.map(|o| format!("{o:+.3}")),
        );
        put("clock_source", self.clock_source.clone());
        put("chronyd", self.chronyd.clone());
        put(
            "chronyd_last_offset_s",
            self.chronyd_last_offset_s.map(|o| format!("{o:+.6}")),
        );
        put(
            "disk_free_gb",
            self.disk_free_bytes
                .map(|b| format!("{:.1}", b as f64 / 1e9)),
        );
        put(
            "disk_free_bytes",
            self.disk_free_bytes.map(|b| b.to_string()),
        );
        put("disk_pruner", self.disk_pruner.clone());
        put("disk_last_prune", self.disk_last_prune.clone());
        put(
            "disk_pruned_bytes",
            self.disk_pruned_bytes.map(|b| b.to_string()),
        );
        put(
            "autoheal_restarts",
            self.autoheal_restarts.map(|n| n.to_string()),
        );
        put("autoheal_last", self.autoheal_last.clone());
        put("resolvers", self.resolvers.clone());
        put("tcp_keepalive_sysctls", self.tcp_keepalive_sysctls.clone());
        put("listener_keepalive", self.listener_keepalive.clone());
        put("runner_version", self.runner_version.clone());
        for (dep, up) in &self.dependencies {
            f.insert(
                format!("dependency {dep}"),
                if *up { "reachable" } else { "unreachable" }.into(),
            );
        }
        f
    }

    /// The schema's `system` part, with the conditions health knows.
    pub(super) fn render(
        &self,
        conditions: &BTreeMap<Condition, (Health, String)>,
        rate_limit: Option<crate::github::RateLimit>,
        now: DateTime<Utc>,
    ) -> SystemStatus {
        let refused = conditions.get(&Condition::Token).map(|c| c.1.clone());
        SystemStatus {
            token: TokenStatus {
                kind: self.token_kind.map(str::to_string),
                valid: match (&refused, self.token_checked) {
                    (Some(_), _) => Some(false),
                    (None, true) => Some(true),
                    (None, false) => None,
                },
                error: refused,
                expires_at: self.token_expires_at,
                days_left: self.token_expires_at.map(|e| (e - now).num_days()),
            },
            clock: ClockInfo {
                offset_s: self.clock_offset_s.map(|o| (o * 1000.0).round() / 1000.0),
                source: self.clock_source.clone(),
                fault: conditions
                    .get(&Condition::Clock)
                    .filter(|c| c.0 > Health::Ok)
                    .map(|c| c.1.clone()),
                chronyd: self.chronyd.clone(),
            },
            disk: DiskInfo {
                free_bytes: self.disk_free_bytes,
                pruner: self.disk_pruner.clone(),
                last_prune: self.disk_last_prune.clone(),
                pruned_bytes: self.disk_pruned_bytes.unwrap_or(0),
            },
            dependencies: self
                .dependencies
                .iter()
                .map(|(address, reachable)| Dependency {
                    address: address.clone(),
                    reachable: *reachable,
                })
                .collect(),
            keepalive: KeepaliveInfo {
                listener: self.listener_keepalive.clone(),
                sysctls: self.tcp_keepalive_sysctls.clone(),
                listeners_on: self.listeners_keepalive_on,
                listeners_refused: self.listeners_keepalive_refused,
            },
            rate_limit,
            runner_version: self.runner_version.clone(),
            memory_pressure: self.memory_pressure,
            inhibitor: self.inhibitor.clone(),
            windows_keep_awake: self.windows_keep_awake.clone(),
            intake: self.intake.clone(),
            scaleset: self.scaleset.clone(),
            runner: RunnerStatus {
                version: self.runner_version.clone(),
                latest: self.runner_latest.clone(),
                deadline: self.runner_deadline.kind().to_string(),
                runtime_deprecates_at: self.runner_deadline.runtime(),
                registration_deprecates_at: match &self.runner_deadline {
                    crate::runner::version::Deadline::Known { registration, .. } => *registration,
                    _ => None,
                },
                days_left: self
                    .runner_deadline
                    .runtime()
                    .map(|at| (at - now).num_days()),
                checked_at: self.runner_checked_at,
                auto_update: self.runner_auto_update.map(str::to_string),
                canary: self.runner_canary.clone(),
                last_upgrade: self.runner_upgraded.clone(),
                rolled_back: self.runner_bad.clone(),
            },
        }
    }
}

impl Board {
    /// Change the host-wide state; the status is rewritten only when it changed (the
    /// runner's version, written at every start, is no reason to write).
    /// Intake judged: closed (why) or open, with the power it was judged on. Health
    /// says why it is closed, and stays healthy: closed intake is a choice.
    pub fn set_intake(&self, closed: Option<String>, on_battery: bool, battery: Option<u8>) {
        let now = crate::os::clocks::wall_now();
        self.system(|s| {
            let since = match &s.intake {
                Some(i) if i.open == closed.is_none() => i.since,
                _ => now,
            };
            s.intake = Some(crate::status::IntakeStatus {
                open: closed.is_none(),
                reason: closed.clone(),
                since,
                on_battery,
                battery,
            });
        });
        self.set_condition(
            crate::status::Condition::Intake,
            closed.map(|why| (crate::status::Health::Ok, format!("closed: {why}"))),
        );
    }

    pub fn system(&self, f: impl FnOnce(&mut SystemState)) {
        let mut s = self.system.lock().unwrap_or_else(|p| p.into_inner());
        let before = s.clone();
        f(&mut s);
        let changed = *s != before;
        drop(s);
        if changed {
            self.touch();
        }
    }

    /// The host-wide state now.
    pub fn system_state(&self) -> SystemState {
        self.system
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_map_keeps_its_keys_and_formats() {
        let mut s = SystemState {
            token_kind: Some("pat"),
            token_checked: true,
            clock_offset_s: Some(0.1234),
            chronyd_last_offset_s: Some(-0.000_012_5),
            disk_free_bytes: Some(12_345_678_901),
            disk_pruned_bytes: Some(42),
            runner_version: Some("2.336.0".into()),
            ..SystemState::default()
        };
        s.dependencies.insert("mongo:27017".into(), false);
        let f = s.facts();
        assert_eq!(f["token_kind"], "pat");
        assert_eq!(f["token"], "valid");
        assert_eq!(f["clock_offset_s"], "+0.123");
        assert_eq!(f["chronyd_last_offset_s"], "-0.000013");
        assert_eq!(f["disk_free_gb"], "12.3");
        assert_eq!(f["disk_free_bytes"], "12345678901");
        assert_eq!(f["disk_pruned_bytes"], "42");
        assert_eq!(f["dependency mongo:27017"], "unreachable");
        assert!(!f.contains_key("clock_source"), "unset stays absent");
        let sys = s.render(&BTreeMap::new(), None, crate::os::clocks::wall_now());
        assert_eq!(sys.clock.offset_s, Some(0.123));
        assert_eq!(sys.disk.free_bytes, Some(12_345_678_901));
        assert!(!sys.dependencies[0].reachable);
        assert_eq!(sys.token.valid, Some(true));
    }
}
