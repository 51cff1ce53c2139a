//! The warm tool cache, as a copy-on-write view per job (reference caches-and-containment
//! 1.3–1.5, 2.3–2.5).
//!
//! `[container] tool_cache` holds generations, `gen-<N>/`, each complete and never
//! changed once published. A job gets an overlay whose lower layer is the current
//! generation and whose upper layer is its own (`jobs/<container>/upper`): the engine
//! mounts it (a `local` volume with overlay options, so it is visible where the job's
//! containers are made) at `/opt/hostedtoolcache`, named by `RUNNER_TOOL_CACHE` and
//! `AGENT_TOOLSDIRECTORY`. The upper layer is thrown away after the job; before that, the
//! tool versions a *successful* job installed (`<tool>/<ver>/<arch>` with its
//! `<arch>.complete`, absent from the lower layer, no whiteout or opaque directory in it)
//! are promoted into a new generation: the current one hard-linked, the new trees moved
//! in, published by a rename. New jobs take the new generation; an old one is removed
//! once no job uses it. No job ever writes a generation, so the races of a shared tool
//! cache (`@actions/tool-cache` deletes and rewrites a version without a lock) cannot
//! happen, nor can one job's `pip install` reach the next.
//!
//! It must not: change a generation after it is published, or remove one a job uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bollard::volume::{CreateVolumeOptions, RemoveVolumeOptions};
use bollard::Docker;

use super::container::LABEL_INSTANCE;

/// The generations and the views made of them.
pub struct ToolCache {
    dir: PathBuf,
    state: Mutex<Gens>,
}

#[derive(Default)]
struct Gens {
    current: u64,
    /// Jobs using each generation.
    users: HashMap<u64, usize>,
    /// The generation each job's view has.
    views: HashMap<String, u64>,
}

/// What a promotion did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Promoted {
    /// `<tool>/<ver>/<arch>` moved into the new generation.
    pub trees: Vec<String>,
    /// The new generation, if one was published.
    pub generation: Option<u64>,
}

fn gen_dir(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("gen-{n}"))
}

