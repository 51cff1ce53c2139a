//! Message sessions (reference 2.3, 2.5, 2.10): one per scale set. Create → 200 (a second
//! → 409 with the 2026 wording of ARC#4285); refresh → 200, the same id and a new queue
//! token; delete → 204; refresh or delete of a session that is gone → 404
//! `RunnerAdminException`. A session no poll has held for
//! [`ScaleSetOptions::session_expiry`] expires (see [`super::tick`]), which is what the
//! 409 after a crash waits for.

use super::*;

/// A `RunnerScaleSetSession` as the service sends it.
fn session_json(s: &State, sid: &str, queue_url: &str, shared: &Shared) -> Value {
    let x = &s.scalesets.sessions[sid];
    let set = &s.scalesets.sets[&x.set_id];
    json!({
        "sessionId": x.id,
        "ownerName": x.owner,
        "runnerScaleSet": sets::set_json(s, set, shared),
        "messageQueueUrl": queue_url,
        "messageQueueAccessToken": x.token,
        "statistics": sets::statistics(s, x.set_id),
    })
}

/// `POST …/runnerscalesets/{id}/sessions` (body `{sessionId?, ownerName}`).
pub(super) fn create(s: &mut State, ctx: &Ctx, set_id: u64, shared: &Shared) -> Resp {
    let bare = s.scalesets.bare_errors;
    let body: Value = if ctx.body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&ctx.body) {
            Ok(v) => v,
            Err(_) => return errors::argument(bare, "The request body could not be parsed."),
        }
    };
    if !s.scalesets.sessions_of(set_id).is_empty() {
        let name = &s.scalesets.sets[&set_id].name;
        return errors::exception(
            bare,
            StatusCode::CONFLICT,
            errors::SESSION_CONFLICT,
            &format!("The actions runner scaleset {name} already has an active session."),
        );
    }
    let owner = sets::get_ci(&body, "ownerName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let sid = uuid();
    let opts = &shared.opts.scaleset;
    let token = auth::new_queue_token(s, opts, &sid);
    s.scalesets.sessions.insert(
        sid.clone(),
        Session {
            id: sid.clone(),
            set_id,
            owner,
            token,
            polls_in_flight: 0,
            last_seen: Instant::now(),
            capacity: None,
        },
    );
    let url = if s.scalesets.empty_queue_urls > 0 {
        s.scalesets.empty_queue_urls -= 1;
        String::new()
    } else {
        queue_url(shared)
    };
    json_resp(StatusCode::OK, &session_json(s, &sid, &url, shared))
}

/// `PATCH …/sessions/{sid}` (no body): a new queue token.
pub(super) fn refresh(s: &mut State, set_id: u64, sid: &str, shared: &Shared) -> Resp {
    if s.scalesets
        .sessions
        .get(sid)
        .is_none_or(|x| x.set_id != set_id)
    {
        return errors::runner_admin(s.scalesets.bare_errors);
    }
    let token = auth::new_queue_token(s, &shared.opts.scaleset, sid);
    let x = s.scalesets.sessions.get_mut(sid).expect("checked above");
    x.token = token;
    x.last_seen = Instant::now();
    json_resp(
        StatusCode::OK,
        &session_json(s, sid, &queue_url(shared), shared),
    )
}

/// `DELETE …/sessions/{sid}` → 204.
pub(super) fn delete(s: &mut State, set_id: u64, sid: &str) -> Resp {
    if s.scalesets
        .sessions
        .get(sid)
        .is_none_or(|x| x.set_id != set_id)
    {
        return errors::runner_admin(s.scalesets.bare_errors);
    }
    end(s, sid);
    empty(StatusCode::NO_CONTENT)
}

/// Session `sid` is gone (deleted, expired, evicted): its tokens with it; its scale set
/// is idle from now when it has no other.
pub(in crate::github) fn end(s: &mut State, sid: &str) {
    let Some(x) = s.scalesets.sessions.remove(sid) else {
        return;
    };
    auth::drop_queue_tokens(s, sid);
    if s.scalesets.sessions_of(x.set_id).is_empty() {
        if let Some(set) = s.scalesets.sets.get_mut(&x.set_id) {
            set.idle_since = Instant::now();
        }
    }
}
