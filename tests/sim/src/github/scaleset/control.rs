//! What tests do to the scale-set service: as methods of [`FakeGithub`], and as admin
//! endpoints under `/_admin/scalesets` for the binary:
//!
//! | `POST /_admin/scalesets/…` | body | method |
//! |---|---|---|
//! | `jobs` | a `JobSpec` (labels!) plus `repository`, `count` | [`FakeGithub::enqueue_scaleset_job`] |
//! | `{id}/delete` | | [`FakeGithub::delete_scale_set`] |
//! | `{id}/evict` | | [`FakeGithub::evict_sessions`] |
//! | `{id}/expire-queue-tokens` | | [`FakeGithub::expire_queue_tokens`] |
//! | `expire-admin-tokens` | | [`FakeGithub::expire_admin_tokens`] |
//! | `hints` | [`LifecycleHints`] | [`FakeGithub::set_lifecycle_hints`] |
//! | `lapse` | `{"run_id": N}` (optional) | [`FakeGithub::lapse_assignment`] |
//! | `faults` | [`PollFaults`] | [`FakeGithub::scaleset_faults`] |
//!
//! and `GET /_admin/scalesets/state`.

use super::*;

/// One-shot faults and switches of the service (reference 9.10).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollFaults {
    /// Polls held for ever (a stalled connection for the client's watchdog).
    #[serde(default)]
    pub blackhole_polls: u32,
    /// Polls answered 200 with an empty body (ARC#4285).
    #[serde(default)]
    pub empty_polls: u32,
    /// Session creations answered with an empty `messageQueueUrl` (ARC#4370).
    #[serde(default)]
    pub empty_queue_urls: u32,
    /// Every service body prefixed with a UTF-8 BOM.
    #[serde(default)]
    pub bom: bool,
    /// Error bodies with `typeName` and `message` only.
    #[serde(default)]
    pub bare_errors: bool,
    /// Seconds the admin JWT's claims are off from the true time.
    #[serde(default)]
    pub admin_clock_skew_secs: i64,
}

impl FakeGithub {
    /// Queue a job of `octo/app` for the scale set its labels name (`runs-on`); it waits
    /// for one that matches. Returns its run id (the sim job id, stable across lapses).
    pub fn enqueue_scaleset_job(&self, job: JobSpec) -> u64 {
        self.enqueue_scaleset_job_in("octo/app", job)
    }

    /// [`Self::enqueue_scaleset_job`] for repository `owner/repo`.
    pub fn enqueue_scaleset_job_in(&self, repository: &str, job: JobSpec) -> u64 {
        let opts = self.shared.opts.scaleset.clone();
        self.state(|s| jobs::enqueue(s, &opts, repository, job))
    }

    /// Delete scale set `id` as GitHub does a dormant one (even if it is not idle): its
    /// sessions, queue and idle runners go; every call on it is 404 from now on.
    pub fn delete_scale_set(&self, id: u64) -> bool {
        self.state(|s| sets::remove(s, id))
    }

    /// The broker forgets scale set `id`'s sessions: their polls get 401, their refresh
    /// and delete 404 `RunnerAdminException`. Returns how many.
    pub fn evict_sessions(&self, id: u64) -> usize {
        self.state(|s| {
            let sids: Vec<String> = s
                .scalesets
                .sessions_of(id)
                .iter()
                .map(|x| x.id.clone())
                .collect();
            for sid in &sids {
                sessions::end(s, sid);
            }
            sids.len()
        })
    }

    /// Expire the queue tokens of scale set `id`'s sessions (401 until refreshed).
    pub fn expire_queue_tokens(&self, id: u64) {
        self.state(|s| auth::expire_queue_tokens(s, Some(id)));
    }

    /// Expire every admin JWT issued so far (401 `InvalidTokenException`).
    pub fn expire_admin_tokens(&self) {
        self.state(auth::expire_admin_tokens);
    }

    /// Make `JobStarted` and `JobCompleted` prompt, late or missing from now on.
    pub fn set_lifecycle_hints(&self, hints: LifecycleHints) {
        self.state(|s| s.scalesets.hints = hints);
    }

    /// Lapse now the assignment of the job of run `run_id` (the oldest assigned job when
    /// `None`): `JobCompleted{canceled}`, then re-assignment under a new `jobId`. Returns
    /// the lapsed `jobId`.
    pub fn lapse_assignment(&self, run_id: Option<u64>) -> Option<String> {
        let opts = self.shared.opts.scaleset.clone();
        self.state(|s| {
            let i = s.scalesets.jobs.iter().position(|j| {
                j.state == JobState::Assigned && run_id.is_none_or(|r| j.sim_id == r)
            })?;
            let job_id = s.scalesets.jobs[i].job_id.clone();
            jobs::lapse(s, &opts, i);
            Some(job_id)
        })
    }

    /// Set the one-shot faults and switches.
    pub fn scaleset_faults(&self, f: PollFaults) {
        self.state(|s| apply(s, f));
    }

    /// Add a runner group; its id.
    pub fn add_runner_group(&self, name: &str) -> u64 {
        self.state(|s| {
            let id = s.scalesets.groups.keys().max().copied().unwrap_or(1) + 1;
            s.scalesets.groups.insert(id, name.to_string());
            id
        })
    }

