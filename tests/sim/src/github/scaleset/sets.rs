//! Runner groups and scale sets (reference 2.1, 2.2): get by name, create (200, either
//! casing of `RunnerSetting`), get, update, delete (204), and what a scale set looks like on
//! the wire. Labels come back `type: "system"`; `runnerSetting` is emitted lower-camel (its
//! casing in answers is unknown).

use super::*;

/// `Default`, id 1, and the test's extra groups.
fn all_groups(s: &State) -> Vec<(u64, String)> {
    let mut v = vec![(1, "Default".to_string())];
    v.extend(s.scalesets.groups.iter().map(|(i, n)| (*i, n.clone())));
    v
}

fn group_name(s: &State, id: u64) -> Option<String> {
    all_groups(s)
        .into_iter()
        .find(|(i, _)| *i == id)
        .map(|(_, n)| n)
}

/// `GET _apis/runtime/runnergroups/?groupName=` (the name matched without case).
pub(super) fn groups(s: &State, ctx: &Ctx) -> Resp {
    let want = ctx.query.get("groupName");
    let value: Vec<Value> = all_groups(s)
        .into_iter()
        .filter(|(_, n)| want.is_none_or(|w| w.eq_ignore_ascii_case(n)))
        .map(|(id, name)| {
            let size = s.runners.values().filter(|r| r.group_id == id).count();
            json!({"id": id, "name": name, "size": size, "isDefaultGroup": id == 1})
        })
        .collect();
    json_resp(
        StatusCode::OK,
        &json!({"count": value.len(), "value": value}),
    )
}

/// The seven counters (reference 3.2), now.
pub(in crate::github) fn statistics(s: &State, set_id: u64) -> Value {
    let jobs = s.scalesets.jobs.iter().filter(|j| j.set_id == Some(set_id));
    let (mut available, mut acquired, mut assigned, mut running) = (0, 0, 0, 0);
    for j in jobs {
        match j.state {
            JobState::Available => available += 1,
            JobState::Assigned => {
                assigned += 1;
                if j.runner_request_id > 0 {
                    acquired += 1;
                }
            }
            JobState::Running { .. } => {
                assigned += 1;
                running += 1;
            }
            JobState::Queued | JobState::Completed => {}
        }
    }
    let runners: Vec<&SimRunner> = s
        .scalesets
        .runners
        .iter()
        .filter(|(_, sid)| **sid == set_id)
        .filter_map(|(rid, _)| s.runners.get(rid))
        .collect();
    let busy = runners.iter().filter(|r| r.busy).count();
    json!({
        "totalAvailableJobs": available,
        "totalAcquiredJobs": acquired,
        "totalAssignedJobs": assigned,
        "totalRunningJobs": running,
        "totalRegisteredRunners": runners.len(),
        "totalBusyRunners": busy,
        "totalIdleRunners": runners.len() - busy,
    })
}

/// A `RunnerScaleSet` as the service sends it.
pub(in crate::github) fn set_json(s: &State, set: &ScaleSet, shared: &Shared) -> Value {
    let mut setting = json!({"isElastic": true, "disableUpdate": set.disable_update});
    setting["ephemeral"] = json!(set.ephemeral_setting.unwrap_or(true));
    json!({
        "id": set.id,
        "name": set.name,
        "runnerGroupId": set.group_id,
        "runnerGroupName": group_name(s, set.group_id).unwrap_or_default(),
        "labels": set.labels.iter().map(|l| json!({"type": "system", "name": l})).collect::<Vec<_>>(),
        "runnerSetting": setting,
        "createdOn": set.created_on.to_rfc3339_opts(SecondsFormat::Millis, true),
        "runnerJitConfigUrl": format!("{}/_apis/runtime/runnerscalesets/{}/generatejitconfig", service_url(shared), set.id),
        "statistics": statistics(s, set.id),
    })
}

/// `GET _apis/runtime/runnerscalesets?runnerGroupId=&name=`: the scope's sets, filtered.
pub(super) fn list(s: &State, ctx: &Ctx, scope: &str, shared: &Shared) -> Resp {
    let group = ctx
        .query
        .get("runnerGroupId")
        .and_then(|g| g.parse::<u64>().ok());
    let name = ctx.query.get("name");
    let value: Vec<Value> = s
        .scalesets
        .sets
        .values()
        .filter(|x| x.scope == scope)
        .filter(|x| group.is_none_or(|g| x.group_id == g))
        .filter(|x| name.is_none_or(|n| x.name.eq_ignore_ascii_case(n)))
        .map(|x| set_json(s, x, shared))
        .collect();
    json_resp(
        StatusCode::OK,
        &json!({"count": value.len(), "value": value}),
    )
}

