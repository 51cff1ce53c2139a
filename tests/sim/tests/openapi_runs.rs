//! Every answer of the fake GitHub's runner-version deprecations endpoint is validated
//! against its contract in `openapi/actions-runs-openapi.json` (a copy of
//! `../shared/github-api/actions-runs-openapi.json`; the path is hand-written there and
//! marked so): a dated version, an undated one (null), one GitHub does not know (404),
//! for a repository and an organisation, and a server without the endpoint (404).
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use reqwest::StatusCode;
use serde_json::Value;
use sim::github::{FakeGithub, Options};

const SPEC: &str = include_str!("../openapi/actions-runs-openapi.json");

fn spec() -> Value {
    serde_json::from_str(SPEC).unwrap()
}

mod common;
use common::{resolve, to_json_schema};

#[test]
fn the_copy_matches_the_shared_contract() {
    common::assert_copy_matches("actions-runs-openapi.json", &spec());
}

fn check(spec: &Value, template: &str, status: u16, body: &str) {
    check_op(spec, "get", template, status, body)
}

fn check_op(spec: &Value, method: &str, template: &str, status: u16, body: &str) {
    let op = &spec["paths"][template][method];
    assert!(op.is_object(), "{method} {template} not in the spec");
    let resp = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("GET {template} has no {status} in the spec"));
    let resp = resolve(spec, resp);
    let schema = resp
        .pointer("/content/application~1json/schema")
        .unwrap_or_else(|| panic!("GET {template} {status} has a body"));
    let mut s = to_json_schema(schema);
    s["components"] = to_json_schema(&spec["components"]);
    let v = jsonschema::validator_for(&s).expect("schema compiles");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let errors: Vec<String> = v
        .iter_errors(&body)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "GET {template} {status}: {errors:?}\nbody: {body}"
    );
}

async fn get(gh: &FakeGithub, path: &str) -> (StatusCode, String) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", gh.url()))
        .header("User-Agent", "openapi-test")
        .header("Accept", "application/vnd.github+json")
        .bearer_auth(Options::default().token)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test]
async fn every_deprecations_answer_follows_the_contract() {
    let spec = spec();
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    for (prefix, template) in [
        (
            "/repos/octo/app",
            "/repos/{owner}/{repo}/actions/runners/deprecations/{version}",
        ),
        (
            "/orgs/octo",
            "/orgs/{org}/actions/runners/deprecations/{version}",
        ),
    ] {
        let path = |v: &str| format!("{prefix}/actions/runners/deprecations/{v}");
        // Dated: a past runtime deadline.
        let (s, b) = get(&gh, &path("2.336.0")).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        check(&spec, template, 200, &b);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["runner_version"], "2.336.0");
        assert_eq!(v["runtime_deprecates_at"], "2026-11-05T00:00:00Z");
        // The newest release: no date yet.
        let (s, b) = get(&gh, &path(sim::protocol::RUNNER_VERSION)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        check(&spec, template, 200, &b);
        assert!(serde_json::from_str::<Value>(&b).unwrap()["runtime_deprecates_at"].is_null());
        // A version GitHub does not know.
        let (s, b) = get(&gh, &path("9.9.9")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        check(&spec, template, 404, &b);
    }
    // A server that predates the endpoint answers 404 for the path itself.
    let old = FakeGithub::start(Options {
        deprecations_endpoint: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let (s, b) = get(&old, "/repos/octo/app/actions/runners/deprecations/2.336.0").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    check(
        &spec,
        "/repos/{owner}/{repo}/actions/runners/deprecations/{version}",
        404,
        &b,
    );
}

#[tokio::test]
async fn every_attempt_jobs_answer_follows_the_contract() {
    let spec = spec();
    let template = "/repos/{owner}/{repo}/actions/runs/{run_id}/attempts/{attempt_number}/jobs";
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    gh.enqueue(sim::github::JobSpec::default(), 1);
    let id = gh.state(|s| *s.actions_jobs.keys().next().unwrap());
    let path = format!("/repos/octo/app/actions/runs/{id}/attempts/1/jobs");
    // Queued, then in progress on a runner, then completed: each as the contract says.
    let (s, b) = get(&gh, &path).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    check(&spec, template, 200, &b);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["total_count"], 1);
    assert_eq!(v["jobs"][0]["status"], "queued");
    assert!(v["jobs"][0]["runner_name"].is_null());
    gh.state(|s| {
        let j = s.actions_jobs.get_mut(&id).unwrap();
        j.status = "in_progress".into();
        j.runner_id = Some(1000);
        j.runner_name = Some("ci-host-0-abc123".into());
        j.started_at = Some(chrono::Utc::now());
    });
    let (_, b) = get(&gh, &path).await;
    check(&spec, template, 200, &b);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["jobs"][0]["runner_name"], "ci-host-0-abc123");
    gh.state(|s| {
        let j = s.actions_jobs.get_mut(&id).unwrap();
        j.status = "completed".into();
        j.conclusion = Some("failure".into());
        j.completed_at = Some(chrono::Utc::now());
    });
    let (_, b) = get(&gh, &path).await;
    check(&spec, template, 200, &b);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        (
            v["jobs"][0]["status"].as_str(),
            v["jobs"][0]["conclusion"].as_str()
        ),
        (Some("completed"), Some("failure"))
    );
    // An attempt that does not exist.
    let (s, b) = get(
        &gh,
        &format!("/repos/octo/app/actions/runs/{id}/attempts/2/jobs"),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    check(&spec, template, 404, &b);
}

async fn post(gh: &FakeGithub, path: &str, token: &str) -> (StatusCode, String, Option<String>) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", gh.url()))
        .header("User-Agent", "openapi-test")
        .header("Accept", "application/vnd.github+json")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let accepted = r
        .headers()
        .get("x-accepted-github-permissions")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status(), r.text().await.unwrap(), accepted)
}

