//! How many runners the scale set needs, pure (issue 19 §3): the jobs assigned to it,
//! keyed on `jobId`, and this host's runners, one per slot. No IO, no clock (the time
//! is an input).
//!
//! A runner is done when its process exits; `JobStarted` and `JobCompleted` are hints
//! that may come late or never. So:
//! - a job is *assigned* from its `JobAssigned` (redelivered or replayed: counted once)
//!   until its `JobCompleted`, or until the runner that took it exits;
//! - a runner that starts a job *claims* one: the job its `JobStarted` names when that
//!   has come (matched on the runner's name, which is ours), else the oldest unclaimed one
//!   (a late hint moves the claim);
//! - the runners wanted idle are the unclaimed jobs plus `min_runners`, within
//!   `max_runners` with the busy ones; a free slot starts one while fewer are idle or
//!   starting;
//! - an idle runner beyond that (its assignment lapsed: `JobCompleted` `canceled`, then
//!   the job assigned again under a new `jobId`) is *surplus*; after `surplus_grace`
//!   it is stopped and removed, so a lapse never leaks a runner, and a re-assignment
//!   within the grace reuses it instead of starting another.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// What the demand needs of a scale-set job message (`github::scaleset::types::JobMessage`
/// turns itself into this): the job's id, and for a start the runner that took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobSeen {
    /// Assigned to the scale set: a runner is wanted.
    Assigned { job_id: String },
    /// A runner of the set took it (a hint).
    Started { job_id: String, runner_name: String },
    /// It ended (a hint too), or its assignment lapsed.
    Completed { job_id: String },
    /// Anything else (to be acquired first, or a type unknown): changes nothing.
    Other,
}

/// At most this many `jobId`s are remembered as seen (redeliveries are recent).
const SEEN_MAX: usize = 10_000;

/// One slot's runner.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Runner {
    /// `None` while its registration is being made.
    name: Option<String>,
    busy: bool,
    /// The job it took.
    claim: Option<String>,
    /// Since when no assigned job needs it.
    surplus_since: Option<Instant>,
    /// Told to stop as surplus: no longer counted as idle.
    stopping: bool,
}

/// What the scale set needs, and what this host has.
#[derive(Debug, Clone)]
pub struct Demand {
    min: usize,
    max: usize,
    grace: Duration,
    /// Assigned jobs, oldest first, each with the slot that claimed it.
    assigned: Vec<(String, Option<usize>)>,
    seen: BTreeSet<String>,
    seen_order: VecDeque<String>,
    runners: BTreeMap<usize, Runner>,
    /// Runners started so far (registrations made for the scale set).
    pub started: u64,
    /// Assignments that ended unserved (`JobCompleted` before any runner of ours took it).
    pub lapsed: u64,
}

/// A count of the runners, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub assigned: usize,
    pub unclaimed: usize,
    pub starting: usize,
    pub idle: usize,
    pub busy: usize,
}

impl Demand {
    pub fn new(min: usize, max: usize, grace: Duration) -> Demand {
        Demand {
            min,
            max: max.max(1),
            grace,
            assigned: vec![],
            seen: BTreeSet::new(),
            seen_order: VecDeque::new(),
            runners: BTreeMap::new(),
            started: 0,
            lapsed: 0,
        }
    }

