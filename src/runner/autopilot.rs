//! The runner autopilot's policy across slots: which runner version each slot's next
//! listener uses, the canary, promotion and rollback (issue 17 §2). Pure: no IO, no
//! clock; the supervisor feeds it what happened and carries out what it says.
//!
//! - A verified new version is *offered*; the first slot that starts a listener while no
//!   canary runs becomes the canary and gets it. A busy slot is never touched: versions
//!   change only when a listener starts, which is between jobs.
//! - The canary's listener listening and then completing a job, or staying up for
//!   `stable_after`, *promotes* the version: every later start uses it, and the idle
//!   slots are to be recycled so that they move now.
//! - The canary failing twice (it cannot listen, crashes, a configure error, a deprecated
//!   line) *rolls back*: the version is marked bad and not offered again until a newer
//!   release appears, or `retry` clears the mark.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// A runner version and where it is unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub name: String,
    pub dir: PathBuf,
}

/// How many failures of the canary roll a version back.
pub const CANARY_FAILURES: u32 = 2;

/// What the supervisor should do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    None,
    /// The canary proved the version: recycle these idle slots so that they move now.
    Promoted {
        version: String,
        recycle: Vec<usize>,
    },
    /// The canary failed twice: every slot goes back to `to`; say so once, with `reason`.
    RolledBack {
        version: String,
        to: String,
        reason: String,
    },
}

/// The policy's state.
#[derive(Debug, Clone)]
pub struct Fleet {
    current: Version,
    previous: Option<Version>,
    candidate: Option<Version>,
    canary: Option<usize>,
    canary_failures: u32,
    bad: BTreeSet<String>,
    /// The version each slot's listener runs, while one runs.
    running: Vec<Option<String>>,
    /// Slots whose listener is listening and has no job.
    idle: Vec<bool>,
}

impl Fleet {
    /// `slots` slots, all on `current`.
    pub fn new(slots: usize, current: Version) -> Fleet {
        Fleet {
            current,
            previous: None,
            candidate: None,
            canary: None,
            canary_failures: 0,
            bad: BTreeSet::new(),
            running: vec![None; slots],
            idle: vec![false; slots],
        }
    }

    /// The version every slot uses once the candidate, if any, is proved.
    pub fn current(&self) -> &Version {
        &self.current
    }

    /// The version being tried, and on which slot.
    pub fn canary(&self) -> Option<(&Version, Option<usize>)> {
        self.candidate.as_ref().map(|c| (c, self.canary))
    }

    /// Versions marked bad.
    pub fn bad(&self) -> &BTreeSet<String> {
        &self.bad
    }

    /// A verified version is ready. Refused (`None`) when it is the current one, marked
    /// bad, or already being tried; otherwise `Some(slot)`: an idle slot to recycle so
    /// that the canary starts now (`Some(None)` when none is idle: the next start is it).
    pub fn offer(&mut self, v: Version, idle: &[usize]) -> Option<Option<usize>> {
        for (s, i) in self.idle.iter_mut().enumerate() {
            *i = idle.contains(&s);
        }
        if v.name == self.current.name
            || self.bad.contains(&v.name)
            || self.candidate.as_ref().is_some_and(|c| c.name == v.name)
        {
            return None;
        }
        self.candidate = Some(v);
        self.canary = None;
        self.canary_failures = 0;
        Some(self.idle.iter().position(|&i| i))
    }

    /// Mark `version` bad (a rollback remembered from before a restart).
    pub fn forbid(&mut self, version: &str) {
        self.bad.insert(version.to_string());
    }

    /// Clear every bad-version mark (`supervisor runner retry`).
    pub fn retry(&mut self) {
        self.bad.clear();
    }

    /// The version slot `slot`'s next listener would run, without starting it.
    pub fn next_for(&self, slot: usize) -> &Version {
        match (&self.candidate, self.canary) {
            (Some(c), Some(s)) if s == slot => c,
            (Some(c), None) => c,
            _ => &self.current,
        }
    }

    /// Slot `slot` will start the candidate next: it is the canary from now on, so that
    /// other slots waiting for a newer runner do not take the candidate too.
    pub fn reserve(&mut self, slot: usize) {
        if self.candidate.is_some() && self.canary.is_none() {
            self.canary = Some(slot);
        }
    }

    /// Slot `slot` starts a listener: the version it runs.
    pub fn start(&mut self, slot: usize) -> Version {
        self.idle[slot] = false;
        let v = match (&self.candidate, self.canary) {
            (Some(c), Some(s)) if s == slot => c.clone(),
            (Some(c), None) => {
                self.canary = Some(slot);
                c.clone()
            }
            _ => self.current.clone(),
        };
        self.running[slot] = Some(v.name.clone());
        v
    }

    /// Slot `slot`'s listener listens for jobs.
    pub fn listening(&mut self, slot: usize) {
        self.idle[slot] = true;
    }

    /// Slot `slot`'s listener took a job.
    pub fn busy(&mut self, slot: usize) {
        self.idle[slot] = false;
    }

    /// Slot `slot`'s listener completed a job, or listened for `stable_after`: on the
    /// canary, the candidate is proved.
    pub fn proved(&mut self, slot: usize) -> Decision {
        if self.canary != Some(slot) {
            return Decision::None;
        }
        let Some(c) = self.candidate.take() else {
            return Decision::None;
        };
        self.canary = None;
        self.canary_failures = 0;
        self.previous = Some(std::mem::replace(&mut self.current, c));
        let name = self.current.name.clone();
        // Every slot not on it yet: an idle listener is replaced now, a busy one keeps
        // its job (it moves at its next start).
        let recycle = (0..self.running.len())
            .filter(|&s| self.running[s].as_deref() != Some(&name))
            .collect();
        Decision::Promoted {
            version: name,
            recycle,
        }
    }

