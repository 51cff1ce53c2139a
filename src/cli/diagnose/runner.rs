//! Runner checks: the binary and its version against the latest release, what
//! `config.sh` left behind, and this host's ghosts on GitHub.

use std::os::unix::fs::PermissionsExt;

use super::{bad, ok};
use crate::config::Config;
use chrono::{DateTime, Utc};

use crate::cli::preflight::{Check, Level};
use crate::github::GithubClient;
use crate::runner::version::{self, Deadline, Standing};

/// `bin/Runner.Listener` exists and is executable.
pub fn check_runner(cfg: &Config) -> Check {
    let bin = cfg.runner.dir.join("bin/Runner.Listener");
    let meta = match std::fs::metadata(&bin) {
        Ok(m) => m,
        Err(e) => {
            return bad(
                "runner",
                Level::Fail,
                format!("{}: {e}", bin.display()),
                "download actions/runner and unpack it there (then bin/installdependencies.sh), or set SUPERVISOR_RUNNER_DIR",
            )
        }
    };
    if !meta.is_file() {
        return bad(
            "runner",
            Level::Fail,
            format!("{} is not a file", bin.display()),
            "unpack the runner tarball there again",
        );
    }
    if meta.permissions().mode() & 0o111 == 0
        || nix::unistd::access(&bin, nix::unistd::AccessFlags::X_OK).is_err()
    {
        return bad(
            "runner",
            Level::Fail,
            format!(
                "{} is not executable by this user (mode {:o})",
                bin.display(),
                meta.permissions().mode() & 0o777
            ),
            format!(
                "chmod +x {} (the tarball's modes were lost: unpack it with tar, not a zip tool)",
                bin.display()
            ),
        );
    }
    ok(
        "runner",
        format!("{} present and executable", bin.display()),
    )
}

/// The installed runner's version: `bin/Runner.Listener --version`.
pub async fn runner_version(cfg: &Config) -> Option<String> {
    version::installed(&cfg.runner.dir).await
}

/// The installed runner against the newest release and GitHub's real deadline for it (the
/// deprecations endpoint): a warning within [`version::WARN_DAYS`] days of the runtime
/// deadline, a failure past it; an unknown deadline (a version GitHub does not know, or a
/// server without the endpoint) is said, not failed.
pub fn check_runner_version(
    installed: Option<&str>,
    latest: Result<Option<String>, String>,
    deadline: Result<Deadline, String>,
    now: DateTime<Utc>,
) -> Check {
    const NAME: &str = "runner version";
    let Some(inst) = installed else {
        return bad(
            NAME,
            Level::Warn,
            "cannot tell the installed version (`bin/Runner.Listener --version` failed)",
            "check the runner install; run bin/installdependencies.sh",
        );
    };
    let newest = match &latest {
        Ok(Some(l)) if version::parse_version(l) > version::parse_version(inst) => {
            format!("; {l} is the newest release")
        }
        Ok(Some(_)) => ", the newest release".to_string(),
        Ok(None) => " (no release listed)".to_string(),
        Err(e) => format!("; cannot read the newest release: {e}"),
    };
    let target = match &latest {
        Ok(Some(l)) if version::parse_version(l) > version::parse_version(inst) => l.clone(),
        _ => "the newest release".to_string(),
    };
    let fix = format!(
        "install actions/runner {target} (JIT runners never update themselves; [runner] auto_update does it between jobs), then restart the supervisor"
    );
    let deadline = match deadline {
        Err(e) => {
            return bad(
                NAME,
                Level::Warn,
                format!("{inst} installed{newest}; cannot read its deadline: {e}"),
                "check the token and the network",
            )
        }
        Ok(d) => d,
    };
    let said = match (&deadline, deadline.runtime()) {
        (_, Some(at)) => format!(
            "runtime deadline {}",
            version::describe_deadline(at, now)
        ),
        (Deadline::Known { .. }, None) => "no runtime deadline yet".to_string(),
        _ => "its deadline is unknown (GitHub does not know this version, or this server has no deprecations endpoint)".to_string(),
    };
    let detail = format!("{inst} installed{newest}; {said}");
    match deadline.judge(now) {
        Standing::Past { .. } => bad(
            NAME,
            Level::Fail,
            format!("{detail}: GitHub sends this version no jobs (the listener exits with the deprecated-version line)"),
            fix,
        ),
        Standing::Soon { .. } => bad(
            NAME,
            Level::Warn,
            format!("{detail}: after it GitHub sends this version no jobs"),
            fix,
        ),
        Standing::Fine if latest.is_err() => bad(NAME, Level::Warn, detail, "check the token and the network"),
        Standing::Fine => ok(NAME, detail),
    }
}

/// Files `config.sh` leaves in the runner directory: a registered runner, which the
/// supervisor never uses (it registers its own, and never writes there).
pub fn check_leftovers(cfg: &Config) -> Check {
    let found: Vec<&str> = [
        ".runner",
        ".credentials",
        ".credentials_rsaparams",
        ".service",
    ]
    .into_iter()
    .filter(|f| cfg.runner.dir.join(f).exists())
    .collect();
    if found.is_empty() {
        ok(
            "leftovers",
            format!("no registration files in {}", cfg.runner.dir.display()),
        )
    } else {
        bad(
            "leftovers",
            Level::Warn,
            format!(
                "{} holds {} from an earlier `config.sh`: a runner registered by hand, which stays on GitHub",
                cfg.runner.dir.display(),
                found.join(", ")
            ),
            format!(
                "run `./config.sh remove --token <remove token>` in {} (or delete the runner in Settings > Actions > Runners), then delete those files; the supervisor registers its own runners",
                cfg.runner.dir.display()
            ),
        )
    }
}

/// Offline runners GitHub lists under this host's names: ghosts.
pub async fn check_ghosts(gh: &GithubClient, cfg: &Config, hostname: &str) -> Check {
    match gh.list_runners(None).await {
        Err(e) => bad(
            "ghosts",
            Level::Warn,
            format!("cannot list runners: {e}"),
            "check the token's permissions",
        ),
        Ok(all) => {
            let ghosts: Vec<String> = all
                .iter()
                .filter(|r| {
                    r.status == "offline"
                        && crate::policy::naming::is_ours(
                            &r.name,
                            &cfg.runner.name_prefix,
                            hostname,
                        )
                })
                .map(|r| r.name.clone())
                .collect();
            if ghosts.is_empty() {
                ok(
                    "ghosts",
                    format!(
                        "no offline runner named for this host ({} runners listed)",
                        all.len()
                    ),
                )
            } else {
                bad(
                    "ghosts",
                    Level::Warn,
                    format!(
                        "{} offline runner(s) of this host: {}",
                        ghosts.len(),
                        ghosts.join(", ")
                    ),
                    "`supervisor run` deletes them at start; or delete them in Settings > Actions > Runners",
                )
            }
        }
    }
}
