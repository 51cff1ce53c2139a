//! GitHub App authentication: an RS256 JWT signed with the App's key (with the clock
//! offset the supervisor measures, so a skewed laptop still gets tokens), the
//! installation found from the repository or organisation, and installation access
//! tokens cached and refreshed under a single flight well before they expire.
//!
//! It must not: log or return the key, the JWT or a token except to send them to the
//! configured API origin.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{classify, redact_url, Answer, GithubClient, GithubError};
use crate::config::{AppConfig, Scope, Secret};

/// A JWT is valid this long (GitHub allows at most 10 minutes).
const JWT_LIFETIME: i64 = 540;
/// `iat` this far in the past, as GitHub recommends against clock drift.
const JWT_BACKDATE: i64 = 60;

/// The installation, as GitHub describes it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Installation {
    pub id: u64,
    #[serde(default)]
    pub app_slug: Option<String>,
    #[serde(default)]
    pub permissions: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub repository_selection: Option<String>,
    #[serde(default)]
    pub suspended_at: Option<String>,
}

#[derive(Clone)]
struct Cached {
    token: Secret,
    /// When GitHub says it expires, on our monotonic clock.
    expires: Instant,
    lifetime: Duration,
}

/// A GitHub App's credentials and its current installation token.
pub struct AppAuth {
    app_id: u64,
    key: jsonwebtoken::EncodingKey,
    installation_id: Mutex<Option<u64>>,
    installation: Mutex<Option<Installation>>,
    /// The single flight: whoever holds it refreshes; the others wait and reuse.
    cached: tokio::sync::Mutex<Option<Cached>>,
    /// The local clock's offset from true time (seconds, positive: ahead), as measured.
    offset: Mutex<Option<f64>>,
}

#[derive(Serialize)]
struct Claims {
    iat: i64,
    exp: i64,
    /// The App's ID, as an integer (GitHub also takes the client ID as a string).
    iss: u64,
}

