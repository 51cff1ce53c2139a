//! Autoheal: restart containers that opted in with a label and are unhealthy, the way
//! the `autoheal` sidecar of ghostrunner did, without its faults (W31): unlabelled
//! containers are never touched, a restart waits at least a runner's drain before
//! SIGKILL, restarts are rate-limited per container, and a container whose supervisor
//! shows a job running is left alone.
//!
//! It must not: restart a container without the label, restart one container twice at
//! once, or cut a drain short. The decision ([`decide`]) is pure.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::AutohealConfig;
use crate::docker::{self, ContainerHealth, Engine};
use crate::status::{Board, Condition, Health};

/// What to do with one unhealthy, labelled container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Restart it, allowing this long for its stop.
    Restart(Duration),
    /// Its supervisor runs a job: health is job-aware, so this is a stale or foreign
    /// verdict; a restart would cancel the job.
    Busy,
    /// Restarted `max_restarts` times within the window already.
    Limited,
    /// A restart of it is under way.
    InFlight,
}

/// The decision for `c` at `now`, given its restarts within the window so far.
pub fn decide(
    cfg: &AutohealConfig,
    c: &ContainerHealth,
    busy: bool,
    in_flight: bool,
    restarts: &VecDeque<Instant>,
    now: Instant,
) -> Decision {
    if in_flight {
        return Decision::InFlight;
    }
    if busy {
        return Decision::Busy;
    }
    let recent = restarts
        .iter()
        .filter(|t| now.saturating_duration_since(**t) < cfg.window)
        .count();
    if recent >= cfg.max_restarts as usize {
        return Decision::Limited;
    }
    Decision::Restart(c.stop_timeout.unwrap_or_default().max(cfg.stop_timeout))
}

struct State {
    restarts: BTreeMap<String, VecDeque<Instant>>,
    in_flight: HashSet<String>,
    /// Containers already logged as left alone, until they are healthy again.
    told: HashSet<String>,
    total: u64,
}

