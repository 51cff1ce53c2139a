//! `fake-github`: an HTTP/1.1 server on loopback that plays GitHub's runner REST API
//! (status codes, headers and JSON shapes of `runners-openapi.json`), the runner-side
//! service the fake runner talks to (`/_sim`), and admin endpoints (`/_admin`) that
//! enqueue jobs and inject faults.
//!
//! It must not: reach any address but the one it binds, or invent response shapes the
//! OpenAPI description does not have (a test validates every REST body against it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::protocol::{
    encode_jit_config, CredentialData, Credentials, JobCompletion, JobMessage, RegisterRequest,
    RegisterResponse, RunnerSettings, Script, SessionRequest, SessionResponse, RUNNER_VERSION,
};

const DOCS: &str = "https://docs.github.com/rest/actions/self-hosted-runners";

/// What kind of token the fake accepts, which decides the scope and permission headers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TokenKind {
    /// A classic PAT: `X-OAuth-Scopes` lists these.
    Classic { scopes: Vec<String> },
    /// A fine-grained PAT: no scopes header, permissions instead.
    FineGrained {
        /// `administration` on repositories: "none", "read" or "write".
        administration: String,
        /// `organization_self_hosted_runners`: "none", "read" or "write".
        organization_self_hosted_runners: String,
    },
}

/// Start-up options.
#[derive(Debug, Clone)]
pub struct Options {
    pub token: String,
    pub token_kind: TokenKind,
    /// Sent as `github-authentication-token-expiration`, e.g. `2027-10-12 09:00:00 UTC`.
    pub token_expiration: Option<String>,
    /// Scales the fake runner's own fixed waits (30 s retries and so on).
    pub time_scale: f64,
    /// The fake runner's start-up delay.
    pub runner_startup_ms: u64,
    /// Whether generate-jitconfig exists (old GHES answers 404).
    pub jit: bool,
    /// How long a runner's message long-poll is held open.
    pub poll_timeout: Duration,
    /// Primary rate limit per hour.
    pub rate_limit: u64,
    /// The base URL runners are told to use (JIT configs, config.sh), when it is not the
    /// bound address: e.g. `http://github:8080` inside a compose network.
    pub public_url: Option<String>,
    /// A job whose lock is not renewed for this long is abandoned (the runner died).
    pub job_lock_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: "ghp_simulated_token_0000000000000000000000".into(),
            token_kind: TokenKind::Classic {
                scopes: vec!["repo".into(), "admin:org".into()],
            },
            token_expiration: None,
            time_scale: 1.0,
            runner_startup_ms: 0,
            jit: true,
            poll_timeout: Duration::from_secs(50),
            rate_limit: 5000,
            public_url: None,
            job_lock_timeout: Duration::from_secs(600),
        }
    }
}

/// An injected fault, matched against non-admin requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    /// Only requests with this method (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Only requests whose path contains this (any when absent).
    #[serde(default)]
    pub path: Option<String>,
    /// Only requests whose body contains this, e.g. one runner's name prefix (any when absent).
    #[serde(default)]
    pub body: Option<String>,
    pub kind: FaultKind,
    /// How many matching requests it hits; 0 means for ever.
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

/// What a fault does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// Delay the answer.
    Latency { ms: u64 },
    /// Answer with this status (5xx) and a basic-error body.
    Status { status: u16 },
    /// A rate limit: primary (`x-ratelimit-remaining: 0` + reset) or secondary.
    RateLimit {
        status: u16,
        #[serde(default)]
        retry_after: Option<u64>,
        #[serde(default)]
        primary: bool,
    },
    /// Reset the TCP connection (RST) without answering.
    Reset,
}

/// One request as the fake saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Milliseconds since the server started.
    pub at_ms: u64,
    pub user_agent: Option<String>,
    pub accept: Option<String>,
    pub api_version: Option<String>,
    /// The auth scheme used (`Bearer`, `token`, `RemoteAuth`), never the secret.
    pub auth_scheme: Option<String>,
}