impl AppAuth {
    /// From the configuration (the key was checked when the configuration was read).
    pub fn new(cfg: &AppConfig) -> Result<AppAuth, GithubError> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(cfg.private_key.expose().as_bytes())
            .map_err(|e| GithubError::Unauthorized {
                message: format!("the GitHub App's private key is not usable: {e}"),
            })?;
        Ok(AppAuth {
            app_id: cfg.app_id,
            key,
            installation_id: Mutex::new(cfg.installation_id),
            installation: Mutex::new(None),
            cached: tokio::sync::Mutex::new(None),
            offset: Mutex::new(None),
        })
    }

    /// The measured clock offset (seconds, positive: the local clock is ahead).
    pub fn set_offset(&self, secs: f64) {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner()) = Some(secs);
    }

    fn offset(&self, gh: &GithubClient) -> f64 {
        self.offset
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .or_else(|| gh.last_date().map(|d| d.offset_secs()))
            .unwrap_or(0.0)
    }

    /// A JWT for the App, its times on GitHub's clock.
    fn jwt(&self, gh: &GithubClient) -> Result<Secret, GithubError> {
        let now = crate::os::clocks::wall_now().timestamp() - self.offset(gh).round() as i64;
        let claims = Claims {
            iat: now - JWT_BACKDATE,
            exp: now + JWT_LIFETIME,
            iss: self.app_id,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map(Secret::new)
        .map_err(|e| GithubError::Unauthorized {
            message: format!("cannot sign the GitHub App's JWT: {e}"),
        })
    }

    /// The installation as last looked up.
    pub fn installation(&self) -> Option<Installation> {
        self.installation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forget the cached token (GitHub refused it).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    /// The installation token: the cached one while more than a sixth of its life is
    /// left (10 minutes of GitHub's hour), else a new one. One request for all callers.
    pub async fn token(&self, gh: &GithubClient) -> Result<Secret, GithubError> {
        let mut g = self.cached.lock().await;
        if let Some(c) = &*g {
            if Instant::now() + c.lifetime / 6 < c.expires {
                return Ok(c.token.clone());
            }
        }
        let (token, left) = self.fetch(gh).await?;
        tracing::info!(
            event = "installation_token",
            expires_in_s = left.as_secs(),
            "GitHub App: new installation token"
        );
        *g = Some(Cached {
            token: token.clone(),
            expires: Instant::now() + left,
            lifetime: left,
        });
        Ok(token)
    }

    /// Look the installation up (from the scope, or by the configured id), refusing a
    /// suspended one.
    pub async fn lookup(&self, gh: &GithubClient) -> Result<Installation, GithubError> {
        let url = format!("{}{}/installation", gh.base, gh.scope.api_path());
        let a = match gh.jwt_request(self, Method::GET, &url, None).await {
            Ok(a) => a,
            Err(GithubError::NotFound { .. }) => {
                return Err(GithubError::Unauthorized {
                    message: format!(
                        "the GitHub App {} is not installed on {} (or its installation does not include it): install it there (the App's page > Install App)",
                        self.app_id,
                        gh.scope.web_path()
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        let inst: Installation = super::decode(&a.body)?;
        *self.installation.lock().unwrap_or_else(|p| p.into_inner()) = Some(inst.clone());
        if let Some(at) = &inst.suspended_at {
            return Err(GithubError::Unauthorized {
                message: format!(
                    "the GitHub App's installation {} is suspended (since {at}): unsuspend it in the installation's settings",
                    inst.id
                ),
            });
        }
        Ok(inst)
    }

    fn configured_id(&self) -> Option<u64> {
        *self
            .installation_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A new installation token, and how long it lives: its `expires_at` against the
    /// answer's own `Date`, both GitHub's clock (ours may be off, or jump).
    async fn fetch(&self, gh: &GithubClient) -> Result<(Secret, Duration), GithubError> {
        let id = match self.configured_id() {
            Some(id) => id,
            None => {
                let inst = self.lookup(gh).await?;
                *self
                    .installation_id
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(inst.id);
                inst.id
            }
        };
        let url = format!("{}/app/installations/{id}/access_tokens", gh.base);
        let a = gh
            .jwt_request(self, Method::POST, &url, None)
            .await
            .map_err(|e| match e {
                GithubError::Forbidden { message, .. } | GithubError::NotFound { message } => {
                    GithubError::Unauthorized {
                        message: format!(
                            "GitHub refused an installation token for installation {id}: {message}"
                        ),
                    }
                }
                other => other,
            })?;
        #[derive(Deserialize)]
        struct Tok {
            token: String,
            expires_at: DateTime<Utc>,
        }
        let t: Tok = super::decode(&a.body)?;
        let now = a
            .headers
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|| {
                crate::os::clocks::wall_now()
                    - chrono::Duration::milliseconds((self.offset(gh) * 1000.0) as i64)
            });
        let left = (t.expires_at - now)
            .to_std()
            .unwrap_or(Duration::from_secs(60));
        Ok((Secret::new(t.token), left))
    }

    /// GitHub rejected the JWT's times: learn the offset from its `Date` and sign again.
    pub(super) fn learn_offset(&self, a: &Answer) -> bool {
        let Some(server) = a
            .headers
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        else {
            return false;
        };
        let off = (crate::os::clocks::wall_now() - server.with_timezone(&Utc)).num_milliseconds()
            as f64
            / 1000.0;
        tracing::warn!(event = "jwt_clock_retry", 
            offset_s = format!("{off:+.1}"),
            "GitHub rejected the App's JWT for its times: signing with the offset from GitHub's Date header"
        );
        self.set_offset(off);
        true
    }
}

impl GithubClient {
    /// A request authenticated with the App's JWT (the App's own endpoints). A JWT
    /// refused for its times is signed again once with the offset GitHub's `Date` shows.
    pub(super) async fn jwt_request(
        &self,
        app: &AppAuth,
        method: Method,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, GithubError> {
        let mut relearned = false;
        let mut attempt = 0u32;
        loop {
            self.wait_gate().await;
            let jwt = app.jwt(self)?;
            let result = match self.send_with(&method, url, body.as_ref(), &jwt).await {
                Ok(a) => {
                    if a.status == StatusCode::UNAUTHORIZED && !relearned {
                        let v: serde_json::Value =
                            serde_json::from_slice(&a.body).unwrap_or_default();
                        if is_clock_rejection(v["message"].as_str().unwrap_or(""))
                            && app.learn_offset(&a)
                        {
                            relearned = true;
                            continue;
                        }
                    }
                    classify(a)
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(a) => return Ok(a),
                Err(GithubError::Transient(msg)) if attempt < self.retry.max_retries => {
                    let wait = self.retry.backoff(attempt);
                    tracing::warn!(event = "github_retry", %method, url = %redact_url(url), error = %msg, attempt, wait_ms = wait.as_millis() as u64, "GitHub App request failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// What the installation must grant for this scope.
pub fn needed_permission(scope: &Scope) -> &'static str {
    match scope {
        Scope::Repo { .. } => "administration",
        Scope::Org { .. } => "organization_self_hosted_runners",
    }
}

/// Whether GitHub's message says the JWT's `iat` or `exp` is off.
pub(super) fn is_clock_rejection(message: &str) -> bool {
    message.contains("'Issued at' claim") || message.contains("'Expiration time' claim")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_clock_rejections_are_recognised_and_permissions_named() {
        assert!(is_clock_rejection("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"));
        assert!(is_clock_rejection(
            "'Expiration time' claim ('exp') is too far in the future"
        ));
        assert!(!is_clock_rejection("Bad credentials"));
        let repo = Scope::Repo {
            owner: "o".into(),
            repo: "r".into(),
        };
        assert_eq!(needed_permission(&repo), "administration");
        assert_eq!(
            needed_permission(&Scope::Org { org: "o".into() }),
            "organization_self_hosted_runners"
        );
    }
}
