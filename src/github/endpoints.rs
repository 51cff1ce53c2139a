//! The REST endpoints: the token's user, JIT configs, registration and remove tokens, and
//! listing, getting and deleting runners, for repo and org scope.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::transport::same_origin;
use super::{
    decode, next_link, parse_token_expiration, urlencode, Auth, AuthToken, GithubClient,
    GithubError, JitConfig, Runner, RunnerApplication, TokenInfo, VersionDeprecation,
};
use crate::config::Secret;

impl GithubClient {
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

    /// Download `url` (a runner release: no credentials are sent, redirects are followed)
    /// into `sink`, chunk by chunk; refused past `max_bytes` or `timeout`. The bytes read.
    pub async fn download(
        &self,
        url: &str,
        max_bytes: u64,
        timeout: std::time::Duration,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, GithubError> {
        let transient = |what: String| GithubError::Transient(what);
        let fetch = async {
            let mut resp = self
                .downloads
                .get(url)
                .send()
                .await
                .map_err(|e| transient(format!("cannot download {url}: {e}")))?;
            if !resp.status().is_success() {
                return Err(transient(format!("downloading {url}: {}", resp.status())));
            }
            if resp.content_length().is_some_and(|n| n > max_bytes) {
                return Err(transient(format!("{url} is larger than {max_bytes} bytes")));
            }
            let mut n = 0u64;
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| transient(format!("downloading {url}: {e}")))?
            {
                n += chunk.len() as u64;
                if n > max_bytes {
                    return Err(transient(format!("{url} is larger than {max_bytes} bytes")));
                }
                sink(&chunk).map_err(|e| transient(format!("writing {url}: {e}")))?;
            }
            Ok(n)
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| transient(format!("downloading {url} took longer than {timeout:?}")))?
    }

    /// `GET …/actions/runners/deprecations/{version}`: the version's deadlines, or `None`
    /// when GitHub answers 404 (a version it does not know, or a server without the
    /// endpoint, such as an older GHES): "unknown", not an error.
    pub async fn runner_deprecation(
        &self,
        version: &str,
    ) -> Result<Option<VersionDeprecation>, GithubError> {
        let path = format!("/actions/runners/deprecations/{version}");
        match self.request(Method::GET, &self.url(&path), None).await {
            Ok(a) => decode(&a.body).map(Some),
            Err(GithubError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /repos/{repository}/commits/{ref}`: the commit a ref (an action's tag or
    /// branch) names now.
    pub async fn commit_sha(&self, repository: &str, rf: &str) -> Result<String, GithubError> {
        #[derive(serde::Deserialize)]
        struct Commit {
            sha: String,
        }
        let url = format!("{}/repos/{repository}/commits/{rf}", self.base);
        let a = self.request(Method::GET, &url, None).await?;
        let c: Commit = decode(&a.body)?;
        Ok(c.sha)
    }

    /// Where an action's archive at `sha` is (`GET /repos/{repository}/tarball/{sha}`,
    /// a redirect to codeload), for [`Self::download`]: public action repositories need no
    /// credentials, and none are sent.
    pub fn tarball_url(&self, repository: &str, sha: &str) -> String {
        format!("{}/repos/{repository}/tarball/{sha}", self.base)
    }

    /// The jobs of one attempt of a run (`GET /repos/{repository}/actions/runs/{run_id}/
    /// attempts/{attempt}/jobs`, `actions-runs-openapi.json`): where a job's id is found
    /// from its hook's identity (the job whose `runner_name` is ours). One page of 100.
    pub async fn attempt_jobs(
        &self,
        repository: &str,
        run_id: u64,
        attempt: u32,
    ) -> Result<Vec<AttemptJob>, GithubError> {
        let url = format!(
            "{}/repos/{repository}/actions/runs/{run_id}/attempts/{attempt}/jobs?per_page=100",
            self.base
        );
        let a = self.request(Method::GET, &url, None).await?;
        let page: AttemptJobs = decode(&a.body)?;
        Ok(page.jobs)
    }
}

impl GithubClient {
    /// `GET /repos/{repository}/actions/runs/{run_id}`: the run's status and its latest
    /// attempt (`actions-runs-openapi.json`).
    pub async fn workflow_run(
        &self,
        repository: &str,
        run_id: u64,
    ) -> Result<WorkflowRun, GithubError> {
        let url = format!(
            "{}/repos/{repository}/actions/runs/{run_id}?exclude_pull_requests=true",
            self.base
        );
        let a = self.request(Method::GET, &url, None).await?;
        decode(&a.body)
    }

    /// `POST /repos/{repository}/actions/jobs/{job_id}/rerun`: re-run a job of a completed
    /// run (201; 403 without the Actions write permission, or when the run has not
    /// completed). It creates the run's next attempt.
    pub async fn rerun_job(&self, repository: &str, job_id: u64) -> Result<(), GithubError> {
        let url = format!(
            "{}/repos/{repository}/actions/jobs/{job_id}/rerun",
            self.base
        );
        self.request(Method::POST, &url, None).await.map(|_| ())
    }
}

/// A workflow run, as far as the supervisor reads it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct WorkflowRun {
    pub id: u64,
    /// `queued`, `in_progress`, `completed`, ...
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub conclusion: Option<String>,
    /// The run's latest attempt.
    #[serde(default)]
    pub run_attempt: Option<u32>,
}

/// One page of an attempt's jobs.
#[derive(Debug, Deserialize)]
struct AttemptJobs {
    jobs: Vec<AttemptJob>,
}

/// A job of an attempt, as far as the supervisor reads it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AttemptJob {
    pub id: u64,
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub conclusion: Option<String>,
    #[serde(default)]
    pub runner_name: Option<String>,
}
