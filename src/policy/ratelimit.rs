//! The client's etiquette, pure: jittered exponential back-off, how long a rate limit asks
//! to wait (`src/runner/protocol.md` §5), and token expiry parsing.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use rand::Rng;
use reqwest::header::HeaderMap;

/// Retry and back-off settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
    pub max_rate_limit_wait: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (0-based): exponential, capped, with jitter
    /// in the upper half so it is never near zero.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.base, self.cap, attempt)
    }
}

/// Exponential back-off with jitter: a random point in `[d/2, d]`, `d = min(cap, base·2^n)`.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX));
    let d = exp.min(cap);
    let half = d / 2;
    half + rand::thread_rng().gen_range(Duration::ZERO..=half)
}

/// How long GitHub asks us to wait, if this answer is a rate limit (`src/runner/protocol.md` §5).
///
/// `retry-after` wins; else `x-ratelimit-remaining: 0` waits until `x-ratelimit-reset`;
/// else a 429, or a 403 that says "rate limit", waits at least a minute.
/// A 403 that is none of these is a real permission error: `None`.
pub fn rate_limit_wait(
    status: u16,
    headers: &HeaderMap,
    message: &str,
    now_epoch: i64,
) -> Option<Duration> {
    if status != 403 && status != 429 {
        return None;
    }
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(secs) = h("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs.max(1)));
    }
    if h("x-ratelimit-remaining") == Some("0") {
        let reset = h("x-ratelimit-reset")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(now_epoch + 60);
        return Some(Duration::from_secs((reset - now_epoch).max(1) as u64));
    }
    if status == 429 || message.to_ascii_lowercase().contains("rate limit") {
        return Some(Duration::from_secs(60));
    }
    None
}

/// Parse `2027-10-12 09:00:00 UTC` (and RFC 3339, to be lenient).
pub fn parse_token_expiration(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Some(naive) = s
        .strip_suffix(" UTC")
        .and_then(|t| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").ok())
    {
        return Some(naive.and_utc());
    }
    if let Ok(dt) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %z") {
        return Some(dt.with_timezone(&Utc));
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::test_headers as headers;

    #[test]
    fn rate_limit_rules() {
        let now = 1_000_000;
        let check = |status, h: &[(&'static str, &str)], msg| {
            rate_limit_wait(status, &headers(h), msg, now)
        };
        assert_eq!(
            check(429, &[("retry-after", "7")], ""),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            check(403, &[("retry-after", "3")], ""),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            check(
                403,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1000120")
                ],
                ""
            ),
            Some(Duration::from_secs(120))
        );
        assert_eq!(check(429, &[], ""), Some(Duration::from_secs(60)));
        assert_eq!(
            check(403, &[], "You have exceeded a secondary rate limit."),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            check(
                403,
                &[("x-ratelimit-remaining", "4999")],
                "Resource not accessible by personal access token"
            ),
            None
        );
        assert_eq!(check(500, &[("retry-after", "1")], ""), None);
    }

    #[test]
    fn backoff_is_bounded_and_never_tight() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 0..40 {
            let d = backoff(base, cap, attempt);
            let full = base.saturating_mul(1 << attempt.min(30)).min(cap);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn token_expiration_formats() {
        let d = parse_token_expiration("2027-10-12 09:00:00 UTC").unwrap();
        assert_eq!(d.to_rfc3339(), "2027-10-12T09:00:00+00:00");
        assert!(parse_token_expiration("2027-10-12 09:00:00 +0200").is_some());
        assert!(parse_token_expiration("soon").is_none());
    }
}
