//! The runner scale-set service, played by the same server as the REST API, as GitHub
//! does it (`../shared/reference/scaleset-protocol.md`, "the reference"; its section 9 is
//! what this module follows):
//!
//! - the admin connection: a registration token from the REST API
//!   (`…/registration-token`, enterprises too), then `POST /actions/runner-registration`
//!   (`RemoteAuth`), answered 200 with the service URL and a JWT whose `exp` is its TTL;
//! - under that URL (`/_apis/…`, `api-version=6.0-preview`, `Bearer <admin JWT>`): runner
//!   groups, scale sets, message sessions, `generatejitconfig`, runners (`pools/0/agents`),
//!   `acquirejobs` (GHES only: 404 `page not found` on github.com), `acquirablejobs`;
//! - the message queue at `{base}/scalesets/message`, one URL for every scale set (the queue
//!   token is the identity): long polls held [`ScaleSetOptions::poll_hold`], one queue per
//!   scale set whose messages (ids from 100000001) are redelivered until deleted, also to
//!   new sessions; assignments gated by `X-ScaleSetMaxCapacity` on each poll;
//! - jobs: `JobAssigned` (github.com: `runnerRequestId` 0) or `JobAvailable` → acquire
//!   (GHES), `JobStarted` when a runner of the set takes the oldest assigned job (through the
//!   `/_sim` runner protocol, with a JIT config from `generatejitconfig`), `JobCompleted`;
//!   lapsed assignments (`canceled`, then re-assigned under a new `jobId`, at most 3 times);
//! - sessions: one per scale set (409 `RunnerScaleSetSessionConflictException`), a dead one
//!   expires after [`ScaleSetOptions::session_expiry`] without a poll; refresh gives a new
//!   queue token; an evicted session's refresh or delete is 404 `RunnerAdminException`;
//! - test controls ([`control`]): jobs, deletion, token expiry, eviction, late or missing
//!   lifecycle messages, lapses, blackholed and empty polls, BOMs, bare error bodies.
//!
//! Where the reference marks a fact uncertain, the pick is said at the item:
//! - the service URL is the API base (plus [`ScaleSetOptions::service_path`]), not the
//!   broker's `https://broker.actions.githubusercontent.com/rest`; clients must use it as
//!   given;
//! - statistics are computed when a message is delivered, not when it was stored;
//! - a poll with no `X-ScaleSetMaxCapacity` is not gated (ARC's default is `MaxInt32`);
//! - a new assignment wakes an in-flight poll; lifecycle messages do too unless
//!   [`LifecycleHints::wake_gap`] (actions/scaleset#122) is set;
//! - a poll, ack or acquire with the token of a session that is gone (expired, evicted,
//!   deleted, or its scale set deleted) is 401, as for an expired token: the client's
//!   refresh then meets the 404 (the path of actions/scaleset PR #123);
//! - the capacity caps assigned-and-unfinished jobs (waiting or running) on each poll; GHES
//!   acquisition is not gated (the listener decides, ARC#3446);
//! - jobs route to the lowest-id scale set whose labels include all of the job's;
//! - `JobAssigned` carries no `queueTime` (the live dump); unset times are left out;
//! - `totalAcquiredJobs` counts GHES jobs acquired and not yet started (0 on github.com);
//! - the lapse timer is [`ScaleSetOptions::lapse_after`] (60 s, the docs' figure), with no
//!   back-off between re-assignments;
//! - deleting a scale set with a busy runner is 400 `…JobStillRunningException`; a name
//!   taken in a group is 409 `RunnerScaleSetExistsException`;
//! - acknowledging an id that is not queued (again, or never) is 204;
//! - the admin JWT carries `iat` and `nbf`; it is refused only after the TTL the server
//!   keeps, whatever its claims say (see [`PollFaults::admin_clock_skew_secs`]);
//! - exception type names not seen live are in [`errors`].

use super::*;

mod auth;
pub mod control;
pub mod errors;
mod jobs;
mod queue;
mod runners;
mod sessions;
mod sets;

pub(in crate::github) use auth::admin_connection;
pub use control::PollFaults;
pub(in crate::github) use jobs::{job_abandoned, job_finished, runner_pick};
pub use jobs::{JobState, SsJob};

use std::time::Instant;

