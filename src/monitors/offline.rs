//! The offline check, a monitor (scenario 11): GitHub's view of each listening runner.
//! It sends `SlotCmd::Replace` to a slot whose runner GitHub shows offline for
//! `[watchdog] offline_after` while the slot says it listens.
//!
//! It must not: call GitHub while no slot listens, or import a slot or another monitor.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::github::GithubClient;
use crate::status::host::{attribute, Host, SlotCmd, SlotCmds};

/// Scenario 11: a runner that says it is listening while GitHub shows it offline for
/// `offline_after` is replaced. One API call per check, only while a slot is listening.
pub async fn run(
    cfg: Arc<Config>,
    gh: GithubClient,
    host: Arc<Host>,
    cmds: SlotCmds,
    cancel: CancellationToken,
) {
    let w = cfg.watchdog.clone();
    let mut since: Vec<Option<tokio::time::Instant>> = vec![None; cmds.len()];
    let mut tick = tokio::time::interval(w.offline_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let listening = host.listening();
        if listening.is_empty() {
            since.iter_mut().for_each(|s| *s = None);
            continue;
        }
        let Ok(runners) = gh.list_runners(None).await else {
            continue;
        };
        let now = tokio::time::Instant::now();
        for (i, s) in since.iter_mut().enumerate() {
            let offline = listening
                .iter()
                .find(|(j, _)| *j == i)
                .and_then(|(_, name)| runners.iter().find(|r| &r.name == name))
                .is_some_and(|r| r.status == "offline");
            if !offline {
                *s = None;
                continue;
            }
            let first = *s.get_or_insert(now);
            if now - first >= w.offline_after {
                tracing::warn!(
                    event = "runner_offline",
                    slot = i,
                    offline_s = (now - first).as_secs(),
                    "GitHub shows the listening runner offline"
                );
                let cause = attribute(host.context(true));
                let _ = cmds[i].send(SlotCmd::Replace(cause));
                *s = None;
            }
        }
    }
}
