//! `supervisor run`: preflight, then supervise until signalled; print a summary.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{CliInput, Purpose};
use crate::github::GithubClient;
use crate::preflight::{self, Level};
use crate::shutdown::{self, Mode};
use crate::supervisor::{self, Deps};
use crate::{naming, procs, telemetry};

/// Run the supervisor.
pub fn main(input: CliInput) -> ExitCode {
    let cfg = match super::resolve(&input, Purpose::Run) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(&cfg.log.level, cfg.log.json);
    // With JSON logs, the exit summary is JSON too (one line on stdout).
    let json = cfg.log.json;
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(run(cfg)) {
        Ok(summary) => {
            if json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                print!("{summary}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(event = "fatal", "{e:#}");
            eprintln!("supervisor: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cfg: crate::config::Config) -> anyhow::Result<supervisor::Summary> {
    let cfg = Arc::new(cfg);
    // First of all: a second instance on this state directory touches nothing.
    let _state_lock = supervisor::lock_state_dir(&cfg.state_dir)?;
    // Orphans (a job's daemon, the update script) are re-parented to us; reap them.
    if let Err(e) = procs::become_subreaper() {
        tracing::debug!(error = %e, "cannot become a child subreaper");
    }
    let reaper = CancellationToken::new();
    tokio::spawn(procs::run_reaper(reaper.clone()));

    let tx = Arc::new(watch::channel(Mode::Run).0);
    tokio::spawn(shutdown::run_signals(tx.clone()));

    let gh = GithubClient::from_config(&cfg)?;
    // A GitHub App signs JWTs on GitHub's time: measure the clock before the first one.
    if gh.app().is_some() {
        for server in &cfg.clock.ntp_servers {
            match crate::clockwatch::sntp(
                server,
                &crate::clocks::SystemClocks,
                std::time::Duration::from_secs(3),
            )
            .await
            {
                Ok(s) => {
                    tracing::info!(event = "clock_offset_app", offset_s = format!("{:+.3}", s.offset), server = %server, "clock offset measured for the GitHub App's JWTs");
                    gh.set_clock_offset(s.offset);
                    break;
                }
                Err(e) => tracing::debug!(server = %server, error = %e, "SNTP query failed"),
            }
        }
    }
    let hostname = naming::this_host();
    tracing::info!(event = "starting",
        version = env!("CARGO_PKG_VERSION"),
        api = %cfg.github.api_url,
        scope = %gh.scope().web_path(),
        slots = cfg.runner.slots,
        host = %hostname,
        "runner-supervisor starting"
    );
    // Preflight: problems are logged; the slots back off rather than crash-loop.
    let (checks, token) =
        preflight::check_token(&gh, cfg.token.expiry_warning, crate::clocks::wall_now()).await;
    for c in checks
        .iter()
        .chain(preflight::check_clock(&gh, &cfg.clock).iter())
        .chain(preflight::check_reruns(cfg.jobs.rerun.enabled, &gh, token.as_ref()).iter())
        .chain(std::iter::once(&preflight::check_privileges()))
    {
        match c.level {
            Level::Ok => tracing::info!(event = "preflight", check = c.name, "{}", c.detail),
            Level::Warn => tracing::warn!(
                event = "preflight",
                check = c.name,
                fix = c.fix.as_deref().unwrap_or(""),
                "{}",
                c.detail
            ),
            Level::Fail => tracing::error!(
                event = "preflight",
                check = c.name,
                fix = c.fix.as_deref().unwrap_or(""),
                "{}",
                c.detail
            ),
        }
    }
    let deps = Deps {
        cfg: cfg.clone(),
        gh,
        hostname,
        outer_env: Box::new(|k| std::env::var(k).ok()),
        clocks: Arc::new(crate::clocks::SystemClocks),
        token,
        hook_exe: std::env::current_exe().ok(),
    };
    let summary = supervisor::run(deps, tx).await;
    reaper.cancel();
    tracing::info!(event = "stopped", "runner-supervisor stopped");
    summary
}
