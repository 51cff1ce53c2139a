//! The listener's session with the broker: created as the runner does (retries, session
//! conflicts, the deprecated-version and clock-skew paths), and deleted on exit.

use std::time::Duration;

use chrono::Utc;

use super::{Next, Runner};
use crate::protocol::{Script, SessionRequest, SessionResponse};

impl Runner {
    pub(super) async fn delete_session(&mut self) {
        if let Some(sid) = self.session.take() {
            let _ = self
                .http
                .delete(self.url(&format!("/_sim/sessions/{sid}")))
                .timeout(Duration::from_secs(30))
                .send()
                .await;
        }
    }

    pub(super) fn version_deprecated(&self) -> i32 {
        self.term.error(&format!(
            "An error occurred: Runner version v{} is deprecated and cannot receive messages.",
            super::version()
        ));
        let env = std::env::var("ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE")
            .unwrap_or_default()
            .to_ascii_lowercase();
        if ["1", "true", "$true"].contains(&env.as_str()) {
            7
        } else {
            1
        }
    }

    /// The OAuth clock-skew path: the line every 30 s for 1800 s, then exit 1.
    pub(super) async fn clock_skew(&mut self) -> i32 {
        let mut waited = 0.0;
        loop {
            self.term.error("The local machine's clock may be out of sync with the server time by more than five minutes. Please sync your clock with your domain or internet time and try again.");
            if waited >= 1800.0 {
                self.term
                    .error("Stopped retrying OAuth token request exception after 1800 seconds.");
                return 1;
            }
            if self.sleep_or_shutdown(self.scaled(30.0)).await {
                return self.exiting().await;
            }
            waited += 30.0;
        }
    }

    /// Create a session, retrying as the runner does; `Ok(script)` once connected.
    pub(super) async fn create_session(&mut self) -> Result<Script, Next> {
        let name = self.settings.agent_name.clone();
        let mut conflicts = 0u32;
        loop {
            if *self.shutdown.borrow() {
                return Err(Next::Exit(self.exiting().await));
            }
            self.term.success("Connected to GitHub");
            let req = SessionRequest {
                client_id: self.creds.data.client_id.clone(),
                local_time_ms: Utc::now().timestamp_millis(),
                version: super::version(),
            };
            let resp = self
                .http
                .post(self.url("/_sim/sessions"))
                .json(&req)
                .timeout(Duration::from_secs(60))
                .send()
                .await;
            let retry_msg = match resp {
                Ok(r) if r.status().as_u16() == 201 => {
                    let Ok(s) = r.json::<SessionResponse>().await else {
                        self.term
                            .error("An error occurred: Unexpected session response.");
                        return Err(Next::Exit(2));
                    };
                    self.session = Some(s.session_id);
                    self.reconnected();
                    return Ok(s.script);
                }
                Ok(r) if r.status().as_u16() == 409 => {
                    self.term.error("A session for this runner already exists.");
                    conflicts += 1;
                    self.connect_error(&format!(
                        "The actions runner {name} already has an active session."
                    ));
                    if conflicts * 30 >= 240 {
                        self.term.error(
                            "Stop retry on SessionConflictException after retried for 240 seconds.",
                        );
                        self.term.error(&format!(
                            "Failed to create session. The actions runner {name} already has an active session."
                        ));
                        return Err(Next::Exit(5));
                    }
                    None
                }
                Ok(r) if r.status().as_u16() == 401 => {
                    self.term.error("Failed to create a session. The runner registration has been deleted from the server, please re-configure. Runner registrations are automatically deleted for runners that have not connected to the service recently.");
                    return Err(Next::Exit(1));
                }
                Ok(r) if r.status().as_u16() == 404 => {
                    self.term.error(
                        "The runner no longer exists on the server. Please reconfigure the runner.",
                    );
                    self.term
                        .error("Failed to create session. The runner no longer exists.");
                    return Err(Next::Exit(1));
                }
                Ok(r) if r.status().as_u16() == 400 => {
                    return Err(Next::Exit(self.clock_skew().await));
                }
                Ok(r) if r.status().as_u16() == 403 => {
                    return Err(Next::Exit(self.version_deprecated()));
                }
                Ok(r) => Some(format!(
                    "Response status code does not indicate success: {} ({}).",
                    r.status().as_u16(),
                    r.status().canonical_reason().unwrap_or("Error")
                )),
                Err(e) if e.is_timeout() => {
                    Some("The HTTP request timed out after 00:01:00.".to_string())
                }
                Err(_) => Some(format!(
                    "Connection refused ({})",
                    self.settings.server_url.trim_start_matches("http://")
                )),
            };
            if let Some(msg) = retry_msg {
                self.connect_error(&msg);
            }
            // `_sessionCreationRetryInterval` is 30 s.
            if self.sleep_or_shutdown(self.scaled(30.0)).await {
                return Err(Next::Exit(self.exiting().await));
            }
        }
    }
}
