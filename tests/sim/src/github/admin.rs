//! The admin endpoints (`/_admin`) tests and the demo drive the fake with: jobs, faults, scripts, conflicts, the token's state, the call log and the state.

use super::*;

#[derive(Deserialize)]
pub(super) struct TokenUpdate {
    #[serde(default)]
    revoked: Option<bool>,
    #[serde(default)]
    kind: Option<TokenKind>,
    #[serde(default)]
    expiration: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct JobsRequest {
    #[serde(flatten)]
    job: JobSpec,
    #[serde(default = "one_usize")]
    count: usize,
}

pub(super) fn one_usize() -> usize {
    1
}

pub(super) async fn admin(shared: &Arc<Shared>, ctx: &Ctx, path: &str) -> Resp {
    let m = ctx.method.as_str();
    let body = &ctx.body;
    let ok = || json_resp(StatusCode::OK, &json!({"ok": true}));
    let bad =
        |e: serde_json::Error| json_resp(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}));
    let resp = match (m, path) {
        ("POST", "/_admin/jobs") => match serde_json::from_slice::<JobsRequest>(body) {
            Ok(r) => {
                enqueue_jobs(&mut shared.lock(), r.job, r.count);
                ok()
            }
            Err(e) => bad(e),
        },
        ("POST", "/_admin/faults") => match serde_json::from_slice::<Fault>(body) {
            Ok(f) => {
                shared.lock().faults.push(f);
                ok()
            }
            Err(e) => bad(e),
        },
        ("DELETE", "/_admin/faults") => {
            shared.lock().faults.clear();
            ok()
        }
        ("POST", "/_admin/scripts") => match serde_json::from_slice::<Script>(body) {
            Ok(sc) => {
                shared.lock().scripts.push_back(sc);
                ok()
            }
            Err(e) => bad(e),
        },
        ("POST", "/_admin/conflicts") => match serde_json::from_slice::<Value>(body) {
            Ok(v) => {
                shared.lock().conflicts_for_next = v["count"].as_u64().unwrap_or(1) as u32;
                ok()
            }
            Err(e) => bad(e),
        },
        ("POST", "/_admin/token") => match serde_json::from_slice::<TokenUpdate>(body) {
            Ok(u) => {
                let mut s = shared.lock();
                if let Some(r) = u.revoked {
                    s.revoked = r;
                }
                if let Some(k) = u.kind {
                    s.token_kind = Some(k);
                }
                if u.expiration.is_some() {
                    s.token_expiration = u.expiration;
                }
                ok()
            }
            Err(e) => bad(e),
        },
        ("GET", "/_admin/calls") => {
            let calls = shared.lock().calls.clone();
            json_resp(
                StatusCode::OK,
                &serde_json::to_value(calls).expect("serialisable"),
            )
        }
        ("GET", "/_admin/state") => {
            let s = shared.lock();
            json_resp(
                StatusCode::OK,
                &json!({
                    "runners": s.runners.values().collect::<Vec<_>>(),
                    "queued": s.queue.len(),
                    "running": s.running.len(),
                    "completed": s.completed,
                    "deleted": s.deleted,
                    "calls": s.calls.len(),
                }),
            )
        }
        (_, p) if p.starts_with("/_admin/scalesets") => super::scaleset::admin(shared, ctx, p),
        _ => empty(StatusCode::NOT_FOUND),
    };
    shared.changed.notify_waiters();
    resp
}
