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
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/github-api/app-auth-openapi.json"
    );
    if let Ok(text) = std::fs::read_to_string(shared) {
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            spec(),
            "openapi/app-auth-openapi.json is stale: copy it from shared/"
        );
    }
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
}

#[tokio::test]
async fn every_app_response_matches_the_spec_and_jwts_are_checked_as_github_does() {
    let spec = spec();
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
    };
    let good = jwt(&key, 0, 540);
    let mut covered = std::collections::BTreeSet::new();
    let mut seen = |t: &str, m: &str, s: StatusCode, b: &str| {
        check(&spec, t, m, s.as_u16(), b);
        covered.insert(format!("{m} {t} {}", s.as_u16()));
    };
    let (s, b) = a.call(Method::GET, "/app", &good, None).await;
    assert_eq!(s, StatusCode::OK);
    seen("/app", "get", s, &b);
    let (s, b) = a
        .call(Method::GET, "/repos/octo/app/installation", &good, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    seen("/repos/{owner}/{repo}/installation", "get", s, &b);
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["id"], 777);
    let (s, b) = a
        .call(
            Method::GET,
            "/repos/octo/elsewhere/installation",
            &good,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    seen("/repos/{owner}/{repo}/installation", "get", s, &b);
    let (s, b) = a
        .call(Method::GET, "/orgs/acme/installation", &good, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    seen("/orgs/{org}/installation", "get", s, &b);
    let tpl = "/app/installations/{installation_id}/access_tokens";
    let (s, b) = a
        .call(
            Method::POST,
            "/app/installations/777/access_tokens",
            &good,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    seen(tpl, "post", s, &b);
    let token = serde_json::from_str::<Value>(&b).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(token.starts_with("ghs_"));
    let (s, b) = a
        .call(
            Method::POST,
            "/app/installations/1/access_tokens",
            &good,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    seen(tpl, "post", s, &b);
    let (s, b) = a
        .call(
            Method::POST,
            "/app/installations/777/access_tokens",
            &good,
            Some(json!({"repositories": ["nope"]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    seen(tpl, "post", s, &b);
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
        let (s, b) = a
            .call(
                Method::POST,
                "/app/installations/777/access_tokens",
                &bad,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(b.contains(want), "{want}: {b}");
        seen(tpl, "post", s, &b);
    }
    // Within GitHub's leeway (20 s fast) is accepted.
    let (s, _) = a
        .call(
            Method::POST,
            "/app/installations/777/access_tokens",
            &jwt(&key, 20, 540),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // The installation token works on the runner endpoints, not on /user.
    let (s, _) = a
        .call(Method::GET, "/repos/octo/app/actions/runners", &token, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = a.call(Method::GET, "/user", &token, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    seen("/user", "get", s, &b);
    let pat = Options::default().token;
    let (s, b) = a.call(Method::GET, "/user", &pat, None).await;
    assert_eq!(s, StatusCode::OK);
    seen("/user", "get", s, &b);
    let (s, b) = a.call(Method::GET, "/user", "ghp_wrong", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    seen("/user", "get", s, &b);
    // Suspended: no new token (403), and issued ones are refused.
    a.gh.state(|s| s.installation_suspended = true);
    let (s, b) = a
        .call(
            Method::POST,
            "/app/installations/777/access_tokens",
            &good,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    seen(tpl, "post", s, &b);
    let (s, _) = a
        .call(Method::GET, "/repos/octo/app/actions/runners", &token, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = a
        .call(Method::GET, "/repos/octo/app/installation", &good, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&b).unwrap()["suspended_at"],
        "2026-12-01T00:00:00Z"
    );
    seen("/repos/{owner}/{repo}/installation", "get", s, &b);
    a.gh.state(|s| s.installation_suspended = false);
    // Expired tokens are refused with GitHub's 401.
    a.gh.state(|s| {
        for e in s.installation_tokens.values_mut() {
            *e = chrono::Utc::now() - chrono::Duration::seconds(1);
        }
    });
    let (s, b) = a
        .call(Method::GET, "/repos/octo/app/actions/runners", &token, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(b.contains("Bad credentials"));
    // Every response the spec declares for the endpoints the fake serves was produced,
    // but redirects and not-modified answers, which it never gives.
    for (path, ops) in spec["paths"].as_object().unwrap() {
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
