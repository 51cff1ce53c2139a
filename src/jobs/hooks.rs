//! The runner's job hooks (reference A5, A10), pointed at the supervisor: each listener
//! gets `ACTIONS_RUNNER_HOOK_JOB_STARTED` and `..._JOB_COMPLETED` naming scripts written
//! into `<state dir>/hooks/` at start. A script runs `supervisor hook job-started` (or
//! `job-completed`), which reports the job's `GITHUB_REPOSITORY`, `GITHUB_RUN_ID`,
//! `GITHUB_RUN_ATTEMPT`, `GITHUB_JOB`, `GITHUB_WORKFLOW` and `RUNNER_NAME` to the running
//! supervisor over its control socket, then the hook the user configured in
//! `[runner] env`, if any, with its exit status kept.
//!
//! The report never fails or delays a job: the client gives the supervisor 2 s, always
//! exits 0, and says in the job's log when it was not taken.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::JobIdentity;

/// The runner's hook variables.
pub const STARTED_VAR: &str = "ACTIONS_RUNNER_HOOK_JOB_STARTED";
pub const COMPLETED_VAR: &str = "ACTIONS_RUNNER_HOOK_JOB_COMPLETED";

/// How long the hook waits for the supervisor.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Started,
    Completed,
}

impl Hook {
    /// `job-started` or `job-completed`: the subcommand and the control path's last part.
    pub fn word(self) -> &'static str {
        match self {
            Hook::Started => "job-started",
            Hook::Completed => "job-completed",
        }
    }

    fn var(self) -> &'static str {
        match self {
            Hook::Started => STARTED_VAR,
            Hook::Completed => COMPLETED_VAR,
        }
    }
}

/// `'…'` for bash, whatever the text holds.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Write the two scripts into `dir` and set the hook variables in `env` to them; a hook
/// the user set there is called by ours, after the report. `exe` is this binary.
pub fn install(
    dir: &Path,
    exe: &Path,
    socket: &Path,
    env: &mut Vec<(String, String)>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    for hook in [Hook::Started, Hook::Completed] {
        let user = env
            .iter()
            .find(|(k, v)| k == hook.var() && !v.is_empty())
            .map(|(_, v)| v.clone());
        let mut body = format!(
            "#!/bin/bash\n# Written by runner-supervisor at each start: report this job to the supervisor\n# (it never fails or delays the job), then run the hook set in [runner] env, if any.\n{} hook {} --socket {} || true\n",
            quote(&exe.display().to_string()),
            hook.word(),
            quote(&socket.display().to_string()),
        );
        if let Some(u) = &user {
            // The runner runs a .sh hook as `bash -e`; its exit status is the hook's.
            body += &format!("exec bash -e {}\n", quote(u));
        }
        let path = dir.join(format!("{}.sh", hook.word()));
        let tmp = dir.join(format!(".{}.sh.tmp", hook.word()));
        std::fs::write(&tmp, body)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &path)?;
        env.retain(|(k, _)| k != hook.var());
        env.push((hook.var().to_string(), path.display().to_string()));
    }
    Ok(())
}

/// The job's identity from the hook's environment.
pub fn identity_from_env(get: impl Fn(&str) -> Option<String>) -> JobIdentity {
    let s = |k: &str| get(k).unwrap_or_default();
    JobIdentity {
        repository: s("GITHUB_REPOSITORY"),
        run_id: s("GITHUB_RUN_ID").parse().unwrap_or(0),
        run_attempt: s("GITHUB_RUN_ATTEMPT").parse().unwrap_or(0),
        job: s("GITHUB_JOB"),
        workflow: s("GITHUB_WORKFLOW"),
        runner: s("RUNNER_NAME"),
    }
}

/// Report `id` to the supervisor at `socket`; `Err` with why when it was not taken within
/// [`HOOK_TIMEOUT`].
pub fn report(socket: &Path, hook: Hook, id: &JobIdentity) -> Result<(), String> {
    let mut s = connect(socket)?;
    let _ = s.set_read_timeout(Some(HOOK_TIMEOUT));
    let _ = s.set_write_timeout(Some(HOOK_TIMEOUT));
    write!(
        s,
        "POST /v1/hooks/{}?{} HTTP/1.1\r\nHost: supervisor\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        hook.word(),
        id.to_query()
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("no answer within {} s ({e})", HOOK_TIMEOUT.as_secs()))?;
    let text = String::from_utf8_lossy(&buf);
    let code = text.split_whitespace().nth(1).unwrap_or("");
    if code == "200" {
        return Ok(());
    }
    let why = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    Err(format!("it answered {code}: {why}"))
}

/// Connect within the time limit (a socket nobody accepts on would otherwise hang).
fn connect(socket: &Path) -> Result<std::os::unix::net::UnixStream, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p: PathBuf = socket.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::os::unix::net::UnixStream::connect(&p));
    });
    match rx.recv_timeout(HOOK_TIMEOUT) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("nothing answers on {} ({e})", socket.display())),
        Err(_) => Err(format!("no answer within {} s", HOOK_TIMEOUT.as_secs())),
    }
}
