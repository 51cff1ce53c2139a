//! A scale-set client for the tests, speaking the wire protocol as actions/scaleset v0.4.0
//! does (reference 1.3–2.10): headers, query, bodies; and the fake runner's `/_sim` side,
//! driven by hand.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sim::github::{FakeGithub, Options};

pub const UA: &str =
    r#"{"system":"runner-supervisor","version":"test","subsystem":"listener","kind":"scaleset"}"#;

/// An answer: status, body text, and the body as JSON (Null when it is not).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub text: String,
    pub json: Value,
    pub content_type: String,
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap_or(Value::Null);
    Answer {
        status,
        text,
        json,
        content_type,
    }
}

/// The admin connection and what a listener keeps.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub gh: String,
    pub scope: String,
    pub service: String,
    pub admin: String,
}

impl Client {
    /// A registration token for `scope` (`orgs/octo`, `repos/octo/app`), then the admin
    /// connection.
    pub async fn connect(gh: &FakeGithub, scope: &str) -> Client {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut c = Client {
            http,
            gh: gh.url(),
            scope: scope.to_string(),
            service: String::new(),
            admin: String::new(),
        };
        let a = c.registration().await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        c.service = a.json["url"].as_str().unwrap().to_string();
        c.admin = a.json["token"].as_str().unwrap().to_string();
        c
    }

    /// `POST /api/v3/{scope}/actions/runners/registration-token`, then
    /// `POST /api/v3/actions/runner-registration`.
    pub async fn registration(&self) -> Answer {
        let r = self
            .http
            .post(format!(
                "{}/api/v3/{}/actions/runners/registration-token",
                self.gh, self.scope
            ))
            .header(
                "Authorization",
                format!("Bearer {}", Options::default().token),
            )
            .header("Content-Type", "application/vnd.github.v3+json")
            .header("User-Agent", UA)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let token: Value = r.json().await.unwrap();
        let config_url = format!(
            "https://github.com/{}",
            self.scope.split_once('/').unwrap().1
        );
        let r = self
            .http
            .post(format!("{}/api/v3/actions/runner-registration", self.gh))
            .header(
                "Authorization",
                format!("RemoteAuth {}", token["token"].as_str().unwrap()),
            )
            .header("Content-Type", "application/json")
            .header("User-Agent", UA)
            .body(format!(
                "{}\n",
                json!({"url": config_url, "runner_event": "register"})
            ))
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    /// An Actions-service call under the service URL, as `newActionsServiceRequest` makes it.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}/{}{sep}api-version=6.0-preview",
            self.service.trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        let mut req = self
            .http
            .request(method, url)
            .header("Content-Type", "application/json")
            .header("Authorization", format!("Bearer {}", self.admin))
            .header("User-Agent", UA);
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        answer(req.send().await.unwrap()).await
    }

