//! What the GitHub API answers, as the client returns it: typed errors callers branch on,
//! runners, tokens, and what the `Date` header and the scopes say.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Scope, Secret};

/// What went wrong, typed so callers can branch.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum GithubError {
    #[error("unauthorized (401): {message}; the token is invalid, expired or revoked")]
    Unauthorized { message: String },
    #[error("forbidden (403): {message}{}", accepted.as_ref().map(|a| format!("; needs {a}")).unwrap_or_default())]
    Forbidden {
        message: String,
        accepted: Option<String>,
    },
    #[error("not found (404): {message}; check owner/repo/org and that the token can administer runners there")]
    NotFound { message: String },
    #[error("rate limited ({status}); retry in {}s", retry_after.as_secs())]
    RateLimited { status: u16, retry_after: Duration },
    #[error("conflict (409): {message}")]
    Conflict { message: String },
    #[error("validation failed (422): {message} {errors:?}")]
    Validation {
        message: String,
        errors: Vec<String>,
    },
    #[error("transient failure: {0}")]
    Transient(String),
    #[error("unexpected status {status}: {message}")]
    Unexpected { status: u16, message: String },
    #[error("cannot decode GitHub's answer: {0}")]
    Decode(String),
}

/// A runner label.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Label {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// A runner as GitHub describes it (`#/components/schemas/runner`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Runner {
    pub id: u64,
    pub name: String,
    pub os: String,
    pub status: String,
    pub busy: bool,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub version: Option<String>,
}

/// `generate-jitconfig`'s answer.
#[derive(Debug, Clone, Deserialize)]
pub struct JitConfig {
    pub runner: Runner,
    /// Secret: the runner's credentials. Passed only in `ACTIONS_RUNNER_INPUT_JITCONFIG`.
    pub encoded_jit_config: String,
}

/// A registration or remove token.
#[derive(Debug, Clone)]
pub struct AuthToken {
    pub token: Secret,
    pub expires_at: DateTime<Utc>,
}

/// What `GET /user` tells about the token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub login: String,
    /// `X-OAuth-Scopes`; `None` when absent (fine-grained tokens): unknown, not "none".
    pub scopes: Option<Vec<String>>,
    /// `github-authentication-token-expiration`.
    pub expires_at: Option<DateTime<Utc>>,
}

/// `GET …/actions/runners/deprecations/{version}` (`actions-runs-openapi.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct VersionDeprecation {
    pub runner_version: String,
    /// After this a runner of this version can no longer register; null: no date.
    #[serde(default)]
    pub registration_deprecates_at: Option<DateTime<Utc>>,
    /// After this GitHub sends no jobs to a runner of this version; null: no date yet
    /// (the newest release).
    #[serde(default)]
    pub runtime_deprecates_at: Option<DateTime<Utc>>,
}

/// A runner application download.
#[derive(Debug, Clone, Deserialize)]
pub struct RunnerApplication {
    pub os: String,
    pub architecture: String,
    pub download_url: String,
    pub filename: String,
    #[serde(default)]
    pub sha256_checksum: Option<String>,
}

/// Counters shared by all clones of a client.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// HTTP requests sent, retries included.
    pub requests: AtomicU64,
    /// Requests by endpoint (`GET /repos/:owner/:repo/actions/runners`) and outcome (the
    /// status code, or `error` when no answer came).
    by_endpoint: Mutex<BTreeMap<(String, String), u64>>,
    /// The last `x-ratelimit-*` headers seen.
    rate_limit: Mutex<Option<RateLimit>>,
}

impl ApiStats {
    /// Count one request.
    pub fn count(&self, endpoint: String, outcome: String) {
        *self
            .by_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((endpoint, outcome))
            .or_default() += 1;
    }
    /// Requests by (endpoint, outcome).
    pub fn by_endpoint(&self) -> BTreeMap<(String, String), u64> {
        self.by_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Record the rate-limit headers of an answer.
    pub fn set_rate_limit(&self, r: RateLimit) {
        *self.rate_limit.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }
    /// The rate limit as last seen.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// GitHub's rate limit as its `x-ratelimit-*` headers last said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimit {
    pub limit: u64,
    pub remaining: u64,
    pub used: Option<u64>,
    /// When the window resets (Unix seconds).
    pub reset: i64,
    /// The bucket (`core`).
    pub resource: Option<String>,
}

/// The server's `Date` header and when we saw it, for clock checks.
#[derive(Debug, Clone, Copy)]
pub struct DateSample {
    pub server: DateTime<Utc>,
    pub local: DateTime<Utc>,
}

/// What classic scopes say about runner administration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeVerdict {
    Ok,
    /// The exact scope that is missing.
    Missing(&'static str),
    /// No scopes header: a fine-grained token or an app; probe instead.
    Unknown,
}

/// Exact scope match: `repo` for repository runners, `admin:org` for organisation runners.
/// Substrings (`public_repo`, `repo:status`) do not count.
pub fn scope_verdict(scopes: Option<&[String]>, scope: &Scope) -> ScopeVerdict {
    let need = match scope {
        Scope::Repo { .. } => "repo",
        Scope::Org { .. } => "admin:org",
    };
    match scopes {
        None => ScopeVerdict::Unknown,
        Some(list) if list.iter().any(|s| s == need) => ScopeVerdict::Ok,
        Some(_) => ScopeVerdict::Missing(need),
    }
}

impl DateSample {
    /// The local clock's offset from GitHub's, in seconds (positive: local is ahead).
    pub fn offset_secs(&self) -> f64 {
        (self.local - self.server).num_milliseconds() as f64 / 1000.0
    }
}
