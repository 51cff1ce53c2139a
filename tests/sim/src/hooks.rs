//! The runner's job hooks (`ACTIONS_RUNNER_HOOK_JOB_STARTED`, `..._JOB_COMPLETED`), as
//! `Runner.Worker` runs them (runner-and-api-facts A5, A10): an absolute path to a `.sh`
//! script, run as `bash -e {path}` (or `sh -e` without bash), synchronously, as the
//! runner's user, with the job's default environment; a non-zero exit of the started hook
//! fails the job. The hook inherits the listener's environment, as the Worker does.
//!
//! It must not: run a relative path, or run anything when the variable is unset or empty.

use std::path::Path;
use std::process::Stdio;

use crate::protocol::{JobMessage, RunnerSettings};

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    JobStarted,
    JobCompleted,
}

impl Hook {
    fn var(self) -> &'static str {
        match self {
            Hook::JobStarted => "ACTIONS_RUNNER_HOOK_JOB_STARTED",
            Hook::JobCompleted => "ACTIONS_RUNNER_HOOK_JOB_COMPLETED",
        }
    }
}

/// Run `hook` for `job` if it is set: `Some(true)` when it exited 0, `Some(false)` when it
/// failed (or could not run), `None` when no hook is set.
pub async fn run(
    hook: Hook,
    settings: &RunnerSettings,
    job: &JobMessage,
    root: &Path,
) -> Option<bool> {
    let path = std::env::var(hook.var()).ok().filter(|p| !p.is_empty())?;
    if !Path::new(&path).is_absolute() {
        return Some(false);
    }
    let repo = settings
        .git_hub_url
        .trim_end_matches('/')
        .rsplitn(3, '/')
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("/");
    let shell = if Path::new("/bin/bash").exists() || Path::new("/usr/bin/bash").exists() {
        "bash"
    } else {
        "sh"
    };
    let run_id = if job.run_id == 0 {
        job.job_id
    } else {
        job.run_id
    };
    let workflow = if job.workflow.is_empty() {
        "CI"
    } else {
        &job.workflow
    };
    let work = root.join(&settings.work_folder);
    let _ = std::fs::create_dir_all(&work);
    let status = tokio::process::Command::new(shell)
        .arg("-e")
        .arg(&path)
        .current_dir(&work)
        .env("GITHUB_ACTIONS", "true")
        .env("CI", "true")
        .env("GITHUB_REPOSITORY", &repo)
        .env("GITHUB_RUN_ID", run_id.to_string())
        .env("GITHUB_RUN_ATTEMPT", job.run_attempt.max(1).to_string())
        .env("GITHUB_RUN_NUMBER", run_id.to_string())
        .env("GITHUB_JOB", &job.display_name)
        .env("GITHUB_WORKFLOW", workflow)
        .env("RUNNER_NAME", &settings.agent_name)
        .env("GITHUB_WORKSPACE", &work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    Some(status.is_ok_and(|s| s.success()))
}
