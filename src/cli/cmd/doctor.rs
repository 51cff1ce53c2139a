//! `supervisor doctor`: diagnose the host, the configuration and the token; say how to fix
//! each problem. A table (coloured on a terminal) or `--json`; exit 0 when every check
//! passes, 1 on warnings, 2 on failures.

use std::io::IsTerminal;
use std::process::ExitCode;

use serde::Serialize;

use crate::cli::diagnose::{self, HostRoot};
use crate::cli::preflight::{self, Check, Level};
use crate::config::{CliInput, Config, Purpose, Secret};
use crate::github::GithubClient;

/// The schema of `doctor --json` (README "doctor").
pub const SCHEMA: &str = "runner-supervisor.doctor.v1";

/// One check as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct JsonCheck {
    pub name: &'static str,
    /// `pass`, `warn` or `fail`.
    pub status: &'static str,
    pub reason: String,
    pub fix: Option<String>,
}

/// `doctor --json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub version: &'static str,
    /// The worst status: `pass`, `warn` or `fail`.
    pub result: &'static str,
    /// 0, 1 or 2, as the process exits.
    pub exit_code: u8,
    pub checks: Vec<JsonCheck>,
}

fn word(l: Level) -> &'static str {
    match l {
        Level::Ok => "pass",
        Level::Warn => "warn",
        Level::Fail => "fail",
    }
}

/// Run every check and print the results.
pub fn main(input: CliInput, json: bool, token_stdin: bool, app_key_stdin: bool) -> ExitCode {
    let mut cfg = match super::resolve(&input, Purpose::Inspect) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if token_stdin {
        match read_stdin_token() {
            Ok(t) => {
                cfg.github.token = Some(t);
                cfg.github.token_error = None;
            }
            Err(e) => {
                eprintln!("supervisor: --token-stdin: {e}");
                return ExitCode::from(super::EXIT_CONFIG);
            }
        }
    }
    if app_key_stdin {
        match read_stdin_app_key(&cfg) {
            Ok(app) => {
                cfg.github.app = Some(app);
                cfg.github.token_error = None;
            }
            Err(e) => {
                eprintln!("supervisor: --app-key-stdin: {e}");
                return ExitCode::from(super::EXIT_CONFIG);
            }
        }
    }
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let checks = rt.block_on(run_checks(&cfg));
    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    let code = match worst {
        Level::Ok => 0,
        Level::Warn => 1,
        Level::Fail => 2,
    };
    if json {
        let r = Report {
            schema: SCHEMA,
            version: env!("CARGO_PKG_VERSION"),
            result: word(worst),
            exit_code: code,
            checks: checks
                .iter()
                .map(|c| JsonCheck {
                    name: c.name,
                    status: word(c.level),
                    reason: c.detail.clone(),
                    fix: c.fix.clone(),
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", table(&checks, colour));
    }
    ExitCode::from(code)
}

/// The token from standard input (a root-only credential piped in by `sudo cat`).
fn read_stdin_token() -> Result<Secret, String> {
    use std::io::Read;
    let mut buf = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut buf)
        .map_err(|e| format!("cannot read standard input: {e}"))?;
    let t = buf.trim();
    if t.is_empty() {
        return Err("standard input is empty (pipe the token in: `sudo cat FILE | supervisor doctor --token-stdin`)".into());
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the token contains whitespace or control characters".into());
    }
    Ok(Secret(t.to_string()))
}

/// The App's key from standard input, with the configured `github.app_id`.
fn read_stdin_app_key(cfg: &Config) -> Result<crate::config::AppConfig, String> {
    use std::io::Read;
    let entry = |k: &str| {
        cfg.entries
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.trim().to_string())
            .filter(|v| !v.is_empty() && v != "(unset)")
    };
    let app_id = entry("github.app_id")
        .and_then(|v| v.parse().ok())
        .ok_or("github.app_id is not set (SUPERVISOR_GITHUB_APP_ID)")?;
    let mut pem = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut pem)
        .map_err(|e| format!("cannot read standard input: {e}"))?;
    jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| format!("standard input is not a PEM RSA private key: {e}"))?;
    Ok(crate::config::AppConfig {
        app_id,
        private_key: Secret(pem),
        key_file: "-".into(),
        installation_id: entry("github.installation_id").and_then(|v| v.parse().ok()),
    })
}

/// The checks as a table: status, name, reason, and the fix under it.
pub fn table(checks: &[Check], colour: bool) -> String {
    let mut out = format!("{:<7}{:<16}{}\n", "STATUS", "CHECK", "REASON");
    for c in checks {
        let w = word(c.level);
        let shown = if colour {
            let code = match c.level {
                Level::Ok => "32",
                Level::Warn => "33",
                Level::Fail => "31;1",
            };
            format!("\x1b[{code}m{w:<7}\x1b[0m")
        } else {
            format!("{w:<7}")
        };
        out += &format!("{shown}{:<16}{}\n", c.name, c.detail);
        if let Some(f) = &c.fix {
            out += &format!("{:<23}fix: {f}\n", "");
        }
    }
    let n = |l: Level| checks.iter().filter(|c| c.level == l).count();
    out += &format!(
        "\n{} passed, {} warnings, {} failed\n",
        n(Level::Ok),
        n(Level::Warn),
        n(Level::Fail)
    );
    out
}

