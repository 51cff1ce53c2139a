//! The slot's back-off: the crash-loop doubling with its cap, and the jitter, which is an
//! input (seeded once by the daemon, fixed in tests) so that the machine stays
//! deterministic. Pure.

use std::time::Duration;

/// Where the jitter of back-offs comes from: a seeded source (the daemon seeds it once), or
/// a fixed fraction (tests, which then assert exact waits).
#[derive(Debug, Clone)]
pub enum Jitter {
    /// A fraction in `[0, 1]` of the upper half of each back-off.
    Fixed(f64),
    /// splitmix64 from this state.
    Seeded(u64),
}

impl Jitter {
    /// The next fraction in `[0, 1]`.
    pub(super) fn next(&mut self) -> f64 {
        match self {
            Jitter::Fixed(f) => f.clamp(0.0, 1.0),
            Jitter::Seeded(s) => {
                *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = *s;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                (z >> 11) as f64 / (1u64 << 53) as f64
            }
        }
    }
}

/// The longest crash-loop back-off.
pub const FAILURE_BACKOFF_CAP: Duration = Duration::from_secs(300);

/// The crash-loop back-off: first wait and longest (`[runner] failure_backoff`, 2 s, and
/// 5 min).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The wait after the `failures`-th consecutive failure (1-based): a point in the
    /// upper half of `min(cap, base·2^(failures-1))`, `jitter` of the way up.
    pub fn wait(&self, failures: u32, jitter: f64) -> Duration {
        let n = failures.saturating_sub(1).min(30);
        let d = self.base.saturating_mul(1u32 << n).min(self.cap);
        let half = d / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Listener starts within `window` for a listener that crashes `crash` after it starts
/// (start-up included), each failure backed off by `backoff`, with `jitter`. The
/// crash-loop figures of the tests and the resilience benchmark.
pub fn crash_loop_starts(
    backoff: Backoff,
    window: Duration,
    crash: Duration,
    jitter: &mut Jitter,
) -> usize {
    let (mut t, mut failures, mut starts) = (Duration::ZERO, 0, 0);
    while t < window {
        starts += 1;
        failures += 1;
        t += crash + backoff.wait(failures, jitter.next());
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_crash_loop_back_off_doubles_to_its_cap_and_jitter_is_deterministic() {
        let b = Backoff {
            base: S(2),
            cap: FAILURE_BACKOFF_CAP,
        };
        for (n, lo, hi) in [
            (1, MS(1000), MS(2000)),
            (2, MS(2000), MS(4000)),
            (4, MS(8000), MS(16000)),
            (20, S(150), S(300)),
        ] {
            assert_eq!((b.wait(n, 0.0), b.wait(n, 1.0)), (lo, hi), "failure {n}");
        }
        assert_eq!(b.wait(1, 0.5), MS(1500));
        // The configured base: a 100 ms crash-loop test backs off 50..100 ms first.
        let fast = Backoff {
            base: MS(100),
            cap: FAILURE_BACKOFF_CAP,
        };
        assert_eq!(fast.wait(1, 0.0), MS(50));
        // A seeded source is the same sequence for the same seed, within [0, 1].
        let draw = |seed| {
            let mut j = Jitter::Seeded(seed);
            (0..100).map(|_| j.next()).collect::<Vec<f64>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(7).iter().all(|x| (0.0..=1.0).contains(x)));
        // The bound: crashing 0.3 s after listening, at most 8 starts in the first
        // 30 s and at most 20 in 10 minutes, whatever the jitter draws.
        for seed in 0..1000 {
            let crash = MS(300);
            assert!(crash_loop_starts(b, S(30), crash, &mut Jitter::Seeded(seed)) <= 8);
            assert!(crash_loop_starts(b, S(600), crash, &mut Jitter::Seeded(seed)) <= 20);
        }
        // 1, 2, 4, 8 s after crashes at 0.3 s: starts at 0, 1.3, 3.6, 7.9 and 16.2 s.
        assert_eq!(
            crash_loop_starts(b, S(30), MS(300), &mut Jitter::Fixed(0.0)),
            5
        );
    }
}
