//! The control socket: a small HTTP/1.1 API on a Unix socket that the running supervisor
//! serves and `supervisor status`, `breaker reset` and `drain` use. It is the single-host
//! form of a runner-management API: list the runners (the status), stop them (drain),
//! replace idle ones (recycle), and clear an open circuit breaker.
//!
//! | method and path               | answer                                                  |
//! |-------------------------------|---------------------------------------------------------|
//! | `GET /v1/status`              | 200, the status ([`crate::status::SCHEMA`])             |
//! | `GET /v1/runners`             | 200, `[{slot, state, runner, job, job_started_at}]`     |
//! | `POST /v1/breaker/reset[?slot=N]` | 200, `{"reset": [slots]}`; 400 for a bad slot        |
//! | `POST /v1/drain`              | 202, `{"mode": "drain", "started": bool}`               |
//! | `POST /v1/recycle[?slot=N]`   | 200, `{"recycled": [slots that were idle]}`             |
//! | `POST /v1/runner/upgrade`     | 202, `{"checking": true}`: look for a newer runner now  |
//! | `POST /v1/runner/retry`       | 200, `{"cleared": [versions]}`: forget bad-version marks |
//!
//! Errors are `{"error": "..."}` with 400, 404 or 405.
//! The socket is bound under a temporary name, given mode 0660, then renamed into place,
//! so it is never reachable with looser permissions; nothing listens on TCP.
//!
//! It must not: act by itself. It only calls the [`Api`] the supervisor gives it.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::status::StatusFile;

/// What the control socket can ask of the running supervisor.
pub trait Api: Send + Sync + 'static {
    /// The status now.
    fn status(&self) -> StatusFile;
    /// Close the breaker of `slot`, or of every slot; the slots reset.
    fn reset_breaker(&self, slot: Option<usize>) -> Result<Vec<usize>, String>;
    /// Start draining; false when the supervisor was already stopping.
    fn drain(&self) -> bool;
    /// Replace the idle listener of `slot`, or of every idle slot; the slots asked.
    fn recycle(&self, slot: Option<usize>) -> Result<Vec<usize>, String>;
    /// Look for a newer runner release now (the autopilot upgrades between jobs, canary
    /// first); an error when `[runner] auto_update` is not `on`.
    fn runner_upgrade(&self) -> Result<(), String>;
    /// Forget the versions marked bad; the ones cleared.
    fn runner_retry(&self) -> Vec<String>;
    /// A job hook's report (`supervisor hook`): taken only for the runner of one of this
    /// supervisor's listening or busy slots.
    fn job_hook(
        &self,
        hook: crate::jobs::hooks::Hook,
        id: crate::jobs::JobIdentity,
    ) -> Result<usize, String>;
    /// The job records (only the lost ones with `lost_only`).
    fn jobs(&self, lost_only: bool) -> Result<Vec<crate::jobs::JobRecord>, String>;
}

/// A request handler: method, path, query → status and JSON body.
pub type Handler =
    Arc<dyn Fn(&Method, &str, &str) -> (StatusCode, String, &'static str) + Send + Sync>;

/// The control API's routes over `api`.
pub fn routes(api: Arc<dyn Api>) -> Handler {
    Arc::new(move |method: &Method, path: &str, query: &str| {
        let json = "application/json";
        let slot = match query_slot(query).or_else(|e| {
            if path.starts_with("/v1/hooks/") || path == "/v1/jobs" {
                Ok(None)
            } else {
                Err(e)
            }
        }) {
            Ok(s) => s,
            Err(e) => return (StatusCode::BAD_REQUEST, error(&e), json),
        };
        if let Some(word) = path.strip_prefix("/v1/hooks/") {
            return hook_route(&*api, method, word, query);
        }
        match (method, path) {
            (&Method::GET, "/v1/jobs") => {
                let lost = query
                    .split('&')
                    .any(|p| p == "lost" || p == "lost=1" || p == "lost=true");
                match api.jobs(lost) {
                    Ok(v) => (StatusCode::OK, to_json(&v), json),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, error(&e), json),
                }
            }
            (&Method::GET, "/v1/status") => (StatusCode::OK, to_json(&api.status()), json),
            (&Method::GET, "/v1/runners") => {
                let runners: Vec<_> = api
                    .status()
                    .slots
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| {
                        serde_json::json!({
                            "slot": i, "state": s.state, "runner": s.runner,
                            "job": s.job, "job_started_at": s.job_started_at,
                        })
                    })
                    .collect();
                (StatusCode::OK, to_json(&runners), json)
            }
            (&Method::POST, "/v1/breaker/reset") => match api.reset_breaker(slot) {
                Ok(v) => (
                    StatusCode::OK,
                    to_json(&serde_json::json!({ "reset": v })),
                    json,
                ),
                Err(e) => (StatusCode::BAD_REQUEST, error(&e), json),
            },
            (&Method::POST, "/v1/drain") => {
                let started = api.drain();
                (
                    StatusCode::ACCEPTED,
                    to_json(&serde_json::json!({ "mode": "drain", "started": started })),
                    json,
                )
            }
            (&Method::POST, "/v1/recycle") => match api.recycle(slot) {
                Ok(v) => (
                    StatusCode::OK,
                    to_json(&serde_json::json!({ "recycled": v })),
                    json,
                ),
                Err(e) => (StatusCode::BAD_REQUEST, error(&e), json),
            },
            (&Method::POST, "/v1/runner/upgrade") => match api.runner_upgrade() {
                Ok(()) => (
                    StatusCode::ACCEPTED,
                    to_json(&serde_json::json!({ "checking": true })),
                    json,
                ),
                Err(e) => (StatusCode::BAD_REQUEST, error(&e), json),
            },
            (&Method::POST, "/v1/runner/retry") => (
                StatusCode::OK,
                to_json(&serde_json::json!({ "cleared": api.runner_retry() })),
                json,
            ),
            (
                _,
                "/v1/status" | "/v1/runners" | "/v1/breaker/reset" | "/v1/drain" | "/v1/recycle"
                | "/v1/runner/upgrade" | "/v1/runner/retry" | "/v1/jobs",
            ) => (
                StatusCode::METHOD_NOT_ALLOWED,
                error(&format!("{method} is not allowed on {path}")),
                json,
            ),
            _ => (
                StatusCode::NOT_FOUND,
                error(&format!("no such endpoint: {path}")),
                json,
            ),
        }
    })
}

