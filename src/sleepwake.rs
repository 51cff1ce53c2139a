//! Suspend/resume and wall-clock steps, from the three clocks.
//!
//! A suspend shows as CLOCK_BOOTTIME − CLOCK_MONOTONIC growing; a wall-clock step as
//! CLOCK_REALTIME − CLOCK_MONOTONIC changing by more than a suspend explains. The detector
//! is pure; [`run`] ticks it every second and, on a resume, measures the clock, checks the
//! token and recycles idle listeners (their long-polls are dead); busy ones stay, watched.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clocks::Clocks;
use crate::host::Host;
use crate::host::SlotCmd;

/// The tick: a jump is seen within one tick.
pub const TICK: Duration = Duration::from_secs(1);
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

/// Tick until cancelled; on a resume, trigger the resume actions.
pub async fn run(
    host: Arc<Host>,
    cmds: Vec<mpsc::UnboundedSender<SlotCmd>>,
    cancel: CancellationToken,
) {
    let mut det = Detector::new(&*host.clocks);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for jump in det.tick(&*host.clocks) {
            let recycle = match jump {
                Jump::Suspend(d) => {
                    tracing::warn!(suspended_s = d.as_secs(), "host resumed after a suspend of {}: measuring the clock, checking the token, recycling idle listeners", humantime::format_duration(Duration::from_secs(d.as_secs())));
                    true
                }
                Jump::WallStep(s) => {
                    let big = (s * 1000.0).abs() as i128 >= STEP_RECYCLE_MS;
                    tracing::warn!(
                        step_s = format!("{s:+.1}"),
                        "wall clock stepped by {s:+.1}s{}",
                        if big { ": treating it as a resume" } else { "" }
                    );
                    big
                }
            };
            host.measure_clock.notify_one();
            if recycle {
                host.check_token.notify_one();
                for c in &cmds {
                    let _ = c.send(SlotCmd::Recycle);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clocks::ShiftedClocks;

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