/// A runner registration as the fake keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimRunner {
    pub id: u64,
    pub name: String,
    pub scope: String,
    pub labels: Vec<String>,
    pub busy: bool,
    pub ephemeral: bool,
    pub version: Option<String>,
    pub group_id: u64,
    pub session: Option<String>,
    pub client_id: String,
    /// Session creations that will still see a conflict (a stale session elsewhere).
    pub conflicts_left: u32,
    /// Show it offline in the REST API whatever its session (the service lost it).
    #[serde(default)]
    pub force_offline: bool,
}

impl SimRunner {
    /// Whether a session is open (GitHub shows the runner online).
    pub fn status_is_online(&self) -> bool {
        self.session.is_some()
    }

    fn status(&self) -> &'static str {
        if self.session.is_some() && !self.force_offline {
            "online"
        } else {
            "offline"
        }
    }

    fn to_json(&self) -> Value {
        let labels: Vec<Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let kind = if is_default_label(l) {
                    "read-only"
                } else {
                    "custom"
                };
                json!({"id": i as u64 + 1, "name": l, "type": kind})
            })
            .collect();
        let mut v = json!({
            "id": self.id,
            "runner_group_id": self.group_id,
            "name": self.name,
            "os": "Linux",
            "status": self.status(),
            "busy": self.busy,
            "labels": labels,
            "ephemeral": self.ephemeral,
        });
        v["version"] = match &self.version {
            Some(s) => json!(s),
            None => Value::Null,
        };
        v
    }
}

fn is_default_label(l: &str) -> bool {
    ["self-hosted", "linux", "x64", "arm64", "arm"].contains(&l.to_ascii_lowercase().as_str())
}

/// A job waiting for a runner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSpec {
    #[serde(default = "default_job_name")]
    pub name: String,
    #[serde(default = "default_duration")]
    pub duration_ms: u64,
    #[serde(default = "default_result")]
    pub result: String,
    /// Labels a runner must carry to take it.
    #[serde(default)]
    pub labels: Vec<String>,
}

fn default_job_name() -> String {
    "build".into()
}
fn default_duration() -> u64 {
    500
}
fn default_result() -> String {
    "Succeeded".into()
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            name: default_job_name(),
            duration_ms: default_duration(),
            result: default_result(),
            labels: vec![],
        }
    }
}

/// A finished job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompletedJob {
    pub job_id: u64,
    pub name: String,
    pub runner: String,
    pub result: String,
}

/// Everything the fake knows; tests read it through [`FakeGithub::state`].
#[derive(Debug, Default)]
pub struct State {
    pub runners: BTreeMap<u64, SimRunner>,
    pub queue: VecDeque<(u64, JobSpec)>,
    /// Job id to (runner id, job) while a runner has it.
    pub running: BTreeMap<u64, (u64, JobSpec)>,
    /// Job id to its last lock renewal.
    locks: HashMap<u64, std::time::Instant>,
    pub completed: Vec<CompletedJob>,
    pub calls: Vec<Call>,
    /// Runners deleted through the REST API or by ephemeral completion, by name.
    pub deleted: Vec<String>,
    pub faults: Vec<Fault>,
    pub scripts: VecDeque<Script>,
    /// Conflicts given to the next registered runner.
    pub conflicts_for_next: u32,
    pub revoked: bool,
    pub token_kind: Option<TokenKind>,
    pub token_expiration: Option<String>,
    pub rate_remaining: u64,
    pub rate_reset: i64,
    /// Requests received (before any fault or answer), admin requests excepted.
    pub arrivals: u64,
    sessions: HashMap<String, u64>,
    reg_tokens: HashMap<String, String>,
    tenant_tokens: HashMap<String, String>,
    next_runner_id: u64,
    next_job_id: u64,
}

struct Shared {
    opts: Options,
    state: Mutex<State>,
    changed: Notify,
    started: std::time::Instant,
    base_url: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake GitHub. Dropping it stops the server.
pub struct FakeGithub {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGithub {
    /// Bind `127.0.0.1:0` and serve.
    pub async fn start(opts: Options) -> std::io::Result<FakeGithub> {
        Self::start_on("127.0.0.1:0".parse().expect("literal address"), opts).await
    }

