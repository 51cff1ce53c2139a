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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
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
    RegisterResponse, RunnerSettings, Script, SessionRequest, SessionResponse,
};

mod actions;
mod admin;
mod faults;
pub use actions::ActionsJob;
use actions::{conclude, enqueue_jobs, expire_locks};
pub use faults::{Fault, FaultKind};
pub use releases::default_deprecations;
pub mod app;
mod broker;
pub mod codeload;
mod http;
mod releases;
mod rest;
pub mod scaleset;

use admin::*;
use broker::*;
use http::*;
use rest::*;

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
        /// `actions` on repositories (runs, jobs, re-runs): "none", "read" or "write".
        #[serde(default = "write_permission")]
        actions: String,
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
    /// How long codeload takes to start answering an action archive.
    pub codeload_delay: Duration,
    /// How long a runner's message long-poll is held open before it is answered empty.
    pub poll_timeout: Duration,
    /// The fake runner's request timeout (connect, send, response headers): 60 s.
    pub runner_http_timeout: Duration,
    /// Primary rate limit per hour.
    pub rate_limit: u64,
    /// The base URL runners are told to use (JIT configs, config.sh), when it is not the
    /// bound address: e.g. `http://github:8080` inside a compose network.
    pub public_url: Option<String>,
    /// A job whose lock is not renewed for this long is abandoned (the runner died).
    pub job_lock_timeout: Duration,
    /// The newest runner release the downloads endpoint lists.
    pub latest_runner_version: String,
    /// What `GET .../actions/runners/deprecations/{version}` answers, by version:
    /// `runtime_deprecates_at` (None: no date yet, JSON null). A version not listed
    /// answers 404, as GitHub does for one it does not know.
    pub deprecations: std::collections::BTreeMap<String, Option<DateTime<Utc>>>,
    /// The fake runner binary: when set, the downloads endpoint lists tarballs the fake
    /// serves (`/actions/runner/releases/download/v{version}/{file}`), built from it at
    /// each version, with their real SHA-256; otherwise github.com URLs and no checksum.
    pub runner_binary: Option<std::path::PathBuf>,
    /// Versions whose listed checksum does not match the tarball.
    pub bad_checksums: std::collections::BTreeSet<String>,
    /// Broken releases: every listener of such a version crashes this many ms after it
    /// listens.
    pub broken_releases: std::collections::BTreeMap<String, u64>,
    /// Whether the deprecations endpoint exists at all (a GHES that predates it answers
    /// 404 for the path itself).
    pub deprecations_endpoint: bool,
    /// A GitHub App whose installation tokens the runner endpoints also accept.
    pub app: Option<app::AppOptions>,
    /// The runner scale-set service (`scaleset`): hold times, expiries, flows.
    pub scaleset: scaleset::ScaleSetOptions,
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
            codeload_delay: Duration::ZERO,
            poll_timeout: Duration::from_secs(50),
            runner_http_timeout: Duration::from_secs(60),
            rate_limit: 5000,
            public_url: None,
            job_lock_timeout: Duration::from_secs(600),
            latest_runner_version: crate::protocol::RUNNER_VERSION.to_string(),
            deprecations: default_deprecations(),
            deprecations_endpoint: true,
            runner_binary: None,
            bad_checksums: Default::default(),
            broken_releases: Default::default(),
            app: None,
            scaleset: scaleset::ScaleSetOptions::default(),
        }
    }
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
    /// The query string's parameters.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// `X-ScaleSetMaxCapacity`, as sent (scale-set message polls).
    #[serde(default)]
    pub max_capacity: Option<String>,
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
    /// Its workflow's name (`GITHUB_WORKFLOW`); `CI` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Actions the job uses, `owner/repo@ref`: downloaded at "Set up job" unless the
    /// runner's action archive cache has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// A step the job runs (`sh -c`, in the work folder, with the runner's environment);
    /// its failure fails the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

fn write_permission() -> String {
    "write".into()
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
            workflow: None,
            actions: vec![],
            run: None,
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
    /// Action archives downloaded from codeload, `owner/repo@sha`, in order.
    pub codeload_downloads: Vec<String>,
    pub faults: Vec<Fault>,
    pub scripts: VecDeque<Script>,
    /// Conflicts given to the next registered runner.
    pub conflicts_for_next: u32,
    pub revoked: bool,
    pub token_kind: Option<TokenKind>,
    pub token_expiration: Option<String>,
    pub rate_remaining: u64,
    pub rate_reset: i64,
    /// Installation tokens issued, with their expiry.
    pub installation_tokens: BTreeMap<String, chrono::DateTime<Utc>>,
    /// How many installation tokens were issued.
    pub installation_tokens_issued: u64,
    /// The App's installation is suspended: no tokens, and issued ones are refused.
    pub installation_suspended: bool,
    /// Requests received (before any fault or answer), admin requests excepted.
    pub arrivals: u64,
    sessions: HashMap<String, u64>,
    reg_tokens: HashMap<String, String>,
    tenant_tokens: HashMap<String, String>,
    next_runner_id: u64,
    next_job_id: u64,
    /// Release tarballs built so far, by version.
    pub tarballs: BTreeMap<String, Bytes>,
    /// Downloads served, by file name.
    pub downloads: BTreeMap<String, u64>,
    /// A release that appeared after the start: the downloads endpoint lists it as the
    /// newest instead of `Options::latest_runner_version`.
    pub released: Option<String>,
    /// The jobs as the Actions REST API shows them (`…/runs/{run_id}/attempts/{n}/jobs`),
    /// by job id: each enqueued job is its own run, attempt 1.
    pub actions_jobs: BTreeMap<u64, ActionsJob>,
    /// Re-runs accepted: (run id, the job re-run, the attempt made).
    pub reruns: Vec<(u64, u64, u32)>,
    /// The runner scale-set service's state.
    pub scalesets: scaleset::ScaleSets,
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
    /// When it started, the zero of [`Call::at_ms`].
    pub fn started_at(&self) -> DateTime<Utc> {
        Utc::now() - chrono::Duration::from_std(self.shared.started.elapsed()).unwrap_or_default()
    }

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
