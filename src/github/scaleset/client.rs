//! The scale-set service's calls (`scaleset-protocol.md` §1.4, §2), as one host's
//! client makes them: the admin connection from a registration token, then scale sets,
//! sessions, the queue and JIT configs. Each error is classified ([`ServiceError`]) so the
//! caller knows what to do; no call retries by itself.
//!
//! Request shape (§2): `api-version=6.0-preview` on every service call but the queue's,
//! `Content-Type: application/json` always, `Authorization: Bearer` with the admin JWT
//! (service calls) or the queue token (the queue), and no `Accept` except on the poll.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::errors::{classify, Call, ServiceError};
use super::types::{
    parse_message, AdminConnection, JitConfig, List, Message, RunnerGroup, RunnerScaleSet, Session,
};

/// The admin connection in hand.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The service URL (`https://broker.actions.githubusercontent.com/rest` on github.com).
    pub url: String,
    /// The admin JWT.
    pub token: String,
}

/// A client of the scale-set service.
pub struct Service {
    http: reqwest::Client,
    user_agent: String,
}

fn transport(e: reqwest::Error) -> ServiceError {
    ServiceError::Other {
        status: 0,
        type_name: String::new(),
        message: e.to_string(),
    }
}

impl Service {
    /// `poll_timeout` bounds a long poll (the service holds it about 50 s).
    pub fn new(user_agent: &str, poll_timeout: Duration) -> Result<Service, String> {
        let k = crate::os::sockets::Keepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            probes: 3,
            user_timeout: Duration::from_secs(60),
        };
        Service::tuned(user_agent, poll_timeout, &k)
    }

    /// With keepalive and `TCP_USER_TIMEOUT` on every connection (what the official
    /// listener never sets on its own): a dead path fails by itself, not after the poll's
    /// timeout. `timeout` bounds every call, the long poll included.
    pub fn tuned(
        user_agent: &str,
        timeout: Duration,
        k: &crate::os::sockets::Keepalive,
    ) -> Result<Service, String> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(30).min(timeout))
            .tcp_keepalive(k.idle)
            .tcp_keepalive_interval(k.interval)
            .tcp_keepalive_retries(k.probes)
            .tcp_user_timeout(k.user_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // A connection left idle (the JIT client's, between jobs) closes soon: an
            // idle host keeps only the poll's.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot build the scale-set client: {e}"))?;
        Ok(Service {
            http,
            user_agent: user_agent.to_string(),
        })
    }

    async fn send(
        &self,
        call: Call,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, String), ServiceError> {
        let r = req
            .header("User-Agent", &self.user_agent)
            .header("Content-Type", "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(transport)?;
        if (200..300).contains(&status) {
            Ok((status, text.trim_start_matches('\u{feff}').to_string()))
        } else {
            Err(classify(call, status, &text))
        }
    }

    /// §1.4: `POST {api}/actions/runner-registration` with `RemoteAuth <registration token>`
    /// for the config URL (`https://github.com/<org>` or `…/<owner>/<repo>`).
    pub async fn connect(
        &self,
        api_url: &str,
        config_url: &str,
        registration_token: &str,
    ) -> Result<Admin, ServiceError> {
        let body = format!(
            "{}\n",
            json!({"url": config_url.trim_end_matches('/'), "runner_event": "register"})
        );
        let req = self
            .http
            .post(format!(
                "{}/actions/runner-registration",
                api_url.trim_end_matches('/')
            ))
            .header("Authorization", format!("RemoteAuth {registration_token}"))
            .body(body);
        let (_, text) = self.send(Call::Admin, req).await?;
        let c: AdminConnection = decode(&text)?;
        if c.url.is_empty() || c.token.is_empty() {
            return Err(bad("the admin connection has no url or token"));
        }
        Ok(Admin {
            url: c.url,
            token: c.token,
        })
    }

    /// A service call under the admin connection.
    async fn service(
        &self,
        admin: &Admin,
        call: Call,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, String), ServiceError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}/{}{sep}api-version=6.0-preview",
            admin.url.trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        let mut req = self
            .http
            .request(method, url)
            .header("Authorization", format!("Bearer {}", admin.token));
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        self.send(call, req).await
    }

    /// §2.1: the runner group by name (`Default`).
    pub async fn runner_group(
        &self,
        admin: &Admin,
        name: &str,
    ) -> Result<RunnerGroup, ServiceError> {
        let path = format!("_apis/runtime/runnergroups/?groupName={}", enc(name));
        let (_, text) = self
            .service(admin, Call::Admin, Method::GET, &path, None)
            .await?;
        let l: List<RunnerGroup> = decode(&text)?;
        match l.value.len() {
            1 => Ok(l.value.into_iter().next().expect("one")),
            0 => Err(bad(&format!("no runner group named {name:?}"))),
            n => Err(bad(&format!("{n} runner groups named {name:?}"))),
        }
    }

    /// §2.2: the scale set named `name` in group `group_id`, if there is one.
    pub async fn scale_set_by_name(
        &self,
        admin: &Admin,
        group_id: u64,
        name: &str,
    ) -> Result<Option<RunnerScaleSet>, ServiceError> {
        let path = format!(
            "_apis/runtime/runnerscalesets?runnerGroupId={group_id}&name={}",
            enc(name)
        );
        let (_, text) = self
            .service(admin, Call::Admin, Method::GET, &path, None)
            .await?;
        let l: List<RunnerScaleSet> = decode(&text)?;
        match l.value.len() {
            0 | 1 => Ok(l.value.into_iter().next()),
            n => Err(bad(&format!("{n} scale sets named {name:?}"))),
        }
    }

    /// §2.2: create the scale set: its name as its first label, then `labels`.
    pub async fn create_scale_set(
        &self,
        admin: &Admin,
        group_id: u64,
        name: &str,
        labels: &[String],
    ) -> Result<RunnerScaleSet, ServiceError> {
        let mut all = vec![json!({"type": "System", "name": name})];
        for l in labels.iter().filter(|l| *l != name) {
            all.push(json!({"type": "System", "name": l}));
        }
        let body = json!({"name": name, "runnerGroupId": group_id, "labels": all,
            "RunnerSetting": {"disableUpdate": true}, "createdOn": "0001-01-01T00:00:00Z"});
        let (_, text) = self
            .service(
                admin,
                Call::Admin,
                Method::POST,
                "_apis/runtime/runnerscalesets",
                Some(body),
            )
            .await?;
        decode(&text)
    }

    /// §2.3: open the message session (`ownerName`: the host).
    pub async fn create_session(
        &self,
        admin: &Admin,
        set_id: u64,
        owner: &str,
    ) -> Result<Session, ServiceError> {
        let body = json!({"sessionId": "00000000-0000-0000-0000-000000000000", "ownerName": owner});
        let path = format!("_apis/runtime/runnerscalesets/{set_id}/sessions");
        let (_, text) = self
            .service(admin, Call::Session, Method::POST, &path, Some(body))
            .await?;
        usable(decode(&text)?)
    }

    /// §2.5: refresh the session (a new queue token, the same session).
    pub async fn refresh_session(
        &self,
        admin: &Admin,
        set_id: u64,
        session_id: &str,
    ) -> Result<Session, ServiceError> {
        let path = format!("_apis/runtime/runnerscalesets/{set_id}/sessions/{session_id}");
        let (_, text) = self
            .service(admin, Call::Session, Method::PATCH, &path, None)
            .await?;
        usable(decode(&text)?)
    }

    /// §2.10: close the session (a 404 is already closed).
    pub async fn delete_session(
        &self,
        admin: &Admin,
        set_id: u64,
        session_id: &str,
    ) -> Result<(), ServiceError> {
        let path = format!("_apis/runtime/runnerscalesets/{set_id}/sessions/{session_id}");
        match self
            .service(admin, Call::Session, Method::DELETE, &path, None)
            .await
        {
            Ok(_) | Err(ServiceError::SessionGone { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// §2.4: one long poll of the queue. `Ok(None)`: no message (202, or an empty 200).
    /// `capacity` is `X-ScaleSetMaxCapacity`, never 0.
    pub async fn poll(
        &self,
        session: &Session,
        last_message_id: u64,
        capacity: u32,
    ) -> Result<Option<Message>, ServiceError> {
        let mut url = session.message_queue_url.clone();
        if last_message_id > 0 {
            let sep = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{sep}lastMessageId={last_message_id}");
        }
        let req = self
            .http
            .get(url)
            .header("Accept", "application/json; api-version=6.0-preview")
            .header(
                "Authorization",
                format!("Bearer {}", session.message_queue_access_token),
            )
            .header("X-ScaleSetMaxCapacity", capacity.max(1).to_string());
        let (status, text) = self.send(Call::Queue, req).await?;
        if status == 202 {
            return Ok(None);
        }
        parse_message(&text).map_err(|e| bad(&e))
    }

    /// §2.7: acknowledge (delete) message `id`; 404 and 410 are already gone.
    pub async fn ack(&self, session: &Session, id: u64) -> Result<(), ServiceError> {
        let (base, query) = match session.message_queue_url.split_once('?') {
            Some((b, q)) => (b.to_string(), format!("?{q}")),
            None => (session.message_queue_url.clone(), String::new()),
        };
        let req = self
            .http
            .delete(format!("{}/{id}{query}", base.trim_end_matches('/')))
            .header(
                "Authorization",
                format!("Bearer {}", session.message_queue_access_token),
            );
        match self.send(Call::Queue, req).await {
            Ok(_) => Ok(()),
            Err(
                ServiceError::Other {
                    status: 404 | 410, ..
                }
                | ServiceError::SessionGone { .. },
            ) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// §2.6 (GHES): acquire jobs by `runnerRequestId`, with the queue token; the ids
    /// acquired.
    pub async fn acquire_jobs(
        &self,
        admin: &Admin,
        session: &Session,
        set_id: u64,
        ids: &[i64],
    ) -> Result<Vec<i64>, ServiceError> {
        let url = format!(
            "{}/_apis/runtime/runnerscalesets/{set_id}/acquirejobs?api-version=6.0-preview",
            admin.url.trim_end_matches('/')
        );
        let req = self
            .http
            .post(url)
            .header(
                "Authorization",
                format!("Bearer {}", session.message_queue_access_token),
            )
            .body(serde_json::to_string(ids).expect("numbers"));
        let (_, text) = self.send(Call::Queue, req).await?;
        let l: List<i64> = decode(&text)?;
        Ok(l.value)
    }

    /// §2.8: a JIT config for a runner of the scale set (200, `encodedJITConfig`).
    pub async fn generate_jit(
        &self,
        admin: &Admin,
        set_id: u64,
        name: &str,
    ) -> Result<JitConfig, ServiceError> {
        let path = format!("_apis/runtime/runnerscalesets/{set_id}/generatejitconfig");
        let body = json!({"name": name, "workFolder": ""});
        let (_, text) = self
            .service(admin, Call::Admin, Method::POST, &path, Some(body))
            .await?;
        decode(&text)
    }

    /// §2.9: remove a runner (204, also when it does not exist).
    pub async fn remove_runner(&self, admin: &Admin, runner_id: u64) -> Result<(), ServiceError> {
        let path = format!("_apis/distributedtask/pools/0/agents/{runner_id}");
        match self
            .service(admin, Call::Admin, Method::DELETE, &path, None)
            .await
        {
            Ok(_) | Err(ServiceError::RunnerNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn bad(why: &str) -> ServiceError {
    ServiceError::Other {
        status: 200,
        type_name: String::new(),
        message: why.to_string(),
    }
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ServiceError> {
    serde_json::from_str(text).map_err(|e| bad(&format!("cannot decode the service's answer: {e}")))
}

fn usable(s: Session) -> Result<Session, ServiceError> {
    match s.unusable() {
        Some(why) => Err(bad(why)),
        None => Ok(s),
    }
}
