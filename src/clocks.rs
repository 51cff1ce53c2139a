//! The three clocks the supervisor compares: CLOCK_MONOTONIC (stops during suspend),
//! CLOCK_BOOTTIME (counts suspend) and CLOCK_REALTIME (the wall clock, which steps).
//!
//! Behind a trait so tests can simulate a suspend or a wall-clock step without touching
//! the machine's clock. Timers still use `tokio::time`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// The wall clock now. The one place product code reads it (clippy.toml bans the others),
/// so time stays in one module.
#[allow(clippy::disallowed_methods)]
pub fn wall_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Reads the clocks.
pub trait Clocks: Send + Sync {
    /// CLOCK_MONOTONIC.
    fn monotonic(&self) -> Duration;
    /// CLOCK_BOOTTIME.
    fn boottime(&self) -> Duration;
    /// CLOCK_REALTIME, since the Unix epoch (may step; may be before the epoch: then zero).
    fn realtime(&self) -> Duration;
    /// Woken when simulated clocks jump (the real ones wake `sleepwake` from the kernel).
    fn jumped(&self) -> Option<&tokio::sync::Notify> {
        None
    }
}

fn read(id: ClockId) -> Duration {
    clock_gettime(id).map(Duration::from).unwrap_or_default()
}

/// The system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClocks;

impl Clocks for SystemClocks {
    fn monotonic(&self) -> Duration {
        read(ClockId::CLOCK_MONOTONIC)
    }
    fn boottime(&self) -> Duration {
        read(ClockId::CLOCK_BOOTTIME)
    }
    fn realtime(&self) -> Duration {
        read(ClockId::CLOCK_REALTIME)
    }
}

/// The system's clocks plus offsets a test can change: a suspend adds to BOOTTIME and
/// REALTIME, a step adds to REALTIME only.
#[derive(Debug, Default)]
pub struct ShiftedClocks {
    boot_ms: AtomicI64,
    real_ms: AtomicI64,
    jumped: tokio::sync::Notify,
}

impl ShiftedClocks {
    /// Pretend the host was suspended for `d`.
    pub fn suspend(&self, d: Duration) {
        self.boot_ms
            .fetch_add(d.as_millis() as i64, Ordering::SeqCst);
        self.real_ms
            .fetch_add(d.as_millis() as i64, Ordering::SeqCst);
        self.jumped.notify_one();
    }
    /// Pretend the wall clock was stepped by `ms` (negative: backwards).
    pub fn step(&self, ms: i64) {
        self.real_ms.fetch_add(ms, Ordering::SeqCst);
        self.jumped.notify_one();
    }
}

fn shift(d: Duration, ms: i64) -> Duration {
    if ms >= 0 {
        d + Duration::from_millis(ms as u64)
    } else {
        d.saturating_sub(Duration::from_millis(ms.unsigned_abs()))
    }
}

impl Clocks for ShiftedClocks {
    fn monotonic(&self) -> Duration {
        SystemClocks.monotonic()
    }
    fn boottime(&self) -> Duration {
        shift(SystemClocks.boottime(), self.boot_ms.load(Ordering::SeqCst))
    }
    fn realtime(&self) -> Duration {
        shift(SystemClocks.realtime(), self.real_ms.load(Ordering::SeqCst))
    }
    fn jumped(&self) -> Option<&tokio::sync::Notify> {
        Some(&self.jumped)
    }
}
