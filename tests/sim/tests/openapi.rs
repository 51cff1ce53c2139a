//! Every response body the fake GitHub can produce on the runner endpoints is validated
//! against GitHub's own OpenAPI description (`openapi/runners-openapi.json`, a copy of
//! `../shared/github-api/runners-openapi.json`).
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sim::github::{FakeGithub, Options, TokenKind};

const SPEC: &str = include_str!("../openapi/runners-openapi.json");

fn spec() -> Value {
    serde_json::from_str(SPEC).unwrap()
}

#[test]
fn the_copy_matches_the_shared_contract() {
    common::assert_copy_matches("runners-openapi.json", &spec());
}

mod common;
use common::{resolve, to_json_schema};

/// The schema for (path template, method, status), or None for a body-less answer.
fn response_schema(spec: &Value, template: &str, method: &str, status: u16) -> Option<Value> {
    let op = &spec["paths"][template][method];
    assert!(op.is_object(), "{method} {template} not in the spec");
    let resp = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {template} has no {status} in the spec"));
    let resp = resolve(spec, resp);
    let schema = resp.pointer("/content/application~1json/schema")?;
    let mut s = to_json_schema(schema);
    s["components"] = to_json_schema(&spec["components"]);
    Some(s)
}

fn schema_of(spec: &Value, name: &str) -> Value {
    let mut s = json!({"$ref": format!("#/components/schemas/{name}")});
    s["components"] = to_json_schema(&spec["components"]);
    s
}

fn check(schema: &Value, body: &Value, what: &str) {
    let v = jsonschema::validator_for(schema).expect("schema compiles");
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\nbody: {body}");
}

struct Api {
    gh: FakeGithub,
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.gh.url()))
            .header("User-Agent", "openapi-test")
            .header("Accept", "application/vnd.github+json")
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }
}

async fn api(opts: Options) -> Api {
    let token = opts.token.clone();
    Api {
        gh: FakeGithub::start(opts).await.unwrap(),
        http: reqwest::Client::new(),
        token,
    }
}