/// Options of the scale-set service. Every duration is scaled down in tests.
#[derive(Debug, Clone)]
pub struct ScaleSetOptions {
    /// The service URL's path under the base URL (`""`: the base itself; `"/rest"` as the
    /// broker's). config.sh's `/_sim` registration is served under it too.
    pub service_path: String,
    /// How long a message poll is held before 202 (github.com: about 50 s).
    pub poll_hold: Duration,
    /// A session not polled for this long is dead and expires (about 50 s observed).
    pub session_expiry: Duration,
    /// The admin JWT's lifetime (unknown; seen refused within 17 min; default 15 min).
    pub admin_token_ttl: Duration,
    /// The queue token's lifetime (about 50 min, inferred from refresh intervals).
    pub queue_token_ttl: Duration,
    /// The GHES flow: `JobAvailable` → `POST acquirejobs` → `JobAssigned`.
    pub ghes: bool,
    /// A scale set with no session for this long is deleted (GitHub: 7 days).
    pub dormant_after: Duration,
    /// An assignment no runner takes within this is canceled and re-assigned (docs: 60 s).
    pub lapse_after: Duration,
    /// How many times a lapsed job is re-assigned (README: "up to 3 times").
    pub max_reassignments: u32,
    /// runpool's observation: jobs a session saw while announcing capacity 0 are never
    /// assigned to that session, and a capacity-0 poll gets no message at all.
    pub zero_capacity_blindness: bool,
    /// GHES without `AllowRunnerScaleSetCustomLabels`: extra labels are dropped silently.
    pub drop_extra_labels: bool,
    /// At most this many job messages in one message ("at most 50").
    pub batch_max: usize,
    /// A scale-set runner offline (never connected, or its session gone) and idle this
    /// long is removed (GitHub: 1 day).
    pub offline_runner_ttl: Duration,
}

impl Default for ScaleSetOptions {
    fn default() -> Self {
        ScaleSetOptions {
            service_path: String::new(),
            poll_hold: Duration::from_secs(50),
            session_expiry: Duration::from_secs(50),
            admin_token_ttl: Duration::from_secs(15 * 60),
            queue_token_ttl: Duration::from_secs(50 * 60),
            ghes: false,
            dormant_after: Duration::from_secs(7 * 24 * 3600),
            lapse_after: Duration::from_secs(60),
            max_reassignments: 3,
            zero_capacity_blindness: false,
            drop_extra_labels: false,
            batch_max: 50,
            offline_runner_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// How a lifecycle message (`JobStarted`, `JobCompleted`) reaches the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Delivery {
    #[default]
    Prompt,
    /// Queued this long after the event ("six silent minutes", S7).
    Late { ms: u64 },
    /// Never queued.
    Missing,
}

/// Test hints for lifecycle messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LifecycleHints {
    #[serde(default)]
    pub started: Delivery,
    #[serde(default)]
    pub completed: Delivery,
    /// actions/scaleset#122: a lifecycle message does not wake an in-flight poll; it goes
    /// out with the next one.
    #[serde(default)]
    pub wake_gap: bool,
}

/// One job message waiting in a scale set's outbox for the next message.
#[derive(Debug, Clone)]
pub(in crate::github) struct Event {
    at: Instant,
    lifecycle: bool,
    body: Value,
}

/// A runner scale set.
#[derive(Debug, Clone)]
pub struct ScaleSet {
    pub id: u64,
    pub name: String,
    pub group_id: u64,
    /// Label names, the set's name first.
    pub labels: Vec<String>,
    pub disable_update: bool,
    /// `runnerSetting.ephemeral` as sent (either casing), if it was.
    pub ephemeral_setting: Option<bool>,
    /// The REST scope it belongs to: `orgs/acme`, `repos/octo/app`, `enterprises/e`.
    pub scope: String,
    pub created_on: DateTime<Utc>,
    /// Messages not deleted yet: id → body (the JSON array, as a string).
    pub messages: BTreeMap<u64, String>,
    /// Message ids deleted (acknowledged), in order.
    pub acked: Vec<u64>,
    next_message_id: u64,
    outbox: Vec<Event>,
    delayed: Vec<(Instant, Event)>,
    idle_since: Instant,
}

/// A message session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub set_id: u64,
    pub owner: String,
    /// The newest queue token.
    pub token: String,
    /// Polls being held now (a held poll keeps the session alive).
    pub polls_in_flight: u32,
    /// The end of the last poll, or the last other call on the session.
    pub last_seen: Instant,
    /// The `X-ScaleSetMaxCapacity` of the last poll.
    pub capacity: Option<i64>,
}

#[derive(Debug, Clone)]
pub(in crate::github) struct Token {
    scope: String,
    session: String,
    expires: Instant,
}

