//! The image checked once, as a job container would run it, at start and in `doctor`.

use std::path::Path;
use std::time::Duration;

use bollard::container::{CreateContainerOptions, StartContainerOptions};
use futures_util::StreamExt;

use super::watch::exit_code;
use super::*;

impl Jobs {
    /// Run the image once as a job container would be (the runner and the hooks mounted),
    /// checking that the runner starts (`Runner.Listener --version`), that bash is there
    /// for the runner's hooks, and that the hook client runs: the version it printed, or
    /// what is wrong and how to fix it. Nothing is registered for it.
    pub async fn probe(&self, install: &Path) -> Result<String, String> {
        let install = self.install.as_deref().unwrap_or(install);
        let image = &self.cfg.image;
        let inspected = self.docker.inspect_image(image).await;
        if let Ok(i) = &inspected {
            let user = i
                .config
                .as_ref()
                .and_then(|c| c.user.clone())
                .unwrap_or_default();
            *self.image_user.lock().unwrap_or_else(|p| p.into_inner()) = Some(user);
        }
        if let Err(e) = inspected {
            return Err(match e {
                bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => format!(
                    "the image {image:?} is not on the engine at {}: build it (docker compose -f compose/compose.yaml build), load it, or set [container] image (SUPERVISOR_CONTAINER_IMAGE)",
                    self.cfg.docker_host
                ),
                other => format!(
                    "the Docker engine at {} did not answer about the image {image:?}: {other}",
                    self.cfg.docker_host
                ),
            });
        }
        let name = format!("{}-probe-{}", self.instance, std::process::id());
        let req_env = vec![("PROBE".to_string(), "1".to_string())];
        let req = StartRequest {
            slot: usize::MAX,
            name: &name,
            install,
            env: &req_env,
            jit: None,
            placeholders: &[],
        };
        // The tool cache's view is checked by the same container: written through, the
        // write landing in the view's own upper layer.
        let view = match &self.tool_cache {
            Some(tc) if self.tool_cache_off().is_none() => {
                let uid = numeric_user(self.user().as_deref()).0;
                match tc.view(&self.docker, &self.instance, &name, uid).await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.tool_cache_fallback(e);
                        None
                    }
                }
            }
            _ => None,
        };
        let r = self.probe_with(&req, view.as_deref()).await;
        if view.is_some() {
            self.job_done(&name, false).await;
            if let Err(e) = &r {
                // Without the view: is it the overlay that fails?
                if let Ok(v) = self.probe_with(&req, None).await {
                    self.tool_cache_fallback(format!(
                        "the engine cannot mount an overlay of {} ({})",
                        self.cfg.tool_cache.display(),
                        e.lines().next().unwrap_or("")
                    ));
                    return Ok(v);
                }
            }
        }
        r
    }

    async fn probe_with(
        &self,
        req: &StartRequest<'_>,
        view: Option<&str>,
    ) -> Result<String, String> {
        let image = &self.cfg.image;
        let name = req.name.to_string();
        let mut config = self.config(req, view)?;
        // The control socket is this run's (doctor has none): not needed to run the client.
        if let Some(m) = config.host_config.as_mut().and_then(|h| h.mounts.as_mut()) {
            m.retain(|m| m.target.as_deref() != Some(CONTROL_SOCKET));
        }
        let client = match &self.hooks {
            Some(_) => format!(" && {HOOKS_DIR}/supervisor --version >/dev/null"),
            None => String::new(),
        };
        let hook = format!(
            " && {{ command -v bash >/dev/null || {{ echo 'no bash: the runner runs its job hooks with bash' >&2; exit 1; }}; }}{client}"
        );
        let write = if view.is_some() {
            format!(" && touch {TOOL_CACHE}/.probe")
        } else {
            String::new()
        };
        config.entrypoint = Some(vec![
            "sh".into(),
            "-c".into(),
            format!("cd {RUNNER_ROOT} && ./bin/Runner.Listener --version{hook}{write}"),
        ]);
        if let Some(l) = config.labels.as_mut() {
            l.insert(LABEL_ROLE.into(), "probe".into());
            l.remove(LABEL_SLOT);
        }
        let _ = remove(&self.docker, &name).await;
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: name.clone(),
                    platform: None,
                }),
                config,
            )
            .await
            .map_err(|e| format!("the image {image:?} cannot be made into a job container: {e}"))?;
        let out = self.run_probe(&name).await;
        remove(&self.docker, &name).await;
        let (code, text) = out?;
        if code == 0 {
            Ok(text.lines().next().unwrap_or("").trim().to_string())
        } else {
            let what = if text.contains("no bash") {
                "has no bash, which the runner needs for its job hooks"
            } else if text.contains("supervisor") {
                "cannot run the supervisor's hook client (it needs glibc 2.36 or later)"
            } else {
                "cannot start the runner: it lacks the runner's dependencies (libicu, libssl, libkrb5, zlib: actions/runner's installdependencies.sh), or sh"
            };
            Err(format!(
                "the image {image:?} {what}: exit {code}: {}; fix: base it on compose/Dockerfile or install them",
                text.trim().lines().last().unwrap_or("")
            ))
        }
    }

    async fn run_probe(&self, name: &str) -> Result<(i64, String), String> {
        let image = &self.cfg.image;
        let mut attach = self
            .docker
            .attach_container(name, Some(both_streams()))
            .await
            .map_err(|e| format!("cannot attach to the probe of {image:?}: {e}"))?;
        self.docker
            .start_container(name, None::<StartContainerOptions<String>>)
            .await
            .map_err(|e| format!("the image {image:?} cannot start a container: {e}"))?;
        let mut text = String::new();
        let read = async {
            while let Some(Ok(o)) = attach.output.next().await {
                if text.len() < 16 * 1024 {
                    text.push_str(&String::from_utf8_lossy(&o.into_bytes()));
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .is_err()
        {
            return Err(format!("the probe of {image:?} did not finish within 60 s"));
        }
        let code = exit_code(&self.docker, name).await.0;
        Ok((code, text))
    }
}