    /// Slot `slot`'s listener failed (could not start or listen, crashed, a configure
    /// error, a deprecated line): the canary's second failure rolls back.
    pub fn failed(&mut self, slot: usize, why: &str) -> Decision {
        self.running[slot] = None;
        self.idle[slot] = false;
        if self.canary != Some(slot) {
            return Decision::None;
        }
        self.canary_failures += 1;
        if self.canary_failures < CANARY_FAILURES {
            return Decision::None;
        }
        let Some(c) = self.candidate.take() else {
            return Decision::None;
        };
        self.canary = None;
        self.canary_failures = 0;
        self.bad.insert(c.name.clone());
        Decision::RolledBack {
            version: c.name,
            to: self.current.name.clone(),
            reason: why.to_string(),
        }
    }

    /// Slot `slot`'s listener ended without failing (a job done, stopped, recycled).
    pub fn ended(&mut self, slot: usize) {
        self.running[slot] = None;
        self.idle[slot] = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str) -> Version {
        Version {
            name: name.into(),
            dir: format!("/versions/{name}").into(),
        }
    }

    fn fleet() -> Fleet {
        let mut f = Fleet::new(3, v("2.338.0"));
        for s in 0..3 {
            f.start(s);
            f.listening(s);
        }
        f
    }

    #[test]
    fn one_idle_slot_tries_the_new_version_first_and_a_busy_one_is_never_touched() {
        let mut f = fleet();
        f.busy(1);
        f.busy(0);
        // Slot 2 is the one idle slot: recycled so that the canary starts now.
        assert_eq!(f.offer(v("2.339.0"), &[2]), Some(Some(2)));
        f.listening(0);
        // Slot 2's listener is replaced first: it is the canary.
        f.ended(2);
        assert_eq!(f.start(2).name, "2.339.0");
        assert_eq!(
            f.canary().map(|(c, s)| (c.name.clone(), s)),
            Some(("2.339.0".into(), Some(2)))
        );
        // Any other start meanwhile stays on the current version.
        f.ended(0);
        assert_eq!(f.start(0).name, "2.338.0");
        f.listening(0);
        // The canary listens and completes a job: promoted; the idle slot 0 moves now,
        // the busy slot 1 after its job.
        f.listening(2);
        assert_eq!(
            f.proved(2),
            Decision::Promoted {
                version: "2.339.0".into(),
                recycle: vec![0, 1]
            }
        );
        assert_eq!(f.current().name, "2.339.0");
        f.ended(1);
        assert_eq!(f.start(1).name, "2.339.0");
    }

    #[test]
    fn two_canary_failures_roll_back_and_the_bad_version_is_not_tried_again() {
        let mut f = fleet();
        assert_eq!(f.offer(v("2.339.0"), &[0, 1, 2]), Some(Some(0)));
        f.ended(0);
        assert_eq!(f.start(0).name, "2.339.0");
        assert_eq!(f.failed(0, "crashed after listening"), Decision::None);
        assert_eq!(f.start(0).name, "2.339.0", "a second try");
        assert_eq!(
            f.failed(0, "crashed after listening"),
            Decision::RolledBack {
                version: "2.339.0".into(),
                to: "2.338.0".into(),
                reason: "crashed after listening".into()
            }
        );
        assert_eq!(f.start(0).name, "2.338.0");
        assert_eq!(f.offer(v("2.339.0"), &[]), None, "marked bad");
        // A newer release is tried; retry clears the mark.
        assert!(f.offer(v("2.340.0"), &[]).is_some());
        f.retry();
        assert!(f.bad().is_empty());
    }

    #[test]
    fn failures_of_other_slots_and_proofs_of_other_slots_do_not_decide() {
        let mut f = fleet();
        assert!(f.offer(v("2.339.0"), &[]).is_some());
        f.ended(1);
        f.start(1);
        assert_eq!(f.failed(0, "crash"), Decision::None);
        assert_eq!(f.failed(2, "crash"), Decision::None);
        assert_eq!(f.proved(0), Decision::None);
        assert_eq!(f.current().name, "2.338.0");
        assert_eq!(
            f.offer(v("2.338.0"), &[]),
            None,
            "the current version is no candidate"
        );
    }

    #[test]
    fn slots_waiting_for_a_newer_runner_see_it_and_only_one_takes_it_as_the_canary() {
        // Every slot refused as deprecated, none listening: the offer names no slot.
        let mut f = Fleet::new(2, v("2.338.0"));
        assert_eq!(f.next_for(0).name, "2.338.0");
        assert_eq!(f.offer(v("2.339.0"), &[]), Some(None));
        assert_eq!(f.next_for(0).name, "2.339.0");
        assert_eq!(f.next_for(1).name, "2.339.0");
        // Slot 1 sees it first and reserves it: slot 0 keeps waiting.
        f.reserve(1);
        assert_eq!(f.next_for(0).name, "2.338.0");
        f.reserve(0);
        assert_eq!(f.start(1).name, "2.339.0");
        assert_eq!(f.start(0).name, "2.338.0");
        // Proved: slot 0's next listener runs it too.
        f.listening(1);
        assert!(matches!(f.proved(1), Decision::Promoted { .. }));
        assert_eq!(f.next_for(0).name, "2.339.0");
    }
}