/// `POST /v1/hooks/job-started` or `job-completed`, the identity in the query.
fn hook_route(
    api: &dyn Api,
    method: &Method,
    word: &str,
    query: &str,
) -> (StatusCode, String, &'static str) {
    use crate::jobs::hooks::Hook;
    let json = "application/json";
    let hook = match word {
        "job-started" => Hook::Started,
        "job-completed" => Hook::Completed,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                error(&format!("no such hook: {word}")),
                json,
            )
        }
    };
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            error(&format!("{method} is not allowed on /v1/hooks/{word}")),
            json,
        );
    }
    let Some(id) = crate::jobs::JobIdentity::from_query(query) else {
        return (
            StatusCode::BAD_REQUEST,
            error("the report names no runner or no repository"),
            json,
        );
    };
    match api.job_hook(hook, id) {
        Ok(slot) => (
            StatusCode::OK,
            to_json(&serde_json::json!({ "slot": slot })),
            json,
        ),
        Err(e) => (StatusCode::NOT_FOUND, error(&e), json),
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

fn error(e: &str) -> String {
    to_json(&serde_json::json!({ "error": e }))
}

fn query_slot(query: &str) -> Result<Option<usize>, String> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if let Some(v) = pair.strip_prefix("slot=") {
            return v
                .parse()
                .map(Some)
                .map_err(|_| format!("slot={v:?} is not a slot number"));
        }
    }
    Ok(None)
}

/// Bind the control socket at `path` (mode 0660, atomically in place). A socket left by
/// a supervisor that is gone is replaced; a live one is an error.
pub fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the directory of the control socket {}: {e}",
                path.display()
            )
        })?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another supervisor answers on the control socket {}; stop it, or set control.socket",
            path.display()
        );
    }
    let tmp = temp_name(path);
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot bind the control socket {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow::anyhow!(
                "cannot put the control socket in place at {}: {e}",
                path.display()
            )
        })?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(l)?)
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "control.sock".into());
    path.with_file_name(format!(".{name}.{}", std::process::id()))
}

/// Serve `handler` on `listener` until cancelled; then remove the socket at `path`.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    handler: Handler,
    cancel: CancellationToken,
) {
    serve(|| listener.accept(), handler, cancel, "control socket").await;
    let _ = std::fs::remove_file(&path);
}

/// Serve `handler` on a TCP listener until cancelled (the metrics endpoint).
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    handler: Handler,
    cancel: CancellationToken,
) {
    serve(|| listener.accept(), handler, cancel, "metrics").await;
}

/// Accept connections with `accept` and serve each, until cancelled.
async fn serve<S, P, A, F>(accept: F, handler: Handler, cancel: CancellationToken, what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> A,
    A: std::future::Future<Output = std::io::Result<(S, P)>>,
{
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = accept() => match r {
                Ok((s, _)) => { tokio::spawn(serve_conn(s, handler.clone())); }
                Err(e) => {
                    tracing::warn!(event = "accept_failed", error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn serve_conn<S>(stream: S, handler: Handler)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (status, body, ctype) = handler(
            req.method(),
            req.uri().path(),
            req.uri().query().unwrap_or(""),
        );
        let resp = Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default();
        async move { Ok::<_, Infallible>(resp) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
}

/// Why a request to the control socket got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no supervisor is running: nothing answers on the control socket {path} ({why})")]
    NotRunning { path: String, why: String },
    #[error("permission denied on the control socket {path}: run this as the supervisor's user, or as a member of its group (the socket is mode 0660)")]
    Denied { path: String },
    #[error("the control socket {path} gave no valid answer: {why}")]
    Bad { path: String, why: String },
}

/// Send `method target` to the control socket at `path`; the status and the body.
pub fn request(path: &Path, method: &str, target: &str) -> Result<(u16, String), ClientError> {
    let p = path.display().to_string();
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::Denied { path: p.clone() },
        _ => ClientError::NotRunning {
            path: p.clone(),
            why: e.to_string(),
        },
    })?;
    let bad = |why: String| ClientError::Bad {
        path: p.clone(),
        why,
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: supervisor\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| bad(e.to_string()))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers".into()))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("no status line: {:?}", head.lines().next())))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_queries_are_numbers() {
        assert_eq!(query_slot(""), Ok(None));
        assert_eq!(query_slot("slot=2"), Ok(Some(2)));
        assert!(query_slot("slot=x").unwrap_err().contains("\"x\""));
    }
}
