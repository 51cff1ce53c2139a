//! A job container's configuration: its command, environment and mounts (no secret in
//! any of them).

use std::collections::HashMap;
use std::path::Path;

use bollard::container::Config;
use bollard::models::{HostConfig, Mount, MountTypeEnum};

use super::*;
use crate::config::JobDocker;

/// The container's first command: take the JIT config from its file, remove the file,
/// and become the listener.
const ENTRY: &str = r#"f=/.runner-supervisor/jitconfig
if [ -r "$f" ]; then IFS= read -r ACTIONS_RUNNER_INPUT_JITCONFIG < "$f"; export ACTIONS_RUNNER_INPUT_JITCONFIG; rm -f "$f"; fi
cd /runner || exit 1
exec ./bin/Runner.Listener run"#;

/// Host variables that describe the supervisor's machine, not the image's: never given to
/// a job container (the image has its own).
const HOST_ONLY: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "DOCKER_HOST",
    "RUNNER_TOOL_CACHE",
    "AGENT_TOOLSDIRECTORY",
    crate::runner::actions::VAR,
];

/// Install entries never mounted: the runner's own writable files (those a slot root
/// never mirrors), and what `env.sh` writes.
fn skipped(name: &str) -> bool {
    crate::os::layout::NOT_MIRRORED.contains(&name) || name == ".env" || name == ".path"
}

impl Jobs {
    /// The container's configuration (no secret in it).
    pub(super) fn config(
        &self,
        req: &StartRequest<'_>,
        tool_cache: Option<&str>,
    ) -> Result<Config<String>, String> {
        let c = &self.cfg;
        let mut env: Vec<String> = vec![];
        let mut push = |k: &str, v: &str| {
            env.retain(|e| e.split('=').next() != Some(k));
            env.push(format!("{k}={v}"));
        };
        for (k, v) in req.env {
            if HOST_ONLY.contains(&k.as_str()) || k == "ACTIONS_RUNNER_INPUT_JITCONFIG" {
                continue;
            }
            push(k, v);
        }
        if let Some(h) = &self.hooks {
            for (k, v) in &h.env {
                push(k, v);
            }
        }
        // The listener's trace on stdout: lease renewals reach the supervisor.
        push("ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT", "1");
        push("RUNNER_ALLOW_RUNASROOT", "1");
        push("RUNNER_TOOL_CACHE", TOOL_CACHE);
        push("AGENT_TOOLSDIRECTORY", TOOL_CACHE);
        let values: Vec<(&str, &str)> = req
            .placeholders
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        for (k, v) in &c.env {
            push(k, &crate::config::fill_placeholders(v, &values));
        }
        let mut mounts = vec![];
        let entries = std::fs::read_dir(req.install).map_err(|e| {
            format!(
                "cannot read the runner install {}: {e}",
                req.install.display()
            )
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !skipped(n))
            .collect();
        names.sort();
        for n in names {
            mounts.push(bind(
                &req.install.join(&n),
                &format!("{RUNNER_ROOT}/{n}"),
                true,
            ));
        }
        if let Some(h) = &self.hooks {
            mounts.push(bind(&h.dir, HOOKS_DIR, true));
            mounts.push(bind(&h.socket, CONTROL_SOCKET, false));
        }
        for v in &c.volumes {
            mounts.push(Mount {
                target: Some(v.target.clone()),
                source: Some(v.source.clone()),
                typ: Some(if v.named {
                    MountTypeEnum::VOLUME
                } else {
                    MountTypeEnum::BIND
                }),
                read_only: Some(v.read_only),
                ..Default::default()
            });
        }
        if let Some(dir) = &self.action_cache {
            mounts.push(bind(dir, crate::runner::actions::IN_CONTAINER, true));
            push(
                crate::runner::actions::VAR,
                crate::runner::actions::IN_CONTAINER,
            );
        }
        if let Some(vol) = tool_cache {
            mounts.push(Mount {
                target: Some(TOOL_CACHE.into()),
                source: Some(vol.to_string()),
                typ: Some(MountTypeEnum::VOLUME),
                read_only: Some(false),
                ..Default::default()
            });
        }
        match &c.docker {
            JobDocker::None => {}
            JobDocker::Host => {
                let sock = c
                    .docker_host
                    .strip_prefix("unix://")
                    .ok_or("[container] docker = \"host\" needs a unix:// docker_host")?;
                mounts.push(bind(Path::new(sock), "/var/run/docker.sock", false));
                push("DOCKER_HOST", "unix:///var/run/docker.sock");
            }
            JobDocker::Url(u) => {
                if let Some(sock) = u.strip_prefix("unix://") {
                    mounts.push(bind(Path::new(sock), "/var/run/docker.sock", false));
                    push("DOCKER_HOST", "unix:///var/run/docker.sock");
                } else {
                    push("DOCKER_HOST", u);
                }
            }
        }
        let labels = HashMap::from([
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            (LABEL_SLOT.to_string(), req.slot.to_string()),
            (LABEL_RUNNER.to_string(), req.name.to_string()),
            (LABEL_ROLE.to_string(), "job".to_string()),
        ]);
        Ok(Config {
            image: Some(c.image.clone()),
            // The image's own entrypoint (the compose image's is the supervisor) is
            // replaced, not prefixed.
            entrypoint: Some(vec!["sh".into(), "-c".into(), ENTRY.into()]),
            cmd: Some(vec![]),
            env: Some(env),
            user: c.user.clone(),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                network_mode: c.network.clone(),
                memory: c.memory,
                // No swap beyond the limit: over it is over it.
                memory_swap: c.memory,
                nano_cpus: c.nano_cpus,
                pids_limit: c.pids_limit,
                shm_size: c.shm_size,
                // An init passes SIGINT on to the listener and reaps the job's orphans.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}