/// The running supervisor's runner-upgrade condition (why it cannot upgrade), if one runs.
fn running_upgrade_condition(cfg: &Config) -> Option<String> {
    let (code, body) =
        crate::status::control::request(&cfg.control.socket, "GET", "/v1/status").ok()?;
    let s: crate::status::StatusFile = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
    s.reasons
        .iter()
        .find_map(|r| r.strip_prefix("runner upgrade: ").map(str::to_string))
}

async fn run_checks(cfg: &Config) -> Vec<Check> {
    let root = HostRoot::from_env();
    let mut checks = diagnose::check_config(cfg);
    checks.push(diagnose::check_dns(cfg).await);
    let runner = diagnose::check_runner(cfg);
    let runner_ok = runner.level == Level::Ok;
    checks.push(runner);
    let installed = if runner_ok {
        diagnose::effective_version(cfg, diagnose::runner_version(cfg).await)
    } else {
        None
    };
    checks.push(diagnose::check_leftovers(cfg));
    checks.extend(
        preflight::check_local(cfg)
            .into_iter()
            .filter(|c| c.name != "runner"),
    );
    checks.push(diagnose::check_lock(cfg));
    let gh = match (&cfg.github.token, &cfg.github.app, &cfg.github.scope) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => GithubClient::from_config(cfg).ok(),
        _ => None,
    };
    match &gh {
        Some(gh) => {
            let (c, info) =
                preflight::check_token(gh, cfg.token.expiry_warning, crate::os::clocks::wall_now())
                    .await;
            // An unreachable GitHub is a failure here: nothing works without it.
            let reachable = info.is_some()
                || c.iter()
                    .any(|x| x.name == "token" && x.level == Level::Fail);
            checks.push(if reachable {
                Check {
                    name: "github",
                    level: Level::Ok,
                    detail: format!("{} answers", cfg.github.api_url),
                    fix: None,
                }
            } else {
                Check {
                    name: "github",
                    level: Level::Fail,
                    detail: format!(
                        "{} is unreachable: {}",
                        cfg.github.api_url,
                        c.first().map(|x| x.detail.as_str()).unwrap_or("")
                    ),
                    fix: Some(
                        "check network access to the GitHub API (DNS, proxy, firewall)".into(),
                    ),
                }
            });
            checks.extend(c.into_iter().filter(|x| reachable || x.name != "token"));
            checks.extend(preflight::check_reruns(
                cfg.jobs.rerun.enabled,
                gh,
                info.as_ref(),
            ));
            if reachable {
                let latest = gh
                    .runner_downloads()
                    .await
                    .map(|a| crate::runner::version::latest_release(&a))
                    .map_err(|e| e.to_string());
                checks.push(diagnose::check_runner_upgrades(
                    cfg,
                    installed.as_deref(),
                    latest.as_ref().ok().and_then(|l| l.as_deref()),
                    running_upgrade_condition(cfg).as_deref(),
                ));
                if runner_ok {
                    let deadline = match &installed {
                        Some(v) => gh
                            .runner_deprecation(v)
                            .await
                            .map(crate::runner::version::Deadline::from_answer)
                            .map_err(|e| e.to_string()),
                        None => Ok(crate::runner::version::Deadline::Unchecked),
                    };
                    checks.push(diagnose::check_runner_version(
                        installed.as_deref(),
                        latest,
                        deadline,
                        crate::os::clocks::wall_now(),
                    ));
                }
                checks.push(diagnose::check_ghosts(gh, cfg, &crate::config::this_host()).await);
                checks.extend(diagnose::check_scaleset(cfg, gh).await);
            }
            checks.extend(preflight::check_clock(gh, &cfg.clock));
        }
        None => checks.push(diagnose::check_reachable(cfg).await),
    }
    checks.extend(preflight::check_time(cfg).await);
    let (docker, data_root) = diagnose::check_docker(cfg).await;
    checks.push(docker);
    checks.push(diagnose::check_disk(cfg, data_root.as_deref()));
    checks.extend(diagnose::check_containers(cfg, &crate::config::this_host()).await);
    checks.push(diagnose::check_sysctls(&root, cfg));
    checks.push(diagnose::check_host());
    checks.extend(diagnose::check_wsl(&root));
    checks.push(diagnose::check_inhibit(cfg).await);
    checks.extend(diagnose::check_windows_keep_awake(cfg, &root));
    checks.extend(diagnose::check_dependencies(cfg).await);
    checks
}
