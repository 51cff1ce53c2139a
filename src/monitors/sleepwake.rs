//! Suspend/resume and wall-clock steps, from the three clocks.
//!
//! A suspend shows as CLOCK_BOOTTIME − CLOCK_MONOTONIC growing; a wall-clock step as
//! CLOCK_REALTIME − CLOCK_MONOTONIC changing by more than a suspend explains. The detector
//! is pure. [`run`] compares the clocks when the kernel says they jumped: a `timerfd` on
//! CLOCK_REALTIME armed with `TFD_TIMER_CANCEL_ON_SET` is cancelled when the wall clock is
//! set (settimeofday, chronyd's step, a WSL2 VM's time sync after Windows sleep) and on
//! every resume from suspend (`timekeeping_resume` notifies timerfds), so both are seen at
//! once, with no timer running. A [`BACKSTOP`] check catches what the kernel cannot tell
//! (a clock shifted by libfaketime in tests, a hypervisor pause without a clock set).
//! On a resume it measures the clock, checks the token and recycles idle listeners (their
//! long-polls are dead); busy ones stay, watched.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::os::clocks::Clocks;
use crate::status::host::Host;
use crate::status::host::SlotCmd;

/// The check when the kernel says nothing: a jump it cannot tell is seen within this.
/// The kernel tells resumes and clock sets at once (the timerfd), so this is only for
/// what it cannot tell. 4 s: on the same grid as the connection watch's default 4 s
/// check and the memory pressure's 8 s, so that the three wake the process once.
pub const BACKSTOP: Duration = Duration::from_secs(4);
/// Jumps smaller than this are noise (scheduling, slewing).
const THRESHOLD_MS: i128 = 1000;
/// A wall-clock step this large is treated like a resume (a WSL2 VM after Windows sleep).
const STEP_RECYCLE_MS: i128 = 30_000;

/// A time jump.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jump {
    /// The host was suspended this long.
    Suspend(Duration),
    /// The wall clock stepped by this many seconds (beyond any suspend).
    WallStep(f64),
}

fn ms(d: Duration) -> i128 {
    d.as_millis() as i128
}

/// Compares the clocks tick by tick.
#[derive(Debug, Clone)]
pub struct Detector {
    boot_minus_mono: i128,
    real_minus_mono: i128,
}

impl Detector {
    /// Start from the clocks' current readings.
    pub fn new(c: &dyn Clocks) -> Detector {
        let m = ms(c.monotonic());
        Detector {
            boot_minus_mono: ms(c.boottime()) - m,
            real_minus_mono: ms(c.realtime()) - m,
        }
    }

    /// What happened since the last tick.
    pub fn tick(&mut self, c: &dyn Clocks) -> Vec<Jump> {
        let m = ms(c.monotonic());
        let (bm, rm) = (ms(c.boottime()) - m, ms(c.realtime()) - m);
        let suspended = bm - self.boot_minus_mono;
        let stepped = (rm - self.real_minus_mono) - suspended.max(0);
        self.boot_minus_mono = bm;
        self.real_minus_mono = rm;
        let mut out = vec![];
        if suspended >= THRESHOLD_MS {
            out.push(Jump::Suspend(Duration::from_millis(suspended as u64)));
        }
        if stepped.abs() >= THRESHOLD_MS {
            out.push(Jump::WallStep(stepped as f64 / 1000.0));
        }
        out
    }
}