    /// Bind `addr` (loopback) and serve.
    pub async fn start_on(addr: SocketAddr, opts: Options) -> std::io::Result<FakeGithub> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = State {
            next_runner_id: 1000,
            next_job_id: 1,
            token_kind: Some(opts.token_kind.clone()),
            token_expiration: opts.token_expiration.clone(),
            rate_remaining: opts.rate_limit,
            rate_reset: Utc::now().timestamp() + 3600,
            ..State::default()
        };
        let base_url = opts
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let shared = Arc::new(Shared {
            opts,
            state: Mutex::new(state),
            changed: Notify::new(),
            started: std::time::Instant::now(),
            base_url,
        });
        let s2 = shared.clone();
        let task = tokio::spawn(async move { accept_loop(listener, s2).await });
        Ok(FakeGithub { addr, shared, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the API base URL to configure.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Run `f` on the state.
    pub fn state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.shared.lock());
        self.shared.changed.notify_waiters();
        r
    }

    /// Wait until `pred` holds, woken by every change; false on timeout.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&State) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(&self.shared.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.shared.lock());
            }
        }
    }

    /// Queue jobs.
    pub fn enqueue(&self, job: JobSpec, count: usize) {
        self.state(|s| enqueue_jobs(s, job, count));
    }

    /// Add a fault.
    pub fn fault(&self, fault: Fault) {
        self.state(|s| s.faults.push(fault));
    }

    /// The script the next runner session acts out.
    pub fn script(&self, script: Script) {
        self.state(|s| s.scripts.push_back(script));
    }

    /// The call log.
    pub fn calls(&self) -> Vec<Call> {
        self.state(|s| s.calls.clone())
    }

    /// Runners registered now.
    pub fn runners(&self) -> Vec<SimRunner> {
        self.state(|s| s.runners.values().cloned().collect())
    }

    /// Register a JIT runner through the REST API, as the supervisor would: (id, encoded config).
    pub async fn generate_jit(&self, name: &str) -> (u64, String) {
        let v: Value = reqwest::Client::new()
            .post(format!(
                "{}/repos/octo/app/actions/runners/generate-jitconfig",
                self.url()
            ))
            .header("User-Agent", "sim")
            .bearer_auth(&self.shared.opts.token)
            .json(&json!({"name": name, "runner_group_id": 1, "labels": ["self-hosted"]}))
            .send()
            .await
            .expect("the fake answers")
            .json()
            .await
            .expect("a JIT config");
        (
            v["runner"]["id"].as_u64().expect("an id"),
            v["encoded_jit_config"]
                .as_str()
                .expect("a config")
                .to_string(),
        )
    }

    /// Delete a runner on the server side (as a user in the web UI would).
    pub fn delete_runner(&self, id: u64) -> bool {
        self.state(|s| delete_runner(s, id).is_some())
    }

    /// Register a runner directly (as if another host had), returning its id.
    pub fn add_runner(&self, scope: &str, name: &str, online: bool) -> u64 {
        self.state(|s| {
            let id = new_runner(s, scope, name, vec!["self-hosted".into()], 1, false);
            if online {
                let sid = format!("external-{id}");
                s.sessions.insert(sid.clone(), id);
                if let Some(r) = s.runners.get_mut(&id) {
                    r.session = Some(sid);
                }
            }
            id
        })
    }
}

fn enqueue_jobs(s: &mut State, job: JobSpec, count: usize) {
    for _ in 0..count {
        let id = s.next_job_id;
        s.next_job_id += 1;
        s.queue.push_back((id, job.clone()));
    }
}

fn new_runner(
    s: &mut State,
    scope: &str,
    name: &str,
    labels: Vec<String>,
    group_id: u64,
    ephemeral: bool,
) -> u64 {
    let id = s.next_runner_id;
    s.next_runner_id += 1;
    let conflicts_left = std::mem::take(&mut s.conflicts_for_next);
    s.runners.insert(
        id,
        SimRunner {
            id,
            name: name.to_string(),
            scope: scope.to_string(),
            labels,
            busy: false,
            ephemeral,
            version: None,
            group_id,
            session: None,
            client_id: random_token(32).to_lowercase(),
            conflicts_left,
            force_offline: false,
        },
    );
    id
}

