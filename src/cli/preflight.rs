//! Checks shared by `run` (logged) and `doctor` (printed with fixes): the token and its
//! scopes or permissions, the runner binary, the state directory, the clock.
//!
//! It must not: change anything on the host or on GitHub (the fine-grained probe creates
//! a registration token, which expires by itself within an hour).

use chrono::{DateTime, Utc};

use crate::config::{Config, Scope};
use crate::github::{scope_verdict, GithubClient, GithubError, ScopeVerdict, TokenInfo};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check, with a fix when it is not OK.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn bad(
        name: &'static str,
        level: Level,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            level,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Validate the token: `GET /user`, then scopes, or a capability probe for fine-grained tokens.
pub async fn check_token(
    gh: &GithubClient,
    expiry_warning: std::time::Duration,
    now: DateTime<Utc>,
) -> (Vec<Check>, Option<TokenInfo>) {
    let mut out = vec![];
    if let Some(app) = gh.app() {
        return check_app(gh, app).await;
    }
    let info = match gh.get_user().await {
        Ok(i) => i,
        Err(e @ GithubError::Unauthorized { .. }) => {
            out.push(Check::bad("token", Level::Fail, e.to_string(), "create a new token (classic: repo or admin:org scope; fine-grained: Administration or Self-hosted runners read and write) and update GITHUB_PAT or the token file"));
            return (out, None);
        }
        Err(e) => {
            out.push(Check::bad(
                "token",
                Level::Warn,
                format!("cannot validate the token now: {e}"),
                "check network access to the GitHub API (DNS, proxy, firewall)",
            ));
            return (out, None);
        }
    };
    out.push(Check::ok("token", format!("valid, user {}", info.login)));
    match scope_verdict(info.scopes.as_deref(), gh.scope()) {
        ScopeVerdict::Ok => out.push(Check::ok("scopes", format!("classic token with {}", info.scopes.as_deref().unwrap_or_default().join(", ")))),
        ScopeVerdict::Missing(need) => out.push(Check::bad(
            "scopes",
            Level::Fail,
            format!("classic token lacks the {need:?} scope (has: {})", info.scopes.as_deref().map(|s| s.join(", ")).filter(|s| !s.is_empty()).unwrap_or_else(|| "none".into())),
            format!("edit the token on GitHub and tick {need:?}"),
        )),
        ScopeVerdict::Unknown => match gh.registration_token().await {
            Ok(_) => out.push(Check::ok("permissions", "fine-grained token can create registration tokens")),
            Err(e) => out.push(Check::bad(
                "permissions",
                Level::Fail,
                format!("fine-grained token cannot administer runners: {e}"),
                match gh.scope() {
                    Scope::Repo { .. } => "give the token the repository permission Administration: Read and write",
                    Scope::Org { .. } => "give the token the organisation permission Self-hosted runners: Read and write",
                },
            )),
        },
    }
    if let Some(exp) = info.expires_at {
        let left = exp - now;
        if left < chrono::Duration::zero() {
            out.push(Check::bad(
                "token expiry",
                Level::Fail,
                format!("expired at {exp}"),
                "create a new token",
            ));
        } else if left.to_std().unwrap_or_default() <= expiry_warning {
            out.push(Check::bad(
                "token expiry",
                Level::Warn,
                format!("expires in {} days ({exp})", left.num_days()),
                "renew the token before it expires",
            ));
        } else {
            out.push(Check::ok("token expiry", format!("expires {exp}")));
        }
    }
    (out, Some(info))
}

/// Whether lost jobs can be re-run (`[jobs] rerun_lost`): `POST …/actions/jobs/{id}/rerun`
/// needs a classic token's `repo` scope, or the Actions permission with write (a GitHub App's
/// installation, a fine-grained token). A token without it disables only the re-runs
/// (each is refused and recorded), never the runners: a warning, not a failure. A
/// fine-grained token's permissions cannot be read ahead: said, and left to the first re-run.
pub fn check_reruns(enabled: bool, gh: &GithubClient, info: Option<&TokenInfo>) -> Option<Check> {
    if !enabled {
        return Some(Check::ok(
            "reruns",
            "lost jobs are recorded, not re-run ([jobs] rerun_lost = false)",
        ));
    }
    let fix = crate::jobs::rerun::permission_fix(gh.app().is_some());
    if let Some(app) = gh.app() {
        let inst = app.installation()?;
        return Some(match inst.permissions.get("actions").map(String::as_str) {
            Some("write") => Check::ok("reruns", "lost jobs are re-run: the installation grants actions: write"),
            have => Check::bad(
                "reruns",
                Level::Warn,
                format!("lost jobs cannot be re-run: the installation grants actions: {} (re-runs need write; the runners are not affected)", have.unwrap_or("none")),
                fix,
            ),
        });
    }
    Some(match info?.scopes.as_deref() {
        Some(s) if s.iter().any(|x| x == "repo") => {
            Check::ok("reruns", "lost jobs are re-run: the classic token has the repo scope")
        }
        Some(_) => Check::bad(
            "reruns",
            Level::Warn,
            "lost jobs cannot be re-run: the classic token lacks the repo scope (the runners are not affected)",
            fix,
        ),
        None => Check::ok(
            "reruns",
            "lost jobs are re-run if the fine-grained token has the repository permission Actions: Read and write (it cannot be read ahead; a refused re-run is recorded with the fix)",
        ),
    })
}

/// A GitHub App: the installation covers the scope, grants what runners need, and
/// gives a token.
async fn check_app(
    gh: &GithubClient,
    app: &crate::github::app::AppAuth,
) -> (Vec<Check>, Option<TokenInfo>) {
    let mut out = vec![];
    let info = match gh.get_user().await {
        Ok(i) => i,
        Err(e @ (GithubError::Unauthorized { .. } | GithubError::Forbidden { .. })) => {
            out.push(Check::bad(
                "token",
                Level::Fail,
                format!("GitHub App: {e}"),
                "check github.app_id and the private key (a new one: the App's page > Private keys), and that the App is installed on the repository or organisation",
            ));
            return (out, None);
        }
        Err(e) => {
            out.push(Check::bad(
                "token",
                Level::Warn,
                format!("cannot reach GitHub to check the App now: {e}"),
                "check network access to the GitHub API (DNS, proxy, firewall)",
            ));
            return (out, None);
        }
    };
    let inst = app.installation().unwrap_or_default();
    out.push(Check::ok(
        "token",
        format!(
            "GitHub App {} (installation {}, {} repositories) gives installation tokens",
            info.login,
            inst.id,
            inst.repository_selection.as_deref().unwrap_or("?")
        ),
    ));
    let need = crate::github::app::needed_permission(gh.scope());
    match inst.permissions.get(need).map(String::as_str) {
        Some("write") => out.push(Check::ok(
            "permissions",
            format!("the installation grants {need}: write"),
        )),
        have => out.push(Check::bad(
            "permissions",
            Level::Fail,
            format!(
                "the installation grants {need}: {} (runners need write)",
                have.unwrap_or("none")
            ),
            match gh.scope() {
                Scope::Repo { .. } => "on the App's page > Permissions & events > Repository permissions, set Administration to Read and write; then accept the new permissions on the installation (the repository's or owner's Settings > GitHub Apps > Configure)",
                Scope::Org { .. } => "on the App's page > Permissions & events > Organization permissions, set Self-hosted runners to Read and write; then accept the new permissions on the installation (the organisation's Settings > GitHub Apps > Configure)",
            },
        )),
    }
    (out, Some(info))
}

/// The clock against GitHub's `Date` header (one-second resolution).
pub fn check_clock(gh: &GithubClient, cfg: &crate::config::ClockConfig) -> Option<Check> {
    let offset = gh.last_date()?.offset_secs();
    let detail = format!("local clock is {offset:+.0}s from GitHub's Date header");
    Some(if offset.abs() > cfg.fault_offset.as_secs_f64() {
        Check::bad(
            "clock",
            Level::Fail,
            detail,
            "the runner's OAuth fails beyond 5 minutes: run `chronyc makestep` or fix time sync",
        )
    } else if offset.abs() > cfg.warn_offset.as_secs_f64() {
        Check::bad(
            "clock",
            Level::Warn,
            detail,
            "check that chronyd or systemd-timesyncd is running",
        )
    } else {
        Check::ok("clock", detail)
    })
}

/// Whether jobs may gain privileges (`sudo`, setuid programs): not when the supervisor
/// runs with NoNewPrivileges, which every job inherits. `run` logs it at start.
pub fn check_privileges() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    check_no_new_privs(&status)
}