    /// The scale sets now.
    pub fn scale_sets(&self) -> Vec<ScaleSet> {
        self.state(|s| s.scalesets.sets.values().cloned().collect())
    }

    /// Every scale-set job, in queue order.
    pub fn scaleset_jobs(&self) -> Vec<SsJob> {
        self.state(|s| s.scalesets.jobs.clone())
    }
}

fn apply(s: &mut State, f: PollFaults) {
    let x = &mut s.scalesets;
    x.blackhole_polls = f.blackhole_polls;
    x.empty_polls = f.empty_polls;
    x.empty_queue_urls = f.empty_queue_urls;
    x.bom = f.bom;
    x.bare_errors = f.bare_errors;
    x.admin_clock_skew_secs = f.admin_clock_skew_secs;
}

#[derive(Deserialize)]
struct JobsRequest {
    #[serde(flatten)]
    job: JobSpec,
    #[serde(default = "octo_app")]
    repository: String,
    #[serde(default = "one")]
    count: usize,
}

fn octo_app() -> String {
    "octo/app".into()
}

fn one() -> usize {
    1
}

fn state_json(s: &State) -> Value {
    let x = &s.scalesets;
    let sets: Vec<Value> = x
        .sets
        .values()
        .map(|set| {
            json!({
                "id": set.id, "name": set.name, "scope": set.scope, "labels": set.labels,
                "messages": set.messages.keys().collect::<Vec<_>>(), "acked": set.acked,
                "statistics": sets::statistics(s, set.id),
            })
        })
        .collect();
    let jobs: Vec<Value> = x
        .jobs
        .iter()
        .map(|j| {
            json!({
                "jobId": j.job_id, "runId": j.sim_id, "setId": j.set_id,
                "state": format!("{:?}", j.state), "result": j.result,
                "reassignments": j.reassignments,
            })
        })
        .collect();
    let sessions: Vec<Value> = x
        .sessions
        .values()
        .map(|v| json!({"id": v.id, "setId": v.set_id, "owner": v.owner, "capacity": v.capacity}))
        .collect();
    json!({
        "sets": sets, "jobs": jobs, "sessions": sessions,
        "expiredSessions": x.expired_sessions, "deletedSets": x.deleted_sets,
    })
}

/// `/_admin/scalesets/…`.
pub(in crate::github) fn admin(shared: &Arc<Shared>, ctx: &Ctx, path: &str) -> Resp {
    let ok = || json_resp(StatusCode::OK, &json!({"ok": true}));
    let bad =
        |e: serde_json::Error| json_resp(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}));
    let opts = &shared.opts.scaleset;
    let segs: Vec<&str> = path.trim_matches('/').split('/').skip(2).collect();
    let mut s = shared.lock();
    match (ctx.method.as_str(), segs.as_slice()) {
        ("GET", ["state"]) => json_resp(StatusCode::OK, &state_json(&s)),
        ("POST", ["jobs"]) => match serde_json::from_slice::<JobsRequest>(&ctx.body) {
            Ok(r) => {
                let ids: Vec<u64> = (0..r.count)
                    .map(|_| jobs::enqueue(&mut s, opts, &r.repository, r.job.clone()))
                    .collect();
                json_resp(StatusCode::OK, &json!({"runIds": ids}))
            }
            Err(e) => bad(e),
        },
        ("POST", ["expire-admin-tokens"]) => {
            auth::expire_admin_tokens(&mut s);
            ok()
        }
        ("POST", ["hints"]) => match serde_json::from_slice::<LifecycleHints>(&ctx.body) {
            Ok(h) => {
                s.scalesets.hints = h;
                ok()
            }
            Err(e) => bad(e),
        },
        ("POST", ["faults"]) => match serde_json::from_slice::<PollFaults>(&ctx.body) {
            Ok(f) => {
                apply(&mut s, f);
                ok()
            }
            Err(e) => bad(e),
        },
        ("POST", ["lapse"]) => {
            let run = serde_json::from_slice::<Value>(&ctx.body)
                .ok()
                .and_then(|v| v["run_id"].as_u64());
            let i =
                s.scalesets.jobs.iter().position(|j| {
                    j.state == JobState::Assigned && run.is_none_or(|r| j.sim_id == r)
                });
            match i {
                Some(i) => {
                    jobs::lapse(&mut s, opts, i);
                    ok()
                }
                None => empty(StatusCode::NOT_FOUND),
            }
        }
        ("POST", [id, what]) => {
            let Ok(id) = id.parse::<u64>() else {
                return empty(StatusCode::NOT_FOUND);
            };
            match *what {
                "delete" if sets::remove(&mut s, id) => ok(),
                "evict" => {
                    let sids: Vec<String> = s
                        .scalesets
                        .sessions_of(id)
                        .iter()
                        .map(|x| x.id.clone())
                        .collect();
                    for sid in &sids {
                        sessions::end(&mut s, sid);
                    }
                    json_resp(StatusCode::OK, &json!({"evicted": sids.len()}))
                }
                "expire-queue-tokens" => {
                    auth::expire_queue_tokens(&mut s, Some(id));
                    ok()
                }
                _ => empty(StatusCode::NOT_FOUND),
            }
        }
        _ => empty(StatusCode::NOT_FOUND),
    }
}
