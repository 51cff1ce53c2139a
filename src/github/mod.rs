//! The GitHub REST client: runner endpoints for repo and org scope, typed errors,
//! rate-limit handling as GitHub documents it, and retries with jittered back-off.
//!
//! Layout: this file is the client and its construction; `transport.rs` sends a request
//! (authentication, retries, rate-limit gate, typed errors, counters); `endpoints.rs` the
//! REST endpoints; `policy.rs` the pure etiquette; `types.rs` what it returns; `app.rs`
//! authentication as a GitHub App.
//!
//! Every connection carries TCP keepalive (idle, interval, probes) and a TCP user
//! timeout ([`crate::policy::keepalive::Keepalive::for_own`]), set on the socket by hyper-util through socket2;
//! [`crate::os::sockets::own_connections`] reads them back. The token is sent only to the
//! configured API origin, never logged.
//! It must not: retry in a tight loop, or follow a `Link` to another origin.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, USER_AGENT};
use tokio::time::Instant;

use crate::config::{Config, Scope, Secret};

/// The `User-Agent` we send (GitHub rejects requests without one).
pub const USER_AGENT_VALUE: &str = concat!("runner-supervisor/", env!("CARGO_PKG_VERSION"));

pub mod app;
mod endpoints;
pub mod scaleset;
mod transport;
mod types;

pub use crate::policy::ratelimit::*;
pub use transport::next_link;
pub(crate) use transport::urlencode;
use transport::{classify, decode, redact_url, Answer};
pub use types::*;

/// A GitHub client for one scope. Cheap to clone.
#[derive(Clone)]
pub struct GithubClient {
    http: reqwest::Client,
    /// The same settings, following redirects (release assets are served from a CDN),
    /// without the API's headers: runner downloads.
    downloads: reqwest::Client,
    base: String,
    scope: Scope,
    auth: Auth,
    retry: RetryPolicy,
    /// No request is sent before this instant (set by rate limits, shared by all slots).
    gate: Arc<Mutex<Option<Instant>>>,
    stats: Arc<ApiStats>,
    last_date: Arc<Mutex<Option<DateSample>>>,
}

/// How requests authenticate.
#[derive(Clone)]
enum Auth {
    /// A personal access token.
    Token(Secret),
    /// A GitHub App's installation tokens.
    App(Arc<app::AppAuth>),
    /// No credentials at all (an ARC runner pod: the JIT config is the runner's own):
    /// every request fails before anything is sent.
    None,
}

/// Why a client without credentials sends nothing.
pub const NO_CREDENTIALS: &str = "no GitHub credentials: this supervisor runs the one JIT runner of ACTIONS_RUNNER_INPUT_JITCONFIG and calls no GitHub API";

impl GithubClient {
    /// Build from the configuration. Fails only if TLS cannot be initialised.
    pub fn new(cfg: &Config, token: Secret) -> Result<GithubClient, GithubError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "X-GitHub-Api-Version",
            HeaderValue::from_static("2022-11-28"),
        );
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        let keepalive = cfg.network.keepalive_for_own();
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .use_rustls_tls()
            .https_only(cfg.github.api_url.starts_with("https://"))
            .connect_timeout(cfg.github.connect_timeout)
            .timeout(cfg.github.request_timeout)
            .tcp_keepalive(keepalive.idle)
            .tcp_keepalive_interval(keepalive.interval)
            .tcp_keepalive_retries(keepalive.probes)
            .tcp_user_timeout(keepalive.user_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GithubError::Transient(format!("cannot build the HTTP client: {e}")))?;
        let downloads = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(USER_AGENT_VALUE)
            .connect_timeout(cfg.github.connect_timeout)
            .tcp_keepalive(keepalive.idle)
            .tcp_keepalive_interval(keepalive.interval)
            .tcp_keepalive_retries(keepalive.probes)
            .tcp_user_timeout(keepalive.user_timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| GithubError::Transient(format!("cannot build the HTTP client: {e}")))?;
        Ok(GithubClient {
            http,
            downloads,
            base: cfg.github.api_url.trim_end_matches('/').to_string(),
            scope: cfg.github.scope.clone().ok_or_else(|| {
                GithubError::Transient("no repository or organisation is configured".into())
            })?,
            auth: Auth::Token(token),
            retry: RetryPolicy {
                max_retries: cfg.github.max_retries,
                base: cfg.github.backoff_base,
                cap: cfg.github.backoff_cap,
                max_rate_limit_wait: cfg.github.max_rate_limit_wait,
            },
            gate: Arc::new(Mutex::new(None)),
            stats: Arc::new(ApiStats::default()),
            last_date: Arc::new(Mutex::new(None)),
        })
    }

    /// A client that sends nothing: every call fails with [`NO_CREDENTIALS`] before a
    /// connection is made (the scope, when none is configured, is an empty organisation
    /// no request ever names).
    pub fn without_credentials(cfg: &Config) -> Result<GithubClient, GithubError> {
        let mut cfg = cfg.clone();
        if cfg.github.scope.is_none() {
            cfg.github.scope = Some(Scope::Org { org: String::new() });
        }
        let mut c = GithubClient::new(&cfg, Secret::new(""))?;
        c.auth = Auth::None;
        Ok(c)
    }

    /// A client authenticating as configured: the token, or the GitHub App.
    pub fn from_config(cfg: &Config) -> Result<GithubClient, GithubError> {
        match (&cfg.github.app, &cfg.github.token) {
            (Some(app), _) => {
                let mut c = GithubClient::new(cfg, Secret::new(""))?;
                c.auth = Auth::App(Arc::new(app::AppAuth::new(app)?));
                Ok(c)
            }
            (None, Some(t)) => GithubClient::new(cfg, t.clone()),
            (None, None) => Err(GithubError::Unauthorized {
                message: "no token and no GitHub App configured".into(),
            }),
        }
    }

    /// The GitHub App, when authenticating as one.
    pub fn app(&self) -> Option<&app::AppAuth> {
        match &self.auth {
            Auth::App(a) => Some(a),
            Auth::Token(_) | Auth::None => None,
        }
    }

    /// The clock offset as measured (seconds, positive: the local clock is ahead): the
    /// App signs its JWTs on GitHub's time with it.
    pub fn set_clock_offset(&self, secs: f64) {
        if let Some(a) = self.app() {
            a.set_offset(secs);
        }
    }

    /// Replace the retry policy (tests use short limits).
    pub fn with_retry(mut self, retry: RetryPolicy) -> GithubClient {
        self.retry = retry;
        self
    }

    /// The retry policy in force.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Request counters.
    pub fn stats(&self) -> &ApiStats {
        &self.stats
    }

    /// The request counters, shared (for the status and the metrics).
    pub fn stats_handle(&self) -> Arc<ApiStats> {
        self.stats.clone()
    }

    /// The latest `Date` header seen.
    pub fn last_date(&self) -> Option<DateSample> {
        *self.last_date.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scope this client serves.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
}

/// A header map from `(name, value)` pairs, for the tests.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}