/// A `timerfd` that becomes readable when CLOCK_REALTIME is set or the system resumes.
struct WallWatch {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl WallWatch {
    fn new() -> std::io::Result<WallWatch> {
        use std::os::fd::FromRawFd;
        // SAFETY: a plain syscall; on success it returns a new descriptor we own.
        let raw = unsafe {
            libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: we own the descriptor and it stays open for as long as it is registered
        // (both live in the AsyncFd).
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let w = WallWatch { fd };
        w.arm()?;
        Ok(w)
    }

    /// Expire far in the future, cancelled by any clock set.
    fn arm(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            // Year 2096: a set past it expires the timer, which wakes us too.
            it_value: libc::timespec {
                tv_sec: 4_000_000_000,
                tv_nsec: 0,
            },
        };
        // SAFETY: valid descriptor and itimerspec; the old value is not wanted.
        let r = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait for the next set or resume, then re-arm.
    async fn wait(&self) {
        use std::os::fd::AsRawFd;
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `buf`.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            let err = std::io::Error::last_os_error();
            if n < 0 && err.kind() == std::io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            // ECANCELED (the clock was set) or an expiry: re-arm and report.
            guard.clear_ready();
            let _ = self.arm();
            return;
        }
    }
}

/// Watch until cancelled; on a resume, trigger the resume actions.
pub async fn run(
    host: Arc<Host>,
    cmds: Vec<mpsc::UnboundedSender<SlotCmd>>,
    lease: Duration,
    cancel: CancellationToken,
) {
    let mut det = Detector::new(&*host.clocks);
    let wall = match WallWatch::new() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(event = "timerfd_failed", error = %e, backstop_s = BACKSTOP.as_secs(), "cannot watch clock sets (timerfd); jumps are seen by the periodic check only");
            None
        }
    };
    let simulated = host.clocks.jumped();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = crate::os::clocks::tick(BACKSTOP) => {}
            _ = async { wall.as_ref().expect("guarded").wait().await }, if wall.is_some() => {}
            _ = async { simulated.expect("guarded").notified().await }, if simulated.is_some() => {}
        }
        for jump in det.tick(&*host.clocks) {
            let mut lease_lost = false;
            let recycle = match jump {
                Jump::Suspend(d) => {
                    lease_lost = d > lease;
                    tracing::warn!(event = "resume", suspended_s = d.as_secs(), "host resumed after a suspend of {}: measuring the clock, checking the token, recycling idle listeners", humantime::format_duration(Duration::from_secs(d.as_secs())));
                    true
                }
                Jump::WallStep(s) => {
                    let big = (s * 1000.0).abs() as i128 >= STEP_RECYCLE_MS;
                    tracing::warn!(
                        event = "clock_step",
                        step_s = format!("{s:+.1}"),
                        resume = big,
                        "wall clock stepped by {s:+.1}s{}",
                        if big { ": treating it as a resume" } else { "" }
                    );
                    big
                }
            };
            host.measure_clock.notify_one();
            if recycle {
                host.check_token.notify_one();
                host.resumed.send_modify(|n| *n += 1);
                // Past the job lease a busy listener's job is gone too.
                let cmd = if lease_lost {
                    SlotCmd::LeaseLost
                } else {
                    SlotCmd::Recycle
                };
                for c in &cmds {
                    let _ = c.send(cmd);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::clocks::ShiftedClocks;

    #[test]
    fn suspends_and_steps_are_told_apart() {
        let c = ShiftedClocks::default();
        let mut d = Detector::new(&c);
        assert!(d.tick(&c).is_empty());
        c.suspend(Duration::from_secs(90));
        let j = d.tick(&c);
        assert_eq!(j.len(), 1, "{j:?}");
        assert!(matches!(j[0], Jump::Suspend(s) if (s.as_secs_f64() - 90.0).abs() < 0.1));
        c.step(-90_000);
        let j = d.tick(&c);
        assert!(
            matches!(j[..], [Jump::WallStep(s)] if (s + 90.0).abs() < 0.1),
            "{j:?}"
        );
        assert!(d.tick(&c).is_empty(), "each jump is reported once");
        // Five jumps of ±90 s (scenario 4): five detections, no more.
        let mut n = 0;
        for i in 0..5 {
            if i % 2 == 0 {
                c.suspend(Duration::from_secs(90));
            } else {
                c.step(90_000);
            }
            n += d.tick(&c).len();
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn small_drift_is_not_a_jump() {
        let c = ShiftedClocks::default();
        let mut d = Detector::new(&c);
        c.step(400);
        assert!(d.tick(&c).is_empty());
    }
}
