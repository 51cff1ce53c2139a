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

/// Sleep until the next multiple of `period` on CLOCK_MONOTONIC (at least `period` / 2
/// from now, so a task that just ran does not run again at once).
///
/// Every periodic task of the process ticks on this one grid, through a kernel timer of
/// its own (a `timerfd` with an absolute expiry): timers that coincide expire together and
/// wake the process once. A 2 s check, a 4 s check and a 10 s heartbeat cost one wake-up
/// every 2 s instead of one each, and none of the early wake-ups of a timer wheel's coarse
/// slots. Falls back to `tokio::time` where a `timerfd` cannot be made.
pub async fn tick(period: Duration) {
    match grid_timer(period) {
        Ok(fd) => match fd.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => tokio::time::sleep(period).await,
        },
        Err(_) => tokio::time::sleep(period).await,
    }
}

/// Sleep `d` on a kernel timer of its own (a one-shot `timerfd`): one wake-up at the
/// deadline, where a `tokio` timer this far out may wake the process on its way down the
/// timer wheel too. For short pauses on an idle path (the status writer's coalescing).
/// Falls back to `tokio::time` where a `timerfd` cannot be made.
pub async fn sleep_exact(d: Duration) {
    let at = read(ClockId::CLOCK_MONOTONIC).as_nanos() + d.as_nanos();
    match timer_at(at) {
        Ok(fd) => match fd.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => tokio::time::sleep(d).await,
        },
        Err(_) => tokio::time::sleep(d).await,
    }
}

fn grid_timer(period: Duration) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let now = read(ClockId::CLOCK_MONOTONIC).as_nanos();
    let p = period.as_nanos().max(1_000_000);
    let mut at = (now / p + 1) * p;
    if at - now < p / 2 {
        at += p;
    }
    timer_at(at)
}

/// A `timerfd` on CLOCK_MONOTONIC that expires at `at` (nanoseconds, absolute).
fn timer_at(at: u128) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a plain syscall; on success it returns a new descriptor we own.
    let raw = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: (at / 1_000_000_000) as libc::time_t,
            tv_nsec: (at % 1_000_000_000) as libc::c_long,
        },
    };
    // SAFETY: valid descriptor and itimerspec; the old value is not wanted.
    if unsafe {
        libc::timerfd_settime(
            fd.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME,
            &spec,
            std::ptr::null_mut(),
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: we own the descriptor; it stays open for as long as it is registered (both
    // live in the AsyncFd).
    unsafe { tokio::io::unix::AsyncFd::register(fd) }
        .map_err(|e| std::io::Error::other(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exact_sleep_and_a_grid_tick_end_no_sooner_than_asked() {
        let t = read(ClockId::CLOCK_MONOTONIC);
        sleep_exact(Duration::from_millis(30)).await;
        assert!(read(ClockId::CLOCK_MONOTONIC) - t >= Duration::from_millis(30));
        // A tick ends on the grid, at least half a period from now.
        let p = Duration::from_millis(40);
        let t = read(ClockId::CLOCK_MONOTONIC);
        tick(p).await;
        let now = read(ClockId::CLOCK_MONOTONIC);
        assert!(now - t >= p / 2, "{:?}", now - t);
    }
}
