//! The service the fake runner talks to (`/_sim`), standing in for the Actions broker: config.sh's registration, sessions (with conflicts and scripts), the job long-poll and job completion.

use super::*;

pub(super) async fn sim(shared: &Arc<Shared>, ctx: &Ctx, segs: &[&str]) -> Resp {
    let m = ctx.method.as_str();
    match (m, segs) {
        ("POST", ["register"]) => sim_register(shared, ctx),
        ("POST", ["sessions"]) => sim_session(shared, ctx),
        ("DELETE", ["sessions", sid]) => {
            let mut s = shared.lock();
            if let Some(id) = s.sessions.remove(*sid) {
                if let Some(r) = s.runners.get_mut(&id) {
                    r.session = None;
                }
            }
            drop(s);
            shared.changed.notify_waiters();
            empty(StatusCode::OK)
        }
        ("GET", ["sessions", sid, "message"]) => sim_message(shared, sid).await,
        ("POST", ["jobs", id, "renew"]) => {
            let mut s = shared.lock();
            match id.parse::<u64>().ok().and_then(|id| s.locks.get_mut(&id)) {
                Some(t) => {
                    *t = std::time::Instant::now();
                    empty(StatusCode::OK)
                }
                None => empty(StatusCode::NOT_FOUND),
            }
        }
        ("POST", ["jobs", id, "complete"]) => {
            let Ok(id) = id.parse::<u64>() else {
                return empty(StatusCode::NOT_FOUND);
            };
            let Ok(done) = serde_json::from_slice::<JobCompletion>(&ctx.body) else {
                return empty(StatusCode::BAD_REQUEST);
            };
            let mut s = shared.lock();
            let Some((rid, job)) = s.running.remove(&id) else {
                return empty(StatusCode::NOT_FOUND);
            };
            s.locks.remove(&id);
            let name = s
                .runners
                .get(&rid)
                .map(|r| r.name.clone())
                .unwrap_or_default();
            super::conclude(&mut s, id, &done.result);
            super::scaleset::job_finished(&mut s, id, &done.result);
            s.completed.push(CompletedJob {
                job_id: id,
                name: job.name,
                runner: name,
                result: done.result,
            });
            let ephemeral = s.runners.get(&rid).is_some_and(|r| r.ephemeral);
            if let Some(r) = s.runners.get_mut(&rid) {
                r.busy = false;
            }
            if ephemeral {
                // The service de-registers an ephemeral runner after its one job.
                delete_runner(&mut s, rid);
            }
            drop(s);
            shared.changed.notify_waiters();
            empty(StatusCode::OK)
        }
        _ => empty(StatusCode::NOT_FOUND),
    }
}

pub(super) fn sim_register(shared: &Shared, ctx: &Ctx) -> Resp {
    let tenant = ctx
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string));
    let Ok(req) = serde_json::from_slice::<RegisterRequest>(&ctx.body) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let mut s = shared.lock();
    let Some(scope) = tenant.and_then(|t| s.tenant_tokens.get(&t).cloned()) else {
        return empty(StatusCode::UNAUTHORIZED);
    };
    let existing = s
        .runners
        .values()
        .find(|r| r.scope == scope && r.name.eq_ignore_ascii_case(&req.name))
        .map(|r| r.id);
    let replaced = existing.is_some();
    if let Some(id) = existing {
        if !req.replace {
            return json_resp(
                StatusCode::CONFLICT,
                &json!({"message": format!("A runner exists with the same name {}.", req.name)}),
            );
        }
        delete_runner(&mut s, id);
    }
    let id = new_runner(
        &mut s,
        &scope,
        &req.name,
        req.labels.clone(),
        1,
        req.ephemeral,
    );
    let runner = s.runners[&id].clone();
    drop(s);
    shared.changed.notify_waiters();
    json_resp(
        StatusCode::OK,
        &serde_json::to_value(RegisterResponse {
            replaced,
            settings: settings_for(shared, &runner, &scope, &req.work_folder),
            credentials: credentials_for(shared, &runner),
        })
        .expect("serialisable"),
    )
}

