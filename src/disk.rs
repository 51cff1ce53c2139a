//! Disk pressure: when free space on Docker's file system falls below the threshold,
//! prune Docker between jobs (stopped containers, unused networks, dangling images; then,
//! only if still short, unused images not in `keep_images`), and report "critical" while
//! still below half.
//!
//! Invariants: the only module that imports bollard; never prunes volumes or touches a
//! runner's `_work`; never prunes while a job runs (a job may still need its images).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::container::PruneContainersOptions;
use bollard::image::{ListImagesOptions, PruneImagesOptions, RemoveImageOptions};
use bollard::network::PruneNetworksOptions;
use bollard::Docker;
use tokio_util::sync::CancellationToken;

use crate::config::DiskConfig;
use crate::status::{Board, Health};

/// Free bytes on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// What a prune removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub containers: usize,
    pub images: usize,
    pub networks: usize,
    pub bytes: u64,
}

/// Connect to the engine at `host` (`unix://...`).
pub fn connect(host: &str) -> Result<Docker, String> {
    Docker::connect_with_unix(host, 30, bollard::API_DEFAULT_VERSION)
        .map_err(|e| format!("cannot connect to Docker at {host}: {e}"))
}

/// Prune what can be pruned, keeping `keep` images and every volume.
pub async fn prune(
    docker: &Docker,
    until: Duration,
    keep: &[String],
    deep: bool,
) -> Result<Pruned, String> {
    let until = format!("{}s", until.as_secs());
    let mut out = Pruned::default();
    let mut f: HashMap<&str, Vec<&str>> = HashMap::new();
    // No age limit means no `until` filter at all.
    if until != "0s" {
        f.insert("until", vec![until.as_str()]);
    }
    let c = docker
        .prune_containers(Some(PruneContainersOptions { filters: f.clone() }))
        .await
        .map_err(|e| format!("pruning containers: {e}"))?;
    out.containers = c.containers_deleted.map(|v| v.len()).unwrap_or(0);
    out.bytes += c.space_reclaimed.unwrap_or(0).max(0) as u64;
    let n = docker
        .prune_networks(Some(PruneNetworksOptions { filters: f.clone() }))
        .await
        .map_err(|e| format!("pruning networks: {e}"))?;
    out.networks = n.networks_deleted.map(|v| v.len()).unwrap_or(0);
    let mut fi = f.clone();
    fi.insert("dangling", vec!["true"]);
    let i = docker
        .prune_images(Some(PruneImagesOptions { filters: fi }))
        .await
        .map_err(|e| format!("pruning images: {e}"))?;
    out.images = i.images_deleted.map(|v| v.len()).unwrap_or(0);
    out.bytes += i.space_reclaimed.unwrap_or(0).max(0) as u64;
    if deep {
        // Unused tagged images, except the caches we were told to keep. An image in use
        // by a container is refused by the engine (409) and stays.
        let images = docker
            .list_images(Some(ListImagesOptions::<String> {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("listing images: {e}"))?;
        let cutoff = chrono::Utc::now().timestamp()
            - until.trim_end_matches('s').parse::<i64>().unwrap_or(0);
        for img in images {
            let kept = img.repo_tags.iter().any(|t| keep.iter().any(|k| k == t));
            if kept || img.created > cutoff {
                continue;
            }
            if docker
                .remove_image(
                    &img.id,
                    Some(RemoveImageOptions {
                        force: false,
                        noprune: false,
                    }),
                    None,
                )
                .await
                .is_ok()
            {
                out.images += 1;
                out.bytes += img.size.max(0) as u64;
            }
        }
    }
    Ok(out)
}

/// Watch free space until cancelled.
pub async fn run(cfg: DiskConfig, board: Arc<Board>, cancel: CancellationToken) {
    let socket = cfg.docker_host.trim_start_matches("unix://").to_string();
    let enabled = match cfg.prune.as_str() {
        "on" => true,
        "off" => false,
        _ => Path::new(&socket).exists(),
    };
    if !enabled {
        return;
    }
    let docker = match connect(&cfg.docker_host) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "disk pruning disabled");
            board.set_condition("disk", Some((Health::Degraded, e)));
            return;
        }
    };
    let path: PathBuf = match &cfg.path {
        Some(p) => p.clone(),
        None => docker
            .info()
            .await
            .ok()
            .and_then(|i| i.docker_root_dir)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/")),
    };
    let threshold = cfg.threshold_gb * 1_000_000_000;
    let gb = |b: u64| b as f64 / 1e9;
    let mut deferred_logged = false;
    loop {
        if let Some(free) = free_bytes(&path) {
            board.set_fact("disk_free_gb", format!("{:.1}", gb(free)));
            let mut now_free = free;
            if free < threshold {
                let busy = board.slots().iter().any(|s| s.state == "busy");
                if busy {
                    if !deferred_logged {
                        tracing::warn!(free_gb = format!("{:.1}", gb(free)), threshold_gb = cfg.threshold_gb, path = %path.display(), "disk below threshold: pruning deferred until no job runs");
                        deferred_logged = true;
                    }
                } else {
                    deferred_logged = false;
                    tracing::warn!(free_gb = format!("{:.1}", gb(free)), threshold_gb = cfg.threshold_gb, path = %path.display(), "disk below threshold: pruning Docker (never volumes)");
                    // Light first (stopped containers, networks, dangling images); unused
                    // tagged images only if that was not enough.
                    let light = prune(&docker, cfg.until, &cfg.keep_images, false).await;
                    let after_light = free_bytes(&path).unwrap_or(free);
                    let result = match light {
                        Ok(l) if after_light < threshold => {
                            prune(&docker, cfg.until, &cfg.keep_images, true)
                                .await
                                .map(|d| Pruned {
                                    containers: l.containers + d.containers,
                                    images: l.images + d.images,
                                    networks: l.networks + d.networks,
                                    bytes: l.bytes + d.bytes,
                                })
                        }
                        other => other,
                    };
                    match result {
                        Ok(p) => {
                            now_free = free_bytes(&path).unwrap_or(free);
                            tracing::info!(
                                containers = p.containers,
                                images = p.images,
                                networks = p.networks,
                                reclaimed_mb = p.bytes / 1_000_000,
                                free_gb = format!("{:.1}", gb(now_free)),
                                "Docker pruned"
                            );
                        }
                        Err(e) => tracing::error!(error = %e, "Docker prune failed"),
                    }
                }
            }
            let cond = if now_free < threshold / 2 {
                Some((
                    Health::Degraded,
                    format!(
                        "critical: {:.1} GB free on {}, below half the {} GB threshold",
                        gb(now_free),
                        path.display(),
                        cfg.threshold_gb
                    ),
                ))
            } else if now_free < threshold {
                Some((
                    Health::Ok,
                    format!(
                        "{:.1} GB free on {}, below the {} GB threshold",
                        gb(now_free),
                        path.display(),
                        cfg.threshold_gb
                    ),
                ))
            } else {
                None
            };
            board.set_condition("disk", cond);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}
