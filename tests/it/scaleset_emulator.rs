//! The scale-set protocol layer (`runner_supervisor::github::scaleset`) against a second,
//! independent fake: the emulator of the `scaleset` crate (its `testing` feature), which
//! plays GitHub's REST (`/api/v3`, as GHES) and the Actions service (`/tenant/…`,
//! `/queue/…`) in-process. A job goes through the GHES flow it models: `JobAvailable`,
//! acquired, then `JobAssigned` keyed on `jobId`, a JIT runner, started, finished.
//!
//! Where it differs from github.com (and so from `tests/sim`): jobs come as
//! `JobAvailable` and are assigned only once acquired (`acquirejobs`, the queue token);
//! message ids count from 1 per scale set; `runnerRequestId` is set; no
//! `X-ScaleSetMaxCapacity` gating; a deleted scale set is a bare 404 (no
//! `RunnerScaleSetNotFoundException`); a session never closed lasts for ever (GitHub:
//! about 50 s), until `expire_session`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use runner_supervisor::github::scaleset::client::{Admin, Service};
use runner_supervisor::github::scaleset::errors::ServiceError;
use runner_supervisor::github::scaleset::session::{Connection, Target};
use runner_supervisor::github::scaleset::types::{JobMessage, Message};
use runner_supervisor::github::GithubClient;
use scaleset::testing::{Emulator, Endpoint, JobState, DEFAULT_PAT};

const HOLD: Duration = Duration::from_millis(300);

async fn emulator() -> Emulator {
    Emulator::builder().long_poll(HOLD).start().await
}

/// The REST base the emulator serves: GHES-shaped, under `/api/v3`.
fn api_url(emu: &Emulator) -> String {
    format!("{}/api/v3", emu.uri())
}

