//! The faults of reference 9.10, the request checks, and the answers' headers.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sim::github::scaleset::{errors, PollFaults};
use sim::github::{Fault, FaultKind};

use crate::client::{types, Client};
use crate::{job, opts, setup};

#[tokio::test]
async fn empty_answers_boms_and_bare_errors() {
    let (gh, c, id) = setup(opts()).await;
    // An empty messageQueueUrl on create (ARC#4370).
    gh.scaleset_faults(PollFaults {
        empty_queue_urls: 1,
        ..PollFaults::default()
    });
    let a = c.create_session(id, "a").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["messageQueueUrl"], "");
    c.close(id, a.json["sessionId"].as_str().unwrap()).await;
    let s = c.session(id).await;
    assert!(!s.queue.is_empty());
    // A 200 with an empty body (ARC#4285), once.
    gh.scaleset_faults(PollFaults {
        empty_polls: 1,
        ..PollFaults::default()
    });
    gh.enqueue_scaleset_job(job("laptop"));
    let a = c.poll(&s, 0, Some(1)).await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::OK, ""));
    let m = c.poll(&s, 0, Some(1)).await;
    assert_eq!(types(&m.json), ["JobAssigned"]);
    // BOM-prefixed bodies.
    gh.scaleset_faults(PollFaults {
        bom: true,
        ..PollFaults::default()
    });
    let m = c.poll(&s, 0, Some(1)).await;
    assert!(m.text.starts_with('\u{feff}'));
    assert_eq!(m.json["messageId"], 100_000_001);
    // Bare error bodies.
    gh.scaleset_faults(PollFaults {
        bare_errors: true,
        ..PollFaults::default()
    });
    let a = c
        .call(Method::GET, "_apis/runtime/runnerscalesets/999", None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let mut keys: Vec<&String> = a.json.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["message", "typeName"]);
    assert_eq!(a.json["typeName"], errors::SCALE_SET_NOT_FOUND);
}

