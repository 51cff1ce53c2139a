//! The state directory and the per-slot runner roots.
//!
//! A runner root holds its own `.runner`, credentials, `_diag` and `_work`, so each slot
//! needs its own. Each slot root mirrors `runner.dir` with hard links (copies across file
//! systems), rebuilt at every start so a runner upgraded in `runner.dir` is picked up;
//! `_work` (caches) and `_diag` (logs) survive.
//! It must not: write into `runner.dir`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Files that mark a runner as configured; stale ones break the next start.
pub const CONFIG_FILES: &[&str] = &[
    ".runner",
    ".credentials",
    ".credentials_rsaparams",
    ".runner_migrated",
    ".credentials_migrated",
];

/// Top-level entries of the install never mirrored (nor mounted into a job container).
pub const NOT_MIRRORED: &[&str] = &[
    "_work",
    "_diag",
    "update.finished",
    ".runner",
    ".credentials",
    ".credentials_rsaparams",
    ".runner_migrated",
    ".credentials_migrated",
    ".service",
];

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Why a lock was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError {
    /// Another process holds it.
    Held(PathBuf),
    /// It cannot be created or opened (a missing or read-only directory...).
    Io(String),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held(p) => write!(f, "{} is held by another supervisor", p.display()),
            LockError::Io(m) => f.write_str(m),
        }
    }
}

/// Take the exclusive, non-blocking `flock` on `path` (created with its directory). The
/// lock lasts as long as the returned file is open, and dies with the process, so a
/// crashed holder never blocks the next one. It works across containers that share the
/// file through a volume: they share one kernel.
pub fn take_lock(path: &Path) -> Result<std::fs::File, LockError> {
    let io = |e: std::io::Error, p: &Path| LockError::Io(format!("{}: {e}", p.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io(e, path))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an fd we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(f)
    } else {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Err(LockError::Held(path.to_path_buf()))
        } else {
            Err(io(e, path))
        }
    }
}

/// `<state>/slots/<n>`.
pub fn slot_root(state_dir: &Path, slot: usize) -> PathBuf {
    state_dir.join("slots").join(slot.to_string())
}

/// Rebuild slot roots `0..n` from `install`, keeping `_work` and `_diag`.
pub fn prepare_slots(install: &Path, state_dir: &Path, n: usize) -> io::Result<Vec<PathBuf>> {
    let mut roots = vec![];
    for slot in 0..n {
        let root = slot_root(state_dir, slot);
        prepare_slot(install, &root)?;
        roots.push(root);
    }
    Ok(roots)
}

/// Rebuild one slot root from `install` (a runner version), keeping `_work` and `_diag`.
pub fn prepare_slot(install: &Path, root: &Path) -> io::Result<()> {
    fs::create_dir_all(root)?;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "_work" || name == "_diag" {
            continue;
        }
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    mirror(install, root, true)
}

fn mirror(src: &Path, dst: &Path, top: bool) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if top && NOT_MIRRORED.iter().any(|s| name == *s) {
            continue;
        }
        let from = entry.path();
        let to = dst.join(&name);
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_dir() {
            fs::create_dir_all(&to)?;
            mirror(&from, &to, false)?;
        } else if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// Remove stale configuration files from a slot root.
pub fn remove_config_files(root: &Path) {
    for f in CONFIG_FILES {
        let _ = fs::remove_file(root.join(f));
    }
}

/// The registration a root's `.runner` names (`agentId`, `agentName`), if it is there.
pub fn registration(root: &Path) -> Option<(u64, String)> {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join(".runner")).ok()?).ok()?;
    Some((v["agentId"].as_u64()?, v["agentName"].as_str()?.to_string()))
}

/// The `agentId` in a root's `.runner`, if it is there.
pub fn agent_id(root: &Path) -> Option<u64> {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join(".runner")).ok()?).ok()?;
    v["agentId"].as_u64()
}

/// `[runner] workspace = "fresh"`: the work folder emptied before a listener starts, so
/// no job sees what an earlier one left.
pub fn fresh_workspace(work: &Path) {
    let Ok(entries) = std::fs::read_dir(work) else {
        return;
    };
    let mut removed = 0usize;
    for e in entries.flatten() {
        let p = e.path();
        let r = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        };
        match r {
            Ok(()) => removed += 1,
            Err(err) => {
                tracing::warn!(event = "workspace_not_emptied", path = %p.display(), error = %err, "cannot empty the work folder: the next job may see this")
            }
        }
    }
    if removed > 0 {
        tracing::debug!(event = "workspace_emptied", work = %work.display(), removed, "work folder emptied");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_mirror_and_keep_work() {
        let t = tempfile::tempdir().unwrap();
        let install = t.path().join("install");
        fs::create_dir_all(install.join("bin")).unwrap();
        fs::write(install.join("bin/Runner.Listener"), b"x").unwrap();
        fs::write(install.join(".runner"), b"stale").unwrap();
        fs::create_dir_all(install.join("_work")).unwrap();
        let state = t.path().join("state");
        let roots = prepare_slots(&install, &state, 2).unwrap();
        assert!(roots[1].join("bin/Runner.Listener").exists());
        assert!(!roots[0].join(".runner").exists());
        fs::create_dir_all(roots[0].join("_work/cache")).unwrap();
        fs::write(roots[0].join(".credentials"), b"old").unwrap();
        prepare_slots(&install, &state, 2).unwrap();
        assert!(roots[0].join("_work/cache").exists(), "work survives");
        assert!(
            !roots[0].join(".credentials").exists(),
            "stale credentials go"
        );
    }
}
