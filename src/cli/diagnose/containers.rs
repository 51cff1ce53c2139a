//! `[runner] backend = "container"`: the job image on its engine (the runner starts in it,
//! bash and the hook client run), and what `[container] docker` gives every job.

use super::{bad, ok};
use crate::cli::preflight::{Check, Level};
use crate::config::{Backend, Config, JobDocker};
use crate::runner::launch::container::{Hooks, Jobs};

/// The container backend's checks; none for the process backend.
pub async fn check_containers(cfg: &Config, hostname: &str) -> Vec<Check> {
    if cfg.runner.backend != Backend::Container {
        return vec![];
    }
    let c = &cfg.container;
    let mut checks = vec![];
    // The hook client a run wrote, when there is one (a run writes it at start).
    let dir = cfg.state_dir.join("hooks").join("container");
    let hooks = dir.join("supervisor").exists().then(|| Hooks {
        dir: dir.clone(),
        socket: cfg.control.socket.clone(),
        env: vec![],
    });
    let checked_client = hooks.is_some();
    let instance = format!("{}-{hostname}", cfg.runner.name_prefix);
    match Jobs::new(c, &instance, hooks) {
        Err(e) => checks.push(bad(
            "container image",
            Level::Fail,
            e,
            "set [container] docker_host (SUPERVISOR_CONTAINER_DOCKER_HOST) to the engine's socket",
        )),
        Ok(jobs) => match jobs.probe(&cfg.runner.dir).await {
            Ok(version) => checks.push(ok(
                "container image",
                format!(
                    "{} on {}: runner {version} starts in it, bash is there for the job hooks{}; the runner is mounted read-only from {}",
                    c.image,
                    c.docker_host,
                    if checked_client {
                        ", the hook client runs"
                    } else {
                        " (the hook client is checked at start)"
                    },
                    cfg.runner.dir.display()
                ),
            )),
            Err(e) => checks.push(bad(
                "container image",
                Level::Fail,
                e,
                format!(
                    "build it (docker compose -f compose/compose.yaml build), or set [container] image; it needs the runner's dependencies, sh and bash (compose/Dockerfile has them)"
                ),
            )),
        },
    }
    match &c.docker {
        JobDocker::Host => checks.push(bad(
            "job docker",
            Level::Warn,
            format!(
                "[container] docker = \"host\": every job gets the engine's own socket ({}), which is root on the host: a workflow can mount / or start a privileged container",
                c.docker_host
            ),
            "for repositories you do not fully trust, give jobs a filtering proxy instead ([container] docker = \"tcp://proxy:2375\"), or none",
        )),
        JobDocker::Url(u) => checks.push(ok(
            "job docker",
            format!("jobs use the engine behind {u} (DOCKER_HOST): what the proxy allows"),
        )),
        JobDocker::None => checks.push(ok(
            "job docker",
            "jobs get no Docker engine ([container] docker = \"none\"): workflows with container: or services: need host or a proxy",
        )),
    }
    checks
}
