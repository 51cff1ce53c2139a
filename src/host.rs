//! Host-level state that slots and monitors share: the clock's condition, the token's
//! validity, and triggers (measure the clock now, check the token now).
//!
//! It must not: do IO itself; monitors write it, slots read it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::clocks::Clocks;
use crate::watchdog::Context;

/// The clock as last measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClockStatus {
    /// Registrations pause while this is set.
    pub fault: bool,
    /// Why, while faulty.
    pub reason: Option<String>,
    /// The last measured offset of the local clock, seconds (positive: local is ahead).
    pub offset: Option<f64>,
    /// Where the offset came from (an NTP server, or GitHub's Date header).
    pub source: Option<String>,
}

/// Shared host state.
pub struct Host {
    pub clock: watch::Sender<ClockStatus>,
    token_invalid: AtomicBool,
    /// Ask the clock monitor to measure now.
    pub measure_clock: Notify,
    /// Ask the token watch to check now.
    pub check_token: Notify,
    /// Woken when a refused token works again (slots waiting out an auth back-off retry).
    pub token_recovered: Notify,
    pub clocks: Arc<dyn Clocks>,
}

impl Host {
    /// A host with these clocks.
    pub fn new(clocks: Arc<dyn Clocks>) -> Host {
        Host {
            clock: watch::channel(ClockStatus::default()).0,
            token_invalid: AtomicBool::new(false),
            measure_clock: Notify::new(),
            check_token: Notify::new(),
            token_recovered: Notify::new(),
            clocks,
        }
    }

    /// Whether a clock fault is active.
    pub fn clock_fault(&self) -> bool {
        self.clock.borrow().fault
    }

    /// Mark the clock faulty (e.g. the runner printed the clock-skew line).
    pub fn set_clock_fault(&self, reason: &str) {
        self.clock.send_modify(|c| {
            c.fault = true;
            c.reason = Some(reason.to_string());
        });
        self.measure_clock.notify_one();
    }

    /// Whether GitHub refused the token.
    pub fn token_invalid(&self) -> bool {
        self.token_invalid.load(Ordering::Relaxed)
    }

    /// Record the token's validity; returns true when it changed.
    pub fn set_token_invalid(&self, invalid: bool) -> bool {
        self.token_invalid.swap(invalid, Ordering::Relaxed) != invalid
    }

    /// What is known for attributing a watchdog fire.
    pub fn context(&self, network_evidence: bool) -> Context {
        Context {
            clock_fault: self.clock_fault(),
            token_invalid: self.token_invalid(),
            network_evidence,
        }
    }
}
