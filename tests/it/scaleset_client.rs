//! The scale-set protocol client (`runner_supervisor::github::scaleset::client`) against the fake
//! GitHub's scale-set service: the admin connection, the scale set found or created, the
//! session, the long poll and its acknowledgement, a JIT config, and each error the
//! session loop must tell apart (conflict, expired queue token, scale set gone).

use std::time::Duration;

use runner_supervisor::github::scaleset::client::{Admin, Service};
use runner_supervisor::github::scaleset::errors::ServiceError;
use runner_supervisor::github::scaleset::session::{Connection, Target};
use runner_supervisor::github::scaleset::types::JobMessage;
use runner_supervisor::github::GithubClient;
use sim::github::{FakeGithub, JobSpec, Options};

async fn fake() -> FakeGithub {
    let mut o = Options::default();
    o.scaleset.service_path = "/rest".into();
    o.scaleset.poll_hold = Duration::from_millis(300);
    FakeGithub::start(o).await.unwrap()
}

async fn admin(gh: &FakeGithub, svc: &Service) -> Admin {
    let r: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/repos/octo/app/actions/runners/registration-token",
            gh.url()
        ))
        .bearer_auth(Options::default().token)
        .header("User-Agent", "test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    svc.connect(
        &gh.url(),
        "https://github.com/octo/app",
        r["token"].as_str().unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_session_polls_acknowledges_and_tells_every_error_apart() {
    let gh = fake().await;
    let svc = Service::new("runner-supervisor-test", Duration::from_secs(10)).unwrap();
    let a = admin(&gh, &svc).await;
    assert!(a.url.ends_with("/rest"), "{}", a.url);
    let group = svc.runner_group(&a, "Default").await.unwrap();
    assert!(svc
        .scale_set_by_name(&a, group.id, "ci-laptop")
        .await
        .unwrap()
        .is_none());
    let set = svc
        .create_scale_set(&a, group.id, "ci-laptop", &[])
        .await
        .unwrap();
    assert_eq!(
        svc.scale_set_by_name(&a, group.id, "ci-laptop")
            .await
            .unwrap()
            .map(|s| s.id),
        Some(set.id)
    );
    let session = svc.create_session(&a, set.id, "laptop").await.unwrap();
    // A second session for the same set: the conflict, told apart.
    assert!(matches!(
        svc.create_session(&a, set.id, "laptop").await,
        Err(ServiceError::SessionConflict { .. })
    ));
    // Nothing queued: the held poll ends with no message.
    assert_eq!(svc.poll(&session, 0, 2).await.unwrap(), None);
    gh.enqueue_scaleset_job(JobSpec {
        labels: vec!["ci-laptop".into()],
        ..JobSpec::default()
    });
    let m = svc.poll(&session, 0, 2).await.unwrap().expect("a message");
    assert_eq!(m.id, 100_000_001);
    let JobMessage::Assigned { job } = &m.jobs[0] else {
        panic!("{m:?}")
    };
    assert!(!job.job_id.is_empty());
    assert_eq!(m.statistics.unwrap().total_assigned_jobs, 1);
    // Redelivered until acknowledged; then gone.
    assert_eq!(
        svc.poll(&session, 0, 2).await.unwrap().map(|x| x.id),
        Some(m.id)
    );
    svc.ack(&session, m.id).await.unwrap();
    assert_eq!(svc.poll(&session, m.id, 2).await.unwrap(), None);
    let jit = svc.generate_jit(&a, set.id, "ci-laptop-r1").await.unwrap();
    assert_eq!(jit.runner.name, "ci-laptop-r1");
    assert!(!jit.encoded_jit_config.is_empty());
    svc.remove_runner(&a, jit.runner.id).await.unwrap();
    // An expired queue token: 401 on the queue, then a refresh gives a working one.
    gh.expire_queue_tokens(set.id);
    assert_eq!(
        svc.poll(&session, m.id, 2).await,
        Err(ServiceError::QueueTokenExpired)
    );
    let fresh = svc
        .refresh_session(&a, set.id, &session.session_id)
        .await
        .unwrap();
    assert_eq!(fresh.session_id, session.session_id);
    assert_ne!(
        fresh.message_queue_access_token,
        session.message_queue_access_token
    );
    assert_eq!(svc.poll(&fresh, m.id, 2).await.unwrap(), None);
    svc.delete_session(&a, set.id, &fresh.session_id)
        .await
        .unwrap();
    // The scale set deleted while the host slept: told apart, then created again.
    gh.delete_scale_set(set.id);
    assert!(matches!(
        svc.create_session(&a, set.id, "laptop").await,
        Err(ServiceError::ScaleSetNotFound { .. })
    ));
    let again = svc
        .create_scale_set(&a, group.id, "ci-laptop", &[])
        .await
        .unwrap();
    assert_ne!(again.id, set.id);
    svc.create_session(&a, again.id, "laptop").await.unwrap();
}

/// A connection for this host against `gh`, through the supervisor's own GitHub client.
fn connection(gh: &FakeGithub, sb: &crate::support::Sandbox) -> Connection {
    let env = sb.env(gh);
    let cfg = runner_supervisor::config::Config::resolve(
        &env,
        &Default::default(),
        runner_supervisor::config::Purpose::Run,
    )
    .expect("config");
    let client = GithubClient::new(&cfg, cfg.github.token.clone().unwrap()).unwrap();
    Connection::new(
        Service::new("runner-supervisor-test", Duration::from_secs(10)).unwrap(),
        client,
        Target {
            api_url: gh.url(),
            config_url: "https://github.com/octo/app".into(),
            name: "ci-laptop".into(),
            runner_group: "Default".into(),
            labels: vec![],
            owner: "laptop".into(),
            conflict_limit: Duration::from_secs(30),
        },
        Box::new(|| 0.0),
    )
}

#[tokio::test]
async fn one_session_survives_a_crash_conflict_eviction_token_expiry_and_a_deleted_scale_set() {
    let mut o = Options::default();
    o.scaleset.service_path = "/rest".into();
    o.scaleset.poll_hold = Duration::from_millis(300);
    // A dead session blocks a new one for 1 s here (github.com: about 50 s).
    o.scaleset.session_expiry = Duration::from_secs(1);
    let gh = FakeGithub::start(o).await.unwrap();
    let sb = crate::support::Sandbox::new();
    let quiet = |_: u64, _: &str| {};
    // A supervisor opens the session, then dies without closing it.
    let mut first = connection(&gh, &sb);
    first.open(&quiet).await.unwrap();
    assert_eq!(first.sets_created, 1);
    drop(first);
    // Its successor waits the conflict out, and is told each time.
    let mut c = connection(&gh, &sb);
    let heard = std::sync::Arc::new(std::sync::Mutex::new(0u64));
    let h = heard.clone();
    let waiting = move |n: u64, _: &str| *h.lock().unwrap() = n;
    let s = c.open(&waiting).await.unwrap();
    assert!(c.conflicts_waited >= 1 && *heard.lock().unwrap() == c.conflicts_waited);
    assert_eq!(c.sets_created, 0, "found by name, not created again");
    let set = c.scale_set().unwrap().id;
    // Evicted: the next poll opens a new session by itself; the job then arrives.
    gh.evict_sessions(set);
    assert_eq!(c.poll(0, 2, &quiet).await.unwrap(), None);
    assert_ne!(c.session().unwrap().session_id, s.session_id);
    gh.enqueue_scaleset_job(JobSpec {
        labels: vec!["ci-laptop".into()],
        ..JobSpec::default()
    });
    let m = c.poll(0, 2, &quiet).await.unwrap().expect("the job");
    c.ack(m.id).await.unwrap();
    // An expired queue token: refreshed, and the same poll answers.
    gh.expire_queue_tokens(set);
    let before = c.session().unwrap().message_queue_access_token.clone();
    assert_eq!(c.poll(m.id, 2, &quiet).await.unwrap(), None);
    assert_ne!(c.session().unwrap().message_queue_access_token, before);
    // An expired admin token: minted again.
    gh.expire_admin_tokens();
    c.reset();
    assert_eq!(c.poll(m.id, 2, &quiet).await.unwrap(), None);
    // The scale set deleted while the host slept: created again, the session too.
    gh.delete_scale_set(set);
    assert_eq!(c.poll(m.id, 2, &quiet).await.unwrap(), None);
    assert_eq!(c.sets_created, 1);
    assert_ne!(c.scale_set().unwrap().id, set);
    c.close().await;
    assert!(c.session().is_none());
}
