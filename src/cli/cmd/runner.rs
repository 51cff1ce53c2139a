//! `supervisor runner`: the runner versions on this host (the configured directory and
//! the versions directory), the newest release and GitHub's deadline for the installed
//! version, and what the running supervisor's slots run.

use std::process::ExitCode;

use crate::config::{CliInput, Config, Purpose};
use crate::github::GithubClient;
use crate::runner::store::Store;
use crate::runner::version::{self, describe_deadline, Deadline};
use crate::status::StatusFile;

/// Print the versions; exit 0 (1 when the configured runner cannot say its version).
pub fn main(input: CliInput) -> ExitCode {
    let cfg = match super::resolve(&input, Purpose::Inspect) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let (text, ok) = rt.block_on(report(&cfg));
    print!("{text}");
    ExitCode::from(if ok { 0 } else { 1 })
}

async fn report(cfg: &Config) -> (String, bool) {
    let now = crate::os::clocks::wall_now();
    let configured = version::installed(&cfg.runner.dir).await;
    let mut out = "runner versions\n".to_string();
    out += &format!(
        "  configured    {}: {} (the version of last resort, never changed)\n",
        cfg.runner.dir.display(),
        configured
            .as_deref()
            .unwrap_or("cannot tell (bin/Runner.Listener --version failed)")
    );
    let dir = cfg.versions_dir();
    let installed = if dir.is_dir() {
        Store::open(&dir).map(|s| s.versions()).unwrap_or_default()
    } else {
        vec![]
    };
    out += &format!(
        "  installed     {}: {}\n",
        dir.display(),
        if installed.is_empty() {
            "none yet".to_string()
        } else {
            installed.join(", ")
        }
    );
    let running = running(cfg);
    // The version the slots run: the running supervisor's, or the newest installed one
    // the autopilot would start on.
    let runs = running
        .as_ref()
        .ok()
        .and_then(|s| s.system.runner.version.clone())
        .or_else(|| crate::cli::diagnose::effective_version(cfg, configured.clone()));
    let gh = match (&cfg.github.token, &cfg.github.app, &cfg.github.scope) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => GithubClient::from_config(cfg).ok(),
        _ => None,
    };
    match &gh {
        None => out += "  newest        unknown: no token (or GitHub App) and scope configured\n",
        Some(gh) => {
            out += &match gh.runner_downloads().await {
                Ok(apps) => format!(
                    "  newest        {}\n",
                    version::latest_release(&apps).unwrap_or_else(|| "none listed".into())
                ),
                Err(e) => format!("  newest        cannot read it: {e}\n"),
            };
            if let Some(v) = &runs {
                let said = match gh.runner_deprecation(v).await.map(Deadline::from_answer) {
                    Ok(d) => match (d.runtime(), &d) {
                        (Some(at), _) => format!("runtime deadline {}", describe_deadline(at, now)),
                        (None, Deadline::Known { .. }) => "no runtime deadline yet".into(),
                        _ => "unknown (GitHub does not know this version, or this server has no deprecations endpoint)".into(),
                    },
                    Err(e) => format!("cannot read it: {e}"),
                };
                out += &format!("  deadline      {v}: {said}\n");
            }
        }
    }
    out += &format!(
        "  slots         {}\n",
        match &running {
            Ok(s) => slots(s),
            Err(why) => why.clone(),
        }
    );
    if let Ok(s) = &running {
        let r = &s.system.runner;
        if let Some(c) = &r.canary {
            out += &format!("  canary        {c}\n");
        }
        for bad in &r.rolled_back {
            out += &format!("  rolled back   {bad}\n");
        }
        if let Some(a) = &r.auto_update {
            out += &format!("  auto_update   {a}\n");
        }
    }
    let last = running
        .as_ref()
        .ok()
        .and_then(|s| s.system.runner.last_upgrade.clone())
        .unwrap_or_else(|| "none".into());
    out += &format!("  last upgrade  {last}\n");
    (out, configured.is_some())
}

/// The running supervisor's status, or why there is none.
fn running(cfg: &Config) -> Result<StatusFile, String> {
    let body = match crate::status::control::request(&cfg.control.socket, "GET", "/v1/status") {
        Ok((200, body)) => body,
        _ => return Err("no supervisor is running with this configuration".into()),
    };
    serde_json::from_str::<StatusFile>(&body)
        .map_err(|_| "the running supervisor's status does not parse".into())
}

/// What the running supervisor's slots run.
fn slots(s: &StatusFile) -> String {
    let v = s
        .system
        .runner
        .version
        .clone()
        .unwrap_or_else(|| "?".into());
    s.slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let on = slot.runner_version.as_deref().unwrap_or(&v);
            format!("{i}: {on} ({})", slot.state)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