/// Everything the scale-set service knows ([`State::scalesets`]).
#[derive(Debug, Default)]
pub struct ScaleSets {
    pub sets: BTreeMap<u64, ScaleSet>,
    /// Runner groups besides `Default` (id 1): id → name.
    pub groups: BTreeMap<u64, String>,
    pub sessions: BTreeMap<String, Session>,
    /// Every job, in queue order; lapsed ones stay (completed) beside their successor.
    pub jobs: Vec<SsJob>,
    /// Runners registered through `generatejitconfig`: runner id → scale set id.
    pub runners: BTreeMap<u64, u64>,
    /// Since when each of those runners has been offline (registration, or a tick that
    /// saw it without a session).
    offline_since: BTreeMap<u64, Instant>,
    pub hints: LifecycleHints,
    /// Polls to hold for ever (never answered).
    pub blackhole_polls: u32,
    /// Polls to answer 200 with an empty body.
    pub empty_polls: u32,
    /// Session creations to answer with an empty `messageQueueUrl`.
    pub empty_queue_urls: u32,
    /// Prefix every service body with a UTF-8 BOM.
    pub bom: bool,
    /// Error bodies with `typeName` and `message` only.
    pub bare_errors: bool,
    /// Seconds added to the admin JWT's `iat`, `nbf` and `exp` (the fake's clock is off).
    pub admin_clock_skew_secs: i64,
    /// Sessions that expired for lack of polls, by id.
    pub expired_sessions: Vec<String>,
    /// Scale sets deleted (by the client, a test, or dormancy), by id.
    pub deleted_sets: Vec<u64>,
    admin_tokens: HashMap<String, Token>,
    queue_tokens: HashMap<String, Token>,
    next_set_id: u64,
    next_request_id: u64,
}

impl ScaleSets {
    fn set_id_next(&mut self) -> u64 {
        self.next_set_id = self.next_set_id.max(1);
        let id = self.next_set_id;
        self.next_set_id += 1;
        id
    }

    fn request_id_next(&mut self) -> u64 {
        self.next_request_id = self.next_request_id.max(10233) + 1;
        self.next_request_id
    }

    /// The sessions of scale set `set_id`.
    pub fn sessions_of(&self, set_id: u64) -> Vec<&Session> {
        self.sessions
            .values()
            .filter(|s| s.set_id == set_id)
            .collect()
    }
}

/// The service URL the admin connection hands out.
pub(in crate::github) fn service_url(shared: &Shared) -> String {
    format!("{}{}", shared.base_url, shared.opts.scaleset.service_path)
}

/// The message queue URL sessions hand out (the broker's, outside the service path).
fn queue_url(shared: &Shared) -> String {
    format!("{}/scalesets/message", shared.base_url)
}

/// The path with the service prefix taken off, when it has it.
pub(in crate::github) fn strip_service_path(opts: &ScaleSetOptions, path: &str) -> String {
    let prefix = opts.service_path.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) if !prefix.is_empty() && (rest.is_empty() || rest.starts_with('/')) => {
            rest.to_string()
        }
        _ => path.to_string(),
    }
}

/// Whether a request path belongs to the Actions service (no rate-limit headers).
pub(in crate::github) fn is_service_path(path: &str) -> bool {
    path.contains("/_apis/") || path.contains("/scalesets/message")
}

pub(in crate::github) fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The scale-set routes; `None` when the path is not the service's.
pub(in crate::github) async fn route(
    shared: &Arc<Shared>,
    ctx: &Ctx,
    segs: &[&str],
) -> Option<Resp> {
    let m = ctx.method.as_str();
    let resp = match (m, segs) {
        ("POST", ["enterprises", e, "actions", "runners", "registration-token"]) => {
            return Some(auth::enterprise_registration_token(shared, ctx, segs, e));
        }
        ("GET", ["scalesets", "message"]) => queue::poll(shared, ctx).await,
        ("DELETE", ["scalesets", "message", id]) => queue::ack(shared, ctx, id),
        (_, ["_apis", rest @ ..]) => service(shared, ctx, rest),
        _ => return None,
    };
    shared.changed.notify_waiters();
    let mut resp = with_bom(shared, resp).await;
    resp.headers_mut()
        .insert("x-github-backend", HeaderValue::from_static("Kubernetes"));
    Some(resp)
}

