//! Health: the host-level conditions monitors set, and the verdict from them and the
//! slots' states (what `supervisor health` and the status report).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Board, SlotState, SlotStatus};

/// A host-level condition that health reports (each monitor owns its own).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// The token is refused.
    Token,
    /// A classic token lacks the scope runners need.
    TokenScope,
    /// The token expires soon.
    TokenExpiry,
    /// The clock is off.
    Clock,
    /// chronyd is not synchronised or not reachable.
    Chronyd,
    /// The API host does not resolve.
    Dns,
    /// A `[health] dependencies` entry is unreachable.
    Dependency(String),
    /// Free space on Docker's file system.
    Disk,
    /// The Docker engine.
    Docker,
    /// The runner version's deadline is near or past.
    RunnerVersion,
    /// The runner autopilot rolled a version back.
    RunnerUpgrade,
    /// Intake is closed (`[intake]`): said, never a fault.
    Intake,
    /// Scale-set mode: the session is not polling (a conflict waited out, failing calls).
    ScaleSet,
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Token => f.write_str("token"),
            Condition::TokenScope => f.write_str("token scope"),
            Condition::TokenExpiry => f.write_str("token expiry"),
            Condition::Clock => f.write_str("clock"),
            Condition::Chronyd => f.write_str("chronyd"),
            Condition::Dns => f.write_str("dns"),
            Condition::Dependency(d) => write!(f, "dependency {d}"),
            Condition::RunnerVersion => f.write_str("runner version"),
            Condition::RunnerUpgrade => f.write_str("runner upgrade"),
            Condition::Intake => f.write_str("intake"),
            Condition::ScaleSet => f.write_str("scale set"),
            Condition::Disk => f.write_str("disk"),
            Condition::Docker => f.write_str("docker"),
        }
    }
}

/// Health verdict.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Ok,
    Degraded,
    Unhealthy,
}

impl Board {
    /// Set or clear a host-level condition; returns true when it changed.
    /// A condition's message, when it is set.
    pub fn condition(&self, name: Condition) -> Option<String> {
        let all = self.conditions.lock().unwrap_or_else(|p| p.into_inner());
        all.get(&name).map(|(_, m)| m.clone())
    }

    pub fn set_condition(&self, name: Condition, c: Option<(Health, String)>) -> bool {
        let mut all = self.conditions.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match &c {
            Some(v) => all.insert(name, v.clone()).as_ref() != Some(v),
            None => all.remove(&name).is_some(),
        };
        drop(all);
        if changed {
            self.touch();
        }
        changed
    }

    /// The verdict and its reasons.
    pub fn health(&self, now: DateTime<Utc>) -> (Health, Vec<String>) {
        let (mut h, mut reasons) = evaluate(&self.slots(), now, self.unhealthy_after);
        for (name, (ch, why)) in self
            .conditions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            h = h.max(*ch);
            reasons.push(format!("{name}: {why}"));
        }
        (h, reasons)
    }
}

/// Health from slot states: a job in progress is never unhealthy because the API is down;
/// failing slots are degraded, and unhealthy after `unhealthy_after`; a slot paused for a
/// reason the operator must fix (a deprecated runner) is unhealthy; a slot waiting out its
/// circuit breaker or a clock fault is degraded, and says why.
pub fn evaluate(
    slots: &[SlotStatus],
    now: DateTime<Utc>,
    unhealthy_after: Duration,
) -> (Health, Vec<String>) {
    let mut health = Health::Ok;
    let mut reasons = vec![];
    for (i, s) in slots.iter().enumerate() {
        let why = s.error.as_deref().unwrap_or("unknown");
        match s.state {
            // Closed intake is a choice: said by the intake condition, never a fault.
            // So is a scale-set slot with no job assigned: the session's health is the
            // scale-set condition's.
            SlotState::Busy | SlotState::Closed | SlotState::Waiting => continue,
            SlotState::Paused => {
                health = health.max(Health::Unhealthy);
                reasons.push(format!("slot {i} paused: {why}"));
                continue;
            }
            SlotState::BreakerOpen | SlotState::ClockFault => {
                health = health.max(Health::Degraded);
                reasons.push(format!("slot {i} {}: {why}", s.state));
                continue;
            }
            _ => {}
        }
        if let Some(since) = s.failing_since {
            // Listening again after failures: recovering (or crash-looping), not down.
            let long = s.state != SlotState::Listening
                && (now - since).to_std().unwrap_or_default() >= unhealthy_after;
            health = health.max(if long {
                Health::Unhealthy
            } else {
                Health::Degraded
            });
            reasons.push(format!(
                "slot {i} {} ({} failures since {}): {why}",
                s.state,
                s.failures,
                since.format("%H:%M:%SZ")
            ));
        }
    }
    (health, reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_rules() {
        let now = crate::os::clocks::wall_now();
        let after = Duration::from_secs(180);
        let failing = |secs: i64, state: SlotState| SlotStatus {
            state,
            failures: 3,
            failing_since: Some(now - chrono::Duration::seconds(secs)),
            error: Some("transient failure".into()),
            ..SlotStatus::default()
        };
        assert_eq!(evaluate(&[SlotStatus::default()], now, after).0, Health::Ok);
        assert_eq!(
            evaluate(&[failing(10, SlotState::Backoff)], now, after).0,
            Health::Degraded
        );
        assert_eq!(
            evaluate(&[failing(181, SlotState::Backoff)], now, after).0,
            Health::Unhealthy
        );
        // A running job is never made unhealthy by API trouble.
        assert_eq!(
            evaluate(&[failing(1000, SlotState::Busy)], now, after).0,
            Health::Ok
        );
        let open = SlotStatus {
            state: SlotState::BreakerOpen,
            error: Some("6 fires (clock:6)".into()),
            ..SlotStatus::default()
        };
        let (h, r) = evaluate(&[open], now, after);
        assert_eq!(h, Health::Degraded);
        assert!(r[0].contains("clock:6"), "{r:?}");
        let paused = SlotStatus {
            state: SlotState::Paused,
            ..SlotStatus::default()
        };
        assert_eq!(evaluate(&[paused], now, after).0, Health::Unhealthy);
    }
}
