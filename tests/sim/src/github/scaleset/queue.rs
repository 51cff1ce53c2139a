//! The message queue (reference 2.4, 2.6, 2.7, 3.1): `GET {messageQueueUrl}` held up to
//! [`ScaleSetOptions::poll_hold`] → 200 with one message, or 202 with no body; the oldest
//! message not deleted whose id is above `lastMessageId` is sent first (so unacknowledged
//! messages are redelivered, to new sessions too); otherwise queued jobs are assigned within
//! `X-ScaleSetMaxCapacity` and the outbox (up to `batch_max` job messages) becomes a new
//! message. `DELETE {messageQueueUrl}/{id}` → 204, for any id (deletion prunes the queue).
//! `acquirejobs` (GHES) takes the queue token; `acquirablejobs` the admin JWT.

use super::*;

/// Counts a held poll on its session; when the poll ends (answered or dropped), the
/// session was seen then.
struct PollGuard {
    shared: Arc<Shared>,
    sid: String,
}

impl PollGuard {
    fn new(shared: Arc<Shared>, sid: &str) -> PollGuard {
        if let Some(x) = shared.lock().scalesets.sessions.get_mut(sid) {
            x.polls_in_flight += 1;
        }
        PollGuard {
            shared,
            sid: sid.to_string(),
        }
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        if let Some(x) = self.shared.lock().scalesets.sessions.get_mut(&self.sid) {
            x.polls_in_flight = x.polls_in_flight.saturating_sub(1);
            x.last_seen = Instant::now();
        }
        self.shared.changed.notify_waiters();
    }
}

fn touch(s: &mut State, sid: &str) {
    if let Some(x) = s.scalesets.sessions.get_mut(sid) {
        x.last_seen = Instant::now();
    }
}

/// `GET {messageQueueUrl}[?lastMessageId=N]` with the queue token and
/// `X-ScaleSetMaxCapacity`.
pub(super) async fn poll(shared: &Arc<Shared>, ctx: &Ctx) -> Resp {
    let opts = &shared.opts.scaleset;
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + opts.poll_hold);
    let capacity = ctx
        .header("x-scalesetmaxcapacity")
        .and_then(|v| v.trim().parse::<i64>().ok());
    let last = ctx
        .query
        .get("lastMessageId")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let (sid, blackhole) = {
        let mut s = shared.lock();
        tick(&mut s, opts);
        let sid = match auth::queue_session(&s, ctx) {
            Ok(sid) => sid,
            Err(resp) => return resp,
        };
        if s.scalesets.empty_polls > 0 {
            s.scalesets.empty_polls -= 1;
            touch(&mut s, &sid);
            return empty(StatusCode::OK);
        }
        let blackhole = s.scalesets.blackhole_polls > 0;
        if blackhole {
            s.scalesets.blackhole_polls -= 1;
        }
        (sid, blackhole)
    };
    let _guard = PollGuard::new(shared.clone(), &sid);
    if blackhole {
        // Held for ever: only the client giving up ends it.
        std::future::pending::<()>().await;
    }
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let due = {
            let mut s = shared.lock();
            tick(&mut s, opts);
            let Some(x) = s.scalesets.sessions.get_mut(&sid) else {
                // Expired, evicted or deleted while held.
                return errors::queue_unauthorized();
            };
            x.capacity = capacity;
            if let Some(msg) = next_message(&mut s, shared, &sid, last, capacity, started) {
                return json_resp(StatusCode::OK, &msg);
            }
            next_due(&s, opts)
        };
        let wake = due
            .map(tokio::time::Instant::from_std)
            .map_or(deadline, |d| d.min(deadline));
        let _ = tokio::time::timeout_at(wake, notified).await;
        if tokio::time::Instant::now() >= deadline {
            return empty(StatusCode::ACCEPTED);
        }
    }
}