/// The supervisor's own GitHub client for the emulator's organisation (`org`), with the
/// PAT it accepts; `_dir` holds the state and runner directories the config names.
fn github(emu: &Emulator, dir: &tempfile::TempDir) -> GithubClient {
    let env: BTreeMap<String, String> = [
        ("GITHUB_PAT", DEFAULT_PAT.to_string()),
        ("SUPERVISOR_GITHUB_ORG", scaleset::testing::ORG.to_string()),
        ("SUPERVISOR_GITHUB_API_URL", api_url(emu)),
        ("SUPERVISOR_GITHUB_BACKOFF_BASE", "50ms".into()),
        (
            "SUPERVISOR_RUNNER_DIR",
            dir.path().join("runner").display().to_string(),
        ),
        (
            "SUPERVISOR_STATE_DIR",
            dir.path().join("state").display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cfg = runner_supervisor::config::Config::resolve(
        &env,
        &Default::default(),
        runner_supervisor::config::Purpose::Inspect,
    )
    .expect("config");
    GithubClient::new(&cfg, cfg.github.token.clone().unwrap()).unwrap()
}

fn service() -> Service {
    Service::new("runner-supervisor-test", Duration::from_secs(10)).unwrap()
}

/// An admin connection of our own, through the same registration-token call the
/// connection makes.
async fn admin(emu: &Emulator, gh: &GithubClient, svc: &Service) -> Admin {
    let reg = gh.registration_token().await.unwrap();
    svc.connect(&api_url(emu), &emu.config_url(), reg.token.expose())
        .await
        .unwrap()
}

/// Poll until a message comes (each poll is held `HOLD` when the queue is empty).
async fn next(c: &mut Connection, last: u64) -> Message {
    let quiet = |_: u64, _: &str| {};
    for _ in 0..20 {
        if let Some(m) = c.poll(last, 2, &quiet).await.unwrap() {
            return m;
        }
    }
    panic!("no message after {last} within 20 polls");
}

#[tokio::test]
async fn a_job_goes_from_available_to_assigned_to_a_jit_runner_and_is_acknowledged_at_each_step() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Connection::new(
        service(),
        github(&emu, &dir),
        Target {
            api_url: api_url(&emu),
            config_url: emu.config_url(),
            name: "ci-laptop".into(),
            runner_group: "Default".into(),
            labels: vec!["linux".into()],
            owner: "laptop".into(),
            conflict_limit: Duration::from_secs(5),
        },
        Box::new(|| 0.0),
    );
    let quiet = |_: u64, _: &str| {};

    // Connect: the scale set is found by name, else created (name first, then labels).
    let session = c.open(&quiet).await.unwrap();
    assert_eq!((c.sets_created, c.sessions_opened), (1, 1));
    let set = c.scale_set().unwrap().clone();
    let state = emu.state();
    assert_eq!(state.scale_sets.len(), 1);
    let emu_set = &state.scale_sets[0];
    assert_eq!(
        (emu_set.id.0 as u64, emu_set.name.as_str()),
        (set.id, "ci-laptop")
    );
    assert_eq!(emu_set.runner_group_id.0, 1, "the Default group");
    let labels: Vec<&str> = emu_set.labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(labels, ["ci-laptop", "linux"]);
    assert!(emu_set.runner_setting.disable_update);
    assert_eq!(state.sessions.len(), 1);
    assert_eq!(state.sessions[0].session_id.to_string(), session.session_id);
    assert_eq!(state.sessions[0].owner_name, "laptop");
    assert_eq!(
        session.runner_scale_set.as_ref().map(|s| s.id),
        Some(set.id)
    );
    assert_eq!(session.statistics.unwrap().total_assigned_jobs, 0);

    // Nothing queued: the held poll ends with no message (202).
    assert_eq!(c.poll(0, 2, &quiet).await.unwrap(), None);

    // A job for the set: first JobAvailable (GHES), keyed on jobId.
    let job = emu.queue_job(scaleset::ScaleSetId(set.id as i64), ["ci-laptop"]);
    let m1 = next(&mut c, 0).await;
    assert_eq!(m1.id, 1, "the emulator counts message ids from 1");
    assert_eq!(m1.kind, "RunnerScaleSetJobMessages");
    let [JobMessage::Available {
        job: available,
        acquire_url,
    }] = m1.jobs.as_slice()
    else {
        panic!("{m1:?}")
    };
    assert_eq!(available.runner_request_id, job.0);
    assert_eq!(available.request_labels, ["ci-laptop"]);
    assert_eq!(available.job_id.len(), 36, "{:?}", available.job_id);
    assert!(available.queue_time.is_some());
    assert_eq!(m1.statistics.unwrap().total_available_jobs, 1);
    // Redelivered until acknowledged; a poll past it gets nothing.
    assert_eq!(c.poll(0, 2, &quiet).await.unwrap().map(|m| m.id), Some(1));
    assert_eq!(c.poll(m1.id, 2, &quiet).await.unwrap(), None);
    c.ack(m1.id).await.unwrap();

    // Acquired (GHES, with the queue token): the job is assigned to the set, and
    // JobAssigned follows, same jobId. Our URL is the one the message named.
    let (a, _) = c.ready(&quiet).await.unwrap();
    assert!(a.url.ends_with("/tenant/"), "{}", a.url);
    assert_eq!(
        *acquire_url,
        format!(
            "{}_apis/runtime/runnerscalesets/{}/acquirejobs",
            a.url, set.id
        )
    );
    assert_eq!(c.acquire(&[job.0]).await.unwrap(), [job.0]);
    let m2 = next(&mut c, m1.id).await;
    assert_eq!(m2.id, 2);
    let [JobMessage::Assigned { job: assigned }] = m2.jobs.as_slice() else {
        panic!("{m2:?}")
    };
    assert_eq!(assigned.job_id, available.job_id);
    assert!(assigned.scale_set_assign_time.is_some());
    let stats = m2.statistics.unwrap();
    assert_eq!(
        (stats.total_assigned_jobs, stats.total_available_jobs),
        (1, 0)
    );
    c.ack(m2.id).await.unwrap();
    assert!(emu.state().unacknowledged.is_empty());

    // A JIT runner for it, under the connection's admin token.
    let svc = service();
    let jit = svc.generate_jit(&a, set.id, "ci-laptop-r1").await.unwrap();
    assert_eq!(
        (jit.runner.name.as_str(), jit.runner.runner_scale_set_id),
        ("ci-laptop-r1", set.id)
    );
    let decoded: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(&jit.encoded_jit_config)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(decoded["runnerId"], jit.runner.id);
    assert_eq!(decoded["runnerName"], "ci-laptop-r1");
    // The name is taken now.
    assert!(matches!(
        svc.generate_jit(&a, set.id, "ci-laptop-r1").await,
        Err(ServiceError::RunnerExists { .. })
    ));

    // The runner takes the job: JobStarted names it; a busy runner is not removed.
    let runner = emu.start_job(job, Some("ci-laptop-r1"));
    assert_eq!(runner.0 as u64, jit.runner.id);
    let m3 = next(&mut c, m2.id).await;
    let [JobMessage::Started {
        job: started,
        runner_id,
        runner_name,
    }] = m3.jobs.as_slice()
    else {
        panic!("{m3:?}")
    };
    assert_eq!(
        (started.job_id.as_str(), *runner_id, runner_name.as_str()),
        (available.job_id.as_str(), jit.runner.id, "ci-laptop-r1")
    );
    c.ack(m3.id).await.unwrap();
    assert!(matches!(
        svc.remove_runner(&a, jit.runner.id).await,
        Err(ServiceError::JobStillRunning { .. })
    ));

    // It finishes: JobCompleted; the emulator drops the ephemeral runner itself, and our
    // removal of a runner already gone counts as done (404 AgentNotFoundException).
    emu.complete_job(job, None);
    let m4 = next(&mut c, m3.id).await;
    let [JobMessage::Completed {
        job: done,
        result,
        runner_id,
        ..
    }] = m4.jobs.as_slice()
    else {
        panic!("{m4:?}")
    };
    assert_eq!(
        (done.job_id.as_str(), result.as_str(), *runner_id),
        (available.job_id.as_str(), "succeeded", jit.runner.id)
    );
    assert!(done.finish_time.is_some());
    c.ack(m4.id).await.unwrap();
    svc.remove_runner(&a, jit.runner.id).await.unwrap();

    // An idle runner is removed (204).
    let idle = svc.generate_jit(&a, set.id, "ci-laptop-r2").await.unwrap();
    assert_eq!(emu.state().runners.len(), 1);
    svc.remove_runner(&a, idle.runner.id).await.unwrap();
    let state = emu.state();
    assert!(state.runners.is_empty(), "{:?}", state.runners);
    assert_eq!(state.jobs[0].state, JobState::Completed);
    assert!(state.queues_drained(), "{state:?}");

    // Every poll carried the capacity; then the session is closed.
    let polls = emu.requests_to(Endpoint::GetMessage);
    assert!(polls.len() >= 6, "{polls:?}");
    assert!(polls.iter().all(|p| p.max_capacity == Some(2)), "{polls:?}");
    assert!(polls
        .iter()
        .all(|p| p.user_agent.as_deref() == Some("runner-supervisor-test")));
    c.close().await;
    assert!(c.session().is_none());
    assert!(emu.state().sessions.is_empty());
}

#[tokio::test]
async fn the_emulators_errors_are_classified_as_the_session_loop_needs_them() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let gh = github(&emu, &dir);
    let svc = service();
    let a = admin(&emu, &gh, &svc).await;
    let group = svc.runner_group(&a, "Default").await.unwrap();
    assert_eq!((group.id, group.is_default_group), (1, true));
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
    let sid = scaleset::ScaleSetId(set.id as i64);
    let session = svc.create_session(&a, set.id, "laptop").await.unwrap();

    // A second session: 409 TaskAgentSessionConflictException, a conflict.
    assert!(matches!(
        svc.create_session(&a, set.id, "laptop").await,
        Err(ServiceError::SessionConflict { .. })
    ));

    // The queue token expired: 401 on the queue; a refresh gives a new token, same session.
    emu.expire_queue_token(sid);
    assert_eq!(
        svc.poll(&session, 0, 1).await,
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
    assert_eq!(svc.poll(&fresh, 0, 1).await.unwrap(), None);

    // The session dropped by the service: 404 on the queue, gone.
    emu.expire_session(sid);
    assert!(matches!(
        svc.poll(&fresh, 0, 1).await,
        Err(ServiceError::SessionGone { .. })
    ));
    let again = svc.create_session(&a, set.id, "laptop").await.unwrap();

    // Admin tokens expired: 401 on an admin call.
    emu.expire_admin_tokens();
    assert!(matches!(
        svc.runner_group(&a, "Default").await,
        Err(ServiceError::AdminTokenInvalid { .. })
    ));
    let a = admin(&emu, &gh, &svc).await;
    svc.delete_session(&a, set.id, &again.session_id)
        .await
        .unwrap();
    // Closing twice: already closed.
    svc.delete_session(&a, set.id, &again.session_id)
        .await
        .unwrap();

    // The scale set deleted: the emulator answers a bare 404 ("runner scale set not
    // found", typeName VssServiceException), not GitHub's RunnerScaleSetNotFoundException,
    // so a session call reads it as the session gone, not the scale set.
    let r = reqwest::Client::new()
        .delete(format!(
            "{}_apis/runtime/runnerscalesets/{}?api-version=6.0-preview",
            a.url, set.id
        ))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    match svc.create_session(&a, set.id, "laptop").await {
        Err(ServiceError::SessionGone { message }) => {
            assert_eq!(message, "runner scale set not found")
        }
        other => panic!("{other:?}"),
    }
}
