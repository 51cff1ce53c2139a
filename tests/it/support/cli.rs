//! The CLI runner: `supervisor <args>` run to completion with exactly the environment a
//! test gives, and the typed answers of `status --json` and `health`.

use std::collections::BTreeMap;
use std::time::Duration;

use runner_supervisor::status::StatusFile;

use super::{eventually, supervisor_bin};

/// What a finished `supervisor` call printed.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from(out: std::process::Output) -> Out {
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The stdout as JSON; panics with both streams when it is not.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not the JSON expected: {e}\n{self:?}"))
    }
}

/// `supervisor <args>` run to completion with exactly `env` (plus the test's `PATH` when
/// `env` has none, as the daemon gets), optionally under a wrapper such as `setpriv` or
/// `unshare`, with text on stdin.
pub struct Cli {
    cmd: std::process::Command,
    stdin: Option<String>,
}

impl Cli {
    pub fn new(env: &BTreeMap<String, String>, args: &[&str]) -> Cli {
        Cli::wrapped(env, &[], args)
    }

    /// `<wrapper...> supervisor <args>`.
    pub fn wrapped(env: &BTreeMap<String, String>, wrapper: &[&str], args: &[&str]) -> Cli {
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = std::process::Command::new(prog);
                c.args(rest).arg(supervisor_bin());
                c
            }
            None => std::process::Command::new(supervisor_bin()),
        };
        cmd.args(args).env_clear();
        if !env.contains_key("PATH") {
            cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
        }
        cmd.envs(env);
        Cli { cmd, stdin: None }
    }

    /// Write `text` to its stdin (otherwise stdin is empty).
    pub fn stdin(mut self, text: &str) -> Cli {
        self.stdin = Some(text.to_string());
        self
    }

    /// Run it, blocking this thread: only for commands that need nothing from the test's
    /// runtime (the fake GitHub answers on it; use [`Cli::run_async`] for those).
    pub fn run(self) -> Out {
        use std::io::Write;
        let Cli { mut cmd, stdin } = self;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("run the supervisor CLI");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        Out::from(
            child
                .wait_with_output()
                .expect("wait for the supervisor CLI"),
        )
    }

    /// Run it while the test's runtime keeps serving (the fake GitHub, for `doctor` and
    /// `run`).
    pub async fn run_async(self) -> Out {
        use tokio::io::AsyncWriteExt;
        let Cli { cmd, stdin } = self;
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("run the supervisor CLI");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).await.unwrap();
        }
        drop(input);
        Out::from(
            child
                .wait_with_output()
                .await
                .expect("wait for the supervisor CLI"),
        )
    }
}

/// `supervisor <args>` with `env`, to completion.
pub fn cli(env: &BTreeMap<String, String>, args: &[&str]) -> Out {
    Cli::new(env, args).run()
}

/// `supervisor status --json`, typed: the running supervisor's status over its socket.
pub fn status(env: &BTreeMap<String, String>) -> StatusFile {
    let out = cli(env, &["status", "--json"]);
    assert_eq!(out.code, Some(0), "status --json: {out:?}");
    out.json()
}

/// `supervisor health` with `env`: (exit code, stdout).
pub fn health(env: &BTreeMap<String, String>) -> (Option<i32>, String) {
    let out = cli(env, &["health"]);
    (out.code, out.stdout)
}

/// Wait until `supervisor health` prints `needle`; returns its (exit code, stdout).
pub async fn wait_health(
    env: &BTreeMap<String, String>,
    needle: &str,
    timeout: Duration,
) -> (Option<i32>, String) {
    let mut last = (None, String::new());
    let found = eventually(timeout, || {
        last = health(env);
        last.1.contains(needle)
    })
    .await;
    assert!(found, "health never said {needle:?}: {last:?}");
    last
}
