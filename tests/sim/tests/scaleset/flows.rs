//! The happy path end to end, with the fake runner process; redelivery; capacity.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sim::github::scaleset::ScaleSetOptions;
use sim::github::{FakeGithub, Options};

use crate::client::{jobs, runner_complete, runner_session, runner_take, types, Client, Session};
use crate::{job, opts, setup};

const EXE: &str = env!("CARGO_BIN_EXE_fake-runner");

fn is_uuid(s: &str) -> bool {
    let parts: Vec<usize> = s.split('-').map(str::len).collect();
    parts == [8, 4, 4, 4, 12] && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// Polls (acknowledging each message) until a message holds `kind`; the job messages seen.
async fn collect_until(c: &Client, s: &Session, last: &mut u64, kind: &str) -> Vec<Value> {
    let mut seen = vec![];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let m = c.poll(s, *last, Some(2)).await;
        if m.status == StatusCode::ACCEPTED {
            continue;
        }
        assert_eq!(m.status, StatusCode::OK, "{}", m.text);
        *last = m.json["messageId"].as_u64().unwrap();
        assert_eq!(c.ack(s, *last).await, StatusCode::NO_CONTENT);
        let batch = jobs(&m.json);
        let done = batch.iter().any(|j| j["messageType"] == kind);
        seen.extend(batch);
        if done {
            return seen;
        }
    }
    panic!("no {kind} within 20 s; saw {seen:?}");
}

