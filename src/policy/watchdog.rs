//! The listener watchdog and the circuit breaker. Pure: they take events and `now`, and
//! return verdicts; the slot does the IO.
//!
//! The watchdog is driven by the order of the listener's events, never by "the last N
//! lines": a connect error starts a timer; `Runner reconnected.`, `Listening for Jobs` or a
//! job line cancels it. An idle listener gets `grace`, a busy one `job_stall_timeout`.
//! The breaker is a sliding window on CLOCK_BOOTTIME (monotonic, counts suspend, survives
//! a process restart); it is persisted with the boot id so a restart does not reset it.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::policy::cause::Cause;
use crate::policy::events::RunnerEvent;

/// One listener's connect-error timer.
#[derive(Debug, Clone)]
pub struct Watchdog {
    grace: Duration,
    job_stall_timeout: Duration,
    /// The first unrecovered connect error of this episode.
    since: Option<(Instant, String)>,
    busy: bool,
}

impl Watchdog {
    /// A watchdog with these limits.
    pub fn new(grace: Duration, job_stall_timeout: Duration) -> Watchdog {
        Watchdog {
            grace,
            job_stall_timeout,
            since: None,
            busy: false,
        }
    }

    /// Feed one event, in order.
    pub fn on_event(&mut self, ev: &RunnerEvent, now: Instant) {
        match ev {
            RunnerEvent::ConnectError { message } if self.since.is_none() => {
                self.since = Some((now, message.clone()));
            }
            RunnerEvent::Reconnected | RunnerEvent::Listening => self.since = None,
            RunnerEvent::JobStarted { .. } => {
                self.busy = true;
                self.since = None;
            }
            RunnerEvent::JobCompleted { .. } => {
                self.busy = false;
                self.since = None;
            }
            _ => {}
        }
    }

    /// When it fires if nothing recovers, if a timer runs.
    pub fn deadline(&self) -> Option<Instant> {
        let limit = if self.busy {
            self.job_stall_timeout
        } else {
            self.grace
        };
        self.since.as_ref().map(|(t, _)| *t + limit)
    }

    /// The connect error that started the running timer.
    pub fn error(&self) -> Option<&str> {
        self.since.as_ref().map(|(_, m)| m.as_str())
    }

    /// Whether it has fired by `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

/// One recorded fire.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fire {
    /// CLOCK_BOOTTIME when it fired.
    pub at: Duration,
    pub cause: Cause,
}

/// The breaker's verdict after a fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Closed,
    /// Open until this CLOCK_BOOTTIME.
    Opened {
        until: Duration,
        fires: usize,
        dominant: Cause,
    },
}

/// A sliding-window circuit breaker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    pub fires: VecDeque<Fire>,
    /// CLOCK_BOOTTIME until which the breaker is open.
    pub open_until: Option<Duration>,
    /// The fires that opened it, by cause (`6 fires (clock:6)`).
    #[serde(default)]
    pub opened_by: Option<String>,
}

impl Breaker {
    /// Record a fire at `now`; more than `max_fires` within `window` opens it for `open_for`.
    pub fn record(
        &mut self,
        cause: Cause,
        now: Duration,
        max_fires: u32,
        window: Duration,
        open_for: Duration,
    ) -> Verdict {
        self.fires.push_back(Fire { at: now, cause });
        self.prune(now, window);
        if self.fires.len() > max_fires as usize {
            let until = now + open_for;
            self.open_until = Some(until);
            let fires = self.fires.len();
            let dominant = self.dominant().unwrap_or(Cause::Unknown);
            self.opened_by = Some(self.describe());
            // The window starts afresh once the breaker has opened.
            self.fires.clear();
            self.fires.push_back(Fire { at: now, cause });
            Verdict::Opened {
                until,
                fires,
                dominant,
            }
        } else {
            Verdict::Closed
        }
    }

    /// Drop fires older than the window.
    pub fn prune(&mut self, now: Duration, window: Duration) {
        while self
            .fires
            .front()
            .is_some_and(|f| now.saturating_sub(f.at) > window)
        {
            self.fires.pop_front();
        }
    }

    /// How long it stays open, if it is open at `now`.
    pub fn open_for(&self, now: Duration) -> Option<Duration> {
        self.open_until.filter(|u| *u > now).map(|u| u - now)
    }

