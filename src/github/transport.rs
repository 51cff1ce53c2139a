//! Sending a request: authentication (a token, or the App's installation token), the
//! rate-limit gate every slot shares, retries with back-off, typed errors from GitHub's
//! answers, request counters and the `Date` header; and the URL helpers (`Link` paging
//! stays on the API's origin).
//!
//! It must not: send while the gate is closed, retry in a tight loop, or log a query.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use tokio::time::Instant;

use super::{rate_limit_wait, Auth, DateSample, GithubClient, GithubError, RateLimit};
use crate::config::{Scope, Secret};

/// An answer from GitHub, read whole.
pub(crate) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: bytes::Bytes,
}

impl GithubClient {
    /// Wait until the rate-limit gate opens.
    pub(super) async fn wait_gate(&self) {
        let until = *self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = until {
            tokio::time::sleep_until(t).await;
        }
    }

    /// Close the gate for `wait` (never shorten it).
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
            Auth::None => {
                return Err(GithubError::Unauthorized {
                    message: super::NO_CREDENTIALS.into(),
                })
            }
        };
        self.send_with(method, url, body, &bearer).await
    }

    pub(super) async fn send_with(
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
                local: crate::os::clocks::wall_now(),
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
    pub(super) async fn request(
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

    /// The URL of `tail` under this client's scope.
    pub(super) fn url(&self, tail: &str) -> String {
        format!("{}{}{}", self.base, self.scope.api_path(), tail)
    }
}

/// The JSON body of an answer, typed.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GithubError> {
    serde_json::from_slice(body).map_err(|e| GithubError::Decode(e.to_string()))
}

/// Turn a non-success answer into a typed error.
pub(crate) fn classify(a: Answer) -> Result<Answer, GithubError> {
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
        crate::os::clocks::wall_now().timestamp(),
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

/// A transport error with its OS reason (reset, refused...).
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

/// A URL without its query, for logs and labels.
pub(crate) fn redact_url(u: &str) -> &str {
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

/// `scheme://host[:port]` of a URL.
fn origin(u: &str) -> &str {
    let after = u.find("://").map(|i| i + 3).unwrap_or(0);
    let end = u[after..].find('/').map(|i| i + after).unwrap_or(u.len());
    &u[..end]
}

/// Whether two URLs share scheme, host and port.
pub(super) fn same_origin(a: &str, b: &str) -> bool {
    origin(a).eq_ignore_ascii_case(origin(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::test_headers as headers;

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