fn check_no_new_privs(status: &str) -> Check {
    let nnp = status
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .map(str::trim);
    match nnp {
        Some("1") => Check::bad(
            "sudo",
            Level::Warn,
            "NoNewPrivileges is set on the supervisor and every job inherits it: sudo and every setuid program fail in jobs",
            "if jobs need sudo: under systemd remove NoNewPrivileges= and every setting that implies it for a User= service (ProtectKernelModules=, ProtectKernelLogs=, ProtectHostname=, LockPersonality=, RestrictRealtime=, SystemCallFilter=... see systemd/README.md); in Docker drop `no-new-privileges` from security_opt",
        ),
        Some(_) => Check::ok("sudo", "jobs may gain privileges (sudo, setuid programs): NoNewPrivileges is not set"),
        None => Check::ok("sudo", "NoNewPrivileges not reported by this kernel"),
    }
}

/// The runner install and the state directory.
pub fn check_local(cfg: &Config) -> Vec<Check> {
    let mut out = vec![];
    let bin = cfg.runner.dir.join("bin/Runner.Listener");
    if bin.is_file() {
        out.push(Check::ok("runner", format!("{} present", bin.display())));
    } else {
        out.push(Check::bad(
            "runner",
            Level::Fail,
            format!("{} missing", bin.display()),
            "download actions/runner, unpack it there, or set SUPERVISOR_RUNNER_DIR",
        ));
    }
    out.push(check_listener_keepalive(cfg));
    let probe = cfg.state_dir.join(".doctor-probe");
    match std::fs::create_dir_all(&cfg.state_dir).and_then(|_| std::fs::write(&probe, b"")) {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            out.push(Check::ok(
                "state dir",
                format!("{} writable", cfg.state_dir.display()),
            ));
        }
        Err(e) => out.push(Check::bad(
            "state dir",
            Level::Fail,
            format!("{}: {e}", cfg.state_dir.display()),
            "create it and give the supervisor's user write access, or set SUPERVISOR_STATE_DIR",
        )),
    }
    out
}