    /// The most frequent cause in the window (ties: the more specific).
    pub fn dominant(&self) -> Option<Cause> {
        let mut counts = std::collections::BTreeMap::new();
        for f in &self.fires {
            *counts.entry(f.cause).or_insert(0usize) += 1;
        }
        counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(c, _)| c)
    }

    /// `fires=N causes=clock:3,network:1`.
    pub fn describe(&self) -> String {
        let mut counts = std::collections::BTreeMap::new();
        for f in &self.fires {
            *counts.entry(f.cause.as_str()).or_insert(0usize) += 1;
        }
        let causes: Vec<String> = counts.iter().map(|(c, n)| format!("{c}:{n}")).collect();
        format!("{} fires ({})", self.fires.len(), causes.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cause::{attribute, Context};

    fn ev_err() -> RunnerEvent {
        RunnerEvent::ConnectError {
            message: "The HTTP request timed out after 00:01:00.".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_listening_line_is_not_recovery() {
        // Scenario 9: Listening, then one connect error and nothing more.
        let mut w = Watchdog::new(Duration::from_secs(120), Duration::from_secs(1800));
        let t0 = Instant::now();
        w.on_event(&RunnerEvent::Listening, t0);
        tokio::time::advance(Duration::from_secs(5)).await;
        w.on_event(&ev_err(), Instant::now());
        assert_eq!(w.deadline(), Some(t0 + Duration::from_secs(125)));
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(!w.expired(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(w.expired(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_first_error_of_an_episode_counts_and_recovery_cancels() {
        let mut w = Watchdog::new(Duration::from_secs(120), Duration::from_secs(1800));
        let t0 = Instant::now();
        w.on_event(&ev_err(), t0);
        tokio::time::advance(Duration::from_secs(60)).await;
        w.on_event(&ev_err(), Instant::now());
        assert_eq!(
            w.deadline(),
            Some(t0 + Duration::from_secs(120)),
            "a repeated error does not extend the grace"
        );
        // Scenario 10: recovery within the grace.
        w.on_event(&RunnerEvent::Reconnected, Instant::now());
        assert_eq!(w.deadline(), None);
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(!w.expired(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_listener_gets_the_job_stall_timeout() {
        let mut w = Watchdog::new(Duration::from_secs(120), Duration::from_secs(1800));
        w.on_event(
            &RunnerEvent::JobStarted { name: "e2e".into() },
            Instant::now(),
        );
        let t = Instant::now();
        w.on_event(&ev_err(), t);
        assert_eq!(w.deadline(), Some(t + Duration::from_secs(1800)));
        w.on_event(
            &RunnerEvent::JobCompleted {
                name: "e2e".into(),
                result: "Succeeded".into(),
            },
            Instant::now(),
        );
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn breaker_slides_and_opens_past_max() {
        let (max, window, open) = (5, Duration::from_secs(3600), Duration::from_secs(600));
        let mut b = Breaker::default();
        let s = Duration::from_secs;
        for i in 0..5 {
            assert_eq!(
                b.record(Cause::Network, s(i * 100), max, window, open),
                Verdict::Closed
            );
        }
        // The first fire slides out of the window: still closed.
        assert_eq!(
            b.record(Cause::Network, s(3650), max, window, open),
            Verdict::Closed
        );
        match b.record(Cause::Clock, s(3660), max, window, open) {
            Verdict::Opened { until, fires, .. } => {
                assert_eq!(until, s(4260));
                assert_eq!(fires, 6);
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(b.open_for(s(4000)), Some(s(260)));
        assert_eq!(b.open_for(s(4260)), None);
    }

    #[test]
    fn causes_are_attributed_most_specific_first() {
        assert_eq!(
            attribute(Context {
                clock_fault: true,
                token_invalid: true,
                network_evidence: true
            }),
            Cause::Clock
        );
        assert_eq!(
            attribute(Context {
                token_invalid: true,
                network_evidence: true,
                ..Context::default()
            }),
            Cause::Token
        );
        assert_eq!(
            attribute(Context {
                network_evidence: true,
                ..Context::default()
            }),
            Cause::Network
        );
        assert_eq!(attribute(Context::default()), Cause::Unknown);
        let mut b = Breaker::default();
        for c in [Cause::Clock, Cause::Clock, Cause::Network] {
            b.record(
                c,
                Duration::from_secs(1),
                10,
                Duration::from_secs(60),
                Duration::from_secs(60),
            );
        }
        assert_eq!(b.dominant(), Some(Cause::Clock));
        assert_eq!(b.describe(), "3 fires (clock:2,network:1)");
    }
}
