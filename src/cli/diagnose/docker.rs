//! The Docker engine and the disk: whether this user may use the engine's socket, and
//! free space against the prune threshold.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{bad, ok};
use crate::cli::preflight::{Check, Level};
use crate::config::{Config, Toggle};

/// The Docker socket answers, and this user may use it. Returns the engine's data root.
pub async fn check_docker(cfg: &Config) -> (Check, Option<String>) {
    let sock = crate::docker::socket_path(&cfg.disk.docker_host).to_string();
    let meta = match std::fs::metadata(&sock) {
        Ok(m) => m,
        Err(_) if cfg.disk.prune == Toggle::On => {
            return (
                bad(
                    "docker",
                    Level::Fail,
                    format!("no Docker socket at {sock}, and disk.prune = on"),
                    "start Docker (systemctl start docker), or set disk.docker_host",
                ),
                None,
            )
        }
        Err(_) => {
            return (
                ok(
                    "docker",
                    format!(
                    "no Docker engine at {sock}: pruning is off (jobs that need Docker will fail)"
                ),
                ),
                None,
            )
        }
    };
    let (user, group_name) = user_and_group(&meta);
    // Permission first: bollard's error does not say it.
    if let Err(e) = std::os::unix::net::UnixStream::connect(&sock) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return (
                bad(
                    "docker",
                    Level::Fail,
                    format!("{user} may not use {sock} (not in its group {group_name})"),
                    format!("sudo usermod -aG {group_name} {user}, then log in again (or restart the service)"),
                ),
                None,
            );
        }
    }
    match crate::docker::connect(&cfg.disk.docker_host) {
        Ok(engine) => ping(&engine, &sock, &user).await,
        Err(e) => (
            bad("docker", Level::Fail, e, "check disk.docker_host"),
            None,
        ),
    }
}

/// This user's name, and the name of the group that owns the socket (`meta`).
fn user_and_group(meta: &std::fs::Metadata) -> (String, String) {
    use std::os::unix::fs::MetadataExt;
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "this user".into());
    let group = meta.gid();
    let group_name = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(group))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| group.to_string());
    (user, group_name)
}

/// Whether the engine answers within 10 s; its data root if it does.
async fn ping(engine: &crate::docker::Engine, sock: &str, user: &str) -> (Check, Option<String>) {
    match tokio::time::timeout(Duration::from_secs(10), engine.ping()).await {
        Ok(Ok(version)) => {
            let root = crate::docker::data_root(engine).await;
            (
                ok(
                    "docker",
                    format!("Docker {version} answers at {sock}; {user} may use it"),
                ),
                root,
            )
        }
        Ok(Err(e)) => (
            bad(
                "docker",
                Level::Fail,
                format!("Docker does not answer at {sock}: {e}"),
                "systemctl status docker",
            ),
            None,
        ),
        Err(_) => (
            bad(
                "docker",
                Level::Fail,
                format!("Docker did not answer at {sock} within 10 s"),
                "systemctl status docker",
            ),
            None,
        ),
    }
}

/// Free space against the prune threshold, on Docker's data root (or the state dir).
pub fn check_disk(cfg: &Config, data_root: Option<&str>) -> Check {
    let path: PathBuf = cfg
        .disk
        .path
        .clone()
        .or_else(|| data_root.map(PathBuf::from))
        .unwrap_or_else(|| cfg.state_dir.clone());
    let probe = nearest_existing(&path);
    let Some(free) = crate::docker::disk::free_bytes(&probe) else {
        return bad(
            "disk",
            Level::Warn,
            format!("cannot read free space of {}", path.display()),
            "check that the path exists",
        );
    };
    let gb = free as f64 / 1e9;
    let t = cfg.disk.threshold_gb as f64;
    let detail = format!(
        "{gb:.1} GB free on {} (prune threshold {} GB)",
        path.display(),
        cfg.disk.threshold_gb
    );
    if gb < t / 2.0 {
        bad("disk", Level::Fail, detail, "free space now: docker system prune (the supervisor prunes only what is unused and older than disk.until)")
    } else if gb < t {
        bad("disk", Level::Warn, detail, "the supervisor will prune Docker when no job runs; or free space, or lower disk.threshold_gb")
    } else {
        ok("disk", detail)
    }
}

fn nearest_existing(p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}
