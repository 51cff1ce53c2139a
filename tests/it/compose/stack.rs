//! The stack under test: compose commands, container logs (followed), the fake GitHub's
//! admin API, health and process listings.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::dockerd::Dockerd;

use super::*;

pub(super) struct Stack {
    /// The compose project and its files (the shipped one, then the test's override).
    pub(super) project: &'static str,
    pub(super) files: [&'static str; 2],
    pub(super) proj: PathBuf,
    pub(super) env: Vec<(String, String)>,
    pub(super) http: reqwest::Client,
    pub(super) github: String,
    // Dropped last: the engine outlives the stack's teardown.
    pub(super) dk: Dockerd,
    pub(super) _work: tempfile::TempDir,
}

impl Stack {
    pub(super) fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .args(["-p", self.project, "-f", self.files[0], "-f", self.files[1]])
            .args(args)
            .current_dir(&self.proj)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("docker-compose")
    }

    pub(super) fn compose_ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(super) fn docker(&mut self, args: &[&str]) -> String {
        self.dk.must(args)
    }

    pub(super) fn cid(&self, service: &str) -> String {
        self.compose_ok(&["ps", "-q", service]).trim().to_string()
    }

    /// Both streams of a service's container, across its restarts.
    pub(super) fn logs(&self, service: &str) -> String {
        let out = self
            .dk
            .command("docker")
            .args(["logs", &self.cid(service)])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub(super) fn inspect(&mut self, service: &str, format: &str) -> String {
        let id = self.cid(service);
        self.docker(&["inspect", "-f", format, &id])
    }

    /// Wait until `service`'s log satisfies `f`, following it (`docker logs -f`: each
    /// new line is the signal to look again); panic with the log otherwise.
    ///
    /// The one place tests still read log prose, on purpose: this is the stack as shipped,
    /// whose services log text for `docker compose logs` (what a user reads), and the
    /// end-to-end test checks that text too. The rest of the suite waits on JSON events.
    pub(super) async fn wait_log(
        &self,
        service: &str,
        what: &str,
        f: impl Fn(&str) -> bool,
    ) -> String {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let deadline = tokio::time::Instant::now() + T;
        loop {
            // The whole log so far, then each new line as it is printed.
            let mut log = String::new();
            let mut follow = tokio::process::Command::new("docker")
                .env("DOCKER_HOST", self.dk.host())
                .args(["logs", "-f", &self.cid(service)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("docker logs -f");
            let mut out = BufReader::new(follow.stdout.take().unwrap()).lines();
            let mut err = BufReader::new(follow.stderr.take().unwrap()).lines();
            loop {
                let line = tokio::select! {
                    l = out.next_line() => l,
                    l = err.next_line() => l,
                    _ = tokio::time::sleep_until(deadline) => {
                        panic!("{service}: timed out waiting for {what}; log:\n{}", self.logs(service))
                    }
                };
                match line {
                    Ok(Some(l)) => {
                        log.push_str(&l);
                        log.push('\n');
                        if f(&log) {
                            return self.logs(service);
                        }
                    }
                    // The container stopped (a restart): take a fresh snapshot and follow again.
                    _ => break,
                }
            }
        }
    }

    pub(super) async fn gh(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.github));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("fake github answers");
        resp.json().await.unwrap_or(Value::Null)
    }

    pub(super) async fn state(&self) -> Value {
        self.gh(reqwest::Method::GET, "/_admin/state", None).await
    }

    pub(super) async fn jobs(&self, name: &str, duration_ms: u64, count: usize) {
        self.gh(
            reqwest::Method::POST,
            "/_admin/jobs",
            Some(json!({"name": name, "duration_ms": duration_ms, "count": count})),
        )
        .await;
    }

    pub(super) async fn wait_state(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let s = self.state().await;
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(super) fn completed(s: &Value, name: &str) -> Vec<Value> {
        s["completed"]
            .as_array()
            .map(|a| a.iter().filter(|j| j["name"] == name).cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn health(&mut self, service: &str) -> String {
        self.inspect(service, "{{.State.Health.Status}}")
    }

    pub(super) async fn wait_health(&mut self, service: &str, want: &str) {
        let deadline = Instant::now() + T;
        while self.health(service) != want {
            assert!(
                Instant::now() < deadline,
                "{service} never became {want}; log:\n{}",
                self.logs(service)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Host PIDs and command lines of a service's processes.
    pub(super) fn top(&mut self, service: &str) -> Vec<(i32, String, String)> {
        let id = self.cid(service);
        self.docker(&["top", &id, "-eo", "pid,user,args"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let pid = it.next()?.parse().ok()?;
                let user = it.next()?.to_string();
                Some((pid, user, it.collect::<Vec<_>>().join(" ")))
            })
            .collect()
    }

    /// Time `docker-compose stop <services>`.
    pub(super) fn timed_stop(&self, services: &[&str]) -> Duration {
        let t = Instant::now();
        let mut args = vec!["stop"];
        args.extend_from_slice(services);
        self.compose_ok(&args);
        t.elapsed()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--timeout", "5"]);
    }
}

pub(super) fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}
