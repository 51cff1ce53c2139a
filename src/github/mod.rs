//! The GitHub REST client: runner endpoints for repo and org scope, typed errors,
//! rate-limit handling as GitHub documents it, and retries with jittered back-off.
//!
//! Every connection carries TCP keepalive (idle, interval, probes) and a TCP user
//! timeout ([`Keepalive::for_own`]), set on the socket by hyper-util through socket2;
//! [`crate::sockets::own_connections`] reads them back. The token is sent only to the configured API origin, never logged.
//! It must not: retry in a tight loop, or follow a `Link` to another origin.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::config::{Config, Scope, Secret};
use crate::sockets::Keepalive;

/// The `User-Agent` we send (GitHub rejects requests without one).
pub const USER_AGENT_VALUE: &str = concat!("runner-supervisor/", env!("CARGO_PKG_VERSION"));

pub mod app;
mod policy;
mod types;

pub use policy::*;
pub use types::*;

/// A GitHub client for one scope. Cheap to clone.
#[derive(Clone)]
pub struct GithubClient {
    http: reqwest::Client,
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
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

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
        let keepalive = Keepalive::for_own(&cfg.network);
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
        Ok(GithubClient {
            http,
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
            Auth::Token(_) => None,
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

    async fn wait_gate(&self) {
        let until = *self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = until {
            tokio::time::sleep_until(t).await;
        }
    }

    fn close_gate(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, GithubError> {
        let bearer = match &self.auth {
            Auth::Token(t) => t.clone(),
            Auth::App(a) => a.token(self).await?,
        };
        self.send_with(method, url, body, &bearer).await
    }

    async fn send_with(
        &self,
        method: &Method,
        url: &str,
        body: Option<&serde_json::Value>,
        bearer: &Secret,
    ) -> Result<Answer, GithubError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", bearer.expose())).map_err(|_| {
                GithubError::Unauthorized {
                    message: "the token has characters a header cannot carry".into(),
                }
            })?;
        auth.set_sensitive(true);
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(AUTHORIZATION, auth);
        if let Some(b) = body {
            req = req.json(b);
        }
        let endpoint = format!("{method} {}", self.endpoint(url));
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.stats.count(endpoint, "error".into());
                return Err(GithubError::Transient(describe_reqwest(&e)));
            }
        };
        let status = resp.status();
        self.stats.count(endpoint, status.as_u16().to_string());
        let headers = resp.headers().clone();
        if let Some(r) = rate_limit_of(&headers) {
            self.stats.set_rate_limit(r);
        }
        if let Some(date) = headers
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        {
            *self.last_date.lock().unwrap_or_else(|p| p.into_inner()) = Some(DateSample {
                server: date.with_timezone(&Utc),
                local: crate::clocks::wall_now(),
            });
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| GithubError::Transient(describe_reqwest(&e)))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Send with retries: transient failures back off; rate limits wait as asked.
    async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, GithubError> {
        let mut attempt = 0u32;
        let mut reauthed = false;
        loop {
            self.wait_gate().await;
            let result = match self.send_once(&method, url, body.as_ref()).await {
                Ok(a) => classify(a),
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(a) => return Ok(a),
                Err(e) => e,
            };
            // An installation token GitHub no longer takes (revoked, expired early): get a
            // new one and try once more.
            if let (GithubError::Unauthorized { .. }, Auth::App(app), false) =
                (&err, &self.auth, reauthed)
            {
                app.invalidate().await;
                reauthed = true;
                continue;
            }
            if attempt >= self.retry.max_retries {
                return Err(err);
            }
            match &err {
                GithubError::Transient(msg) => {
                    let wait = self.retry.backoff(attempt);
                    tracing::warn!(event = "github_retry", %method, url = %redact_url(url), error = %msg, attempt, wait_ms = wait.as_millis() as u64, "GitHub request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                GithubError::RateLimited {
                    retry_after,
                    status,
                } => {
                    // Back off beyond what was asked on each further attempt.
                    let wait = *retry_after
                        + if attempt > 0 {
                            self.retry.backoff(attempt)
                        } else {
                            Duration::ZERO
                        };
                    if wait > self.retry.max_rate_limit_wait {
                        self.close_gate(wait);
                        return Err(err);
                    }
                    tracing::warn!(
                        event = "github_rate_limit",
                        status,
                        wait_s = wait.as_secs(),
                        "GitHub rate limit; waiting before the next request"
                    );
                    self.close_gate(wait);
                }
                _ => return Err(err),
            }
            attempt += 1;
        }
    }

    /// The endpoint a URL names, as a metrics label: the base and query dropped, the
    /// scope's path as `{scope}`, numeric ids as `{id}`.
    fn endpoint(&self, url: &str) -> String {
        let path = redact_url(url.strip_prefix(&self.base).unwrap_or(url));
        let scope = self.scope.api_path();
        let (head, path) = match path.strip_prefix(&scope) {
            Some(rest) => (
                match self.scope {
                    Scope::Repo { .. } => "/repos/:owner/:repo",
                    Scope::Org { .. } => "/orgs/:org",
                },
                rest,
            ),
            None => ("", path),
        };
        let tail: Vec<&str> = path
            .split('/')
            .map(|seg| {
                if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                    ":id"
                } else {
                    seg
                }
            })
            .collect();
        format!("{head}{}", tail.join("/"))
    }

    fn url(&self, tail: &str) -> String {
        format!("{}{}{}", self.base, self.scope.api_path(), tail)
    }

    /// `GET /user`: is the token valid, what scopes, when does it expire. As a GitHub
    /// App: the installation (JWT), and an installation token.
    pub async fn get_user(&self) -> Result<TokenInfo, GithubError> {
        if let Auth::App(app) = &self.auth {
            let inst = app.lookup(self).await?;
            app.token(self).await?;
            return Ok(TokenInfo {
                login: format!("{}[bot]", inst.app_slug.unwrap_or_else(|| "app".into())),
                scopes: None,
                expires_at: None,
            });
        }
        let a = self
            .request(Method::GET, &format!("{}/user", self.base), None)
            .await?;
        let v: serde_json::Value = decode(&a.body)?;
        let scopes = a
            .headers
            .get("x-oauth-scopes")
            .and_then(|v| v.to_str().ok())
            .map(|s| {
                s.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            });
        let expires_at = a
            .headers
            .get("github-authentication-token-expiration")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_token_expiration);
        Ok(TokenInfo {
            login: v["login"].as_str().unwrap_or("").to_string(),
            scopes,
            expires_at,
        })
    }

    /// `POST …/actions/runners/generate-jitconfig`.
    pub async fn generate_jitconfig(
        &self,
        name: &str,
        labels: &[String],
        group_id: u64,
        work_folder: &str,
    ) -> Result<JitConfig, GithubError> {
        let body = json!({"name": name, "runner_group_id": group_id, "labels": labels, "work_folder": work_folder});
        let a = self
            .request(
                Method::POST,
                &self.url("/actions/runners/generate-jitconfig"),
                Some(body),
            )
            .await?;
        decode(&a.body)
    }

    async fn auth_token(&self, kind: &str) -> Result<AuthToken, GithubError> {
        #[derive(Deserialize)]
        struct Raw {
            token: String,
            expires_at: String,
        }
        let a = self
            .request(
                Method::POST,
                &self.url(&format!("/actions/runners/{kind}")),
                None,
            )
            .await?;
        let raw: Raw = decode(&a.body)?;
        let expires_at = DateTime::parse_from_rfc3339(&raw.expires_at)
            .map_err(|e| GithubError::Decode(format!("expires_at {:?}: {e}", raw.expires_at)))?
            .with_timezone(&Utc);
        Ok(AuthToken {
            token: Secret::new(raw.token),
            expires_at,
        })
    }

    /// `POST …/actions/runners/registration-token`.
    pub async fn registration_token(&self) -> Result<AuthToken, GithubError> {
        self.auth_token("registration-token").await
    }

    /// `POST …/actions/runners/remove-token`.
    pub async fn remove_token(&self) -> Result<AuthToken, GithubError> {
        self.auth_token("remove-token").await
    }

    /// `GET …/actions/runners`, every page, optionally filtered by exact name.
    pub async fn list_runners(&self, name: Option<&str>) -> Result<Vec<Runner>, GithubError> {
        #[derive(Deserialize)]
        struct Page {
            #[allow(dead_code)]
            total_count: u64,
            runners: Vec<Runner>,
        }
        let mut url = self.url("/actions/runners?per_page=100");
        if let Some(n) = name {
            url.push_str("&name=");
            url.push_str(&urlencode(n));
        }
        let mut out = Vec::new();
        for _ in 0..1000 {
            let a = self.request(Method::GET, &url, None).await?;
            let page: Page = decode(&a.body)?;
            out.extend(page.runners);
            match next_link(&a.headers) {
                // Never send the token to another origin.
                Some(next) if same_origin(&next, &self.base) => url = next,
                _ => break,
            }
        }
        Ok(out)
    }

    /// `GET …/actions/runners/{id}`.
    pub async fn get_runner(&self, id: u64) -> Result<Runner, GithubError> {
        let a = self
            .request(
                Method::GET,
                &self.url(&format!("/actions/runners/{id}")),
                None,
            )
            .await?;
        decode(&a.body)
    }

    /// `DELETE …/actions/runners/{id}`. A runner already gone counts as deleted.
    pub async fn delete_runner(&self, id: u64) -> Result<(), GithubError> {
        match self
            .request(
                Method::DELETE,
                &self.url(&format!("/actions/runners/{id}")),
                None,
            )
            .await
        {
            Ok(_) | Err(GithubError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET …/actions/runners/downloads`.
    pub async fn runner_downloads(&self) -> Result<Vec<RunnerApplication>, GithubError> {
        let a = self
            .request(Method::GET, &self.url("/actions/runners/downloads"), None)
            .await?;
        decode(&a.body)
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GithubError> {
    serde_json::from_slice(body).map_err(|e| GithubError::Decode(e.to_string()))
}

/// Turn a non-success answer into a typed error.
fn classify(a: Answer) -> Result<Answer, GithubError> {
    if a.status.is_success() {
        return Ok(a);
    }
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
    let message = v["message"]
        .as_str()
        .unwrap_or_else(|| a.status.canonical_reason().unwrap_or(""))
        .to_string();
    let code = a.status.as_u16();
    if let Some(wait) = rate_limit_wait(
        code,
        &a.headers,
        &message,
        crate::clocks::wall_now().timestamp(),
    ) {
        return Err(GithubError::RateLimited {
            status: code,
            retry_after: wait,
        });
    }
    Err(match code {
        401 => GithubError::Unauthorized { message },
        403 => GithubError::Forbidden {
            message,
            accepted: a
                .headers
                .get("x-accepted-github-permissions")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        },
        404 => GithubError::NotFound { message },
        409 => GithubError::Conflict { message },
        422 => GithubError::Validation {
            message,
            errors: v["errors"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
        500..=599 => GithubError::Transient(format!("{code} {message}")),
        _ => GithubError::Unexpected {
            status: code,
            message,
        },
    })
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The URL carries no secret; the error chain has the OS reason (reset, refused...).
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// The `x-ratelimit-*` headers, when an answer carries them.
fn rate_limit_of(h: &HeaderMap) -> Option<RateLimit> {
    let num = |k: &str| h.get(k)?.to_str().ok()?.trim().parse::<i64>().ok();
    Some(RateLimit {
        limit: num("x-ratelimit-limit")? as u64,
        remaining: num("x-ratelimit-remaining")? as u64,
        used: num("x-ratelimit-used").map(|v| v as u64),
        reset: num("x-ratelimit-reset")?,
        resource: h
            .get("x-ratelimit-resource")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    })
}

fn redact_url(u: &str) -> &str {
    u.split('?').next().unwrap_or(u)
}

/// Percent-encode a query value (RFC 3986 unreserved characters stay).
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `rel="next"` URL of a `Link` header.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        if rel.contains("rel=\"next\"") {
            Some(
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
            )
        } else {
            None
        }
    })
}

fn origin(u: &str) -> &str {
    let after = u.find("://").map(|i| i + 3).unwrap_or(0);
    let end = u[after..].find('/').map(|i| i + after).unwrap_or(u.len());
    &u[..end]
}

fn same_origin(a: &str, b: &str) -> bool {
    origin(a).eq_ignore_ascii_case(origin(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn rate_limit_rules() {
        let now = 1_000_000;
        let check = |status, h: &[(&'static str, &str)], msg| {
            rate_limit_wait(status, &headers(h), msg, now)
        };
        assert_eq!(
            check(429, &[("retry-after", "7")], ""),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            check(403, &[("retry-after", "3")], ""),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            check(
                403,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1000120")
                ],
                ""
            ),
            Some(Duration::from_secs(120))
        );
        assert_eq!(check(429, &[], ""), Some(Duration::from_secs(60)));
        assert_eq!(
            check(403, &[], "You have exceeded a secondary rate limit."),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            check(
                403,
                &[("x-ratelimit-remaining", "4999")],
                "Resource not accessible by personal access token"
            ),
            None
        );
        assert_eq!(check(500, &[("retry-after", "1")], ""), None);
    }

    #[test]
    fn backoff_is_bounded_and_never_tight() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 0..40 {
            let d = backoff(base, cap, attempt);
            let full = base.saturating_mul(1 << attempt.min(30)).min(cap);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn token_expiration_formats() {
        let d = parse_token_expiration("2027-10-12 09:00:00 UTC").unwrap();
        assert_eq!(d.to_rfc3339(), "2027-10-12T09:00:00+00:00");
        assert!(parse_token_expiration("2027-10-12 09:00:00 +0200").is_some());
        assert!(parse_token_expiration("soon").is_none());
    }

    #[test]
    fn next_link_and_origin() {
        let h = headers(&[("link", "<https://api.github.com/x?page=2>; rel=\"next\", <https://api.github.com/x?page=5>; rel=\"last\"")]);
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/x?page=2")
        );
        assert!(same_origin(
            "https://api.github.com/x?page=2",
            "https://api.github.com"
        ));
        assert!(!same_origin(
            "https://evil.example/x",
            "https://api.github.com"
        ));
    }
}
