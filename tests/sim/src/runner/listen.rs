//! Listening for jobs: the message long-poll, what the script does to an idle listener
//! (connection loss, recovery, giving up), and the jobs it takes.

use std::time::Duration;

use rand::Rng;

use super::{wait_shutdown, Runner};
use crate::protocol::{JobMessage, Script};

impl Runner {
    pub(super) async fn listen(&mut self, script: Script) -> i32 {
        let listening_since = tokio::time::Instant::now();
        let mut idle_fault = match &script {
            Script::ConnectionLoss {
                after_ms,
                recover_after_ms,
                give_up,
                during_job: false,
            } => Some((*after_ms, *recover_after_ms, *give_up)),
            _ => None,
        };
        let hang_at = match &script {
            Script::Hang { after_ms } => Some(listening_since + Duration::from_millis(*after_ms)),
            _ => None,
        };
        loop {
            if let Some(at) = hang_at {
                if tokio::time::Instant::now() >= at {
                    // Ignore every signal from now on; only SIGKILL ends us.
                    std::future::pending::<()>().await;
                }
            }
            let fault_at =
                idle_fault.map(|(after, _, _)| listening_since + Duration::from_millis(after));
            let sid = self.session.clone().unwrap_or_default();
            let path = format!("/_sim/sessions/{sid}/message");
            let poll = self.poll.get(&path);
            let wake_at = match (fault_at, hang_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let resp = tokio::select! {
                r = poll => r,
                _ = wait_shutdown(&mut self.shutdown) => return self.exiting().await,
                _ = async { tokio::time::sleep_until(wake_at.expect("guarded")).await }, if wake_at.is_some() => {
                    // A scripted fault or hang interrupts the poll: the connection goes.
                    self.poll.reset();
                    if fault_at.is_some_and(|a| tokio::time::Instant::now() >= a) {
                        let (_, rec, give_up) = idle_fault.take().expect("fault present");
                        if let Some(code) = self.idle_connection_loss(rec, give_up).await {
                            return code;
                        }
                    }
                    continue;
                }
            };
            match resp {
                Ok(r) if r.status == 200 => {
                    self.poll_errors = 0;
                    self.reconnected();
                    let Ok(job) = serde_json::from_slice::<JobMessage>(&r.body) else {
                        continue;
                    };
                    return self.run_job(job, &script).await;
                }
                Ok(r) if r.status == 404 => {
                    self.term.error(
                        "The runner no longer exists on the server. Cleaning up local configuration.",
                    );
                    self.remove_config();
                    return 0;
                }
                // The broker's typed "too old" error; before 2.337.0 any bare 403 read
                // the same (actions/runner #4613), from 2.337.0 a bare one is an error.
                Ok(r)
                    if r.status == 403
                        && (String::from_utf8_lossy(&r.body)
                            .contains(crate::protocol::VERSION_TOO_OLD)
                            || crate::protocol::older(
                                &super::version(),
                                crate::protocol::TYPED_DEPRECATION_FROM,
                            )) =>
                {
                    self.delete_session().await;
                    return self.version_deprecated();
                }
                Ok(r) if (200..300).contains(&r.status) => {
                    self.poll_errors = 0;
                    self.reconnected();
                }
                other => {
                    let msg = match other {
                        Ok(r) => {
                            self.poll.reset();
                            format!(
                                "Failed to get job message. Request to {} failed with status: {}. Error message {}",
                                self.url("/_sim/message"),
                                r.status,
                                reqwest::StatusCode::from_u16(r.status)
                                    .ok()
                                    .and_then(|s| s.canonical_reason())
                                    .unwrap_or("")
                            )
                        }
                        Err(e) => e.0,
                    };
                    self.connect_error(&msg);
                    // 15-30 s for the first five consecutive errors, then 30-60 s.
                    self.poll_errors += 1;
                    let wait = if self.poll_errors <= 5 {
                        rand::thread_rng().gen_range(15.0..30.0)
                    } else {
                        rand::thread_rng().gen_range(30.0..60.0)
                    };
                    if self.sleep_or_shutdown(self.scaled(wait)).await {
                        return self.exiting().await;
                    }
                }
            }
        }
    }

    /// Emulate losing the connection while idle.
    pub(super) async fn idle_connection_loss(
        &mut self,
        recover_after_ms: Option<u64>,
        give_up: bool,
    ) -> Option<i32> {
        let msg = "The HTTP request timed out after 00:01:00.";
        self.connect_error(msg);
        if give_up {
            // The broker flow gives up after 10 consecutive errors and exits 2.
            for _ in 0..10 {
                let wait = rand::thread_rng().gen_range(15.0..30.0);
                if self.sleep_or_shutdown(self.scaled(wait)).await {
                    return Some(self.exiting().await);
                }
            }
            self.term.error(&format!("An error occurred: {msg}"));
            return Some(2);
        }
        match recover_after_ms {
            Some(ms) => {
                if self.sleep_or_shutdown(Duration::from_millis(ms)).await {
                    return Some(self.exiting().await);
                }
                self.reconnected();
                None
            }
            None => {
                wait_shutdown(&mut self.shutdown).await;
                Some(self.exiting().await)
            }
        }
    }
}
