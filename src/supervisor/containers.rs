//! `[runner] backend = "container"`: the job containers' engine made ready before any slot
//! registers. The containers a killed supervisor left are removed (their runners' names are
//! returned: proof that those registrations were ours, deleted with the ghosts), the hook
//! client and scripts the containers mount are written, and the image is probed (the
//! runner starts in it, the hooks can run): a bad image stops `run` here, with nothing
//! registered.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crate::config::{Backend, Config};
use crate::runner::launch::container::{self, Hooks, Jobs};

use super::Deps;

/// The engine, and the runners of the containers removed.
pub(super) async fn prepare(deps: &Deps) -> anyhow::Result<Option<(Arc<Jobs>, BTreeSet<String>)>> {
    let cfg = &deps.cfg;
    if cfg.runner.backend != Backend::Container {
        return Ok(None);
    }
    let hooks = match &deps.hook_exe {
        Some(exe) => match hooks(cfg, exe) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(event = "hooks_failed", error = %e, "cannot write the job containers' hooks: jobs are known by their display name only");
                None
            }
        },
        None => None,
    };
    let instance = format!("{}-{}", cfg.runner.name_prefix, deps.hostname);
    // `[runner] dir` may be inside this supervisor's own container, where the engine
    // cannot see it: job containers mount a copy under the state directory (hard links
    // where it can; the versions store is there already).
    let install = cfg.state_dir.join("runner-install");
    crate::os::layout::prepare_slot(&cfg.runner.dir, &install).map_err(|e| {
        anyhow::anyhow!(
            "cannot copy the runner install {} to {}: {e}",
            cfg.runner.dir.display(),
            install.display()
        )
    })?;
    let jobs = Jobs::new(&cfg.container, &instance, hooks)
        .map_err(anyhow::Error::msg)?
        .with_install(install)
        .with_action_cache(
            std::fs::create_dir_all(&cfg.runner.action_cache)
                .ok()
                .map(|()| cfg.runner.action_cache.clone()),
        );
    let left = jobs.reap(None, None).await.map_err(|e| {
        anyhow::anyhow!(
            "{e}: [runner] backend = \"container\" needs the engine at [container] docker_host"
        )
    })?;
    if !left.is_empty() {
        tracing::info!(
            event = "containers_reaped",
            count = left.len(),
            "removed {} job container(s) an earlier run left",
            left.len()
        );
    }
    let version = jobs
        .probe(&cfg.runner.dir)
        .await
        .map_err(|e| anyhow::anyhow!("[container] image: {e}"))?;
    tracing::info!(event = "container_image_ready", image = %jobs.image(), engine = %jobs.engine(), runner_version = %version, "job containers from {} on {}", jobs.image(), jobs.engine());
    Ok(Some((
        Arc::new(jobs),
        left.into_iter().filter(|n| !n.is_empty()).collect(),
    )))
}

/// `<state dir>/hooks/container/`: this binary (the hook client) and the two scripts,
/// naming their paths inside the container.
fn hooks(cfg: &Config, exe: &Path) -> std::io::Result<Hooks> {
    use std::os::unix::fs::PermissionsExt;
    let dir = cfg.state_dir.join("hooks").join("container");
    std::fs::create_dir_all(&dir)?;
    let client = dir.join("supervisor");
    let tmp = dir.join(".supervisor.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::copy(exe, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &client)?;
    // The user's own hooks ([runner] env) are container paths; ours call them after the report.
    let mut env: Vec<(String, String)> = cfg
        .runner
        .env
        .iter()
        .filter(|(k, _)| {
            *k == crate::jobs::hooks::STARTED_VAR || *k == crate::jobs::hooks::COMPLETED_VAR
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let inside = Path::new(container::HOOKS_DIR);
    crate::jobs::hooks::install(
        &dir,
        &inside.join("supervisor"),
        Path::new(container::CONTROL_SOCKET),
        &mut env,
    )?;
    // The scripts name themselves where the container sees them.
    for (k, v) in env.iter_mut() {
        if *k == crate::jobs::hooks::STARTED_VAR || *k == crate::jobs::hooks::COMPLETED_VAR {
            if let Some(file) = Path::new(v.as_str()).file_name() {
                *v = inside.join(file).display().to_string();
            }
        }
    }
    env.retain(|(k, _)| {
        *k == crate::jobs::hooks::STARTED_VAR || *k == crate::jobs::hooks::COMPLETED_VAR
    });
    Ok(Hooks {
        dir,
        socket: cfg.control.socket.clone(),
        env,
    })
}
