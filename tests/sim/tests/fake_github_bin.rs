//! The `fake-github` binary: prints its address first, serves the API, and takes jobs and
//! faults through its admin endpoints.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn prints_its_address_and_obeys_the_admin_endpoints() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-github"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            "t0k",
            "--scopes",
            "repo",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = first
        .strip_prefix("fake-github listening on ")
        .expect(&first)
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"));
    let http = reqwest::Client::new();
    let get = |p: &str| {
        http.get(format!("{url}{p}"))
            .header("User-Agent", "t")
            .bearer_auth("t0k")
            .send()
    };

    let r = get("/user").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-oauth-scopes"], "repo");
    assert_eq!(get("/user").await.unwrap().status(), 200);

    // Jobs.
    let r = http
        .post(format!("{url}/_admin/jobs"))
        .json(&json!({"name": "e2e", "duration_ms": 10, "count": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let state: Value = http
        .get(format!("{url}/_admin/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["queued"], 3);

    // Latency.
    http.post(format!("{url}/_admin/faults"))
        .json(&json!({"path": "/user", "kind": {"type": "latency", "ms": 300}}))
        .send()
        .await
        .unwrap();
    let t = Instant::now();
    assert_eq!(get("/user").await.unwrap().status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // A connection reset.
    http.post(format!("{url}/_admin/faults"))
        .json(&json!({"path": "/user", "kind": {"type": "reset"}}))
        .send()
        .await
        .unwrap();
    let e = get("/user").await.unwrap_err();
    assert!(!e.is_status(), "{e}");

    // 5xx for ever until cleared.
    http.post(format!("{url}/_admin/faults"))
        .json(&json!({"kind": {"type": "status", "status": 503}, "times": 0}))
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(get("/user").await.unwrap().status(), 503);
    }
    http.delete(format!("{url}/_admin/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(get("/user").await.unwrap().status(), 200);

    // A revoked token.
    http.post(format!("{url}/_admin/token"))
        .json(&json!({"revoked": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(get("/user").await.unwrap().status(), 401);

    // The call log records what was sent, never the token.
    let calls: Value = http
        .get(format!("{url}/_admin/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = calls.to_string();
    assert!(calls.as_array().unwrap().len() >= 8);
    assert!(!text.contains("t0k"));
    assert!(text.contains("\"auth_scheme\":\"Bearer\""));

    // A bad admin request is answered 400, naming the problem.
    let r = http
        .post(format!("{url}/_admin/faults"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
