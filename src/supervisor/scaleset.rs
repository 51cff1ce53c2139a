//! Scale-set mode's start: the pool and its connection built from the configuration,
//! handed to the slots, and the session task started.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::github::scaleset::client::Service;
use crate::github::scaleset::session::Connection;
use crate::os::shutdown::Mode;
use crate::slot::demand::scaleset::Pool;
use crate::slot::Shared;
use crate::status::host::SlotCmds;

/// Scale-set mode: build the pool and its connection, hand the pool to the slots, and
/// start the session task (it ends, deleting the session, once the supervisor stops).
pub fn start(
    shared: &Arc<Shared>,
    mode: watch::Receiver<Mode>,
    cmds: SlotCmds,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let cfg = &shared.cfg;
    let ua = crate::github::USER_AGENT_VALUE;
    let k = cfg.network.keepalive_for_own();
    let s = &cfg.scaleset;
    // The loop's own watchdog (poll_timeout) fires before the client's timeout does.
    let poll = Service::tuned(ua, s.poll_timeout + Duration::from_secs(10), &k)?;
    let jit = Service::tuned(ua, Duration::from_secs(30), &k)?;
    let scope = cfg
        .github
        .scope
        .as_ref()
        .ok_or("no repository or organisation is configured")?;
    let target = crate::github::scaleset::session::Target {
        api_url: cfg.github.api_url.clone(),
        config_url: format!(
            "{}/{}",
            cfg.github.web_url.trim_end_matches('/'),
            scope.web_path()
        ),
        name: s.name.clone(),
        runner_group: s.runner_group.clone(),
        labels: s.labels.clone(),
        owner: shared.hostname.clone(),
        conflict_limit: s.conflict_limit,
    };
    let host = shared.host.clone();
    let offset = Box::new(move || host.clock.borrow().offset.unwrap_or(0.0));
    let minter = crate::slot::demand::scaleset::Minter {
        gh: shared.gh.clone(),
        api_url: target.api_url.clone(),
        config_url: target.config_url.clone(),
    };
    let conn = Connection::new(poll, shared.gh.clone(), target, offset);
    let pool = Pool::new(s, jit, shared.board.clone());
    pool.set_minter(minter);
    shared.set_pool(pool.clone());
    tracing::info!(event = "scaleset_mode", name = %s.name, max_runners = s.max_runners, min_runners = s.min_runners, "scale-set mode: one session for the host, a runner per assigned job; jobs reach it with runs-on: {}", s.name);
    let resumed = shared.host.resumed.subscribe();
    Ok(tokio::spawn(crate::slot::demand::scaleset::run(
        pool, conn, mode, resumed, cmds,
    )))
}
