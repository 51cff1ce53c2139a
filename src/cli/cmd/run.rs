//! `supervisor run`: preflight, then supervise until signalled; print a summary.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::preflight::{self, Level};
use crate::config::{CliInput, Purpose};
use crate::github::GithubClient;
use crate::os::shutdown::{self, Mode};
use crate::os::{procs, telemetry};
use crate::supervisor::{self, Deps};

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
    // An actions-runner-controller pod: its one JIT runner, and its exit status for ARC.
    let ran = if cfg.runner.jit_config.is_some() {
        rt.block_on(run_arc(cfg))
    } else {
        rt.block_on(run(cfg)).map(|s| (s, 0))
    };
    match ran {
        Ok((summary, code)) => {
            if json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                print!("{summary}");
            }
            ExitCode::from(code)
        }
        Err(e) => {
            tracing::error!(event = "fatal", "{e:#}");
            eprintln!("supervisor: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The process around a run: the state directory held (while the returned lock lives),
/// orphans reaped (until the returned token is cancelled), signals watched (they drive
/// the returned mode channel).
fn hold_process(
    cfg: &crate::config::Config,
) -> anyhow::Result<(std::fs::File, CancellationToken, Arc<watch::Sender<Mode>>)> {
    // First of all: a second instance on this state directory touches nothing.
    let state_lock = supervisor::lock_state_dir(&cfg.state_dir)?;
    // Orphans (a job's daemon, the update script) are re-parented to us; reap them.
    if let Err(e) = procs::become_subreaper() {
        tracing::debug!(error = %e, "cannot become a child subreaper");
    }
    let reaper = CancellationToken::new();
    tokio::spawn(procs::run_reaper(reaper.clone()));
    let tx = Arc::new(watch::channel(Mode::Run).0);
    tokio::spawn(shutdown::run_signals(tx.clone()));
    Ok((state_lock, reaper, tx))
}

/// An actions-runner-controller runner pod (`supervisor::arc`): no credentials, no
/// preflight against GitHub; the summary and the exit status ARC reads.
async fn run_arc(cfg: crate::config::Config) -> anyhow::Result<(supervisor::Summary, u8)> {
    let cfg = Arc::new(cfg);
    let (_state_lock, reaper, tx) = hold_process(&cfg)?;
    let hostname = crate::config::this_host();
    tracing::info!(event = "starting",
        version = env!("CARGO_PKG_VERSION"),
        arc = true,
        slots = 1,
        host = %hostname,
        "runner-supervisor starting"
    );
    let deps = Deps {
        cfg: cfg.clone(),
        gh: GithubClient::without_credentials(&cfg)?,
        hostname,
        outer_env: Box::new(|k| std::env::var(k).ok()),
        clocks: Arc::new(crate::os::clocks::SystemClocks),
        token: None,
        hook_exe: std::env::current_exe().ok(),
    };
    let done = supervisor::arc::run(deps, tx).await;
    reaper.cancel();
    tracing::info!(event = "stopped", "runner-supervisor stopped");
    done
}

async fn run(cfg: crate::config::Config) -> anyhow::Result<supervisor::Summary> {
    let cfg = Arc::new(cfg);
    let (_state_lock, reaper, tx) = hold_process(&cfg)?;

    let gh = GithubClient::from_config(&cfg)?;
    // A GitHub App signs JWTs on GitHub's time: measure the clock before the first one.
    if gh.app().is_some() {
        for server in &cfg.clock.ntp_servers {
            match crate::monitors::clockwatch::sntp(
                server,
                &crate::os::clocks::SystemClocks,
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
    let hostname = crate::config::this_host();
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
        preflight::check_token(&gh, cfg.token.expiry_warning, crate::os::clocks::wall_now()).await;
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
        clocks: Arc::new(crate::os::clocks::SystemClocks),
        token,
        hook_exe: std::env::current_exe().ok(),
    };
    let summary = supervisor::run(deps, tx).await;
    reaper.cancel();
    tracing::info!(event = "stopped", "runner-supervisor stopped");
    summary
}