    pub async fn create_set(&self, name: &str, extra: &[&str]) -> Value {
        let mut labels = vec![json!({"type": "System", "name": name})];
        labels.extend(extra.iter().map(|l| json!({"type": "System", "name": l})));
        let a = self
            .call(
                Method::POST,
                "_apis/runtime/runnerscalesets",
                Some(json!({"name": name, "runnerGroupId": 1, "labels": labels,
                    "RunnerSetting": {"disableUpdate": true}, "createdOn": "0001-01-01T00:00:00Z"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        a.json
    }

    pub async fn create_session(&self, set: u64, owner: &str) -> Answer {
        self.call(
            Method::POST,
            &format!("_apis/runtime/runnerscalesets/{set}/sessions"),
            Some(json!({"sessionId": "00000000-0000-0000-0000-000000000000", "ownerName": owner})),
        )
        .await
    }

    /// A session that must open: (session id, queue URL, queue token).
    pub async fn session(&self, set: u64) -> Session {
        let a = self.create_session(set, "host-a").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        Session::from(&a.json)
    }

    pub async fn refresh(&self, set: u64, sid: &str) -> Answer {
        self.call(
            Method::PATCH,
            &format!("_apis/runtime/runnerscalesets/{set}/sessions/{sid}"),
            None,
        )
        .await
    }

    pub async fn close(&self, set: u64, sid: &str) -> Answer {
        self.call(
            Method::DELETE,
            &format!("_apis/runtime/runnerscalesets/{set}/sessions/{sid}"),
            None,
        )
        .await
    }

    /// `generatejitconfig`.
    pub async fn jit(&self, set: u64, name: &str) -> Answer {
        self.call(
            Method::POST,
            &format!("_apis/runtime/runnerscalesets/{set}/generatejitconfig"),
            Some(json!({"name": name, "workFolder": ""})),
        )
        .await
    }

    /// `GET {queue}?lastMessageId=N` (only when N > 0), `X-ScaleSetMaxCapacity` when given.
    pub async fn poll(&self, s: &Session, last: u64, capacity: Option<i64>) -> Answer {
        let mut url = s.queue.clone();
        if last > 0 {
            url = format!("{url}?lastMessageId={last}");
        }
        let mut req = self
            .http
            .get(url)
            .header("Accept", "application/json; api-version=6.0-preview")
            .header("Authorization", format!("Bearer {}", s.token))
            .header("User-Agent", UA);
        if let Some(c) = capacity {
            req = req.header("X-ScaleSetMaxCapacity", c.to_string());
        }
        answer(req.send().await.unwrap()).await
    }

    /// `DELETE {queue}/{id}`.
    pub async fn ack(&self, s: &Session, id: u64) -> StatusCode {
        self.http
            .delete(format!("{}/{id}", s.queue))
            .header("Content-Type", "application/json")
            .header("Authorization", format!("Bearer {}", s.token))
            .header("User-Agent", UA)
            .send()
            .await
            .unwrap()
            .status()
    }
}

/// A session as the client keeps it.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub queue: String,
    pub token: String,
}

impl From<&Value> for Session {
    fn from(v: &Value) -> Session {
        Session {
            id: v["sessionId"].as_str().unwrap().to_string(),
            queue: v["messageQueueUrl"].as_str().unwrap().to_string(),
            token: v["messageQueueAccessToken"].as_str().unwrap().to_string(),
        }
    }
}

/// The job messages of a 200 message: `body` is a JSON string holding an array.
pub fn jobs(msg: &Value) -> Vec<Value> {
    let body = msg["body"].as_str().expect("body is a string");
    serde_json::from_str::<Vec<Value>>(body).expect("an array")
}

/// The message types of a 200 message, in order.
pub fn types(msg: &Value) -> Vec<String> {
    jobs(msg)
        .iter()
        .map(|j| j["messageType"].as_str().unwrap().to_string())
        .collect()
}

/// The fake runner's side, by hand: a session from the JIT config's credentials.
pub async fn runner_session(gh: &FakeGithub, jit: &str) -> String {
    let files = sim::protocol::decode_jit_config(jit).unwrap();
    let creds: Value = serde_json::from_slice(&files[".credentials"]).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/sessions", gh.url()))
        .json(&json!({
            "client_id": creds["data"]["clientId"],
            "local_time_ms": chrono::Utc::now().timestamp_millis(),
            "version": sim::protocol::RUNNER_VERSION,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The runner's message poll: the job it is given, if any.
pub async fn runner_take(gh: &FakeGithub, sid: &str) -> Option<sim::protocol::JobMessage> {
    let r = reqwest::get(format!("{}/_sim/sessions/{sid}/message", gh.url()))
        .await
        .unwrap();
    match r.status().as_u16() {
        200 => Some(r.json().await.unwrap()),
        202 => None,
        other => panic!("runner poll: {other}"),
    }
}

/// The runner reports its job done.
pub async fn runner_complete(gh: &FakeGithub, job: u64, result: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/jobs/{job}/complete", gh.url()))
        .json(&json!({"result": result}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
