//! Runner versions: the installed one (`bin/Runner.Listener --version`), the newest
//! release (from the downloads endpoint), and GitHub's deadline for a version (from the
//! deprecations endpoint, reference A8/B6), judged against the clock.
//!
//! The judgement is pure; reading the version runs the listener binary once.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::github::{RunnerApplication, VersionDeprecation};

/// Warn this many days before a runtime deadline (`doctor`, health).
pub const WARN_DAYS: i64 = 21;

/// `(major, minor, patch)` of `2.336.0` or `v2.336.0`.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut p = v.trim().trim_start_matches('v').split('.');
    Some((
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
        p.next()?.split(['-', '+']).next()?.parse().ok()?,
    ))
}

/// The installed runner's version in `dir`: `bin/Runner.Listener --version`.
pub async fn installed(dir: &Path) -> Option<String> {
    let bin = dir.join("bin/Runner.Listener");
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new(&bin)
            .arg("--version")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && parse_version(&v).is_some()).then_some(v)
}

/// The newest version among the downloads (from their Linux file names).
pub fn latest_release(apps: &[RunnerApplication]) -> Option<String> {
    apps.iter()
        .filter(|a| a.os == "linux")
        .filter_map(|a| {
            let v = a
                .filename
                .trim_end_matches(".tar.gz")
                .rsplit('-')
                .next()?
                .to_string();
            parse_version(&v).map(|k| (k, v))
        })
        .max()
        .map(|(_, v)| v)
}

/// What GitHub says of a version's deadlines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Deadline {
    /// Not asked yet.
    #[default]
    Unchecked,
    /// GitHub does not know the version, or the server has no deprecations endpoint (a
    /// GHES that predates it): nobody can say.
    Unknown,
    /// The dates GitHub returned; `runtime` None: no date set yet (the newest release).
    Known {
        runtime: Option<DateTime<Utc>>,
        registration: Option<DateTime<Utc>>,
    },
}

impl Deadline {
    /// From the endpoint's answer (`None`: 404).
    pub fn from_answer(answer: Option<VersionDeprecation>) -> Deadline {
        match answer {
            None => Deadline::Unknown,
            Some(d) => Deadline::Known {
                runtime: d.runtime_deprecates_at,
                registration: d.registration_deprecates_at,
            },
        }
    }

    /// The runtime deadline, when there is one.
    pub fn runtime(&self) -> Option<DateTime<Utc>> {
        match self {
            Deadline::Known { runtime, .. } => *runtime,
            _ => None,
        }
    }

    /// `unchecked`, `unknown`, `undated` or `dated` (the status schema's words).
    pub fn kind(&self) -> &'static str {
        match self {
            Deadline::Unchecked => "unchecked",
            Deadline::Unknown => "unknown",
            Deadline::Known { runtime: None, .. } => "undated",
            Deadline::Known { .. } => "dated",
        }
    }

    /// How the deadline stands at `now`.
    pub fn judge(&self, now: DateTime<Utc>) -> Standing {
        match self.runtime() {
            None => Standing::Fine,
            Some(at) if at <= now => Standing::Past {
                days_ago: (now - at).num_days(),
            },
            Some(at) => {
                let left = (at - now).num_days();
                if left < WARN_DAYS {
                    Standing::Soon { days_left: left }
                } else {
                    Standing::Fine
                }
            }
        }
    }
}

/// A version's deadline against the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No date, or more than [`WARN_DAYS`] away.
    Fine,
    /// Within [`WARN_DAYS`].
    Soon { days_left: i64 },
    /// GitHub sends this version no jobs any more.
    Past { days_ago: i64 },
}

/// `2026-11-05 (28 days ago)` or `2026-12-09 (in 6 days)`.
pub fn describe_deadline(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let days = (at - now).num_days();
    let when = if at <= now {
        format!("{} days ago", (now - at).num_days())
    } else if days == 0 {
        "today".to_string()
    } else {
        format!("in {days} days")
    };
    format!("{} ({when})", at.format("%Y-%m-%d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn versions_order_numerically() {
        assert!(parse_version("2.336.0") > parse_version("2.99.9"));
        assert_eq!(parse_version("v2.1.3"), Some((2, 1, 3)));
        assert_eq!(parse_version("junk"), None);
    }

    #[test]
    fn a_deadline_is_fine_then_soon_within_21_days_then_past() {
        let d = Deadline::Known {
            runtime: Some(at("2026-11-05T00:00:00Z")),
            registration: None,
        };
        assert_eq!(d.kind(), "dated");
        assert_eq!(d.judge(at("2026-10-14T23:00:00Z")), Standing::Fine);
        assert_eq!(
            d.judge(at("2026-10-15T01:00:00Z")),
            Standing::Soon { days_left: 20 }
        );
        assert_eq!(
            d.judge(at("2026-12-03T08:00:00Z")),
            Standing::Past { days_ago: 28 }
        );
        assert_eq!(
            describe_deadline(at("2026-11-05T00:00:00Z"), at("2026-12-03T08:00:00Z")),
            "2026-11-05 (28 days ago)"
        );
    }

    #[test]
    fn no_date_and_an_unknown_version_are_never_judged_late() {
        let undated = Deadline::from_answer(Some(VersionDeprecation {
            runner_version: "2.338.0".into(),
            registration_deprecates_at: None,
            runtime_deprecates_at: None,
        }));
        assert_eq!(undated.kind(), "undated");
        assert_eq!(undated.judge(at("2026-12-03T00:00:00Z")), Standing::Fine);
        let unknown = Deadline::from_answer(None);
        assert_eq!(unknown.kind(), "unknown");
        assert_eq!(unknown.judge(at("2026-12-03T00:00:00Z")), Standing::Fine);
    }
}