impl ToolCache {
    /// Open `dir`: the newest complete generation is current (an empty `gen-0` is made when
    /// there is none); older ones and the views a killed run left are removed.
    pub fn open(dir: &Path) -> std::io::Result<ToolCache> {
        std::fs::create_dir_all(dir)?;
        let mut newest = None;
        let mut all = vec![];
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_prefix("gen-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                all.push(n);
                newest = newest.max(Some(n));
            } else if name.starts_with(".gen-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let current = match newest {
            Some(n) => n,
            None => {
                std::fs::create_dir_all(gen_dir(dir, 0))?;
                0
            }
        };
        for n in all.into_iter().filter(|n| *n != current) {
            let _ = std::fs::remove_dir_all(gen_dir(dir, n));
        }
        let _ = std::fs::remove_dir_all(dir.join("jobs"));
        Ok(ToolCache {
            dir: dir.to_path_buf(),
            state: Mutex::new(Gens {
                current,
                ..Default::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gens> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current generation.
    pub fn current(&self) -> u64 {
        self.lock().current
    }

    /// The current generation's directory.
    pub fn current_dir(&self) -> PathBuf {
        gen_dir(&self.dir, self.current())
    }

    fn job_dir(&self, job: &str) -> PathBuf {
        self.dir.join("jobs").join(job)
    }

    /// Make `job`'s view: its upper and work directories (owned by `uid` when known, so a
    /// non-root job can write), and the engine volume that mounts the overlay. Returns
    /// the volume's name.
    pub async fn view(
        &self,
        docker: &Docker,
        instance: &str,
        job: &str,
        uid: Option<u32>,
    ) -> Result<String, String> {
        let n = {
            let mut g = self.lock();
            let n = g.current;
            *g.users.entry(n).or_default() += 1;
            g.views.insert(job.to_string(), n);
            n
        };
        let base = self.job_dir(job);
        let (upper, work) = (base.join("upper"), base.join("work"));
        let made = (|| -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(&upper)?;
            std::fs::create_dir_all(&work)?;
            match uid {
                Some(u) => {
                    let _ = nix::unistd::chown(&upper, Some(nix::unistd::Uid::from_raw(u)), None);
                }
                None => std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o777))?,
            }
            Ok(())
        })();
        if let Err(e) = made {
            self.release(job);
            return Err(format!(
                "cannot make the tool cache's upper layer {}: {e}",
                upper.display()
            ));
        }
        let name = format!("{job}-toolcache");
        let opts = HashMap::from([
            ("type".to_string(), "overlay".to_string()),
            ("device".to_string(), "overlay".to_string()),
            (
                "o".to_string(),
                format!(
                    "lowerdir={},upperdir={},workdir={}",
                    gen_dir(&self.dir, n).display(),
                    upper.display(),
                    work.display()
                ),
            ),
        ]);
        let r = docker
            .create_volume(CreateVolumeOptions {
                name: name.clone(),
                driver: "local".to_string(),
                driver_opts: opts,
                labels: HashMap::from([(LABEL_INSTANCE.to_string(), instance.to_string())]),
            })
            .await;
        if let Err(e) = r {
            self.release(job);
            let _ = std::fs::remove_dir_all(&base);
            return Err(format!(
                "cannot create the tool cache's overlay volume: {e}"
            ));
        }
        Ok(name)
    }

    /// `job` is over (its container removed): promote what a successful job installed,
    /// remove its view and volume, and any generation no job uses any more.
    pub async fn done(&self, docker: &Docker, job: &str, succeeded: bool) -> Promoted {
        let _ = docker
            .remove_volume(
                &format!("{job}-toolcache"),
                Some(RemoveVolumeOptions { force: true }),
            )
            .await;
        let base = self.job_dir(job);
        let mut promoted = Promoted::default();
        if succeeded {
            match self.promote(&base.join("upper")) {
                Ok(p) => promoted = p,
                Err(e) => {
                    tracing::warn!(event = "tool_cache_promote_failed", job, error = %e, "cannot promote the job's new tool versions; the warm cache is unchanged")
                }
            }
        }
        let _ = std::fs::remove_dir_all(&base);
        self.release(job);
        promoted
    }

    fn release(&self, job: &str) {
        let mut g = self.lock();
        if let Some(n) = g.views.remove(job) {
            if let Some(c) = g.users.get_mut(&n) {
                *c = c.saturating_sub(1);
            }
        }
        let current = g.current;
        let unused: Vec<u64> = g
            .users
            .iter()
            .filter(|(n, c)| **n != current && **c == 0)
            .map(|(n, _)| *n)
            .collect();
        for n in unused {
            g.users.remove(&n);
            let _ = std::fs::remove_dir_all(gen_dir(&self.dir, n));
            tracing::info!(
                event = "tool_cache_generation_removed",
                generation = n,
                "tool cache generation {n} removed: no job uses it"
            );
        }
    }

    /// Move the complete new tool versions of `upper` into a new generation.
    fn promote(&self, upper: &Path) -> std::io::Result<Promoted> {
        let lower = self.current_dir();
        let trees = promotable(upper, &lower);
        if trees.is_empty() {
            return Ok(Promoted::default());
        }
        let n = self.current() + 1;
        let partial = self.dir.join(format!(".gen-{n}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        link_tree(&lower, &partial)?;
        for t in &trees {
            let (from, to) = (upper.join(t), partial.join(t));
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::rename(&from, &to)?;
            let marker = format!("{}.complete", t);
            let _ = std::fs::remove_file(partial.join(&marker));
            std::fs::rename(upper.join(&marker), partial.join(&marker))?;
        }
        std::fs::rename(&partial, gen_dir(&self.dir, n))?;
        self.lock().current = n;
        tracing::info!(event = "tool_cache_promoted", generation = n, trees = ?trees, "tool cache generation {n}: {} new tool version(s) from a successful job", trees.len());
        Ok(Promoted {
            trees,
            generation: Some(n),
        })
    }

    /// For the disk pruner: new views get an empty generation, and the warm one is removed
    /// now if no view has it, else when its last view is released (a mounted lower layer
    /// is never changed). Returns whether it did.
    pub fn reclaim(&self) -> bool {
        let mut g = self.lock();
        let old = g.current;
        let empty =
            std::fs::read_dir(gen_dir(&self.dir, old)).map_or(true, |mut r| r.next().is_none());
        if empty {
            return false;
        }
        let next = old + 1;
        if std::fs::create_dir_all(gen_dir(&self.dir, next)).is_err() {
            return false;
        }
        g.current = next;
        if g.users.get(&old).is_none_or(|c| *c == 0) {
            g.users.remove(&old);
            let _ = std::fs::remove_dir_all(gen_dir(&self.dir, old));
        }
        tracing::info!(event = "tool_cache_reclaimed", generation = old, "disk low: the warm tool cache (generation {old}) removed; jobs start from an empty one");
        true
    }

    /// Bytes in the generations, for the disk pruner, with the current generation.
    pub fn generations(&self) -> Vec<(u64, PathBuf, bool)> {
        let g = self.lock();
        let mut v: Vec<u64> = g.users.keys().copied().collect();
        v.push(g.current);
        v.sort_unstable();
        v.dedup();
        v.into_iter()
            .map(|n| {
                let used = n == g.current || g.users.get(&n).is_some_and(|c| *c > 0);
                (n, gen_dir(&self.dir, n), used)
            })
            .collect()
    }
}

/// The `<tool>/<ver>/<arch>` trees of `upper` that may be promoted: marked complete
/// (`<arch>.complete` beside them, as `@actions/tool-cache` and python-versions write),
/// absent from `lower` (a changed existing version is never promoted: that is how a
/// `pip install` into a cached interpreter would spread), and holding no whiteout or
/// opaque directory (traces of deleting what the lower layer had).
pub fn promotable(upper: &Path, lower: &Path) -> Vec<String> {
    let mut out = vec![];
    let dirs = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    for tool in dirs(upper) {
        for ver in dirs(&upper.join(&tool)) {
            for arch in dirs(&upper.join(&tool).join(&ver)) {
                let rel = format!("{tool}/{ver}/{arch}");
                let complete = upper.join(format!("{rel}.complete"));
                if !complete.is_file() || lower.join(&rel).exists() {
                    continue;
                }
                if has_overlay_traces(&upper.join(&rel)) {
                    continue;
                }
                out.push(rel);
            }
        }
    }
    out
}

/// A whiteout (a 0/0 character device) or an opaque directory anywhere under `p`.
fn has_overlay_traces(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let Ok(rd) = std::fs::read_dir(p) else {
        return false;
    };
    if opaque(p) {
        return true;
    }
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_char_device() {
            return true;
        }
        if t.is_dir() && has_overlay_traces(&e.path()) {
            return true;
        }
    }
    false
}

fn opaque(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    for name in [
        &b"trusted.overlay.opaque\0"[..],
        &b"user.overlay.opaque\0"[..],
    ] {
        let mut buf = [0u8; 4];
        // SAFETY: a NUL-terminated path and name, and a buffer of the length given.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr().cast(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n > 0 && buf[0] == b'y' {
            return true;
        }
    }
    false
}

/// `cp -al src dst`: directories made, files hard-linked (a generation is never written,
/// so sharing its files is safe), symlinks copied.
fn link_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let t = e.file_type()?;
        if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if t.is_dir() {
            link_tree(&from, &to)?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn a_reclaimed_generation_goes_when_its_last_view_does() {
        let d = tempfile::tempdir().unwrap();
        let tc = ToolCache::open(d.path()).unwrap();
        touch(&tc.current_dir().join("node/1.0.0/x64/f"));
        tc.state.lock().unwrap().users.insert(0, 1);
        tc.state.lock().unwrap().views.insert("idle".into(), 0);
        assert!(tc.reclaim());
        assert_eq!(tc.current(), 1, "new views get an empty generation");
        assert!(gen_dir(d.path(), 0).exists(), "a mounted lower layer stays");
        tc.release("idle");
        assert!(!gen_dir(d.path(), 0).exists());
        assert!(!tc.reclaim(), "an empty generation is not reclaimed again");
    }

    #[test]
    fn only_complete_new_versions_are_promotable() {
        let d = tempfile::tempdir().unwrap();
        let (upper, lower) = (d.path().join("u"), d.path().join("l"));
        // New and complete: promoted.
        touch(&upper.join("node/20.11.0/x64/bin/node"));
        touch(&upper.join("node/20.11.0/x64.complete"));
        // New, but its install did not finish: not.
        touch(&upper.join("go/1.22.0/x64/bin/go"));
        // A version the lower layer has, changed by the job (pip install): never.
        touch(&lower.join("Python/3.12.1/x64/bin/python"));
        touch(&lower.join("Python/3.12.1/x64.complete"));
        touch(&upper.join("Python/3.12.1/x64/lib/site-packages/evil.py"));
        touch(&upper.join("Python/3.12.1/x64.complete"));
        assert_eq!(promotable(&upper, &lower), vec!["node/20.11.0/x64"]);
    }

    #[test]
    fn a_promotion_is_a_new_generation_and_the_old_one_goes_when_unused() {
        let d = tempfile::tempdir().unwrap();
        let tc = ToolCache::open(d.path()).unwrap();
        assert_eq!(tc.current(), 0);
        touch(&tc.current_dir().join("old/1.0.0/x64/f"));
        touch(&tc.current_dir().join("old/1.0.0/x64.complete"));
        // A job using gen 0 holds it while gen 1 is published.
        tc.state.lock().unwrap().users.insert(0, 1);
        tc.state.lock().unwrap().views.insert("a".into(), 0);
        let upper = d.path().join("jobs/b/upper");
        touch(&upper.join("node/20.0.0/x64/bin/node"));
        touch(&upper.join("node/20.0.0/x64.complete"));
        let p = tc.promote(&upper).unwrap();
        assert_eq!(p.generation, Some(1));
        let g1 = gen_dir(d.path(), 1);
        assert!(g1.join("node/20.0.0/x64/bin/node").is_file());
        assert!(g1.join("node/20.0.0/x64.complete").is_file());
        assert!(
            g1.join("old/1.0.0/x64/f").is_file(),
            "the lower generation carried over"
        );
        // Generation 0 is unchanged, and stays while its job runs.
        assert!(!gen_dir(d.path(), 0).join("node").exists());
        assert!(gen_dir(d.path(), 0).exists());
        tc.release("a");
        assert!(
            !gen_dir(d.path(), 0).exists(),
            "an unused old generation is removed"
        );
        // Reopened: the newest is current.
        drop(tc);
        let tc = ToolCache::open(d.path()).unwrap();
        assert_eq!(tc.current(), 1);
    }
}
