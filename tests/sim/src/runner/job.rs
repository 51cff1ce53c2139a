//! One job: "Running job", the hooks, the steps' faults from the script, the completion
//! message and the result line.

use std::time::Duration;

use super::{utc, Runner};
use crate::protocol::{JobCompletion, JobMessage, Script};

impl Runner {
    pub(super) async fn run_job(&mut self, job: JobMessage, script: &Script) -> i32 {
        // The first renewal comes before the Worker starts (JobDispatcher).
        self.renewed(job.job_id);
        self.term
            .line(&format!("{}: Running job: {}", utc(), job.display_name));
        let started = tokio::time::Instant::now();
        let total = Duration::from_millis(job.duration_ms);
        // The job runs in a `Runner.Worker` child, as with the real runner; it ends with
        // the job (its stdin closed), or with this listener.
        let worker = tokio::process::Command::new(self.root.join("bin/Runner.Worker"))
            .args(["spawnclient", "0", "1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok();
        let mut result = job.result.clone();
        let mut shut = false;
        // "Set up runner": the job-started hook; its failure fails the job.
        let hook = crate::hooks::Hook::JobStarted;
        if crate::hooks::run(hook, &self.settings, &job, &self.root).await == Some(false) {
            result = "Failed".into();
        }
        // "Set up job": the actions it uses, from the action archive cache or downloaded.
        if !self.set_up_actions(&job.actions).await {
            result = "Failed".into();
        }
        // The job's step, in the work folder (as the Worker runs `run:` steps).
        if let Some(cmd) = &job.run {
            let work = self.root.join(&self.settings.work_folder);
            let _ = std::fs::create_dir_all(&work);
            let step = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(&work)
                .stdin(std::process::Stdio::null())
                .status()
                .await;
            if !step.is_ok_and(|s| s.success()) {
                result = "Failed".into();
            }
        }
        if let Script::ConnectionLoss {
            after_ms,
            recover_after_ms,
            during_job: true,
            ..
        } = script
        {
            if !self
                .sleep_or_shutdown(Duration::from_millis(*after_ms))
                .await
            {
                self.connect_error("The HTTP request timed out after 00:01:00.");
                if let Some(rec) = recover_after_ms {
                    if !self.sleep_or_shutdown(Duration::from_millis(*rec)).await {
                        self.reconnected();
                    } else {
                        shut = true;
                    }
                }
            } else {
                shut = true;
            }
        }
        if let Script::Crash {
            after_ms,
            during_job: true,
        } = script
        {
            if !self
                .sleep_or_shutdown(Duration::from_millis(*after_ms))
                .await
            {
                self.term.error(
                    "An error occurred: Object reference not set to an instance of an object.",
                );
                return 2;
            }
        }
        if !shut {
            // Renew the job lock while working, as the real runner does.
            let renew_url = self.url(&format!("/_sim/jobs/{}/renew", job.job_id));
            let trouble = match script {
                Script::LeaseTrouble { after_ms, fail } => {
                    Some((started + Duration::from_millis(*after_ms), *fail))
                }
                _ => None,
            };
            let mut failed_said = false;
            loop {
                let left = total.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                if self
                    .sleep_or_shutdown(left.min(Duration::from_millis(500)))
                    .await
                {
                    shut = true;
                    break;
                }
                match trouble {
                    Some((at, fail)) if tokio::time::Instant::now() >= at => {
                        if fail && !failed_said {
                            failed_said = true;
                            self.term.trace(
                                "ERR ",
                                "JobDispatcher",
                                &format!("Catch exception during renew runner job {}.", job.job_id),
                            );
                        }
                        continue;
                    }
                    _ => {}
                }
                let ok = self
                    .http
                    .post(&renew_url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    self.renewed(job.job_id);
                }
            }
        }
        if shut {
            self.term.line("Exiting...");
            result = "Canceled".into();
        }
        if let Some(mut w) = worker {
            drop(w.stdin.take());
            let _ = w.wait().await;
        }
        // "Complete runner": before the job completes; its exit does not change the result.
        let hook = crate::hooks::Hook::JobCompleted;
        let _ = crate::hooks::run(hook, &self.settings, &job, &self.root).await;
        self.term.line(&format!(
            "{}: Job {} completed with result: {}",
            utc(),
            job.display_name,
            result
        ));
        let _ = self
            .http
            .post(self.url(&format!("/_sim/jobs/{}/complete", job.job_id)))
            .json(&JobCompletion { result })
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        self.delete_session().await;
        if self.settings.ephemeral {
            self.remove_config();
        }
        0
    }

    /// Each `owner/repo@ref` into `_work/_actions/owner/repo/ref`: from
    /// `$ACTIONS_RUNNER_ACTION_ARCHIVE_CACHE/owner_repo/<sha>.tar.gz` when it is there (the
    /// runner copies it, never writes the cache), else downloaded through the tarball
    /// endpoint, with the Worker's `Download action repository` line. False on a failure.
    async fn set_up_actions(&self, actions: &[String]) -> bool {
        let work = self.root.join(&self.settings.work_folder).join("_actions");
        for a in actions {
            let Some((repo, rf)) = a.split_once('@') else {
                return false;
            };
            let sha = crate::protocol::action_sha(repo, rf);
            let cached = std::env::var("ACTIONS_RUNNER_ACTION_ARCHIVE_CACHE")
                .ok()
                .map(|d| {
                    std::path::Path::new(&d)
                        .join(repo.replace('/', "_"))
                        .join(format!("{sha}.tar.gz"))
                })
                .filter(|p| p.is_file());
            let bytes = match cached {
                Some(p) => match std::fs::read(&p) {
                    Ok(b) => b,
                    Err(_) => return false,
                },
                None => {
                    self.term.worker_trace(
                        "INFO",
                        "ActionManager",
                        &format!("Download action repository '{repo}@{rf}' (SHA:{sha})"),
                    );
                    let url = self.url(&format!("/repos/{repo}/tarball/{sha}"));
                    match self
                        .http
                        .get(&url)
                        .timeout(Duration::from_secs(100))
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(b) => b.to_vec(),
                            Err(_) => return false,
                        },
                        _ => return false,
                    }
                }
            };
            let dest = work.join(repo).join(rf);
            let _ = std::fs::create_dir_all(&dest);
            let gz = flate2::read::GzDecoder::new(&bytes[..]);
            if tar::Archive::new(gz).unpack(&dest).is_err() {
                return false;
            }
        }
        true
    }

    /// `Successfully renew job {jobId}, job is valid till {LockedUntil}` (Run Service path;
    /// the lease is about 10 min), at most every 5 s.
    fn renewed(&mut self, job_id: u64) {
        let now = tokio::time::Instant::now();
        if self
            .last_renew_line
            .is_some_and(|t| now - t < Duration::from_secs(5))
        {
            return;
        }
        self.last_renew_line = Some(now);
        let till = (chrono::Utc::now() + chrono::Duration::minutes(10)).format("%m/%d/%Y %H:%M:%S");
        self.term.trace(
            "INFO",
            "JobDispatcher",
            &format!("Successfully renew job {job_id}, job is valid till {till}"),
        );
    }

    pub(super) fn hostile_output(&self) {
        // A 2 MiB line, invalid UTF-8, escape sequences, a carriage return.
        let mut huge = vec![b'A'; 2 * 1024 * 1024];
        huge.push(b'\n');
        self.term.raw(&huge);
        self.term.raw(b"invalid utf-8: \xff\xfe\xc3\x28 end\n");
        self.term
            .raw(b"\x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b[2J\x1b[Hcursor\r\n");
    }
}
