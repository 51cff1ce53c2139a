//! Jobs: the GHES acquire flow, lapsed assignments, late and missing lifecycle messages,
//! a runner taking only its scale set's jobs, and the runner endpoints.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use sim::github::scaleset::{errors, Delivery, JobState, LifecycleHints};

use crate::client::{jobs, runner_complete, runner_session, runner_take, types};
use crate::{job, opts, setup};

#[tokio::test]
async fn ghes_announces_jobs_and_assigns_those_acquired() {
    let mut o = opts();
    o.scaleset.ghes = true;
    let (gh, c, id) = setup(o).await;
    let s = c.session(id).await;
    let run = gh.enqueue_scaleset_job(job("laptop"));
    let m = c.poll(&s, 0, Some(1)).await;
    let avail = &jobs(&m.json)[0];
    assert_eq!(avail["messageType"], "JobAvailable");
    let rr = avail["runnerRequestId"].as_u64().unwrap();
    assert!(rr > 0);
    let acquire = format!(
        "{}/_apis/runtime/runnerscalesets/{id}/acquirejobs",
        c.service
    );
    assert_eq!(avail["acquireJobUrl"], acquire);
    assert_eq!(avail["workflowRunId"], run);
    assert_eq!(m.json["statistics"]["totalAvailableJobs"], 1);
    c.ack(&s, m.json["messageId"].as_u64().unwrap()).await;
    let listed = c
        .call(
            Method::GET,
            &format!("_apis/runtime/runnerscalesets/{id}/acquirablejobs"),
            None,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json["value"][0]["runnerRequestId"], rr);
    // Acquire takes the queue token, not the admin JWT.
    let post = |token: &str| {
        c.http
            .post(format!("{acquire}?api-version=6.0-preview"))
            .header("Content-Type", "application/json")
            .bearer_auth(token)
            .body(json!([rr, 999]).to_string())
            .send()
    };
    assert_eq!(
        post(&c.admin).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let r = post(&s.token).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"count": 1, "value": [rr]})
    );
    let m = c.poll(&s, 0, Some(1)).await;
    let assigned = &jobs(&m.json)[0];
    assert_eq!(assigned["messageType"], "JobAssigned");
    assert_eq!(assigned["runnerRequestId"], rr);
    assert_eq!(assigned["jobId"], avail["jobId"]);
    let st = &m.json["statistics"];
    assert_eq!(
        (
            st["totalAvailableJobs"].as_u64(),
            st["totalAcquiredJobs"].as_u64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(st["totalAssignedJobs"], 1);
    let listed = c
        .call(
            Method::GET,
            &format!("_apis/runtime/runnerscalesets/{id}/acquirablejobs"),
            None,
        )
        .await;
    assert_eq!(listed.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn on_github_com_acquire_is_a_router_miss_and_nothing_is_acquirable() {
    let (gh, c, id) = setup(opts()).await;
    let s = c.session(id).await;
    gh.enqueue_scaleset_job(job("laptop"));
    let r = c
        .http
        .post(format!(
            "{}/_apis/runtime/runnerscalesets/{id}/acquirejobs?api-version=6.0-preview",
            c.service
        ))
        .bearer_auth(&s.token)
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "404 page not found\n");
    let a = c
        .call(
            Method::GET,
            &format!("_apis/runtime/runnerscalesets/{id}/acquirablejobs"),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_lapsed_assignment_is_canceled_and_assigned_again_under_a_new_job_id() {
    let mut o = opts();
    o.scaleset.lapse_after = Duration::from_millis(500);
    o.scaleset.poll_hold = Duration::from_secs(3);
    let (gh, c, id) = setup(o).await;
    let s = c.session(id).await;
    let run = gh.enqueue_scaleset_job(job("laptop"));
    let m = c.poll(&s, 0, Some(1)).await;
    let first = jobs(&m.json)[0].clone();
    let mut last = m.json["messageId"].as_u64().unwrap();
    c.ack(&s, last).await;
    // No runner takes it: the held poll wakes at the lapse.
    let t = Instant::now();
    let m = c.poll(&s, last, Some(1)).await;
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(types(&m.json), ["JobCompleted", "JobAssigned"]);
    let (done, again) = (&jobs(&m.json)[0], &jobs(&m.json)[1]);
    assert_eq!(done["jobId"], first["jobId"]);
    assert_eq!(
        (
            done["result"].as_str(),
            done["runnerId"].as_u64(),
            done["runnerName"].as_str()
        ),
        (Some("canceled"), Some(0), Some(""))
    );
    assert_ne!(again["jobId"], first["jobId"]);
    assert_eq!(again["workflowRunId"], run);
    last = m.json["messageId"].as_u64().unwrap();
    c.ack(&s, last).await;
    // Lapsed twice more by the test hook, then the third re-assignment lapses for good.
    for n in 0..3 {
        assert!(gh.lapse_assignment(Some(run)).is_some());
        let m = c.poll(&s, last, Some(1)).await;
        let want: &[&str] = if n < 2 {
            &["JobCompleted", "JobAssigned"]
        } else {
            &["JobCompleted"]
        };
        assert_eq!(types(&m.json), want);
        last = m.json["messageId"].as_u64().unwrap();
        c.ack(&s, last).await;
    }
    let all = gh.scaleset_jobs();
    assert_eq!(all.len(), 4);
    assert!(all
        .iter()
        .all(|j| j.state == JobState::Completed && j.result.as_deref() == Some("canceled")));
    assert_eq!(
        all.iter().map(|j| j.reassignments).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    let conclusion = gh.state(|st| st.actions_jobs[&run].conclusion.clone());
    assert_eq!(conclusion.as_deref(), Some("cancelled"));
    assert_eq!(gh.lapse_assignment(None), None);
}

#[tokio::test]
async fn a_runner_takes_only_its_scale_sets_assigned_jobs() {
    let (gh, c, alpha) = setup(opts()).await;
    let beta = c.create_set("beta", &[]).await["id"].as_u64().unwrap();
    let (sa, sb) = (c.session(alpha).await, c.session(beta).await);
    // A REST job and a job of alpha not assigned yet (no poll) are not for beta's runner.
    gh.enqueue(sim::github::JobSpec::default(), 1);
    let run_a = gh.enqueue_scaleset_job(job("laptop"));
    let run_b = gh.enqueue_scaleset_job(job("beta"));
    let rb = runner_session(
        &gh,
        c.jit(beta, "rb").await.json["encodedJITConfig"]
            .as_str()
            .unwrap(),
    )
    .await;
    let ra = runner_session(
        &gh,
        c.jit(alpha, "ra").await.json["encodedJITConfig"]
            .as_str()
            .unwrap(),
    )
    .await;
    assert!(runner_take(&gh, &rb).await.is_none());
    // Assigned to beta: beta's runner takes it, alpha's does not.
    assert_eq!(types(&c.poll(&sb, 0, Some(1)).await.json), ["JobAssigned"]);
    assert!(runner_take(&gh, &ra).await.is_none());
    let got = runner_take(&gh, &rb).await.expect("beta's job");
    assert_eq!(got.job_id, run_b);
    assert_eq!(types(&c.poll(&sa, 0, Some(1)).await.json), ["JobAssigned"]);
    assert_eq!(
        runner_take(&gh, &ra).await.expect("alpha's job").job_id,
        run_a
    );
    assert_eq!(
        gh.state(|st| st.queue.len()),
        1,
        "the REST job stays queued"
    );
}

#[tokio::test]
async fn lifecycle_messages_can_be_late_missing_or_wait_for_the_next_poll() {
    let mut o = opts();
    o.scaleset.poll_hold = Duration::from_millis(700);
    let (gh, c, id) = setup(o).await;
    let s = c.session(id).await;
    let rs = runner_session(
        &gh,
        c.jit(id, "r1").await.json["encodedJITConfig"]
            .as_str()
            .unwrap(),
    )
    .await;
    gh.set_lifecycle_hints(LifecycleHints {
        started: Delivery::Missing,
        completed: Delivery::Late { ms: 1000 },
        wake_gap: false,
    });
    gh.enqueue_scaleset_job(job("laptop"));
    let m = c.poll(&s, 0, Some(1)).await;
    let mut last = m.json["messageId"].as_u64().unwrap();
    c.ack(&s, last).await;
    let taken = runner_take(&gh, &rs).await.unwrap();
    runner_complete(&gh, taken.job_id, "Succeeded").await;
    let done = Instant::now();
    // No JobStarted ever; JobCompleted a second after the job ended.
    assert_eq!(c.poll(&s, last, Some(1)).await.status, StatusCode::ACCEPTED);
    let m = c.poll(&s, last, Some(1)).await;
    assert_eq!(types(&m.json), ["JobCompleted"]);
    assert!(
        done.elapsed() >= Duration::from_millis(990),
        "{:?}",
        done.elapsed()
    );
    last = m.json["messageId"].as_u64().unwrap();
    c.ack(&s, last).await;
    // The wake-up gap: an in-flight poll does not wake for a lifecycle message.
    gh.set_lifecycle_hints(LifecycleHints {
        wake_gap: true,
        ..LifecycleHints::default()
    });
    let rs = runner_session(
        &gh,
        c.jit(id, "r2").await.json["encodedJITConfig"]
            .as_str()
            .unwrap(),
    )
    .await;
    gh.enqueue_scaleset_job(job("laptop"));
    let m = c.poll(&s, last, Some(1)).await;
    assert_eq!(types(&m.json), ["JobAssigned"]);
    last = m.json["messageId"].as_u64().unwrap();
    let held = {
        let (c, s) = (c.clone(), s.clone());
        tokio::spawn(async move { c.poll(&s, last, Some(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    runner_take(&gh, &rs).await.unwrap();
    assert_eq!(held.await.unwrap().status, StatusCode::ACCEPTED);
    let t = Instant::now();
    let m = c.poll(&s, last, Some(1)).await;
    assert_eq!(types(&m.json), ["JobStarted"]);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "delivered on the next poll at once"
    );
}

#[tokio::test]
async fn runners_by_name_and_id_and_their_removal() {
    let (gh, c, id) = setup(opts()).await;
    let s = c.session(id).await;
    let a = c.jit(id, "r1").await;
    let rid = a.json["runner"]["id"].as_u64().unwrap();
    let blob = a.json["encodedJITConfig"].as_str().unwrap().to_string();
    let a = c.jit(id, "R1").await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.json["typeName"]
        .as_str()
        .unwrap()
        .contains("AgentExistsException"));
    let a = c
        .call(
            Method::GET,
            "_apis/distributedtask/pools/0/agents?agentName=r1",
            None,
        )
        .await;
    assert_eq!(
        a.json,
        json!({"count": 1, "value": [{"id": rid, "name": "r1", "runnerScaleSetId": id}]})
    );
    let agent = format!("_apis/distributedtask/pools/0/agents/{rid}");
    assert_eq!(c.call(Method::GET, &agent, None).await.json["name"], "r1");
    // Busy: neither the runner nor its scale set can be removed.
    gh.enqueue_scaleset_job(job("laptop"));
    c.poll(&s, 0, Some(1)).await;
    let rs = runner_session(&gh, &blob).await;
    let taken = runner_take(&gh, &rs).await.unwrap();
    let a = c.call(Method::DELETE, &agent, None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["typeName"], errors::JOB_STILL_RUNNING);
    let set = format!("_apis/runtime/runnerscalesets/{id}");
    assert_eq!(
        c.call(Method::DELETE, &set, None).await.status,
        StatusCode::BAD_REQUEST
    );
    // Done: the service removed it; removing it again is 204, getting it 404.
    runner_complete(&gh, taken.job_id, "Succeeded").await;
    assert_eq!(
        c.call(Method::DELETE, &agent, None).await.status,
        StatusCode::NO_CONTENT
    );
    let a = c.call(Method::GET, &agent, None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.json["typeName"]
        .as_str()
        .unwrap()
        .contains("AgentNotFoundException"));
    // An idle one is removed at once; an idle set too.
    let rid2 = c.jit(id, "r2").await.json["runner"]["id"].as_u64().unwrap();
    let agent2 = format!("_apis/distributedtask/pools/0/agents/{rid2}");
    assert_eq!(
        c.call(Method::DELETE, &agent2, None).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(gh.runners().is_empty());
    c.close(id, &s.id).await;
    assert_eq!(
        c.call(Method::DELETE, &set, None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.call(Method::GET, &set, None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn scale_sets_update_and_extra_labels_route_unless_dropped() {
    let (gh, c, id) = setup(opts()).await;
    let gpu = c.create_set("gpu-box", &["gpu"]).await;
    assert_eq!(gpu["labels"][1], json!({"type": "system", "name": "gpu"}));
    // A job with the set's name and an extra label routes to the set with both.
    let mut j = job("gpu-box");
    j.labels.push("GPU".into());
    gh.enqueue_scaleset_job(j);
    let gid = gpu["id"].as_u64().unwrap();
    assert_eq!(gh.scaleset_jobs()[0].set_id, Some(gid));
    // PATCH: name, group, labels.
    let group = gh.add_runner_group("linux");
    let a = c
        .call(
            Method::PATCH,
            &format!("_apis/runtime/runnerscalesets/{id}"),
            Some(
                json!({"name": "laptop2", "runnerGroupId": group, "RunnerSetting": {},
                "createdOn": "0001-01-01T00:00:00Z"}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        (a.json["name"].as_str(), a.json["runnerGroupName"].as_str()),
        (Some("laptop2"), Some("linux"))
    );
    assert_eq!(a.json["labels"][0]["name"], "laptop2");
    assert_eq!(
        a.json["runnerSetting"]["disableUpdate"], true,
        "an empty setting keeps it"
    );
    let g = c
        .call(
            Method::GET,
            "_apis/runtime/runnergroups/?groupName=LINUX",
            None,
        )
        .await;
    assert_eq!(g.json["value"][0]["id"], group);
    assert_eq!(g.json["value"][0]["isDefaultGroup"], false);
    // GHES without the flag: extras are dropped silently.
    let mut o = opts();
    o.scaleset.drop_extra_labels = true;
    let (gh, c, _) = setup(o).await;
    let set = c.create_set("gpu-box", &["gpu"]).await;
    assert_eq!(
        set["labels"],
        json!([{"type": "system", "name": "gpu-box"}])
    );
    let mut j = job("gpu-box");
    j.labels.push("gpu".into());
    gh.enqueue_scaleset_job(j);
    assert_eq!(
        gh.scaleset_jobs()[0].set_id,
        None,
        "it waits for a set with both"
    );
}

#[tokio::test]
async fn an_offline_runner_of_a_scale_set_is_removed_after_a_while() {
    let mut o = opts();
    o.scaleset.offline_runner_ttl = Duration::from_millis(500);
    let (gh, c, id) = setup(o).await;
    let blob = c.jit(id, "online").await.json["encodedJITConfig"]
        .as_str()
        .unwrap()
        .to_string();
    c.jit(id, "never-started").await;
    let _session = runner_session(&gh, &blob).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let a = c
        .call(Method::GET, "_apis/distributedtask/pools/0/agents", None)
        .await;
    assert_eq!(a.json["count"], 1);
    assert_eq!(a.json["value"][0]["name"], "online");
}
