//! GitHub's runner scale-set service (issue 19), the protocol layer: its JSON
//! ([`types`]), its errors and what each means ([`errors`]), and when the admin token is
//! refreshed ([`admin_token_refresh_due`]), and its calls ([`client`]). Facts and their certainty are in
//! `../shared/reference/scaleset-protocol.md` (cited by section).
//!
//! Scale-set mode itself builds on this: [`session`] keeps the host's one session alive,
//! [`demand`] (pure) says how many runners the scale set needs, and [`pool`] runs the
//! session in `supervisor run` and hands the slots a runner per assigned job.

pub mod client;
pub mod errors;
pub mod session;
pub mod types;

use base64::Engine;
use chrono::{DateTime, Utc};

/// Refresh the admin token this long before its `exp` (§1.5).
pub const ADMIN_TOKEN_MARGIN: chrono::Duration = chrono::Duration::seconds(60);

/// The `exp` (and `iat`, when present) of a JWT, read without verifying it (§1.5: the
/// admin token is a three-segment JWT with a numeric `exp`).
pub fn jwt_times(jwt: &str) -> Option<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let at = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_i64())
            .and_then(|s| DateTime::from_timestamp(s, 0))
    };
    Some((at("exp")?, at("iat")))
}

/// Whether the admin token must be refreshed now. Judged on GitHub's time, not the local
/// wall clock (§1.5's clock-skew risk): `offset_s` is the local clock's measured offset
/// from GitHub (positive: local is ahead), which the supervisor already keeps. A token
/// whose `exp` cannot be read is refreshed.
pub fn admin_token_refresh_due(jwt: &str, local_now: DateTime<Utc>, offset_s: f64) -> bool {
    let Some((exp, _)) = jwt_times(jwt) else {
        return true;
    };
    let github_now = local_now - chrono::Duration::milliseconds((offset_s * 1000.0) as i64);
    github_now + ADMIN_TOKEN_MARGIN > exp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: i64) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.",
            e(r#"{"alg":"none","typ":"JWT"}"#),
            e(&format!(r#"{{"exp":{exp},"iat":{}}}"#, exp - 3600))
        )
    }

    #[test]
    fn the_admin_token_is_refreshed_a_minute_before_its_exp_on_githubs_time() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let t = jwt(1_800_000_000 + 600);
        assert_eq!(
            jwt_times(&t).map(|(e, i)| (e.timestamp(), i.map(|i| i.timestamp()))),
            Some((1_800_000_600, Some(1_799_997_000)))
        );
        assert!(!admin_token_refresh_due(&t, now, 0.0));
        // Ten minutes to go, but the laptop's clock is 10 minutes behind GitHub's: due.
        assert!(admin_token_refresh_due(&t, now, -600.0));
        // A clock 9 minutes ahead does not refresh on every call.
        assert!(!admin_token_refresh_due(
            &t,
            now + chrono::Duration::minutes(9),
            540.0
        ));
        assert!(admin_token_refresh_due(
            &t,
            now + chrono::Duration::seconds(541),
            0.0
        ));
        assert!(admin_token_refresh_due("not a jwt", now, 0.0));
    }
}