#[tokio::test]
async fn every_run_and_rerun_answer_follows_the_contract() {
    let spec = spec();
    let run_t = "/repos/{owner}/{repo}/actions/runs/{run_id}";
    let rerun_t = "/repos/{owner}/{repo}/actions/jobs/{job_id}/rerun";
    let token = Options::default().token;
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    gh.enqueue(sim::github::JobSpec::default(), 1);
    let id = gh.state(|s| *s.actions_jobs.keys().next().unwrap());
    let run = format!("/repos/octo/app/actions/runs/{id}");
    let (s, b) = get(&gh, &run).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    check(&spec, run_t, 200, &b);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["run_attempt"].as_u64()),
        (Some("queued"), Some(1))
    );
    // Not completed: GitHub refuses the re-run.
    let rerun = format!("/repos/octo/app/actions/jobs/{id}/rerun");
    let (s, b, _) = post(&gh, &rerun, &token).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    check_op(&spec, "post", rerun_t, 403, &b);
    // Its runner vanished: concluded failure, the run completed; the re-run is accepted
    // and makes attempt 2, queued again.
    gh.state(|s| {
        let j = s.actions_jobs.get_mut(&id).unwrap();
        j.status = "completed".into();
        j.conclusion = Some("failure".into());
        j.completed_at = Some(chrono::Utc::now());
    });
    let (_, b) = get(&gh, &run).await;
    check(&spec, run_t, 200, &b);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["conclusion"].as_str()),
        (Some("completed"), Some("failure"))
    );
    let (s, b, _) = post(&gh, &rerun, &token).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    check_op(&spec, "post", rerun_t, 201, &b);
    let (_, b) = get(&gh, &run).await;
    check(&spec, run_t, 200, &b);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["run_attempt"].as_u64()),
        (Some("queued"), Some(2))
    );
    assert!(v["previous_attempt_url"]
        .as_str()
        .unwrap()
        .ends_with("/attempts/1"));
    let (s, b) = get(&gh, &format!("{run}/attempts/2/jobs")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Queued again (behind the original, which no runner took in this test).
    let last = gh.state(|s| s.queue.back().map(|(j, _)| *j)).unwrap();
    assert_eq!(gh.state(|s| s.actions_jobs[&last].run_attempt), 2);
    // A fine-grained token with Actions read only: 403 naming the permission.
    let ro = FakeGithub::start(Options {
        token_kind: sim::github::TokenKind::FineGrained {
            administration: "write".into(),
            organization_self_hosted_runners: "none".into(),
            actions: "read".into(),
        },
        ..Options::default()
    })
    .await
    .unwrap();
    ro.enqueue(sim::github::JobSpec::default(), 1);
    let (s, b, accepted) = post(&ro, "/repos/octo/app/actions/jobs/1/rerun", &token).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    check_op(&spec, "post", rerun_t, 403, &b);
    assert_eq!(accepted.as_deref(), Some("actions=write"));
    // A run it does not know.
    let (s, _) = get(&gh, "/repos/octo/app/actions/runs/999999").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