#[tokio::test]
async fn happy_path_from_a_registration_token_to_a_completed_job() {
    let gh = FakeGithub::start(Options {
        poll_timeout: Duration::from_secs(2),
        scaleset: ScaleSetOptions {
            service_path: "/rest".into(),
            poll_hold: Duration::from_secs(1),
            ..ScaleSetOptions::default()
        },
        ..Options::default()
    })
    .await
    .unwrap();
    // The admin connection: the service URL handed out, and a JWT with `exp`.
    let c = Client::connect(&gh, "orgs/octo").await;
    assert_eq!(c.service, format!("{}/rest", gh.url()));
    let segs: Vec<&str> = c.admin.split('.').collect();
    assert_eq!(segs.len(), 3);
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segs[1])
            .unwrap(),
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!((claims["iat"].as_i64().unwrap() - now).abs() < 5);
    // The default group, looked up without case.
    let g = c
        .call(
            Method::GET,
            "_apis/runtime/runnergroups/?groupName=default",
            None,
        )
        .await;
    assert_eq!(
        g.json,
        json!({"count": 1, "value": [{"id": 1, "name": "Default", "size": 0, "isDefaultGroup": true}]})
    );
    // Get by name (none), create, get by name (one).
    let by_name = "_apis/runtime/runnerscalesets?runnerGroupId=1&name=laptop";
    let a = c.call(Method::GET, by_name, None).await;
    assert_eq!(a.json, json!({"count": 0, "value": []}));
    let set = c.create_set("laptop", &[]).await;
    let id = set["id"].as_u64().unwrap();
    assert_eq!(set["labels"], json!([{"type": "system", "name": "laptop"}]));
    assert_eq!(set["runnerSetting"]["disableUpdate"], true);
    assert_eq!(set["runnerGroupName"], "Default");
    assert_eq!(set["statistics"]["totalAssignedJobs"], 0);
    let a = c.call(Method::GET, by_name, None).await;
    assert_eq!(a.json["count"], 1);
    assert_eq!(a.json["value"][0]["id"], id);
    // The session: one queue URL for every set, outside the service path.
    let a = c.create_session(id, "myhost").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(is_uuid(a.json["sessionId"].as_str().unwrap()));
    assert_eq!(a.json["ownerName"], "myhost");
    assert_eq!(a.json["runnerScaleSet"]["id"], id);
    assert_eq!(
        a.json["messageQueueUrl"],
        format!("{}/scalesets/message", gh.url())
    );
    assert_eq!(a.json["statistics"]["totalIdleRunners"], 0);
    let s = Session::from(&a.json);
    // A job: `JobAssigned` directly, message 100000001, runnerRequestId 0.
    let run = gh.enqueue_scaleset_job(job("laptop"));
    let m = c.poll(&s, 0, Some(2)).await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text);
    assert_eq!(m.json["messageId"], 100_000_001);
    assert_eq!(m.json["messageType"], "RunnerScaleSetJobMessages");
    let batch = jobs(&m.json);
    assert_eq!(batch.len(), 1);
    let assigned = &batch[0];
    assert_eq!(assigned["messageType"], "JobAssigned");
    assert_eq!(assigned["runnerRequestId"], 0);
    assert!(is_uuid(assigned["jobId"].as_str().unwrap()));
    assert_eq!(assigned["workflowRunId"], run);
    assert_eq!(assigned["requestLabels"], json!(["laptop"]));
    assert_eq!(assigned["repositoryName"], "app");
    assert_eq!(assigned["ownerName"], "octo");
    assert_eq!(assigned["jobDisplayName"], "build");
    assert!(assigned["scaleSetAssignTime"].is_string());
    assert!(assigned.get("queueTime").is_none());
    assert_eq!(m.json["statistics"]["totalAssignedJobs"], 1);
    assert_eq!(m.json["statistics"]["totalAvailableJobs"], 0);
    assert_eq!(c.ack(&s, 100_000_001).await, StatusCode::NO_CONTENT);
    // A JIT config for the set (200, `encodedJITConfig`).
    let a = c.jit(id, "runner-1a2b3c4d").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let rid = a.json["runner"]["id"].as_u64().unwrap();
    assert_eq!(
        a.json["runner"],
        json!({"id": rid, "name": "runner-1a2b3c4d", "runnerScaleSetId": id})
    );
    let blob = a.json["encodedJITConfig"].as_str().unwrap();
    let files = sim::protocol::decode_jit_config(blob).unwrap();
    let keys: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(keys, [".credentials", ".credentials_rsaparams", ".runner"]);
    let runner: Value = serde_json::from_slice(&files[".runner"]).unwrap();
    assert_eq!(runner["ephemeral"], true);
    assert_eq!(runner["disableUpdate"], true);
    assert_eq!(runner["workFolder"], "_work");
    // The fake runner with it takes that job, runs it, and exits 0.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("runner");
    sim::fixture::install_runner(&root, Path::new(EXE)).unwrap();
    let out = tokio::process::Command::new(root.join("bin/Runner.Listener"))
        .arg("run")
        .current_dir(&root)
        .env_clear()
        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", blob)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("Running job: build"), "{stdout}");
    assert!(
        stdout.contains("Job build completed with result: Succeeded"),
        "{stdout}"
    );
    let done = gh.state(|s| s.completed.clone());
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].job_id, done[0].runner.as_str()),
        (run, "runner-1a2b3c4d")
    );
    // `JobStarted`, then `JobCompleted{succeeded}`, statistics back to zero.
    let mut last = 100_000_001;
    let seen = collect_until(&c, &s, &mut last, "JobCompleted").await;
    let kinds: Vec<&str> = seen
        .iter()
        .map(|j| j["messageType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["JobStarted", "JobCompleted"]);
    for j in &seen {
        assert_eq!(j["jobId"], assigned["jobId"]);
        assert_eq!(
            (j["runnerId"].as_u64(), j["runnerName"].as_str()),
            (Some(rid), Some("runner-1a2b3c4d"))
        );
    }
    assert_eq!(seen[1]["result"], "succeeded");
    assert!(seen[1]["finishTime"].is_string());
    let a = c
        .call(
            Method::GET,
            &format!("_apis/runtime/runnerscalesets/{id}"),
            None,
        )
        .await;
    let zero = json!({"totalAvailableJobs": 0, "totalAcquiredJobs": 0, "totalAssignedJobs": 0,
        "totalRunningJobs": 0, "totalRegisteredRunners": 0, "totalBusyRunners": 0, "totalIdleRunners": 0});
    assert_eq!(a.json["statistics"], zero);
    // The ephemeral runner's record is gone.
    let a = c
        .call(
            Method::GET,
            "_apis/distributedtask/pools/0/agents?agentName=runner-1a2b3c4d",
            None,
        )
        .await;
    assert_eq!(a.json, json!({"count": 0, "value": []}));
    assert!(gh.runners().is_empty());
    // The calls were recorded with their query and capacity; the queue has no rate limits.
    let polls: Vec<_> = gh
        .calls()
        .into_iter()
        .filter(|c| c.method == "GET" && c.path == "/scalesets/message")
        .collect();
    assert_eq!(polls[0].max_capacity.as_deref(), Some("2"));
    assert!(polls[0].query.is_empty());
    assert_eq!(polls[1].query["lastMessageId"], "100000001");
    c.close(id, &s.id).await;
}

#[tokio::test]
async fn messages_are_redelivered_until_deleted_even_to_a_new_session() {
    let (gh, c, id) = setup(opts()).await;
    let s = c.session(id).await;
    gh.enqueue_scaleset_job(job("laptop"));
    let first = c.poll(&s, 0, Some(5)).await;
    assert_eq!(first.json["messageId"], 100_000_001);
    // Not deleted: the same message again from cursor 0.
    let again = c.poll(&s, 0, Some(5)).await;
    assert_eq!(again.json["messageId"], 100_000_001);
    assert_eq!(jobs(&again.json), jobs(&first.json));
    // Past the cursor: nothing, after the hold, 202 with no body.
    let t = Instant::now();
    let held = c.poll(&s, 100_000_001, Some(5)).await;
    assert_eq!(held.status, StatusCode::ACCEPTED);
    assert!(held.text.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );
    // A new session replays it: the queue is the scale set's.
    assert_eq!(c.close(id, &s.id).await.status, StatusCode::NO_CONTENT);
    let s2 = c.session(id).await;
    assert_ne!(s2.token, s.token);
    let replay = c.poll(&s2, 0, Some(5)).await;
    assert_eq!(replay.json["messageId"], 100_000_001);
    assert_eq!(jobs(&replay.json), jobs(&first.json));
    // The next message is 100000002; the oldest undeleted comes first from 0.
    gh.enqueue_scaleset_job(job("laptop"));
    let second = c.poll(&s2, 100_000_001, Some(5)).await;
    assert_eq!(second.json["messageId"], 100_000_002);
    assert_ne!(
        jobs(&second.json)[0]["jobId"],
        jobs(&first.json)[0]["jobId"]
    );
    assert_eq!(c.poll(&s2, 0, Some(5)).await.json["messageId"], 100_000_001);
    assert_eq!(c.ack(&s2, 100_000_001).await, StatusCode::NO_CONTENT);
    assert_eq!(c.poll(&s2, 0, Some(5)).await.json["messageId"], 100_000_002);
    assert_eq!(c.ack(&s2, 100_000_002).await, StatusCode::NO_CONTENT);
    assert_eq!(c.poll(&s2, 0, Some(5)).await.status, StatusCode::ACCEPTED);
    // Deleting again is harmless.
    assert_eq!(c.ack(&s2, 100_000_001).await, StatusCode::NO_CONTENT);
    assert_eq!(gh.scale_sets()[0].acked, [100_000_001, 100_000_002]);
}

#[tokio::test]
async fn assignments_stay_within_the_capacity_of_each_poll() {
    let (gh, c, id) = setup(opts()).await;
    let s = c.session(id).await;
    for _ in 0..3 {
        gh.enqueue_scaleset_job(job("laptop"));
    }
    // Capacity 0: held, nothing.
    assert_eq!(c.poll(&s, 0, Some(0)).await.status, StatusCode::ACCEPTED);
    // Capacity 1: one; again 1: none more.
    let m = c.poll(&s, 0, Some(1)).await;
    assert_eq!(types(&m.json), ["JobAssigned"]);
    assert_eq!(m.json["statistics"]["totalAssignedJobs"], 1);
    let mut last = m.json["messageId"].as_u64().unwrap();
    c.ack(&s, last).await;
    assert_eq!(c.poll(&s, last, Some(1)).await.status, StatusCode::ACCEPTED);
    // Capacity 2: the second.
    let m = c.poll(&s, last, Some(2)).await;
    assert_eq!(types(&m.json), ["JobAssigned"]);
    assert_eq!(m.json["statistics"]["totalAssignedJobs"], 2);
    last = m.json["messageId"].as_u64().unwrap();
    c.ack(&s, last).await;
    // A runner busy with one still counts: no third at capacity 2.
    let jit = c.jit(id, "r1").await.json["encodedJITConfig"]
        .as_str()
        .unwrap()
        .to_string();
    let rs = runner_session(&gh, &jit).await;
    let taken = runner_take(&gh, &rs).await.expect("an assigned job");
    let m = c.poll(&s, last, Some(2)).await;
    assert_eq!(types(&m.json), ["JobStarted"]);
    let st = &m.json["statistics"];
    assert_eq!(
        (
            st["totalAssignedJobs"].as_u64(),
            st["totalRunningJobs"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(
        (
            st["totalBusyRunners"].as_u64(),
            st["totalRegisteredRunners"].as_u64()
        ),
        (Some(1), Some(1))
    );
    last = m.json["messageId"].as_u64().unwrap();
    c.ack(&s, last).await;
    assert_eq!(c.poll(&s, last, Some(2)).await.status, StatusCode::ACCEPTED);
    // It completes: the third is assigned in the same message as the completion.
    runner_complete(&gh, taken.job_id, "Failed").await;
    let m = c.poll(&s, last, Some(2)).await;
    assert_eq!(types(&m.json), ["JobCompleted", "JobAssigned"]);
    assert_eq!(jobs(&m.json)[0]["result"], "failed");
    assert_eq!(m.json["statistics"]["totalAssignedJobs"], 2);
    last = m.json["messageId"].as_u64().unwrap();
    c.ack(&s, last).await;
    // No header: not gated.
    gh.enqueue_scaleset_job(job("laptop"));
    gh.enqueue_scaleset_job(job("laptop"));
    let m = c.poll(&s, last, None).await;
    assert_eq!(types(&m.json), ["JobAssigned", "JobAssigned"]);
    assert_eq!(m.json["statistics"]["totalAssignedJobs"], 4);
}

#[tokio::test]
async fn zero_capacity_blindness_hides_jobs_from_that_session() {
    let mut o = opts();
    o.scaleset.zero_capacity_blindness = true;
    let (gh, c, id) = setup(o).await;
    let s = c.session(id).await;
    gh.enqueue_scaleset_job(job("laptop"));
    assert_eq!(c.poll(&s, 0, Some(0)).await.status, StatusCode::ACCEPTED);
    assert_eq!(c.poll(&s, 0, Some(1)).await.status, StatusCode::ACCEPTED);
    c.close(id, &s.id).await;
    let s2 = c.session(id).await;
    assert_eq!(types(&c.poll(&s2, 0, Some(1)).await.json), ["JobAssigned"]);
}

#[tokio::test]
async fn a_message_holds_at_most_50_job_messages() {
    let (gh, c, id) = setup(opts()).await;
    let s = c.session(id).await;
    for _ in 0..60 {
        gh.enqueue_scaleset_job(job("laptop"));
    }
    let m = c.poll(&s, 0, None).await;
    assert_eq!(jobs(&m.json).len(), 50);
    assert_eq!(m.json["statistics"]["totalAssignedJobs"], 60);
    let m = c.poll(&s, 100_000_001, None).await;
    assert_eq!(m.json["messageId"], 100_000_002);
    assert_eq!(jobs(&m.json).len(), 10);
}