/// The message this poll gets, if any.
fn next_message(
    s: &mut State,
    shared: &Shared,
    sid: &str,
    last: u64,
    capacity: Option<i64>,
    started: Instant,
) -> Option<Value> {
    let opts = &shared.opts.scaleset;
    let set_id = s.scalesets.sessions[sid].set_id;
    if opts.zero_capacity_blindness && capacity == Some(0) {
        for j in s.scalesets.jobs.iter_mut() {
            if j.set_id == Some(set_id) && j.state == JobState::Queued && j.blind_to.is_none() {
                j.blind_to = Some(sid.to_string());
            }
        }
        return None;
    }
    let set = s.scalesets.sets.get(&set_id)?;
    if let Some((&id, body)) = set.messages.range(last + 1..).next() {
        let body = body.clone();
        return Some(envelope(s, set_id, id, body));
    }
    if !opts.ghes {
        jobs::assign_within(s, set_id, sid, capacity.unwrap_or(i64::MAX));
    }
    let wake_gap = s.scalesets.hints.wake_gap;
    let set = s.scalesets.sets.get_mut(&set_id)?;
    let (mut taken, mut kept) = (vec![], vec![]);
    for e in set.outbox.drain(..) {
        let held_back = wake_gap && e.lifecycle && e.at > started;
        if taken.len() < opts.batch_max && !held_back {
            taken.push(e.body);
        } else {
            kept.push(e);
        }
    }
    set.outbox = kept;
    if taken.is_empty() {
        return None;
    }
    let service = service_url(shared);
    for b in taken.iter_mut() {
        if let Some(u) = b["acquireJobUrl"].as_str() {
            b["acquireJobUrl"] = json!(u.replace(jobs::SERVICE, &service));
        }
    }
    let id = set.next_message_id;
    set.next_message_id += 1;
    let body = Value::Array(taken).to_string();
    set.messages.insert(id, body.clone());
    Some(envelope(s, set_id, id, body))
}

/// The 200 answer: the body a JSON string, the statistics as they are now.
fn envelope(s: &State, set_id: u64, id: u64, body: String) -> Value {
    json!({
        "messageId": id,
        "messageType": "RunnerScaleSetJobMessages",
        "body": body,
        "statistics": sets::statistics(s, set_id),
    })
}

/// `DELETE {messageQueueUrl}/{messageId}` → 204.
pub(super) fn ack(shared: &Shared, ctx: &Ctx, id: &str) -> Resp {
    let mut s = shared.lock();
    tick(&mut s, &shared.opts.scaleset);
    let sid = match auth::queue_session(&s, ctx) {
        Ok(sid) => sid,
        Err(resp) => return resp,
    };
    let Ok(id) = id.parse::<u64>() else {
        return errors::page_not_found();
    };
    touch(&mut s, &sid);
    let set_id = s.scalesets.sessions[&sid].set_id;
    if let Some(set) = s.scalesets.sets.get_mut(&set_id) {
        if set.messages.remove(&id).is_some() {
            set.acked.push(id);
        }
    }
    empty(StatusCode::NO_CONTENT)
}

/// GHES: `POST …/runnerscalesets/{id}/acquirejobs` with the queue token, a JSON array of
/// `runnerRequestId`s → 200 `{count, value}`: those acquired (and now assigned).
pub(super) fn acquire(shared: &Shared, ctx: &Ctx, id: &str) -> Resp {
    let mut s = shared.lock();
    tick(&mut s, &shared.opts.scaleset);
    let sid = match auth::queue_session(&s, ctx) {
        Ok(sid) => sid,
        Err(resp) => return resp,
    };
    touch(&mut s, &sid);
    let set_id = s.scalesets.sessions[&sid].set_id;
    let bare = s.scalesets.bare_errors;
    if id.parse::<u64>().ok() != Some(set_id) {
        return errors::scale_set_not_found(bare, id);
    }
    let Ok(wanted) = serde_json::from_slice::<Vec<u64>>(&ctx.body) else {
        return errors::argument(bare, "The request body could not be parsed.");
    };
    let mut got = vec![];
    for rr in wanted {
        let found = s.scalesets.jobs.iter().position(|j| {
            j.set_id == Some(set_id) && j.state == JobState::Available && j.runner_request_id == rr
        });
        if let Some(i) = found {
            jobs::assign(&mut s, i);
            got.push(rr);
        }
    }
    json_resp(StatusCode::OK, &json!({"count": got.len(), "value": got}))
}

/// `GET …/runnerscalesets/{id}/acquirablejobs`: 204 when none (always on github.com).
pub(super) fn acquirable(s: &State, set_id: u64, shared: &Shared) -> Resp {
    let url = format!(
        "{}/_apis/runtime/runnerscalesets/{set_id}/acquirejobs",
        service_url(shared)
    );
    let value: Vec<Value> = s
        .scalesets
        .jobs
        .iter()
        .filter(|j| j.set_id == Some(set_id) && j.state == JobState::Available)
        .map(|j| {
            let m = j.message("JobAvailable", Some(url.clone()));
            let keys = [
                "acquireJobUrl",
                "messageType",
                "runnerRequestId",
                "repositoryName",
                "ownerName",
                "jobWorkflowRef",
                "eventName",
                "requestLabels",
            ];
            Value::Object(
                keys.iter()
                    .map(|k| (k.to_string(), m[*k].clone()))
                    .collect(),
            )
        })
        .collect();
    if value.is_empty() {
        return empty(StatusCode::NO_CONTENT);
    }
    json_resp(
        StatusCode::OK,
        &json!({"count": value.len(), "value": value}),
    )
}