/// Whether keepalive can be set on the listener's own connections (`pidfd_getfd` on a
/// child of ours, as the listener will be).
pub fn check_listener_keepalive(cfg: &Config) -> Check {
    if cfg.network.listener_keepalive == crate::config::ListenerKeepalive::Off {
        return Check::ok(
            "keepalive",
            "listener_keepalive = off: the listener's connections are watched read-only",
        );
    }
    match crate::os::sockets::probe_getfd() {
        Ok(()) => Check::ok(
            "keepalive",
            format!(
                "can be set on the listener's connections (pidfd_getfd): idle {}s, interval {}s, {} probes, user timeout {}",
                cfg.network.keepalive_idle.as_secs(),
                cfg.network.keepalive_interval.as_secs(),
                cfg.network.keepalive_probes,
                if cfg.network.user_timeout.is_zero() {
                    "none".to_string()
                } else {
                    format!("{}s", cfg.network.user_timeout.as_secs())
                }
            ),
        ),
        Err((why, fix)) => Check::bad(
            "keepalive",
            Level::Warn,
            format!("cannot be set on the listener's connections: {why}; they are watched read-only (dead paths and silent hangs are still found)"),
            fix,
        ),
    }
}

/// The time sources: chronyd through chronyc, and an SNTP measurement.
pub async fn check_time(cfg: &Config) -> Vec<Check> {
    let mut out = vec![];
    let c = &cfg.clock;
    let watch = crate::monitors::clockwatch::watches_chronyd(c.chronyc);
    if watch {
        match crate::monitors::clockwatch::tracking(&c.chronyc_address).await {
            Ok(t) if t.synchronised() => out.push(Check::ok("chronyd", format!("synchronised (stratum {}, last offset {:+.6}s)", t.stratum, t.last_offset))),
            Ok(t) => out.push(Check::bad("chronyd", Level::Warn, format!("running, not synchronised (leap status {})", t.leap), "check chronyd's sources: chronyc sources")),
            Err(e) => out.push(Check::bad("chronyd", Level::Fail, format!("not reachable at {}: {e}", c.chronyc_address), "start chronyd, check its configuration with `chronyd -p`, or set clock.chronyc = \"off\"")),
        }
    }
    let mut measured = false;
    for server in &c.ntp_servers {
        match crate::monitors::clockwatch::sntp(
            server,
            &crate::os::clocks::SystemClocks,
            std::time::Duration::from_secs(3),
        )
        .await
        {
            Ok(s) => {
                let detail = format!("local clock is {:+.3}s from {server}", s.offset);
                out.push(if s.offset.abs() > c.fault_offset.as_secs_f64() {
                    Check::bad("ntp", Level::Fail, detail, "the runner's OAuth fails beyond 5 minutes: fix time sync (chronyc makestep)")
                } else if s.offset.abs() > c.warn_offset.as_secs_f64() {
                    Check::bad("ntp", Level::Warn, detail, "check that chronyd or systemd-timesyncd is running")
                } else {
                    Check::ok("ntp", detail)
                });
                measured = true;
                break;
            }
            Err(e) => tracing::debug!(server = %server, error = %e, "SNTP query failed"),
        }
    }
    if !measured && !c.ntp_servers.is_empty() {
        out.push(Check::bad(
            "ntp",
            Level::Warn,
            format!("no answer from {}", c.ntp_servers.join(", ")),
            "allow outgoing UDP port 123, or set clock.ntp_servers",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_new_privileges_is_a_warning_that_names_sudo_and_the_fix() {
        let c = check_no_new_privs("Name:\tsupervisor\nNoNewPrivs:\t1\nSeccomp:\t2\n");
        assert_eq!((c.name, c.level), ("sudo", Level::Warn));
        assert!(c.detail.contains("sudo") && c.fix.unwrap().contains("ProtectKernelModules="));
        let c = check_no_new_privs("NoNewPrivs:\t0\n");
        assert_eq!(c.level, Level::Ok);
        assert_eq!(
            check_privileges().level,
            Level::Ok,
            "this test runs without it"
        );
    }

    #[test]
    fn scopes_match_exactly() {
        let repo = Scope::Repo {
            owner: "o".into(),
            repo: "r".into(),
        };
        let org = Scope::Org { org: "o".into() };
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            scope_verdict(Some(&v(&["repo", "user"])), &repo),
            ScopeVerdict::Ok
        );
        assert_eq!(
            scope_verdict(
                Some(&v(&["public_repo", "repo:status", "repo_deployment"])),
                &repo
            ),
            ScopeVerdict::Missing("repo")
        );
        assert_eq!(
            scope_verdict(Some(&v(&["repo"])), &org),
            ScopeVerdict::Missing("admin:org")
        );
        assert_eq!(
            scope_verdict(Some(&v(&["admin:org"])), &org),
            ScopeVerdict::Ok
        );
        assert_eq!(
            scope_verdict(Some(&[]), &repo),
            ScopeVerdict::Missing("repo")
        );
        assert_eq!(scope_verdict(None, &repo), ScopeVerdict::Unknown);
    }
}
