//! What a listener's exit means, from its code, its signal and what it said.
//!
//! Pure: no IO. Codes per `src/runner/protocol.md` §2; exit 0 is ambiguous, so the
//! lines seen before it decide.

use super::events::RunnerEvent;

/// What a listener said during its life that changes the meaning of its exit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub listening: bool,
    pub job_completed: bool,
    pub registration_deleted: bool,
    pub clock_skew: bool,
    pub version_deprecated: bool,
    /// `Current runner version: '2.336.0'`: the version it said it is.
    pub version: Option<String>,
}

impl Seen {
    /// Record an event.
    pub fn record(&mut self, ev: &RunnerEvent) {
        match ev {
            RunnerEvent::Listening => self.listening = true,
            RunnerEvent::JobCompleted { .. } => self.job_completed = true,
            RunnerEvent::RegistrationDeleted { .. } => self.registration_deleted = true,
            RunnerEvent::ClockSkew => self.clock_skew = true,
            RunnerEvent::VersionDeprecated { .. } => self.version_deprecated = true,
            RunnerEvent::Version(v) => self.version = Some(v.clone()),
            _ => {}
        }
    }
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

/// The meaning of a listener's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// 0 after its one job: GitHub removes an ephemeral registration by itself.
    JobDone,
    /// We stopped it.
    Stopped,
    /// The registration is gone (0 with "Cleaning up", or 1 with the deleted text).
    RegistrationDeleted,
    /// 0 with no job and no request: e.g. the broker's job-not-found.
    CleanExit,
    /// 1: fatal, with no more specific line.
    Terminated,
    /// 1 after the clock-skew line.
    ClockSkew,
    /// 2: retryable (any unexpected exception, or the broker giving up).
    Retryable,
    /// 3 or 4: self-update.
    Updating,
    /// 5: session conflict.
    SessionConflict,
    /// 7, or 1 after the deprecated-version line.
    VersionDeprecated,
    /// 6 or anything else.
    Unknown,
    /// Killed by a signal we did not send.
    Crashed,
    /// Stopped by the watchdog (stuck, stalled socket, offline on GitHub).
    Watchdog,
    /// Stopped because the host resumed from suspend (its long-poll is dead).
    Recycled,
}

impl ExitReason {
    /// A short name for logs and the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::JobDone => "job_done",
            ExitReason::Stopped => "stopped",
            ExitReason::RegistrationDeleted => "registration_deleted",
            ExitReason::CleanExit => "clean_exit",
            ExitReason::Terminated => "terminated",
            ExitReason::ClockSkew => "clock_skew",
            ExitReason::Retryable => "retryable",
            ExitReason::Updating => "updating",
            ExitReason::SessionConflict => "session_conflict",
            ExitReason::VersionDeprecated => "version_deprecated",
            ExitReason::Unknown => "unknown",
            ExitReason::Crashed => "crashed",
            ExitReason::Watchdog => "watchdog",
            ExitReason::Recycled => "recycled",
        }
    }
}

/// Before 2.337.0 the runner turned any bare HTTP 403 from the broker into its
/// deprecated-version message (actions/runner #4613, fixed by PR #4633 in 2.337.0): from
/// such a version (or one that did not say) the line needs GitHub's confirmation.
pub fn deprecation_needs_confirmation(version: Option<&str>) -> bool {
    let parsed = version.and_then(|v| {
        let mut p = v.trim().trim_start_matches('v').split('.');
        Some((
            p.next()?.parse::<u64>().ok()?,
            p.next()?.parse::<u64>().ok()?,
            p.next()?.split(['-', '+']).next()?.parse::<u64>().ok()?,
        ))
    });
    parsed.is_none_or(|v| v < (2, 337, 0))
}

/// Classify an exit.
pub fn classify(ended: Ended, seen: &Seen, stop_requested: bool) -> ExitReason {
    match ended {
        Ended::Signal(_) if stop_requested => ExitReason::Stopped,
        Ended::Signal(_) => ExitReason::Crashed,
        // The deprecated line decides, whatever the code: 0 (through run.sh, or without
        // the exit-code switch), 1, or 7 (reference A8).
        Ended::Code(0 | 1 | 7) if seen.version_deprecated && !stop_requested => {
            ExitReason::VersionDeprecated
        }
        Ended::Code(0) if seen.registration_deleted => ExitReason::RegistrationDeleted,
        Ended::Code(0) if seen.job_completed => ExitReason::JobDone,
        Ended::Code(0) if stop_requested => ExitReason::Stopped,
        Ended::Code(0) => ExitReason::CleanExit,
        Ended::Code(1) if seen.clock_skew => ExitReason::ClockSkew,
        Ended::Code(1) if seen.registration_deleted => ExitReason::RegistrationDeleted,
        Ended::Code(1) => ExitReason::Terminated,
        Ended::Code(2) => ExitReason::Retryable,
        Ended::Code(3 | 4) => ExitReason::Updating,
        Ended::Code(5) => ExitReason::SessionConflict,
        Ended::Code(7) => ExitReason::VersionDeprecated,
        Ended::Code(_) => ExitReason::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(f: impl FnOnce(&mut Seen)) -> Seen {
        let mut s = Seen::default();
        f(&mut s);
        s
    }

    #[test]
    fn the_deprecated_line_needs_confirmation_before_2_337_0() {
        assert!(deprecation_needs_confirmation(Some("2.336.0")));
        assert!(deprecation_needs_confirmation(Some("v2.333.1")));
        assert!(
            deprecation_needs_confirmation(None),
            "a runner that did not say"
        );
        assert!(!deprecation_needs_confirmation(Some("2.337.0")));
        assert!(!deprecation_needs_confirmation(Some("2.338.0")));
        assert!(!deprecation_needs_confirmation(Some("3.0.0")));
    }

    #[test]
    fn table() {
        use Ended::*;
        use ExitReason as R;
        let none = Seen::default();
        let cases = [
            (Code(0), seen(|s| s.job_completed = true), false, R::JobDone),
            (
                Code(0),
                seen(|s| s.registration_deleted = true),
                false,
                R::RegistrationDeleted,
            ),
            (Code(0), none.clone(), true, R::Stopped),
            (Code(0), none.clone(), false, R::CleanExit),
            (Code(1), none.clone(), false, R::Terminated),
            (Code(1), seen(|s| s.clock_skew = true), false, R::ClockSkew),
            (
                Code(1),
                seen(|s| s.registration_deleted = true),
                false,
                R::RegistrationDeleted,
            ),
            (
                Code(1),
                seen(|s| s.version_deprecated = true),
                false,
                R::VersionDeprecated,
            ),
            // Through run.sh (or without the exit-code switch) a deprecated runner exits 0.
            (
                Code(0),
                seen(|s| s.version_deprecated = true),
                false,
                R::VersionDeprecated,
            ),
            (
                Code(7),
                seen(|s| s.version_deprecated = true),
                false,
                R::VersionDeprecated,
            ),
            (Code(2), none.clone(), false, R::Retryable),
            (Code(3), none.clone(), false, R::Updating),
            (Code(4), none.clone(), false, R::Updating),
            (Code(5), none.clone(), false, R::SessionConflict),
            (Code(6), none.clone(), false, R::Unknown),
            (Code(7), none.clone(), false, R::VersionDeprecated),
            (Signal(9), none.clone(), true, R::Stopped),
            (Signal(11), none.clone(), false, R::Crashed),
        ];
        for (ended, seen, stop, want) in cases {
            assert_eq!(
                classify(ended, &seen, stop),
                want,
                "{ended:?} {seen:?} {stop}"
            );
        }
    }
}