    fn see(&mut self, id: &str) -> bool {
        if !self.seen.insert(id.to_string()) {
            return false;
        }
        self.seen_order.push_back(id.to_string());
        while self.seen_order.len() > SEEN_MAX {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn slot_named(&self, name: &str) -> Option<usize> {
        self.runners
            .iter()
            .find(|(_, r)| r.name.as_deref() == Some(name))
            .map(|(s, _)| *s)
    }

    /// Take in one job message. Messages about unknown runners or jobs change nothing.
    pub fn on_message(&mut self, m: &JobSeen) {
        match m {
            JobSeen::Assigned { job_id } if !job_id.is_empty() && self.see(job_id) => {
                // A busy runner of ours that started it before the message came.
                let claimer = self
                    .runners
                    .iter()
                    .find(|(_, r)| r.busy && r.claim.is_none())
                    .map(|(s, _)| *s);
                if let Some(s) = claimer {
                    self.runners.get_mut(&s).expect("found").claim = Some(job_id.clone());
                }
                self.assigned.push((job_id.clone(), claimer));
            }
            JobSeen::Started {
                job_id,
                runner_name,
            } => {
                let Some(slot) = self.slot_named(runner_name) else {
                    return;
                };
                let id = job_id.clone();
                let previous = self.runners[&slot].claim.clone();
                if previous.as_deref() == Some(id.as_str()) {
                    return;
                }
                // The claim moves to the job the hint names; the one guessed goes back.
                for (j, c) in &mut self.assigned {
                    if Some(j.as_str()) == previous.as_deref() {
                        *c = None;
                    }
                    if *j == id {
                        *c = Some(slot);
                    }
                }
                if !self.assigned.iter().any(|(j, _)| *j == id) && self.see(&id) {
                    self.assigned.push((id.clone(), Some(slot)));
                }
                let r = self.runners.get_mut(&slot).expect("found");
                r.claim = Some(id);
                r.busy = true;
                r.surplus_since = None;
            }
            JobSeen::Completed { job_id } => {
                self.see(job_id);
                if let Some(i) = self.assigned.iter().position(|(j, _)| j == job_id) {
                    let (_, claim) = self.assigned.remove(i);
                    if claim.is_none() {
                        self.lapsed += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// Runners busy, idle (registered, no job yet) and starting.
    pub fn counts(&self) -> Counts {
        let busy = self.runners.values().filter(|r| r.busy).count();
        let starting = self.runners.values().filter(|r| r.name.is_none()).count();
        let stopping = self
            .runners
            .values()
            .filter(|r| r.stopping && !r.busy && r.name.is_some())
            .count();
        Counts {
            assigned: self.assigned.len(),
            unclaimed: self.unclaimed(),
            starting,
            idle: self.runners.len() - busy - starting - stopping,
            busy,
        }
    }

    fn unclaimed(&self) -> usize {
        self.assigned.iter().filter(|(_, c)| c.is_none()).count()
    }

    /// How many runners should be idle or starting now.
    pub fn wanted_idle(&self) -> usize {
        let busy = self.runners.values().filter(|r| r.busy).count();
        (self.unclaimed() + self.min).min(self.max.saturating_sub(busy))
    }

    /// Whether `slot` may start a runner now; if so, it is counted as starting.
    pub fn try_take(&mut self, slot: usize) -> bool {
        if self.runners.contains_key(&slot) {
            return false;
        }
        let c = self.counts();
        if c.idle + c.starting >= self.wanted_idle() || self.runners.len() >= self.max {
            return false;
        }
        self.runners.insert(
            slot,
            Runner {
                name: None,
                busy: false,
                claim: None,
                surplus_since: None,
                stopping: false,
            },
        );
        true
    }

    /// `slot`'s runner is registered as `name`.
    pub fn registered(&mut self, slot: usize, name: &str) {
        if let Some(r) = self.runners.get_mut(&slot) {
            r.name = Some(name.to_string());
            self.started += 1;
        }
    }

    /// `slot`'s runner started a job (its console said so).
    pub fn busy(&mut self, slot: usize) {
        let Some(r) = self.runners.get(&slot) else {
            return;
        };
        if r.busy {
            return;
        }
        let claim = r.claim.clone().or_else(|| {
            self.assigned
                .iter()
                .find(|(_, c)| c.is_none())
                .map(|(j, _)| j.clone())
        });
        if let Some(j) = &claim {
            if let Some(e) = self.assigned.iter_mut().find(|(id, _)| id == j) {
                e.1 = Some(slot);
            }
        }
        let r = self.runners.get_mut(&slot).expect("found");
        r.busy = true;
        r.claim = claim;
        r.surplus_since = None;
    }

    /// `slot` holds no runner any more (it exited, or its registration failed): the job
    /// it took is over, whatever the hints say.
    pub fn gone(&mut self, slot: usize) {
        if let Some(r) = self.runners.remove(&slot) {
            if let Some(j) = r.claim {
                self.assigned.retain(|(id, _)| *id != j);
            }
        }
    }

    /// The idle runners no assigned job needs for `grace` now: to stop (newest first).
    pub fn surplus(&mut self, now: Instant) -> Vec<usize> {
        let c = self.counts();
        let wanted = self.wanted_idle();
        let mut extra = (c.idle + c.starting).saturating_sub(wanted);
        let mut out = vec![];
        for (slot, r) in self.runners.iter_mut().rev() {
            if r.busy || r.name.is_none() || r.stopping {
                continue;
            }
            if extra == 0 {
                r.surplus_since = None;
                continue;
            }
            extra -= 1;
            let since = *r.surplus_since.get_or_insert(now);
            if now.duration_since(since) >= self.grace {
                r.stopping = true;
                out.push(*slot);
            }
        }
        out
    }

    /// When the next surplus runner's grace ends, if one is counting.
    pub fn next_surplus_deadline(&self) -> Option<Instant> {
        self.runners
            .values()
            .filter(|r| !r.stopping && !r.busy)
            .filter_map(|r| r.surplus_since)
            .min()
            .map(|t| t + self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(id: &str) -> JobSeen {
        JobSeen::Assigned { job_id: id.into() }
    }
    fn started(id: &str, runner: &str) -> JobSeen {
        JobSeen::Started {
            job_id: id.into(),
            runner_name: runner.into(),
        }
    }
    fn completed(id: &str, _result: &str) -> JobSeen {
        JobSeen::Completed { job_id: id.into() }
    }
    const G: Duration = Duration::from_secs(30);

    #[test]
    fn idle_host_wants_no_runner_and_one_per_assigned_job() {
        let mut d = Demand::new(0, 2, G);
        assert!(!d.try_take(0), "no job, no runner");
        d.on_message(&assigned("a"));
        d.on_message(&assigned("a")); // redelivered
        assert!(d.try_take(0));
        assert!(!d.try_take(1), "one job, one runner");
        d.registered(0, "r0");
        d.on_message(&assigned("b"));
        d.on_message(&assigned("c"));
        assert!(d.try_take(1));
        assert!(!d.try_take(2), "max_runners");
        assert_eq!(d.started, 1);
    }

    #[test]
    fn min_runners_are_kept_warm() {
        let mut d = Demand::new(1, 2, G);
        assert!(d.try_take(0));
        assert!(!d.try_take(1));
        d.registered(0, "r0");
        d.busy(0);
        assert!(d.try_take(1), "the warm one took a job: another is warmed");
    }

    #[test]
    fn a_runner_is_done_at_exit_even_without_hints() {
        let mut d = Demand::new(0, 2, G);
        d.on_message(&assigned("a"));
        assert!(d.try_take(0));
        d.registered(0, "r0");
        d.busy(0);
        d.gone(0);
        assert_eq!(d.counts(), Counts::default());
        assert!(!d.try_take(0), "the job is done: no runner for it");
        // Its late hints change nothing.
        d.on_message(&started("a", "r0"));
        d.on_message(&completed("a", "succeeded"));
        d.on_message(&assigned("a"));
        assert!(!d.try_take(0));
    }

    #[test]
    fn a_late_started_hint_moves_the_claim() {
        let mut d = Demand::new(0, 2, G);
        d.on_message(&assigned("a"));
        d.on_message(&assigned("b"));
        assert!(d.try_take(0));
        assert!(d.try_take(1));
        d.registered(0, "r0");
        d.registered(1, "r1");
        d.busy(1); // guessed "a"
        d.on_message(&started("b", "r1"));
        d.gone(1);
        assert_eq!(d.counts().assigned, 1, "a is still assigned");
        d.busy(0);
        d.gone(0);
        assert_eq!(d.counts().assigned, 0);
    }

    #[test]
    fn a_lapsed_assignment_never_leaks_a_runner() {
        let t = Instant::now();
        let mut d = Demand::new(0, 2, G);
        d.on_message(&assigned("a"));
        assert!(d.try_take(0));
        d.registered(0, "r0");
        // It lapses, and is assigned again under a new id within the grace: reused.
        d.on_message(&completed("a", "canceled"));
        assert_eq!(d.lapsed, 1);
        assert!(d.surplus(t).is_empty(), "not before the grace");
        d.on_message(&assigned("a2"));
        assert!(!d.try_take(1), "the idle runner serves the new assignment");
        assert!(d.surplus(t + G).is_empty());
        // It lapses for good: the idle runner is surplus once the grace is over.
        d.on_message(&completed("a2", "canceled"));
        assert!(d.surplus(t + G).is_empty());
        assert_eq!(d.surplus(t + G + G), vec![0]);
    }

    #[test]
    fn a_busy_runner_that_started_before_its_assignment_came_claims_it() {
        let mut d = Demand::new(1, 2, G);
        assert!(d.try_take(0));
        d.registered(0, "r0");
        d.busy(0); // the warm runner took a job we had not heard of
        d.on_message(&assigned("a"));
        assert_eq!(d.counts().unclaimed, 0);
        assert!(d.try_take(1), "only the warm one is replaced");
        assert!(!d.try_take(2));
    }
}
