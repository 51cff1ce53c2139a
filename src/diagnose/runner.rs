//! Runner checks: the binary and its version against the latest release, what
//! `config.sh` left behind, and this host's ghosts on GitHub.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::{bad, ok};
use crate::config::Config;
use crate::github::{GithubClient, RunnerApplication};
use crate::preflight::{Check, Level};

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
    let bin = cfg.runner.dir.join("bin/Runner.Listener");
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new(&bin)
            .arg("--version")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && parse_version(&v).is_some()).then_some(v)
}

pub(super) fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut p = v.trim().trim_start_matches('v').split('.');
    Some((
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
        p.next()?.split(['-', '+']).next()?.parse().ok()?,
    ))
}

/// The latest version among the downloads (from their file names).
pub fn latest_release(apps: &[RunnerApplication]) -> Option<String> {
    apps.iter()
        .filter(|a| a.os == "linux")
        .filter_map(|a| {
            let v = a
                .filename
                .trim_end_matches(".tar.gz")
                .rsplit('-')
                .next()?
                .to_string();
            parse_version(&v).map(|k| (k, v))
        })
        .max()
        .map(|(_, v)| v)
}

/// The installed runner against the latest release, with GitHub's 30-day rule.
pub fn check_runner_version(
    installed: Option<&str>,
    latest: Result<Option<String>, String>,
) -> Check {
    const RULE: &str = "JIT runners never update themselves; GitHub stops queueing jobs to a runner 30 days after a newer version is released (at once for a critical security update), and the listener then exits with the deprecated-version line";
    let Some(inst) = installed else {
        return bad(
            "runner version",
            Level::Warn,
            "cannot tell the installed version (`bin/Runner.Listener --version` failed)",
            "check the runner install; run bin/installdependencies.sh",
        );
    };
    match latest {
        Err(e) => bad(
            "runner version",
            Level::Warn,
            format!("{inst} installed; cannot read the latest release: {e}"),
            "check the token and the network",
        ),
        Ok(None) => ok("runner version", format!("{inst} installed (no release listed)")),
        Ok(Some(latest)) => match (parse_version(inst), parse_version(&latest)) {
            (Some(a), Some(b)) if a < b => bad(
                "runner version",
                Level::Warn,
                format!("{inst} installed, {latest} is the latest release: {RULE}"),
                format!("install actions/runner {latest} in the runner directory within 30 days of its release, then restart the supervisor"),
            ),
            _ => ok("runner version", format!("{inst} installed, the latest release")),
        },
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
                        && crate::naming::is_ours(&r.name, &cfg.runner.name_prefix, hostname)
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
