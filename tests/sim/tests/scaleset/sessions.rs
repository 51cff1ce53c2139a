//! Sessions and tokens: 409 until a dead session expires, 401 on an expired queue token and
//! the refresh, 404 after eviction, a scale set deleted while idle, admin-token expiry.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sim::github::scaleset::errors;

use crate::client::{types, Client, Session};
use crate::{job, opts, setup};

fn exception(v: &Value, type_name: &str, message: &str) {
    assert_eq!(v["typeName"], type_name, "{v}");
    assert_eq!(v["message"], message, "{v}");
    let key = type_name
        .split(',')
        .next()
        .unwrap()
        .rsplit('.')
        .next()
        .unwrap();
    assert_eq!(v["typeKey"], key);
    assert_eq!(v["$id"], "1");
}

#[tokio::test]
async fn a_second_session_conflicts_until_the_dead_one_expires() {
    let (_gh, c, id) = setup(opts()).await;
    let s = c.session(id).await;
    // A live consumer, polling on, keeps it past the expiry.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        assert_eq!(c.poll(&s, 0, Some(1)).await.status, StatusCode::ACCEPTED);
        let a = c.create_session(id, "host-b").await;
        assert_eq!(a.status, StatusCode::CONFLICT);
        exception(
            &a.json,
            errors::SESSION_CONFLICT,
            "The actions runner scaleset laptop already has an active session.",
        );
    }
    // It stops (a SIGKILL): 409 until about 800 ms after its last poll, then a new one.
    let stopped = Instant::now();
    let opened = loop {
        let a = c.create_session(id, "host-b").await;
        if a.status == StatusCode::OK {
            break stopped.elapsed();
        }
        assert_eq!(a.status, StatusCode::CONFLICT);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(opened >= Duration::from_millis(750), "{opened:?}");
    assert!(opened < Duration::from_millis(1500), "{opened:?}");
    // The dead session's token is refused, its refresh is 404.
    assert_eq!(
        c.poll(&s, 0, Some(1)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(c.refresh(id, &s.id).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_client_that_drops_its_poll_leaves_a_session_that_expires() {
    let mut o = opts();
    o.scaleset.poll_hold = Duration::from_secs(30);
    let (gh, c, id) = setup(o).await;
    let s = c.session(id).await;
    // The client gives up on a held poll after 200 ms (a killed listener).
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let r = quick
        .get(&s.queue)
        .bearer_auth(&s.token)
        .header("X-ScaleSetMaxCapacity", "1")
        .send()
        .await;
    assert!(r.is_err());
    let gone = Instant::now();
    assert_eq!(c.create_session(id, "b").await.status, StatusCode::CONFLICT);
    // The dropped poll ended then: the session is dead about 800 ms later, not after the
    // 30 s hold.
    loop {
        if c.create_session(id, "b").await.status == StatusCode::OK {
            break;
        }
        assert!(gone.elapsed() < Duration::from_secs(5), "still 409");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gone.elapsed() >= Duration::from_millis(700),
        "{:?}",
        gone.elapsed()
    );
    assert_eq!(gh.state(|st| st.scalesets.expired_sessions.clone()), [s.id]);
}

#[tokio::test]
async fn an_expired_queue_token_is_401_until_the_session_is_refreshed() {
    let mut o = opts();
    o.scaleset.queue_token_ttl = Duration::from_millis(1000);
    o.scaleset.session_expiry = Duration::from_secs(30);
    let (gh, c, id) = setup(o).await;
    let s = c.session(id).await;
    assert_eq!(c.poll(&s, 0, Some(1)).await.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let a = c.poll(&s, 0, Some(1)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.text.is_empty());
    assert_eq!(c.ack(&s, 100_000_001).await, StatusCode::UNAUTHORIZED);
    // PATCH: the same session, a new token; the old one stays refused.
    let a = c.refresh(id, &s.id).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let s2 = Session::from(&a.json);
    assert_eq!(s2.id, s.id);
    assert_eq!(s2.queue, s.queue);
    assert_ne!(s2.token, s.token);
    assert_eq!(a.json["runnerScaleSet"]["id"], id);
    assert!(a.json["statistics"].is_object());
    assert_eq!(c.poll(&s2, 0, Some(1)).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        c.poll(&s, 0, Some(1)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The test hook does the same at once.
    gh.expire_queue_tokens(id);
    assert_eq!(
        c.poll(&s2, 0, Some(1)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let s3 = Session::from(&c.refresh(id, &s.id).await.json);
    assert_eq!(c.poll(&s3, 0, Some(1)).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn an_evicted_session_is_401_on_the_queue_and_404_on_refresh_and_delete() {
    let mut o = opts();
    o.scaleset.poll_hold = Duration::from_secs(10);
    let (gh, c, id) = setup(o).await;
    let s = c.session(id).await;
    // Evicted while a poll is held: that poll ends with 401 at once.
    let held = {
        let c2 = c.clone();
        let s = s.clone();
        tokio::spawn(async move { c2.poll(&s, 0, Some(1)).await.status })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    assert_eq!(gh.evict_sessions(id), 1);
    assert_eq!(held.await.unwrap(), StatusCode::UNAUTHORIZED);
    assert!(t.elapsed() < Duration::from_secs(2));
    let a = c.refresh(id, &s.id).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    exception(&a.json, errors::RUNNER_ADMIN, errors::RUNNER_ADMIN_MESSAGE);
    assert_eq!(a.json["typeName"], "RunnerAdminException");
    let a = c.close(id, &s.id).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json["typeName"], "RunnerAdminException");
    // A new session opens at once.
    assert_eq!(c.create_session(id, "a").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_scale_set_deleted_while_idle_is_not_found_and_can_be_registered_again() {
    let mut o = opts();
    o.scaleset.dormant_after = Duration::from_millis(600);
    let (gh, c, id) = setup(o).await;
    let s = c.session(id).await;
    let idle_runner = c.jit(id, "idle-1").await.json["runner"]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(c.close(id, &s.id).await.status, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let missing = format!("No runner scale set found with identifier {id}.");
    let a = c
        .call(
            Method::GET,
            &format!("_apis/runtime/runnerscalesets/{id}"),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    exception(&a.json, errors::SCALE_SET_NOT_FOUND, &missing);
    let a = c.create_session(id, "a").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    exception(&a.json, errors::SCALE_SET_NOT_FOUND, &missing);
    assert_eq!(c.jit(id, "r").await.status, StatusCode::NOT_FOUND);
    let by_name = "_apis/runtime/runnerscalesets?runnerGroupId=1&name=laptop";
    assert_eq!(c.call(Method::GET, by_name, None).await.json["count"], 0);
    assert_eq!(gh.state(|st| st.scalesets.deleted_sets.clone()), [id]);
    // Its idle runner went with it.
    assert!(gh.runners().iter().all(|r| r.id != idle_runner));
    // A job queued while there is no set waits; the set registered again gets it.
    let run = gh.enqueue_scaleset_job(job("laptop"));
    let id2 = c.create_set("laptop", &[]).await["id"].as_u64().unwrap();
    assert_ne!(id2, id);
    let s2 = c.session(id2).await;
    let m = c.poll(&s2, 0, Some(1)).await;
    assert_eq!(types(&m.json), ["JobAssigned"]);
    assert_eq!(crate::client::jobs(&m.json)[0]["workflowRunId"], run);
    assert_eq!(m.json["messageId"], 100_000_001);
    // Deleted by the test with a session open: the poll is 401, the refresh 404.
    assert!(gh.delete_scale_set(id2));
    assert_eq!(
        c.poll(&s2, 0, Some(1)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let a = c.refresh(id2, &s2.id).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json["typeName"], errors::SCALE_SET_NOT_FOUND);
}

#[tokio::test]
async fn an_expired_admin_token_is_401_invalid_token_until_minted_again() {
    let mut o = opts();
    o.scaleset.admin_token_ttl = Duration::from_secs(1);
    let (gh, c, id) = setup(o).await;
    let path = format!("_apis/runtime/runnerscalesets/{id}");
    assert_eq!(
        c.call(Method::GET, &path, None).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = c.call(Method::GET, &path, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.json["typeName"]
        .as_str()
        .unwrap()
        .contains("InvalidTokenException"));
    assert_eq!(a.json["typeKey"], "InvalidTokenException");
    // Minted again: works; the test hook expires it at once.
    let c2 = Client::connect(&gh, "orgs/octo").await;
    assert_eq!(
        c2.call(Method::GET, &path, None).await.status,
        StatusCode::OK
    );
    gh.expire_admin_tokens();
    assert_eq!(
        c2.call(Method::GET, &path, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The queue token is not the admin token: sessions live on.
    let c3 = Client::connect(&gh, "orgs/octo").await;
    let s = c3.session(id).await;
    gh.expire_admin_tokens();
    assert_eq!(c3.poll(&s, 0, Some(1)).await.status, StatusCode::ACCEPTED);
    // Another scope's admin token does not see the set.
    let other = Client::connect(&gh, "repos/octo/app").await;
    assert_eq!(
        other.call(Method::GET, &path, None).await.status,
        StatusCode::NOT_FOUND
    );
}