pub(super) fn sim_session(shared: &Shared, ctx: &Ctx) -> Resp {
    let Ok(req) = serde_json::from_slice::<SessionRequest>(&ctx.body) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let skew_ms = (Utc::now().timestamp_millis() - req.local_time_ms).abs();
    let mut s = shared.lock();
    let Some(id) = s
        .runners
        .values()
        .find(|r| r.client_id == req.client_id)
        .map(|r| r.id)
    else {
        return json_resp(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "invalid_client"}),
        );
    };
    if skew_ms > 5 * 60 * 1000 {
        return json_resp(StatusCode::BAD_REQUEST, &json!({"error": "clock_skew"}));
    }
    let r = s.runners.get_mut(&id).expect("found above");
    if r.session.is_some() || r.conflicts_left > 0 {
        r.conflicts_left = r.conflicts_left.saturating_sub(1);
        return json_resp(
            StatusCode::CONFLICT,
            &json!({"message": format!("The actions runner {} already has an active session.", r.name)}),
        );
    }
    let sid = random_token(24).to_lowercase();
    r.session = Some(sid.clone());
    r.version = Some(req.version);
    s.sessions.insert(sid.clone(), id);
    let script = s.scripts.pop_front().unwrap_or(Script::Normal);
    drop(s);
    shared.changed.notify_waiters();
    json_resp(
        StatusCode::CREATED,
        &serde_json::to_value(SessionResponse {
            session_id: sid,
            script,
        })
        .expect("serialisable"),
    )
}

pub(super) async fn sim_message(shared: &Arc<Shared>, sid: &str) -> Resp {
    let deadline = tokio::time::Instant::now() + shared.opts.poll_timeout;
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut s = shared.lock();
            let Some(&rid) = s.sessions.get(sid) else {
                // The session is gone: the runner was deleted on the server.
                return empty(StatusCode::NOT_FOUND);
            };
            // A runner past its runtime deadline gets no message: the broker's typed
            // error (reference A8).
            let version = s.runners.get(&rid).and_then(|r| r.version.clone());
            if let Some(v) = version.filter(|v| past_deadline(&shared.opts, v)) {
                return json_resp(
                    StatusCode::FORBIDDEN,
                    &json!({
                        "errorCode": crate::protocol::VERSION_TOO_OLD,
                        "message": format!("Runner version v{v} is deprecated and cannot receive messages."),
                    }),
                );
            }
            let labels = s
                .runners
                .get(&rid)
                .map(|r| r.labels.clone())
                .unwrap_or_default();
            let picked = match super::scaleset::runner_pick(&mut s, &shared.opts.scaleset, rid) {
                // A scale-set runner takes only its scale set's assigned jobs.
                Some(picked) => picked,
                None => s
                    .queue
                    .iter()
                    .position(|(_, j)| {
                        j.labels
                            .iter()
                            .all(|l| labels.iter().any(|rl| rl.eq_ignore_ascii_case(l)))
                    })
                    .and_then(|pos| s.queue.remove(pos)),
            };
            if let Some((jid, job)) = picked {
                if let Some(r) = s.runners.get_mut(&rid) {
                    r.busy = true;
                }
                s.running.insert(jid, (rid, job.clone()));
                let runner_name = s.runners.get(&rid).map(|r| r.name.clone());
                if let Some(a) = s.actions_jobs.get_mut(&jid) {
                    a.status = "in_progress".into();
                    a.runner_id = Some(rid);
                    a.runner_name = runner_name;
                    a.started_at = Some(Utc::now());
                }
                s.locks.insert(jid, std::time::Instant::now());
                let (run_id, run_attempt) = s
                    .actions_jobs
                    .get(&jid)
                    .map_or((jid, 1), |a| (a.run_id, a.run_attempt));
                drop(s);
                shared.changed.notify_waiters();
                let msg = JobMessage {
                    job_id: jid,
                    display_name: job.name,
                    duration_ms: job.duration_ms,
                    result: job.result,
                    run_id,
                    run_attempt,
                    workflow: job.workflow.unwrap_or_else(|| "CI".into()),
                    run: job.run,
                    actions: job.actions,
                };
                return json_resp(
                    StatusCode::OK,
                    &serde_json::to_value(msg).expect("serialisable"),
                );
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return empty(StatusCode::ACCEPTED);
        }
    }
}

/// Whether the deprecations table dates `version`'s runtime deadline in the past.
pub(super) fn past_deadline(opts: &super::Options, version: &str) -> bool {
    opts.deprecations
        .get(version)
        .copied()
        .flatten()
        .is_some_and(|at| at <= Utc::now())
}
