//! The tokens of the scale-set flow (reference 1.3–1.6): the enterprise registration token,
//! the admin connection's JWT (three segments, `alg` `RS256` with a signature no one
//! checks, numeric `exp`; whether the real one carries `iat` and `nbf` is unknown, this one
//! does), and the queue tokens sessions hand out (opaque).

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;

/// The admin connection for `scope`: the service URL and a new admin JWT.
pub(in crate::github) fn admin_connection(
    shared: &Shared,
    s: &mut State,
    scope: &str,
) -> (String, String) {
    let opts = &shared.opts.scaleset;
    let url = service_url(shared);
    let now = Utc::now().timestamp() + s.scalesets.admin_clock_skew_secs;
    let ttl = opts.admin_token_ttl.as_secs() as i64;
    let header = json!({"typ": "JWT", "alg": "RS256", "x5t": random_token(27)});
    let claims = json!({
        "nameid": format!("dddddddd-dddd-dddd-dddd-{}", random_token(12).to_lowercase()),
        "scp": "Actions.RunnerScaleSets Actions.Runners",
        "sub": scope,
        "iss": shared.base_url,
        "aud": url,
        "nbf": now,
        "iat": now,
        "exp": now + ttl,
    });
    let sig: [u8; 32] = rand::random();
    let token = format!(
        "{}.{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string()),
        B64URL.encode(sig)
    );
    s.scalesets.admin_tokens.insert(
        token.clone(),
        Token {
            scope: scope.to_string(),
            session: String::new(),
            expires: Instant::now() + opts.admin_token_ttl,
        },
    );
    (url, token)
}

/// The scope of the request's admin JWT, or 401 `InvalidTokenException`.
#[allow(clippy::result_large_err)]
pub(super) fn admin_scope(shared: &Shared, ctx: &Ctx) -> Result<String, Resp> {
    let s = shared.lock();
    let token = bearer(ctx);
    match token.and_then(|t| s.scalesets.admin_tokens.get(&t)) {
        Some(t) if Instant::now() < t.expires => Ok(t.scope.clone()),
        _ => Err(errors::invalid_token(s.scalesets.bare_errors)),
    }
}

pub(super) fn bearer(ctx: &Ctx) -> Option<String> {
    ctx.header("authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(|t| t.trim().to_string()))
}

/// A new queue token for session `sid`.
pub(super) fn new_queue_token(s: &mut State, opts: &ScaleSetOptions, sid: &str) -> String {
    let token = random_token(64);
    s.scalesets.queue_tokens.insert(
        token.clone(),
        Token {
            scope: String::new(),
            session: sid.to_string(),
            expires: Instant::now() + opts.queue_token_ttl,
        },
    );
    token
}

/// The session a queue call's token names, or 401: unknown, expired, or its session gone.
#[allow(clippy::result_large_err)]
pub(super) fn queue_session(s: &State, ctx: &Ctx) -> Result<String, Resp> {
    let token = bearer(ctx);
    match token.and_then(|t| s.scalesets.queue_tokens.get(&t)) {
        Some(t) if Instant::now() < t.expires && s.scalesets.sessions.contains_key(&t.session) => {
            Ok(t.session.clone())
        }
        _ => Err(errors::queue_unauthorized()),
    }
}

/// Expire every admin JWT issued so far.
pub(super) fn expire_admin_tokens(s: &mut State) {
    let now = Instant::now();
    for t in s.scalesets.admin_tokens.values_mut() {
        t.expires = now;
    }
}

/// Expire the queue tokens of scale set `set_id`'s sessions (every set's when `None`).
pub(super) fn expire_queue_tokens(s: &mut State, set_id: Option<u64>) {
    let now = Instant::now();
    let sessions = &s.scalesets.sessions;
    for t in s.scalesets.queue_tokens.values_mut() {
        let of_set = sessions
            .get(&t.session)
            .is_some_and(|x| set_id.is_none_or(|id| x.set_id == id));
        if of_set {
            t.expires = now;
        }
    }
}

/// Forget the queue tokens of session `sid`.
pub(super) fn drop_queue_tokens(s: &mut State, sid: &str) {
    s.scalesets.queue_tokens.retain(|_, t| t.session != sid);
}

/// `POST /enterprises/{e}/actions/runners/registration-token` (the REST API's gate first).
pub(super) fn enterprise_registration_token(
    shared: &Shared,
    ctx: &Ctx,
    segs: &[&str],
    enterprise: &str,
) -> Resp {
    if let Err(resp) = super::super::rest::rest_gate(shared, ctx, segs) {
        return resp;
    }
    let token = random_token(29);
    let expires =
        (Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Millis, false);
    shared.lock().reg_tokens.insert(
        token.clone(),
        format!("enterprises/{}", enterprise.to_lowercase()),
    );
    json_resp(
        StatusCode::CREATED,
        &json!({"token": token, "expires_at": expires}),
    )
}
