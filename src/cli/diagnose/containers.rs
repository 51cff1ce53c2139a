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
            Ok(version) => {
                checks.push(match (jobs.tool_cache_off(), jobs.tool_cache()) {
                    (Some(why), _) => bad(
                        "tool cache",
                        Level::Warn,
                        format!("no copy-on-write tool cache: {why}; each job gets a fresh empty one at /opt/hostedtoolcache (never a shared writable one), so setup-* actions download every time"),
                        format!("the engine mounts the overlay itself: it must run as root on this host, and [container] tool_cache ({}) must be a directory it sees on ext4 or xfs (not overlayfs, tmpfs inside a container, or /mnt/c)", c.tool_cache.display()),
                    ),
                    (None, Some(tc)) => ok(
                        "tool cache",
                        format!("a copy-on-write view per job at /opt/hostedtoolcache over generation {} of {}; new tool versions of successful jobs are promoted into the next", tc.current(), c.tool_cache.display()),
                    ),
                    (None, None) => ok("tool cache", "off"),
                });
                checks.push(ok(
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
            ));
            }
            Err(e) => checks.push(bad(
                "container image",
                Level::Fail,
                e,
                "build it (docker compose -f compose/compose.yaml build), or set [container] image; it needs the runner's dependencies, sh and bash (compose/Dockerfile has them)",
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
