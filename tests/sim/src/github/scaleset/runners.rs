//! JIT configs for a scale set (reference 2.8) and runners (2.9). The JIT config is the
//! one the REST `generate-jitconfig` makes (the fake runner's `.runner`, `.credentials`,
//! `.credentials_rsaparams`), for an ephemeral runner of the scale set: a fake runner started
//! with it takes only its scale set's assigned jobs (`jobs::runner_pick`). The `runner`
//! reference carries `id`, `name` and `runnerScaleSetId` only (the Go type's fields).
//! An offline ephemeral runner is removed after [`ScaleSetOptions::offline_runner_ttl`].

use super::*;

fn reference(s: &State, r: &SimRunner) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "runnerScaleSetId": s.scalesets.runners.get(&r.id).copied().unwrap_or(0),
    })
}

/// `POST …/runnerscalesets/{id}/generatejitconfig` `{name, workFolder}` → 200.
pub(super) fn jit(s: &mut State, ctx: &Ctx, set_id: u64, shared: &Shared) -> Resp {
    let bare = s.scalesets.bare_errors;
    let Ok(body) = serde_json::from_slice::<Value>(&ctx.body) else {
        return errors::argument(bare, "The request body could not be parsed.");
    };
    let name = sets::get_ci(&body, "name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        return errors::argument(bare, "Value cannot be null. (Parameter 'name')");
    }
    let work = sets::get_ci(&body, "workFolder")
        .and_then(Value::as_str)
        .filter(|w| !w.is_empty())
        .unwrap_or("_work")
        .to_string();
    let set = s.scalesets.sets[&set_id].clone();
    if s.runners
        .values()
        .any(|r| r.scope == set.scope && r.name.eq_ignore_ascii_case(&name))
    {
        return errors::exception(
            bare,
            StatusCode::CONFLICT,
            errors::AGENT_EXISTS,
            &format!("A runner with the name {name} already exists."),
        );
    }
    let rid = new_runner(s, &set.scope, &name, set.labels.clone(), set.group_id, true);
    s.scalesets.runners.insert(rid, set_id);
    s.scalesets.offline_since.insert(rid, Instant::now());
    let runner = s.runners[&rid].clone();
    let mut settings = settings_for(shared, &runner, &set.scope, &work);
    settings.disable_update = set.disable_update;
    let creds = credentials_for(shared, &runner);
    let mut files = BTreeMap::new();
    files.insert(
        ".runner".to_string(),
        serde_json::to_vec_pretty(&settings).expect("serialisable"),
    );
    files.insert(
        ".credentials".to_string(),
        serde_json::to_vec_pretty(&creds).expect("serialisable"),
    );
    files.insert(
        ".credentials_rsaparams".to_string(),
        serde_json::to_vec(
            &json!({"d": random_token(16), "modulus": random_token(16), "exponent": "AQAB"}),
        )
        .expect("serialisable"),
    );
    json_resp(
        StatusCode::OK,
        &json!({"runner": reference(s, &runner), "encodedJITConfig": encode_jit_config(&files)}),
    )
}

/// `GET _apis/distributedtask/pools/0/agents?agentName=` → `{count, value}`.
pub(super) fn by_name(s: &State, ctx: &Ctx, scope: &str) -> Resp {
    let name = ctx.query.get("agentName");
    let value: Vec<Value> = s
        .runners
        .values()
        .filter(|r| r.scope == scope && name.is_none_or(|n| r.name.eq_ignore_ascii_case(n)))
        .map(|r| reference(s, r))
        .collect();
    json_resp(
        StatusCode::OK,
        &json!({"count": value.len(), "value": value}),
    )
}

fn find<'a>(s: &'a State, id: &str, scope: &str) -> Option<&'a SimRunner> {
    let id = id.parse::<u64>().ok()?;
    s.runners.get(&id).filter(|r| r.scope == scope)
}

/// `GET …/agents/{id}` → 200, or 404 `AgentNotFoundException`.
pub(super) fn get(s: &State, id: &str, scope: &str) -> Resp {
    match find(s, id, scope) {
        Some(r) => json_resp(StatusCode::OK, &reference(s, r)),
        None => errors::exception(
            s.scalesets.bare_errors,
            StatusCode::NOT_FOUND,
            errors::AGENT_NOT_FOUND,
            &format!("No runner found with identifier {id}."),
        ),
    }
}

/// `DELETE …/agents/{id}` → 204 (also when it does not exist), 400
/// `JobStillRunningException` while it runs a job.
pub(super) fn delete(s: &mut State, id: &str, scope: &str) -> Resp {
    let Some(r) = find(s, id, scope).cloned() else {
        return empty(StatusCode::NO_CONTENT);
    };
    if r.busy {
        return errors::exception(
            s.scalesets.bare_errors,
            StatusCode::BAD_REQUEST,
            errors::JOB_STILL_RUNNING,
            &format!(
                "Runner {} is still running a job and cannot be removed.",
                r.name
            ),
        );
    }
    s.scalesets.runners.remove(&r.id);
    delete_runner(s, r.id);
    empty(StatusCode::NO_CONTENT)
}

/// Remove the scale sets' runners that have been offline and idle for
/// `offline_runner_ttl`; forget those gone otherwise.
pub(in crate::github) fn remove_offline(s: &mut State, opts: &ScaleSetOptions, now: Instant) {
    let mut expired = vec![];
    for rid in s.scalesets.runners.keys().copied().collect::<Vec<_>>() {
        match s.runners.get(&rid) {
            None => {
                s.scalesets.runners.remove(&rid);
                s.scalesets.offline_since.remove(&rid);
            }
            Some(r) if r.session.is_some() || r.busy => {
                s.scalesets.offline_since.remove(&rid);
            }
            Some(_) => {
                let since = *s.scalesets.offline_since.entry(rid).or_insert(now);
                if now.duration_since(since) >= opts.offline_runner_ttl {
                    expired.push(rid);
                }
            }
        }
    }
    for rid in expired {
        s.scalesets.runners.remove(&rid);
        s.scalesets.offline_since.remove(&rid);
        delete_runner(s, rid);
    }
}