/// Watch labelled containers until cancelled.
pub async fn run(
    cfg: AutohealConfig,
    docker_host: String,
    shared_dir: PathBuf,
    board: Arc<Board>,
    cancel: CancellationToken,
) {
    let Some(engine) = docker::connect_until(&docker_host, cfg.interval, &board, &cancel).await
    else {
        return;
    };
    tracing::info!(event = "autoheal_watching", label = %format!("{}=true", cfg.label), stop_timeout_s = cfg.stop_timeout.as_secs(), max_restarts = cfg.max_restarts, window = %humantime::format_duration(cfg.window), "autoheal watching labelled containers");
    let state = Arc::new(Mutex::new(State {
        restarts: BTreeMap::new(),
        in_flight: HashSet::new(),
        told: HashSet::new(),
        total: 0,
    }));
    board.system(|s| s.autoheal_restarts = Some(0));
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Health events act at once; the tick catches containers that stay unhealthy and
        // a lost event stream.
        let events = docker::health_events(&engine, &cfg.label);
        tokio::pin!(events);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                ev = events.next() => match ev {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(event = "docker_events_failed", error = %e, "Docker event stream failed; reconnecting");
                        break;
                    }
                    None => break,
                },
            }
            match check(&cfg, &engine, &shared_dir, &board, &state, &cancel).await {
                Ok(()) => {
                    board.set_condition(Condition::Docker, None);
                }
                Err(e) => {
                    tracing::warn!(event = "autoheal_list_failed", error = %e, "autoheal cannot list containers");
                    board.set_condition(Condition::Docker, Some((Health::Degraded, e)));
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}

async fn check(
    cfg: &AutohealConfig,
    engine: &Engine,
    shared_dir: &std::path::Path,
    board: &Arc<Board>,
    state: &Arc<Mutex<State>>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let containers = docker::labelled(engine, &cfg.label).await?;
    let fleet = crate::docker::fleet::read(shared_dir, crate::os::clocks::wall_now());
    for c in containers {
        if !c.running || c.health != "unhealthy" {
            if c.health == "healthy" {
                lock(state).told.remove(&c.id);
            }
            continue;
        }
        let hostname = crate::policy::naming::host_part(&c.hostname);
        let busy = fleet
            .iter()
            .any(|m| m.hostname == hostname && !m.running_jobs().is_empty());
        let now = Instant::now();
        let decision = {
            let mut st = lock(state);
            let in_flight = st.in_flight.contains(&c.id);
            let history = st.restarts.entry(c.id.clone()).or_default();
            while history
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= cfg.window)
            {
                history.pop_front();
            }
            decide(cfg, &c, busy, in_flight, history, now)
        };
        match decision {
            Decision::Restart(timeout) => {
                {
                    let mut st = lock(state);
                    st.in_flight.insert(c.id.clone());
                    st.restarts.entry(c.id.clone()).or_default().push_back(now);
                    st.told.remove(&c.id);
                }
                tracing::warn!(event = "autoheal_restart", container = %c.name, stop_timeout_s = timeout.as_secs(), "autoheal: restarting an unhealthy container");
                let (engine, state, board, cancel) =
                    (engine.clone(), state.clone(), board.clone(), cancel.clone());
                tokio::spawn(async move {
                    let r = tokio::select! {
                        r = docker::restart(&engine, &c.id, timeout) => r,
                        _ = cancel.cancelled() => Err("autoheal stopped before the restart finished".into()),
                    };
                    let mut st = lock(&state);
                    st.in_flight.remove(&c.id);
                    match r {
                        Ok(()) => {
                            st.total += 1;
                            tracing::info!(event = "autoheal_restarted", container = %c.name, "autoheal: container restarted");
                            let last = format!(
                                "{}: restarted {}",
                                crate::os::clocks::wall_now().format("%Y-%m-%d %H:%M:%SZ"),
                                c.name
                            );
                            board.system(|s| {
                                s.autoheal_restarts = Some(st.total);
                                s.autoheal_last = Some(last);
                            });
                        }
                        Err(e) => {
                            tracing::error!(event = "autoheal_restart_failed", container = %c.name, error = %e, "autoheal: restart failed")
                        }
                    }
                });
            }
            Decision::InFlight => {}
            Decision::Busy | Decision::Limited => {
                if lock(state).told.insert(c.id.clone()) {
                    if decision == Decision::Busy {
                        tracing::warn!(event = "autoheal_deferred", container = %c.name, "autoheal: unhealthy, but its supervisor runs a job; not restarted (that would cancel the job)");
                    } else {
                        tracing::error!(event = "autoheal_limit", container = %c.name, max_restarts = cfg.max_restarts, window = %humantime::format_duration(cfg.window), "autoheal: restart limit reached; leaving the container alone (no restart storm)");
                    }
                }
            }
        }
    }
    Ok(())
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AutohealConfig {
        AutohealConfig {
            label: "io.github.runner-supervisor.autoheal".into(),
            interval: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(960),
            max_restarts: 3,
            window: Duration::from_secs(3600),
        }
    }

    fn container(stop: Option<u64>) -> ContainerHealth {
        ContainerHealth {
            id: "abc".into(),
            name: "ci-runner-1".into(),
            hostname: "runner-1".into(),
            health: "unhealthy".into(),
            stop_timeout: stop.map(Duration::from_secs),
            running: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_are_bounded_job_aware_and_wait_for_the_drain() {
        let c = cfg();
        let now = Instant::now();
        let none = VecDeque::new();
        // The longer of the container's own stop timeout and ours.
        assert_eq!(
            decide(&c, &container(Some(1200)), false, false, &none, now),
            Decision::Restart(Duration::from_secs(1200))
        );
        assert_eq!(
            decide(&c, &container(None), false, false, &none, now),
            Decision::Restart(Duration::from_secs(960))
        );
        // A running job, or a restart under way: left alone.
        assert_eq!(
            decide(&c, &container(None), true, false, &none, now),
            Decision::Busy
        );
        assert_eq!(
            decide(&c, &container(None), false, true, &none, now),
            Decision::InFlight
        );
        // Three restarts within the hour: no fourth until the first leaves the window.
        let three: VecDeque<Instant> = [now, now, now].into_iter().collect();
        assert_eq!(
            decide(&c, &container(None), false, false, &three, now),
            Decision::Limited
        );
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(matches!(
            decide(&c, &container(None), false, false, &three, Instant::now()),
            Decision::Restart(_)
        ));
    }
}