#[tokio::test]
async fn a_blackholed_poll_is_never_answered_and_5xx_runs_end() {
    let (gh, c, id) = setup(opts()).await;
    let s = c.session(id).await;
    gh.scaleset_faults(PollFaults {
        blackhole_polls: 1,
        ..PollFaults::default()
    });
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(1200))
        .build()
        .unwrap();
    let r = quick
        .get(&s.queue)
        .bearer_auth(&s.token)
        .header("X-ScaleSetMaxCapacity", "1")
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout(), "held past 4 hold times");
    assert_eq!(c.poll(&s, 0, Some(1)).await.status, StatusCode::ACCEPTED);
    // A run of 500s on the queue (2026-07-25), then normal again.
    gh.fault(Fault {
        method: Some("GET".into()),
        path: Some("/scalesets/message".into()),
        body: None,
        kind: FaultKind::Status { status: 500 },
        times: 2,
    });
    for _ in 0..2 {
        assert_eq!(
            c.poll(&s, 0, Some(1)).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(c.poll(&s, 0, Some(1)).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn admin_hops_can_fail_and_the_admin_clock_can_be_off() {
    let gh = sim::github::FakeGithub::start(opts()).await.unwrap();
    // A 422 from runner-registration (ARC#3935), once.
    gh.fault(Fault {
        method: Some("POST".into()),
        path: Some("runner-registration".into()),
        body: None,
        kind: FaultKind::Status { status: 422 },
        times: 1,
    });
    let a = Client {
        http: reqwest::Client::new(),
        gh: gh.url(),
        scope: "orgs/octo".into(),
        service: String::new(),
        admin: String::new(),
    }
    .registration()
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The fake's clock an hour behind: the JWT looks expired to the client, and works.
    gh.scaleset_faults(PollFaults {
        admin_clock_skew_secs: -3600,
        ..PollFaults::default()
    });
    let c = Client::connect(&gh, "orgs/octo").await;
    let claims = c.admin.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert!(claims["exp"].as_i64().unwrap() < chrono::Utc::now().timestamp());
    c.create_set("laptop", &[]).await;
    // Enterprises get registration tokens too.
    let ent = Client::connect(&gh, "enterprises/acme").await;
    assert_eq!(ent.create_set("fleet", &[]).await["name"], "fleet");
}

#[tokio::test]
async fn requests_are_checked_and_answers_carry_the_brokers_headers() {
    let (_gh, c, id) = setup(opts()).await;
    // No api-version: 400.
    let r = c
        .http
        .get(format!("{}/_apis/runtime/runnerscalesets/{id}", c.service))
        .bearer_auth(&c.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["typeName"], errors::VERSION_NOT_SPECIFIED);
    // No token: 401; an unknown route: the router's miss.
    let r = c
        .http
        .get(format!(
            "{}/_apis/runtime/runnerscalesets/{id}?api-version=6.0-preview",
            c.service
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let a = c.call(Method::GET, "_apis/runtime/nothing", None).await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (StatusCode::NOT_FOUND, "404 page not found\n")
    );
    assert_eq!(a.content_type, "text/plain; charset=utf-8");
    // The queue: request id and backend, no rate-limit headers.
    let s = c.session(id).await;
    let r = c
        .http
        .get(&s.queue)
        .bearer_auth(&s.token)
        .header("X-ScaleSetMaxCapacity", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let h = r.headers();
    assert!(h.contains_key("x-github-request-id"));
    assert_eq!(h["x-github-backend"], "Kubernetes");
    assert!(!h.contains_key("x-ratelimit-remaining"));
    assert!(!h.contains_key("retry-after"));
    // Either casing of runnerSetting, labels back lower-case, extras kept.
    let a = c
        .call(
            Method::POST,
            "_apis/runtime/runnerscalesets",
            Some(serde_json::json!({"name": "gag", "runnerGroupId": 1,
                "labels": [{"type": "System", "name": "gag"}, {"name": "gpu"}],
                "runnerSetting": {"ephemeral": true}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json["labels"][1],
        serde_json::json!({"type": "system", "name": "gpu"})
    );
    assert_eq!(a.json["runnerSetting"]["ephemeral"], true);
    assert_eq!(a.json["runnerSetting"]["disableUpdate"], false);
}

#[tokio::test]
async fn the_admin_endpoints_drive_the_same_controls() {
    let (gh, c, id) = setup(opts()).await;
    let s = c.session(id).await;
    let admin = |path: &str, body: serde_json::Value| {
        reqwest::Client::new()
            .post(format!("{}/_admin/scalesets/{path}", gh.url()))
            .json(&body)
            .send()
    };
    let r = admin(
        "jobs",
        serde_json::json!({"labels": ["laptop"], "count": 2}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let runs = r.json::<serde_json::Value>().await.unwrap()["runIds"].clone();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    let m = c.poll(&s, 0, Some(1)).await;
    assert_eq!(types(&m.json), ["JobAssigned"]);
    let last = m.json["messageId"].as_u64().unwrap();
    c.ack(&s, last).await;
    let r = admin("lapse", serde_json::json!({"run_id": runs[0]}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let m = c.poll(&s, last, Some(1)).await;
    assert_eq!(types(&m.json), ["JobCompleted", "JobAssigned"]);
    let hints = serde_json::json!({"started": {"kind": "missing"}, "completed": {"kind": "late", "ms": 10}});
    assert_eq!(
        admin("hints", hints).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        gh.state(|st| st.scalesets.hints.completed),
        sim::github::scaleset::Delivery::Late { ms: 10 }
    );
    let faults = serde_json::json!({"empty_polls": 1});
    assert_eq!(
        admin("faults", faults).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(c.poll(&s, 0, Some(1)).await.text, "");
    admin(&format!("{id}/expire-queue-tokens"), serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(
        c.poll(&s, 0, Some(1)).await.status,
        StatusCode::UNAUTHORIZED
    );
    admin("expire-admin-tokens", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(c.refresh(id, &s.id).await.status, StatusCode::UNAUTHORIZED);
    let state: serde_json::Value = reqwest::get(format!("{}/_admin/scalesets/state", gh.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["sessions"][0]["capacity"], 1);
    assert_eq!(state["jobs"].as_array().unwrap().len(), 3);
    let r = admin(&format!("{id}/evict"), serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["evicted"], 1);
    assert_eq!(
        admin(&format!("{id}/delete"), serde_json::json!({}))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert!(gh.scale_sets().is_empty());
}