/// A key of `obj`, its case ignored (`RunnerSetting` or `runnerSetting`).
pub(super) fn get_ci<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn label_names(body: &Value) -> Option<Vec<String>> {
    let labels = get_ci(body, "labels")?.as_array()?;
    let names: Vec<String> = labels
        .iter()
        .filter_map(|l| {
            get_ci(l, "name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|n| !n.is_empty())
        .collect();
    (!names.is_empty()).then_some(names)
}

/// The labels a set keeps: its name first, then the extras (none without the GHES flag).
fn keep_labels(opts: &ScaleSetOptions, name: &str, sent: Option<Vec<String>>) -> Vec<String> {
    let mut v = vec![name.to_string()];
    if !opts.drop_extra_labels {
        for l in sent.unwrap_or_default() {
            if !v.iter().any(|x| x.eq_ignore_ascii_case(&l)) {
                v.push(l);
            }
        }
    }
    v
}

/// `POST _apis/runtime/runnerscalesets` → 200.
pub(super) fn create(s: &mut State, ctx: &Ctx, scope: &str, shared: &Shared) -> Resp {
    let bare = s.scalesets.bare_errors;
    let Ok(body) = serde_json::from_slice::<Value>(&ctx.body) else {
        return errors::argument(bare, "The request body could not be parsed.");
    };
    let name = get_ci(&body, "name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    if name.is_empty() {
        return errors::argument(bare, "Value cannot be null. (Parameter 'name')");
    }
    let group_id = get_ci(&body, "runnerGroupId")
        .and_then(Value::as_u64)
        .filter(|g| *g != 0)
        .unwrap_or(1);
    if group_name(s, group_id).is_none() {
        return errors::argument(bare, &format!("Runner group {group_id} was not found."));
    }
    let taken =
        s.scalesets.sets.values().any(|x| {
            x.scope == scope && x.group_id == group_id && x.name.eq_ignore_ascii_case(&name)
        });
    if taken {
        return errors::exception(
            bare,
            StatusCode::CONFLICT,
            errors::SCALE_SET_EXISTS,
            &format!("A runner scale set with name {name} already exists."),
        );
    }
    let setting = get_ci(&body, "runnerSetting");
    let flag = |k: &str| setting.and_then(|v| get_ci(v, k)).and_then(Value::as_bool);
    let opts = &shared.opts.scaleset;
    let id = s.scalesets.set_id_next();
    let set = ScaleSet {
        id,
        labels: keep_labels(opts, &name, label_names(&body)),
        name,
        group_id,
        disable_update: flag("disableUpdate").unwrap_or(false),
        ephemeral_setting: flag("ephemeral"),
        scope: scope.to_string(),
        created_on: Utc::now(),
        messages: BTreeMap::new(),
        acked: vec![],
        next_message_id: 100_000_001,
        outbox: vec![],
        delayed: vec![],
        idle_since: Instant::now(),
    };
    s.scalesets.sets.insert(id, set);
    jobs::route_queued(s, opts);
    json_resp(StatusCode::OK, &set_json(s, &s.scalesets.sets[&id], shared))
}

pub(super) fn get(s: &State, id: u64, shared: &Shared) -> Resp {
    json_resp(StatusCode::OK, &set_json(s, &s.scalesets.sets[&id], shared))
}

/// `PATCH …/runnerscalesets/{id}`: a partial scale set → 200.
pub(super) fn update(s: &mut State, ctx: &Ctx, id: u64, shared: &Shared) -> Resp {
    let bare = s.scalesets.bare_errors;
    let Ok(body) = serde_json::from_slice::<Value>(&ctx.body) else {
        return errors::argument(bare, "The request body could not be parsed.");
    };
    let group = get_ci(&body, "runnerGroupId")
        .and_then(Value::as_u64)
        .filter(|g| *g != 0);
    if group.is_some_and(|g| group_name(s, g).is_none()) {
        return errors::argument(bare, "The runner group was not found.");
    }
    let opts = &shared.opts.scaleset;
    let set = s
        .scalesets
        .sets
        .get_mut(&id)
        .expect("checked by the caller");
    if let Some(n) = get_ci(&body, "name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        set.name = n.to_string();
        set.labels[0] = n.to_string();
    }
    if let Some(g) = group {
        set.group_id = g;
    }
    if let Some(names) = label_names(&body) {
        set.labels = keep_labels(opts, &set.name.clone(), Some(names));
    }
    if let Some(setting) = get_ci(&body, "runnerSetting") {
        if let Some(d) = get_ci(setting, "disableUpdate").and_then(Value::as_bool) {
            set.disable_update = d;
        }
        if let Some(e) = get_ci(setting, "ephemeral").and_then(Value::as_bool) {
            set.ephemeral_setting = Some(e);
        }
    }
    jobs::route_queued(s, opts);
    json_resp(StatusCode::OK, &set_json(s, &s.scalesets.sets[&id], shared))
}

/// `DELETE …/runnerscalesets/{id}` → 204; 400 while a runner of it holds a job.
pub(super) fn delete(s: &mut State, id: u64) -> Resp {
    if jobs::has_busy_runner(s, id) {
        return errors::exception(
            s.scalesets.bare_errors,
            StatusCode::BAD_REQUEST,
            errors::JOB_STILL_RUNNING,
            &format!("Runner scale set {id} has runners that are still running jobs."),
        );
    }
    remove(s, id);
    empty(StatusCode::NO_CONTENT)
}

/// The scale set goes, with its sessions, its queue and its idle runners; its unstarted
/// jobs wait for another set that matches (or this one, registered again).
pub(in crate::github) fn remove(s: &mut State, id: u64) -> bool {
    if s.scalesets.sets.remove(&id).is_none() {
        return false;
    }
    let sids: Vec<String> = s
        .scalesets
        .sessions_of(id)
        .iter()
        .map(|x| x.id.clone())
        .collect();
    for sid in sids {
        sessions::end(s, &sid);
    }
    for j in s.scalesets.jobs.iter_mut() {
        if j.set_id == Some(id)
            && matches!(
                j.state,
                JobState::Assigned | JobState::Available | JobState::Queued
            )
        {
            j.unroute();
        }
    }
    let idle: Vec<u64> = s
        .scalesets
        .runners
        .iter()
        .filter(|(rid, sid)| **sid == id && !s.runners.get(rid).is_some_and(|r| r.busy))
        .map(|(rid, _)| *rid)
        .collect();
    for rid in idle {
        s.scalesets.runners.remove(&rid);
        delete_runner(s, rid);
    }
    s.scalesets.deleted_sets.push(id);
    true
}