/// Abandon jobs whose lock expired: the service gives up on a runner that died mid-job.
fn expire_locks(s: &mut State, timeout: Duration) {
    let expired: Vec<u64> = s
        .locks
        .iter()
        .filter(|(_, t)| t.elapsed() > timeout)
        .map(|(id, _)| *id)
        .collect();
    for jid in expired {
        s.locks.remove(&jid);
        if let Some((rid, job)) = s.running.remove(&jid) {
            let name = s
                .runners
                .get(&rid)
                .map(|r| r.name.clone())
                .unwrap_or_default();
            if let Some(r) = s.runners.get_mut(&rid) {
                r.busy = false;
                if let Some(sid) = r.session.take() {
                    s.sessions.remove(&sid);
                }
            }
            s.completed.push(CompletedJob {
                job_id: jid,
                name: job.name,
                runner: name,
                result: "Abandoned".into(),
            });
        }
    }
}

fn delete_runner(s: &mut State, id: u64) -> Option<SimRunner> {
    let r = s.runners.remove(&id)?;
    if let Some(sid) = &r.session {
        s.sessions.remove(sid);
    }
    s.deleted.push(r.name.clone());
    Some(r)
}

fn random_token(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// Per-connection control: lets a handler reset its own connection.
struct ConnCtl {
    fd: i32,
    abort: Notify,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let ctl = Arc::new(ConnCtl {
                fd: stream.as_raw_fd(),
                abort: Notify::new(),
            });
            let ctl2 = ctl.clone();
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                let ctl = ctl2.clone();
                async move { Ok::<_, Infallible>(handle(shared, ctl, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = ctl.abort.notified() => {}
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

struct Ctx {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Ctx {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

async fn handle(shared: Arc<Shared>, ctl: Arc<ConnCtl>, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let query = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let ctx = Ctx {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query,
        headers: parts.headers,
        body,
    };
    let path = ctx
        .path
        .strip_prefix("/api/v3")
        .unwrap_or(&ctx.path)
        .to_string();
    if path.starts_with("/_admin") {
        return admin(&shared, &ctx, &path).await;
    }
    shared.lock().arrivals += 1;
    shared.changed.notify_waiters();

    // Faults come first, as a network or a load balancer would.
    let fault = {
        let mut s = shared.lock();
        take_fault(&mut s, &ctx.method, &path, &ctx.body)
    };
    let mut extra_headers: Vec<(&'static str, String)> = Vec::new();
    if let Some(kind) = fault {
        match kind {
            FaultKind::Latency { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
            FaultKind::Reset => {
                // SO_LINGER 0, then drop the connection: the kernel sends RST.
                // SAFETY: the fd belongs to this connection's TcpStream, alive until abort.
                let fd = unsafe { BorrowedFd::borrow_raw(ctl.fd) };
                let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
                log_call(&shared, &ctx, 0);
                ctl.abort.notify_one();
                std::future::pending::<()>().await;
            }
            FaultKind::Status { status } => {
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let resp = basic_error(code, "Server Error");
                return finish(&shared, &ctx, resp, vec![]);
            }
            FaultKind::RateLimit {
                status,
                retry_after,
                primary,
            } => {
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                let msg = if primary {
                    "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID."
                } else {
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID."
                };
                let mut h = vec![];
                if let Some(ra) = retry_after {
                    h.push(("retry-after", ra.to_string()));
                }
                if primary {
                    shared.lock().rate_remaining = 0;
                }
                return finish(&shared, &ctx, basic_error(code, msg), h);
            }
        }
    }

    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resp = if segs.first() == Some(&"_sim") {
        sim(&shared, &ctx, &segs[1..]).await
    } else if segs == ["actions", "runner-registration"] && ctx.method == Method::POST {
        runner_registration(&shared, &ctx)
    } else {
        match rest_gate(&shared, &ctx, &segs) {
            Err(resp) => resp,
            Ok(()) => {
                extra_headers.push(("x-github-api-version-selected", "2022-11-28".into()));
                rest(&shared, &ctx, &segs)
            }
        }
    };
    finish(&shared, &ctx, resp, extra_headers)
}

fn take_fault(s: &mut State, method: &Method, path: &str, body: &[u8]) -> Option<FaultKind> {
    let body = String::from_utf8_lossy(body);
    let idx = s.faults.iter().position(|f| {
        f.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && f.path.as_deref().is_none_or(|p| path.contains(p))
            && f.body.as_deref().is_none_or(|b| body.contains(b))
    })?;
    let f = &mut s.faults[idx];
    let kind = f.kind.clone();
    if f.times == 1 {
        s.faults.remove(idx);
    } else if f.times > 1 {
        f.times -= 1;
    }
    Some(kind)
}

fn log_call(shared: &Shared, ctx: &Ctx, status: u16) {
    let auth_scheme = ctx
        .header("authorization")
        .and_then(|a| a.split_whitespace().next().map(str::to_string));
    let call = Call {
        method: ctx.method.to_string(),
        path: ctx.path.clone(),
        status,
        at_ms: shared.started.elapsed().as_millis() as u64,
        user_agent: ctx.header("user-agent"),
        accept: ctx.header("accept"),
        api_version: ctx.header("x-github-api-version"),
        auth_scheme,
    };
    shared.lock().calls.push(call);
    shared.changed.notify_waiters();
}

/// Add the headers every GitHub answer carries, log the call, and notify waiters.
fn finish(shared: &Shared, ctx: &Ctx, mut resp: Resp, extra: Vec<(&'static str, String)>) -> Resp {
    let is_rest = !ctx.path.contains("/_sim");
    let h = resp.headers_mut();
    let date = Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    h.insert("date", HeaderValue::from_str(&date).expect("ascii date"));
    h.insert(
        "x-github-request-id",
        HeaderValue::from_str(&format!(
            "{:X}:{:X}",
            rand::random::<u32>(),
            rand::random::<u32>()
        ))
        .expect("hex"),
    );
    if is_rest {
        let s = shared.lock();
        let limit = shared.opts.rate_limit;
        let remaining = s.rate_remaining;
        for (k, v) in [
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            (
                "x-ratelimit-used",
                (limit - remaining.min(limit)).to_string(),
            ),
            ("x-ratelimit-reset", s.rate_reset.to_string()),
            ("x-ratelimit-resource", "core".to_string()),
        ] {
            h.insert(k, HeaderValue::from_str(&v).expect("digits"));
        }
        if let Some(TokenKind::Classic { scopes }) = &s.token_kind {
            h.insert(
                "x-oauth-scopes",
                HeaderValue::from_str(&scopes.join(", ")).unwrap_or(HeaderValue::from_static("")),
            );
        }
        if let Some(exp) = &s.token_expiration {
            if let Ok(v) = HeaderValue::from_str(exp) {
                h.insert("github-authentication-token-expiration", v);
            }
        }
    }
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(k), v);
        }
    }
    log_call(shared, ctx, resp.status().as_u16());
    resp
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// GitHub's `basic-error` body.
fn basic_error(status: StatusCode, message: &str) -> Resp {
    json_resp(
        status,
        &json!({"message": message, "documentation_url": DOCS, "status": status.as_u16().to_string()}),
    )
}

/// GitHub's `validation-error-simple` body (422).
fn validation_error(message: &str, errors: Vec<String>) -> Resp {
    json_resp(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"message": message, "documentation_url": DOCS, "errors": errors}),
    )
}

/// Authentication, User-Agent, primary rate limit. Returns the error answer, if any.
#[allow(clippy::result_large_err)]
fn rest_gate(shared: &Shared, ctx: &Ctx, segs: &[&str]) -> Result<(), Resp> {
    if ctx.header("user-agent").is_none_or(|u| u.trim().is_empty()) {
        return Err(basic_error(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.",
        ));
    }
    let auth = ctx.header("authorization");
    let token = auth.as_deref().and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("token "))
            .map(str::trim)
    });
    let mut s = shared.lock();
    match token {
        None => {
            return Err(basic_error(
                StatusCode::UNAUTHORIZED,
                "Requires authentication",
            ))
        }
        Some(t) if t != shared.opts.token || s.revoked => {
            return Err(basic_error(StatusCode::UNAUTHORIZED, "Bad credentials"))
        }
        Some(_) => {}
    }
    if s.rate_remaining == 0 && Utc::now().timestamp() < s.rate_reset {
        return Err(basic_error(
            StatusCode::FORBIDDEN,
            "API rate limit exceeded for user ID 1.",
        ));
    }
    s.rate_remaining = s.rate_remaining.saturating_sub(1);
    // Scopes and permissions for the runner endpoints.
    let org = segs.first() == Some(&"orgs");
    if segs.first() == Some(&"repos") || org {
        let write = ctx.method != Method::GET;
        match s.token_kind.clone() {
            Some(TokenKind::Classic { scopes }) => {
                let need = if org { "admin:org" } else { "repo" };
                if !scopes.iter().any(|sc| sc == need) {
                    // GitHub hides private resources behind 404 rather than 403.
                    return Err(basic_error(StatusCode::NOT_FOUND, "Not Found"));
                }
            }
            Some(TokenKind::FineGrained {
                administration,
                organization_self_hosted_runners,
            }) => {
                let (perm, name) = if org {
                    (
                        organization_self_hosted_runners,
                        "organization_self_hosted_runners",
                    )
                } else {
                    (administration, "administration")
                };
                let ok = perm == "write" || (perm == "read" && !write);
                if !ok {
                    let level = if write { "write" } else { "read" };
                    let mut r = basic_error(
                        StatusCode::FORBIDDEN,
                        "Resource not accessible by personal access token",
                    );
                    r.headers_mut().insert(
                        "x-accepted-github-permissions",
                        HeaderValue::from_str(&format!("{name}={level}")).expect("ascii"),
                    );
                    return Err(r);
                }
            }
            None => {}
        }
    }
    Ok(())
}

fn rest(shared: &Shared, ctx: &Ctx, segs: &[&str]) -> Resp {
    if segs == ["user"] && ctx.method == Method::GET {
        return json_resp(
            StatusCode::OK,
            &json!({"login": "octocat", "id": 1, "type": "User", "site_admin": false,
                    "html_url": "https://github.com/octocat", "url": format!("{}/users/octocat", shared.base_url)}),
        );
    }
    let (scope, rest) = match segs {
        ["repos", o, r, "actions", "runners", rest @ ..] => (
            format!("repos/{}/{}", o.to_lowercase(), r.to_lowercase()),
            rest,
        ),
        ["orgs", o, "actions", "runners", rest @ ..] => {
            (format!("orgs/{}", o.to_lowercase()), rest)
        }
        _ => return basic_error(StatusCode::NOT_FOUND, "Not Found"),
    };
    expire_locks(&mut shared.lock(), shared.opts.job_lock_timeout);
    let m = &ctx.method;
    match (m.as_str(), rest) {
        ("GET", []) => list_runners(shared, ctx, &scope),
        ("GET", ["downloads"]) => downloads(),
        ("POST", ["generate-jitconfig"]) => generate_jitconfig(shared, ctx, &scope),
        ("POST", ["registration-token"]) | ("POST", ["remove-token"]) => {
            let token = random_token(29);
            let expires = (Utc::now() + chrono::Duration::hours(1))
                .with_timezone(&chrono::FixedOffset::west_opt(8 * 3600).expect("valid offset"))
                .to_rfc3339_opts(SecondsFormat::Millis, false);
            shared
                .lock()
                .reg_tokens
                .insert(token.clone(), scope.clone());
            json_resp(
                StatusCode::CREATED,
                &json!({"token": token, "expires_at": expires}),
            )
        }
        ("GET", [id]) => match id.parse::<u64>().ok().and_then(|id| {
            let s = shared.lock();
            s.runners
                .get(&id)
                .filter(|r| r.scope == scope)
                .map(|r| r.to_json())
        }) {
            Some(v) => json_resp(StatusCode::OK, &v),
            None => basic_error(StatusCode::NOT_FOUND, "Not Found"),
        },
        ("DELETE", [id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return basic_error(StatusCode::NOT_FOUND, "Not Found");
            };
            let mut s = shared.lock();
            match s.runners.get(&id) {
                Some(r) if r.scope == scope => {
                    if r.busy {
                        return validation_error(
                            &format!(
                                "Bad request - Runner \"{}\" is still running a job\"",
                                r.name
                            ),
                            vec![],
                        );
                    }
                    delete_runner(&mut s, id);
                    drop(s);
                    shared.changed.notify_waiters();
                    empty(StatusCode::NO_CONTENT)
                }
                _ => basic_error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        _ => basic_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

fn list_runners(shared: &Shared, ctx: &Ctx, scope: &str) -> Resp {
    let per_page: usize = ctx
        .query
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page: usize = ctx
        .query
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let name = ctx.query.get("name");
    let all: Vec<Value> = {
        let s = shared.lock();
        s.runners
            .values()
            .filter(|r| r.scope == scope && name.is_none_or(|n| &r.name == n))
            .map(|r| r.to_json())
            .collect()
    };
    let total = all.len();
    let pages = total.div_ceil(per_page).max(1);
    let items: Vec<Value> = all
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let mut resp = json_resp(
        StatusCode::OK,
        &json!({"total_count": total, "runners": items}),
    );
    if pages > 1 {
        let base = format!("{}{}", shared.base_url, ctx.path);
        let link_for = |p: usize| {
            let mut q = format!("per_page={per_page}&page={p}");
            if let Some(n) = name {
                q.push_str(&format!("&name={n}"));
            }
            format!("{base}?{q}")
        };
        let mut links = vec![];
        if page < pages {
            links.push(format!("<{}>; rel=\"next\"", link_for(page + 1)));
            links.push(format!("<{}>; rel=\"last\"", link_for(pages)));
        }
        if page > 1 {
            links.push(format!("<{}>; rel=\"prev\"", link_for(page - 1)));
            links.push(format!("<{}>; rel=\"first\"", link_for(1)));
        }
        resp.headers_mut().insert(
            "link",
            HeaderValue::from_str(&links.join(", ")).expect("ascii links"),
        );
    }
    resp
}

fn downloads() -> Resp {
    let v = RUNNER_VERSION;
    let items: Vec<Value> = [("linux", "x64"), ("linux", "arm64"), ("osx", "x64")]
        .iter()
        .map(|(os, arch)| {
            let filename = format!("actions-runner-{os}-{arch}-{v}.tar.gz");
            json!({
                "os": os, "architecture": arch, "filename": filename,
                "download_url": format!("https://github.com/actions/runner/releases/download/v{v}/{filename}"),
                "sha256_checksum": format!("{:064x}", 0u8),
            })
        })
        .collect();
    json_resp(StatusCode::OK, &Value::Array(items))
}

fn generate_jitconfig(shared: &Shared, ctx: &Ctx, scope: &str) -> Resp {
    if !shared.opts.jit {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    }
    let body: Value = match serde_json::from_slice(&ctx.body) {
        Ok(v) => v,
        Err(_) => return validation_error("Problems parsing JSON", vec![]),
    };
    let mut errors = vec![];
    let name = body.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        errors.push("name is missing or not a string".to_string());
    }
    let group = body.get("runner_group_id").and_then(Value::as_u64);
    if group.is_none() {
        errors.push("runner_group_id is missing or not an integer".to_string());
    }
    let labels: Vec<String> = body
        .get("labels")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if labels.is_empty() || labels.len() > 100 {
        errors.push("labels must have between 1 and 100 items".to_string());
    }
    if labels.iter().any(|l| l.is_empty() || l.len() > 256) {
        errors.push("each label must be 1 to 256 characters".to_string());
    }
    let work = body
        .get("work_folder")
        .and_then(Value::as_str)
        .unwrap_or("_work")
        .to_string();
    if !errors.is_empty() {
        return validation_error("Invalid request.", errors);
    }
    let mut s = shared.lock();
    if s.runners
        .values()
        .any(|r| r.scope == scope && r.name.eq_ignore_ascii_case(name))
    {
        return json_resp(
            StatusCode::CONFLICT,
            &json!({"message": format!("Already exists - A runner with the name {name} already exists."),
                    "documentation_url": DOCS, "status": "409"}),
        );
    }
    let id = new_runner(&mut s, scope, name, labels, group.unwrap_or(1), true);
    let runner = s.runners[&id].clone();
    drop(s);
    shared.changed.notify_waiters();
    let settings = settings_for(shared, &runner, scope, &work);
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
    let mut rj = runner.to_json();
    rj["os"] = json!("unknown");
    json_resp(
        StatusCode::CREATED,
        &json!({"runner": rj, "encoded_jit_config": encode_jit_config(&files)}),
    )
}

fn settings_for(shared: &Shared, r: &SimRunner, scope: &str, work: &str) -> RunnerSettings {
    RunnerSettings {
        agent_id: r.id,
        agent_name: r.name.clone(),
        pool_id: r.group_id,
        pool_name: "Default".into(),
        server_url: shared.base_url.clone(),
        git_hub_url: format!(
            "https://github.com/{}",
            scope
                .trim_start_matches("repos/")
                .trim_start_matches("orgs/")
        ),
        work_folder: work.to_string(),
        ephemeral: r.ephemeral,
        disable_update: true,
        use_v2_flow: true,
        sim_time_scale: shared.opts.time_scale,
        sim_startup_ms: shared.opts.runner_startup_ms,
    }
}

fn credentials_for(shared: &Shared, r: &SimRunner) -> Credentials {
    Credentials {
        scheme: "OAuth".into(),
        data: CredentialData {
            client_id: r.client_id.clone(),
            authorization_url: format!("{}/_sim/oauth2/token", shared.base_url),
            require_fips_cryptography: "False".into(),
        },
    }
}

/// `POST /actions/runner-registration`: config.sh's token exchange (`RemoteAuth`).
fn runner_registration(shared: &Shared, ctx: &Ctx) -> Resp {
    let token = ctx
        .header("authorization")
        .and_then(|a| a.strip_prefix("RemoteAuth ").map(str::to_string));
    let mut s = shared.lock();
    let Some(scope) = token.as_ref().and_then(|t| s.reg_tokens.get(t).cloned()) else {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let tenant = random_token(40);
    s.tenant_tokens.insert(tenant.clone(), scope);
    json_resp(
        StatusCode::OK,
        &json!({"url": shared.base_url, "token": tenant, "token_schema": "OAuthAccessToken", "use_v2_flow": true}),
    )
}

async fn sim(shared: &Arc<Shared>, ctx: &Ctx, segs: &[&str]) -> Resp {
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

fn sim_register(shared: &Shared, ctx: &Ctx) -> Resp {
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

fn sim_session(shared: &Shared, ctx: &Ctx) -> Resp {
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

async fn sim_message(shared: &Arc<Shared>, sid: &str) -> Resp {
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
            let labels = s
                .runners
                .get(&rid)
                .map(|r| r.labels.clone())
                .unwrap_or_default();
            let pos = s.queue.iter().position(|(_, j)| {
                j.labels
                    .iter()
                    .all(|l| labels.iter().any(|rl| rl.eq_ignore_ascii_case(l)))
            });
            if let Some(pos) = pos {
                let (jid, job) = s.queue.remove(pos).expect("position is valid");
                if let Some(r) = s.runners.get_mut(&rid) {
                    r.busy = true;
                }
                s.running.insert(jid, (rid, job.clone()));
                s.locks.insert(jid, std::time::Instant::now());
                drop(s);
                shared.changed.notify_waiters();
                let msg = JobMessage {
                    job_id: jid,
                    display_name: job.name,
                    duration_ms: job.duration_ms,
                    result: job.result,
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

#[derive(Deserialize)]
struct TokenUpdate {
    #[serde(default)]
    revoked: Option<bool>,
    #[serde(default)]
    kind: Option<TokenKind>,
    #[serde(default)]
    expiration: Option<String>,
}

#[derive(Deserialize)]
struct JobsRequest {
    #[serde(flatten)]
    job: JobSpec,
    #[serde(default = "one_usize")]
    count: usize,
}

fn one_usize() -> usize {
    1
}

async fn admin(shared: &Arc<Shared>, ctx: &Ctx, path: &str) -> Resp {
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
        _ => empty(StatusCode::NOT_FOUND),
    };
    shared.changed.notify_waiters();
    resp
}