#[tokio::test]
async fn every_fake_response_matches_the_spec() {
    let spec = spec();
    let a = api(Options::default()).await;
    let mut covered = std::collections::BTreeSet::new();
    for (prefix, tpl) in [
        ("/repos/octo/app", "/repos/{owner}/{repo}"),
        ("/orgs/acme", "/orgs/{org}"),
    ] {
        let scope = prefix.trim_start_matches('/').to_lowercase();
        let mut validate =
            |method: Method, path: &str, sub: &str, status: StatusCode, body: &str| {
                let t = format!("{tpl}/actions/runners{sub}");
                let m = method.as_str().to_lowercase();
                covered.insert(format!("{m} {t} {}", status.as_u16()));
                match response_schema(&spec, &t, &m, status.as_u16()) {
                    Some(schema) => check(
                        &schema,
                        &serde_json::from_str(body)
                            .unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
                        &format!("{m} {path} {status}"),
                    ),
                    None => assert!(
                        body.is_empty(),
                        "{m} {path} {status} must have no body: {body}"
                    ),
                }
            };
        // generate-jitconfig: 201, 409, 422.
        let p = format!("{prefix}/actions/runners/generate-jitconfig");
        let good = json!({"name": "New runner", "runner_group_id": 1, "labels": ["self-hosted", "X64", "macOS", "no-gpu"], "work_folder": "_work"});
        let (s, _, b) = a.call(Method::POST, &p, Some(good.clone())).await;
        assert_eq!(s, StatusCode::CREATED);
        validate(Method::POST, &p, "/generate-jitconfig", s, &b);
        let id = serde_json::from_str::<Value>(&b).unwrap()["runner"]["id"]
            .as_u64()
            .unwrap();
        let (s, _, b) = a.call(Method::POST, &p, Some(good)).await;
        assert_eq!(s, StatusCode::CONFLICT);
        validate(Method::POST, &p, "/generate-jitconfig", s, &b);
        for bad in [
            json!({"name": "x", "runner_group_id": 1, "labels": []}),
            json!({"labels": ["a"]}),
            json!({"name": "y", "runner_group_id": 1, "labels": ["x".repeat(257)]}),
        ] {
            let (s, _, b) = a.call(Method::POST, &p, Some(bad)).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
            validate(Method::POST, &p, "/generate-jitconfig", s, &b);
        }
        // registration-token and remove-token: 201.
        for sub in ["/registration-token", "/remove-token"] {
            let p = format!("{prefix}/actions/runners{sub}");
            let (s, _, b) = a.call(Method::POST, &p, None).await;
            assert_eq!(s, StatusCode::CREATED);
            validate(Method::POST, &p, sub, s, &b);
        }
        // list, paginated, with the Link header.
        for i in 0..35 {
            a.gh.add_runner(&scope, &format!("r{i}"), i % 3 == 0);
        }
        let p = format!("{prefix}/actions/runners");
        let (s, h, b) = a.call(Method::GET, &p, None).await;
        assert_eq!(s, StatusCode::OK);
        validate(Method::GET, &p, "", s, &b);
        let link = h.get("link").unwrap().to_str().unwrap();
        assert!(
            link.contains("rel=\"next\"")
                && link.contains("rel=\"last\"")
                && link.contains("page=2"),
            "{link}"
        );
        let (s, _, b) = a
            .call(Method::GET, &format!("{p}?name=r3&per_page=100"), None)
            .await;
        validate(Method::GET, &p, "", s, &b);
        assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["total_count"], 1);
        // downloads.
        let p = format!("{prefix}/actions/runners/downloads");
        let (s, _, b) = a.call(Method::GET, &p, None).await;
        validate(Method::GET, &p, "/downloads", s, &b);
        // get, delete (422 busy, 204).
        let p = format!("{prefix}/actions/runners/{id}");
        let (s, _, b) = a.call(Method::GET, &p, None).await;
        assert_eq!(s, StatusCode::OK);
        validate(Method::GET, &p, "/{runner_id}", s, &b);
        a.gh.state(|st| st.runners.get_mut(&id).unwrap().busy = true);
        let (s, _, b) = a.call(Method::DELETE, &p, None).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        validate(Method::DELETE, &p, "/{runner_id}", s, &b);
        a.gh.state(|st| st.runners.get_mut(&id).unwrap().busy = false);
        let (s, _, b) = a.call(Method::DELETE, &p, None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        validate(Method::DELETE, &p, "/{runner_id}", s, &b);
    }
    // generate-jitconfig's 404, from a server without JIT.
    let old = api(Options {
        jit: false,
        ..Options::default()
    })
    .await;
    let (s, _, b) = old
        .call(
            Method::POST,
            "/repos/octo/app/actions/runners/generate-jitconfig",
            Some(json!({"name": "n", "runner_group_id": 1, "labels": ["a"]})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    check(
        &response_schema(
            &spec,
            "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
            "post",
            404,
        )
        .unwrap(),
        &serde_json::from_str(&b).unwrap(),
        "404",
    );
    covered.insert("post /repos/{owner}/{repo}/actions/runners/generate-jitconfig 404".into());

    // Every response the spec declares for these operations was produced.
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (m, op) in ops.as_object().unwrap() {
            for status in op["responses"].as_object().unwrap().keys() {
                let key = format!("{m} {path} {status}");
                let org_404 = path.starts_with("/orgs") && status == "404";
                assert!(covered.contains(&key) || org_404, "never produced: {key}");
            }
        }
    }
}

#[tokio::test]
async fn error_answers_are_basic_errors() {
    let spec = spec();
    let basic = schema_of(&spec, "basic-error");
    let a = api(Options::default()).await;
    // 401: revoked token, and no token.
    a.gh.state(|s| s.revoked = true);
    let (s, h, b) = a
        .call(Method::GET, "/repos/octo/app/actions/runners", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    check(&basic, &serde_json::from_str(&b).unwrap(), "401");
    assert!(h.contains_key("x-ratelimit-remaining"));
    a.gh.state(|s| s.revoked = false);
    // 404 for a classic token without `repo` (GitHub hides private repositories).
    a.gh.state(|s| {
        s.token_kind = Some(TokenKind::Classic {
            scopes: vec!["public_repo".into()],
        })
    });
    let (s, _, b) = a
        .call(
            Method::POST,
            "/repos/octo/app/actions/runners/registration-token",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    check(&basic, &serde_json::from_str(&b).unwrap(), "404");
    // 403 for a fine-grained token without write, naming the permission it needs.
    a.gh.state(|s| {
        s.token_kind = Some(TokenKind::FineGrained {
            administration: "read".into(),
            organization_self_hosted_runners: "none".into(),
            actions: "write".into(),
        })
    });
    let (s, h, b) = a
        .call(
            Method::POST,
            "/repos/octo/app/actions/runners/registration-token",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    check(&basic, &serde_json::from_str(&b).unwrap(), "403");
    assert_eq!(h["x-accepted-github-permissions"], "administration=write");
    assert!(
        !h.contains_key("x-oauth-scopes"),
        "fine-grained tokens send no scopes header"
    );
    // Rate limits: 403 and 429, with and without retry-after, primary with reset.
    use sim::github::{Fault, FaultKind};
    for (status, retry_after, primary) in [
        (429, Some(5), false),
        (429, None, false),
        (403, None, false),
        (403, Some(7), false),
        (403, None, true),
    ] {
        a.gh.fault(Fault {
            body: None,
            method: None,
            path: None,
            kind: FaultKind::RateLimit {
                status,
                retry_after,
                primary,
            },
            times: 1,
        });
        let (s, h, b) = a.call(Method::GET, "/user", None).await;
        assert_eq!(s.as_u16(), status);
        check(&basic, &serde_json::from_str(&b).unwrap(), "rate limit");
        assert_eq!(
            h.get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap()),
            retry_after
        );
        if primary {
            assert_eq!(h["x-ratelimit-remaining"], "0");
            assert!(
                h["x-ratelimit-reset"]
                    .to_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
                    > chrono::Utc::now().timestamp()
            );
        } else {
            assert!(b.contains("secondary rate limit"), "{b}");
        }
    }
    // 5xx.
    a.gh.fault(Fault {
        body: None,
        method: None,
        path: None,
        kind: FaultKind::Status { status: 502 },
        times: 1,
    });
    let (s, _, b) = a.call(Method::GET, "/user", None).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    check(&basic, &serde_json::from_str(&b).unwrap(), "502");
}

#[tokio::test]
async fn rest_headers_are_githubs() {
    let a = api(Options {
        token_expiration: Some("2027-10-12 09:00:00 UTC".into()),
        ..Options::default()
    })
    .await;
    let (s, h, _) = a.call(Method::GET, "/user", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-oauth-scopes"], "repo, admin:org");
    assert_eq!(
        h["github-authentication-token-expiration"],
        "2027-10-12 09:00:00 UTC"
    );
    for k in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-used",
        "x-ratelimit-reset",
        "x-ratelimit-resource",
        "date",
        "x-github-request-id",
    ] {
        assert!(h.contains_key(k), "{k}");
    }
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    // Requests without a User-Agent are rejected, as GitHub does.
    let resp = reqwest::Client::new()
        .get(format!("{}/user", a.gh.url()))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // GHES form: the same API under /api/v3.
    let (s, _, _) = a.call(Method::GET, "/api/v3/user", None).await;
    assert_eq!(s, StatusCode::OK);
}

/// With release tarballs (the fake runner at a version), the downloads listing still
/// follows the spec, and its checksum is the served tarball's.
#[tokio::test]
async fn the_downloads_of_served_releases_match_the_spec_and_their_checksum() {
    use sha2::{Digest, Sha256};
    let spec = spec();
    let a = api(Options {
        runner_binary: Some(env!("CARGO_BIN_EXE_fake-runner").into()),
        latest_runner_version: "2.339.0".into(),
        ..Options::default()
    })
    .await;
    let (s, _, b) = a
        .call(
            Method::GET,
            "/repos/octo/app/actions/runners/downloads",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let schema = response_schema(
        &spec,
        "/repos/{owner}/{repo}/actions/runners/downloads",
        "get",
        200,
    )
    .unwrap();
    let body: Value = serde_json::from_str(&b).unwrap();
    check(&schema, &body, "downloads with releases");
    let app = &body[0];
    let tarball = reqwest::get(app["download_url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        format!("{:x}", Sha256::digest(&tarball)),
        app["sha256_checksum"].as_str().unwrap()
    );
}
