//! The scale-set protocol client (`runner_supervisor::scaleset::client`) against the fake
//! GitHub's scale-set service: the admin connection, the scale set found or created, the
//! session, the long poll and its acknowledgement, a JIT config, and each error the
//! session loop must tell apart (conflict, expired queue token, scale set gone).

use std::time::Duration;

use runner_supervisor::scaleset::client::{Admin, Service};
use runner_supervisor::scaleset::errors::ServiceError;
use runner_supervisor::scaleset::types::JobMessage;
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