async fn with_bom(shared: &Shared, resp: Resp) -> Resp {
    if !shared.lock().scalesets.bom {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if bytes.is_empty() {
        return Response::from_parts(parts, Full::new(bytes));
    }
    let mut v = b"\xEF\xBB\xBF".to_vec();
    v.extend_from_slice(&bytes);
    let mut parts = parts;
    parts.headers.remove("content-length");
    Response::from_parts(parts, Full::new(Bytes::from(v)))
}

/// `/_apis/…`: `api-version`, then the admin JWT, then the call.
fn service(shared: &Arc<Shared>, ctx: &Ctx, rest: &[&str]) -> Resp {
    let opts = &shared.opts.scaleset;
    // A router-level miss on github.com's broker, before any authentication.
    if let ["runtime", "runnerscalesets", id, "acquirejobs"] = rest {
        if ctx.method != Method::POST || !opts.ghes {
            return errors::page_not_found();
        }
        return queue::acquire(shared, ctx, id);
    }
    let version = ctx.query.get("api-version").cloned().or_else(|| {
        ctx.header("accept")
            .and_then(|a| a.split("api-version=").nth(1).map(|v| v.trim().to_string()))
    });
    let bare = shared.lock().scalesets.bare_errors;
    if version.as_deref() != Some("6.0-preview") {
        return errors::version_missing(bare, ctx);
    }
    let scope = match auth::admin_scope(shared, ctx) {
        Ok(scope) => scope,
        Err(resp) => return resp,
    };
    let mut s = shared.lock();
    tick(&mut s, opts);
    let m = ctx.method.as_str();
    match (m, rest) {
        ("GET", ["runtime", "runnergroups"]) => sets::groups(&s, ctx),
        ("GET", ["runtime", "runnerscalesets"]) => sets::list(&s, ctx, &scope, shared),
        ("POST", ["runtime", "runnerscalesets"]) => sets::create(&mut s, ctx, &scope, shared),
        (_, ["runtime", "runnerscalesets", id, more @ ..]) => {
            let Some(set_id) = id.parse::<u64>().ok().filter(|i| {
                s.scalesets
                    .sets
                    .get(i)
                    .is_some_and(|set| set.scope == scope)
            }) else {
                return errors::scale_set_not_found(bare, id);
            };
            match (m, more) {
                ("GET", []) => sets::get(&s, set_id, shared),
                ("PATCH", []) => sets::update(&mut s, ctx, set_id, shared),
                ("DELETE", []) => sets::delete(&mut s, set_id),
                ("POST", ["sessions"]) => sessions::create(&mut s, ctx, set_id, shared),
                ("PATCH", ["sessions", sid]) => sessions::refresh(&mut s, set_id, sid, shared),
                ("DELETE", ["sessions", sid]) => sessions::delete(&mut s, set_id, sid),
                ("POST", ["generatejitconfig"]) => runners::jit(&mut s, ctx, set_id, shared),
                ("GET", ["acquirablejobs"]) => queue::acquirable(&s, set_id, shared),
                _ => errors::page_not_found(),
            }
        }
        ("GET", ["distributedtask", "pools", "0", "agents"]) => runners::by_name(&s, ctx, &scope),
        ("GET", ["distributedtask", "pools", "0", "agents", id]) => runners::get(&s, id, &scope),
        ("DELETE", ["distributedtask", "pools", "0", "agents", id]) => {
            runners::delete(&mut s, id, &scope)
        }
        _ => errors::page_not_found(),
    }
}

/// Time passes: dead sessions expire, late messages arrive, assignments lapse, dormant
/// scale sets go, and queued jobs find their scale set.
pub(in crate::github) fn tick(s: &mut State, opts: &ScaleSetOptions) {
    let now = Instant::now();
    let dead: Vec<String> = s
        .scalesets
        .sessions
        .values()
        .filter(|x| x.polls_in_flight == 0 && now.duration_since(x.last_seen) > opts.session_expiry)
        .map(|x| x.id.clone())
        .collect();
    for sid in dead {
        sessions::end(s, &sid);
        s.scalesets.expired_sessions.push(sid);
    }
    for set in s.scalesets.sets.values_mut() {
        let (due, later): (Vec<_>, Vec<_>) = set.delayed.drain(..).partition(|(t, _)| *t <= now);
        set.delayed = later;
        for (t, mut e) in due {
            e.at = t;
            set.outbox.push(e);
        }
    }
    jobs::lapse_due(s, opts, now);
    runners::remove_offline(s, opts, now);
    let dormant: Vec<u64> = s
        .scalesets
        .sets
        .values()
        .filter(|set| {
            s.scalesets.sessions_of(set.id).is_empty()
                && now.duration_since(set.idle_since) >= opts.dormant_after
                && !jobs::has_busy_runner(s, set.id)
        })
        .map(|set| set.id)
        .collect();
    for id in dormant {
        sets::remove(s, id);
    }
    jobs::route_queued(s, opts);
}

/// When something next falls due by time alone (a late message, a lapse).
pub(in crate::github) fn next_due(s: &State, opts: &ScaleSetOptions) -> Option<Instant> {
    let late = s
        .scalesets
        .sets
        .values()
        .flat_map(|set| set.delayed.iter().map(|(t, _)| *t));
    let lapses = s
        .scalesets
        .jobs
        .iter()
        .filter(|j| j.state == JobState::Assigned)
        .filter_map(|j| j.assigned_at.map(|t| t + opts.lapse_after));
    late.chain(lapses).min()
}

/// `/_admin/scalesets/…`.
pub(in crate::github) fn admin(shared: &Arc<Shared>, ctx: &Ctx, path: &str) -> Resp {
    control::admin(shared, ctx, path)
}
