//! Every response body of the fake GitHub's App endpoints (and `/user`) is validated
//! against GitHub's own OpenAPI description (`openapi/app-auth-openapi.json`, a copy of
//! `../shared/github-api/app-auth-openapi.json`).
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sim::github::app::AppOptions;
use sim::github::{FakeGithub, Options};

const SPEC: &str = include_str!("../openapi/app-auth-openapi.json");

fn spec() -> Value {
    serde_json::from_str(SPEC).unwrap()
}

#[test]
fn the_copy_matches_the_shared_contract() {
    common::assert_copy_matches("app-auth-openapi.json", &spec());
}

mod common;
use common::{resolve, to_json_schema};

fn check(spec: &Value, template: &str, method: &str, status: u16, body: &str) {
    let op = &spec["paths"][template][method];
    assert!(op.is_object(), "{method} {template} not in the spec");
    let resp = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {template} has no {status} in the spec"));
    let resp = resolve(spec, resp);
    let Some(schema) = resp.pointer("/content/application~1json/schema") else {
        assert!(
            body.is_empty(),
            "{method} {template} {status}: no body expected"
        );
        return;
    };
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
        "{method} {template} {status}: {errors:?}\nbody: {body}"
    );
}

fn keypair(dir: &std::path::Path) -> (String, String) {
    let key = dir.join("key.pem");
    let public = dir.join("pub.pem");
    for args in [
        vec![
            "genrsa",
            "-traditional",
            "-out",
            key.to_str().unwrap(),
            "2048",
        ],
        vec![
            "rsa",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (
        std::fs::read_to_string(key).unwrap(),
        std::fs::read_to_string(public).unwrap(),
    )
}

fn jwt(key: &str, iat_shift: i64, exp_after: i64) -> String {
    let now = chrono::Utc::now().timestamp() + iat_shift;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"iat": now - 60, "exp": now + exp_after, "iss": "4242"}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

struct Api {
    gh: FakeGithub,
    http: reqwest::Client,
    spec: Value,
    /// `method template status` of every answer checked against the spec.
    covered: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.gh.url()))
            .header("User-Agent", "openapi-test")
            .header("Accept", "application/vnd.github+json")
            .bearer_auth(bearer);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    /// Call, expect `want`, and check the body against the spec's `template`.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        template: &str,
        bearer: &str,
        body: Option<Value>,
        want: StatusCode,
    ) -> String {
        let m = method.as_str().to_lowercase();
        let (s, b) = self.call(method, path, bearer, body).await;
        assert_eq!(s, want, "{m} {path}: {b}");
        check(&self.spec, template, &m, s.as_u16(), &b);
        self.covered
            .borrow_mut()
            .insert(format!("{m} {template} {}", s.as_u16()));
        b
    }
}

#[tokio::test]
async fn every_app_response_matches_the_spec_and_jwts_are_checked_as_github_does() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path());
    let a = Api {
        gh: FakeGithub::start(Options {
            app: Some(AppOptions::new(public)),
            ..Options::default()
        })
        .await
        .unwrap(),
        http: reqwest::Client::new(),
        spec: spec(),
        covered: Default::default(),
    };
    let good = jwt(&key, 0, 540);
    let (get, post) = (Method::GET, Method::POST);
    let repo_inst = "/repos/{owner}/{repo}/installation";
    a.expect(get.clone(), "/app", "/app", &good, None, StatusCode::OK)
        .await;
    let b = a
        .expect(
            get.clone(),
            "/repos/octo/app/installation",
            repo_inst,
            &good,
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["id"], 777);
    a.expect(
        get.clone(),
        "/repos/octo/elsewhere/installation",
        repo_inst,
        &good,
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    a.expect(
        get.clone(),
        "/orgs/acme/installation",
        "/orgs/{org}/installation",
        &good,
        None,
        StatusCode::OK,
    )
    .await;
    let tpl = "/app/installations/{installation_id}/access_tokens";
    let tokens = "/app/installations/777/access_tokens";
    let b = a
        .expect(post.clone(), tokens, tpl, &good, None, StatusCode::CREATED)
        .await;
    let token = serde_json::from_str::<Value>(&b).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(token.starts_with("ghs_"));
    a.expect(
        post.clone(),
        "/app/installations/1/access_tokens",
        tpl,
        &good,
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    a.expect(
        post.clone(),
        tokens,
        tpl,
        &good,
        Some(json!({"repositories": ["nope"]})),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    // JWTs: a bad signature, a clock 3 minutes fast (iat in the future), exp too far.
    let other = keypair(dir.path()).0;
    for (bad, want) in [
        (jwt(&other, 0, 540), "could not be decoded"),
        (jwt(&key, 180, 540), "'Issued at' claim ('iat')"),
        (
            jwt(&key, 0, 900),
            "'Expiration time' claim ('exp') is too far in the future",
        ),
        (
            jwt(&key, -700, 540),
            "'Expiration time' claim ('exp') must be",
        ),
    ] {
        let b = a
            .expect(
                post.clone(),
                tokens,
                tpl,
                &bad,
                None,
                StatusCode::UNAUTHORIZED,
            )
            .await;
        assert!(b.contains(want), "{want}: {b}");
    }
    // Within GitHub's leeway (20 s fast) is accepted.
    let (s, _) = a
        .call(post.clone(), tokens, &jwt(&key, 20, 540), None)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // The installation token works on the runner endpoints, not on /user.
    let runners = "/repos/octo/app/actions/runners";
    let (s, _) = a.call(get.clone(), runners, &token, None).await;
    assert_eq!(s, StatusCode::OK);
    a.expect(
        get.clone(),
        "/user",
        "/user",
        &token,
        None,
        StatusCode::FORBIDDEN,
    )
    .await;
    let pat = Options::default().token;
    a.expect(get.clone(), "/user", "/user", &pat, None, StatusCode::OK)
        .await;
    a.expect(
        get.clone(),
        "/user",
        "/user",
        "ghp_wrong",
        None,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // Suspended: no new token (403), and issued ones are refused.
    a.gh.state(|s| s.installation_suspended = true);
    a.expect(
        post.clone(),
        tokens,
        tpl,
        &good,
        None,
        StatusCode::FORBIDDEN,
    )
    .await;
    let (s, _) = a.call(get.clone(), runners, &token, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let b = a
        .expect(
            get.clone(),
            "/repos/octo/app/installation",
            repo_inst,
            &good,
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&b).unwrap()["suspended_at"],
        "2026-12-01T00:00:00Z"
    );
    a.gh.state(|s| s.installation_suspended = false);
    // Expired tokens are refused with GitHub's 401.
    a.gh.state(|s| {
        for e in s.installation_tokens.values_mut() {
            *e = chrono::Utc::now() - chrono::Duration::seconds(1);
        }
    });
    let (s, b) = a.call(get, runners, &token, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(b.contains("Bad credentials"));
    // Every response the spec declares for the endpoints the fake serves was produced,
    // but redirects and not-modified answers, which it never gives.
    let covered = a.covered.borrow();
    for (path, ops) in a.spec["paths"].as_object().unwrap() {
        if path == "/rate_limit" {
            continue;
        }
        for (m, op) in ops.as_object().unwrap() {
            for status in op["responses"].as_object().unwrap().keys() {
                let key = format!("{m} {path} {status}");
                assert!(
                    covered.contains(&key) || status == "301" || status == "304",
                    "never produced: {key}"
                );
            }
        }
    }
}
