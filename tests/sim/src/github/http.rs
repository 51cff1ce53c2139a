//! HTTP plumbing: the accept loop, one request's context, injected faults, the call log, and the shapes of answers (JSON, empty, GitHub's basic-error and validation-error bodies).

use super::*;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Per-connection control: lets a handler reset its own connection.
pub(super) struct ConnCtl {
    fd: i32,
    abort: Notify,
}

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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

pub(super) type Resp = Response<Full<Bytes>>;

pub(super) struct Ctx {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: HashMap<String, String>,
    pub(super) headers: hyper::HeaderMap,
    pub(super) body: Bytes,
}

impl Ctx {
    pub(super) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

pub(super) async fn handle(shared: Arc<Shared>, ctl: Arc<ConnCtl>, req: Request<Incoming>) -> Resp {
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
    // The scale-set service may be told to live under a prefix (`ScaleSetOptions::service_path`).
    let path = super::scaleset::strip_service_path(&shared.opts.scaleset, &path);
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
            FaultKind::Silent => {
                // Headers promising a body, then silence on an open connection.
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: 64\r\n\r\n";
                // SAFETY: the fd belongs to this connection's TcpStream, alive until the
                // connection ends; hyper writes nothing while this handler is pending.
                let fd = unsafe { BorrowedFd::borrow_raw(ctl.fd) };
                let _ = nix::unistd::write(fd, head);
                log_call(&shared, &ctx, 200);
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
    } else if let Some(resp) = super::scaleset::route(&shared, &ctx, &segs).await {
        resp
    } else if let Some(resp) = super::codeload::route(&shared, &ctx, &segs).await {
        resp
    } else if let ["actions", "runner", "releases", "download", tag, file] = segs[..] {
        super::releases::serve(&shared, tag, file)
    } else if segs == ["actions", "runner-registration"] && ctx.method == Method::POST {
        runner_registration(&shared, &ctx)
    } else if let Some(resp) = super::app::route(&shared, &ctx, &segs) {
        resp
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

pub(super) fn take_fault(
    s: &mut State,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<FaultKind> {
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

pub(super) fn log_call(shared: &Shared, ctx: &Ctx, status: u16) {
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
        query: ctx
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        max_capacity: ctx.header("x-scalesetmaxcapacity"),
    };
    shared.lock().calls.push(call);
    shared.changed.notify_waiters();
}

/// Add the headers every GitHub answer carries, log the call, and notify waiters.
pub(super) fn finish(
    shared: &Shared,
    ctx: &Ctx,
    mut resp: Resp,
    extra: Vec<(&'static str, String)>,
) -> Resp {
    // The Actions service (runner and scale-set sides) sends no rate-limit headers.
    let is_rest = !ctx.path.contains("/_sim") && !super::scaleset::is_service_path(&ctx.path);
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

pub(super) fn json_resp(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

pub(super) fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// GitHub's `basic-error` body.
pub(super) fn basic_error(status: StatusCode, message: &str) -> Resp {
    json_resp(
        status,
        &json!({"message": message, "documentation_url": DOCS, "status": status.as_u16().to_string()}),
    )
}

/// GitHub's `validation-error-simple` body (422).
pub(super) fn validation_error(message: &str, errors: Vec<String>) -> Resp {
    json_resp(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"message": message, "documentation_url": DOCS, "errors": errors}),
    )
}
