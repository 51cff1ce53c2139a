//! The runner's action archive cache (`ACTIONS_RUNNER_ACTION_ARCHIVE_CACHE`, runner 2.310
//! and later; reference caches-and-containment 1.1): `<dir>/<owner>_<repo>/<sha>.tar.gz`,
//! which a job's Worker copies from instead of downloading, and never writes. The
//! supervisor fills it, never a job: the `[runner] actions` list resolved through the API
//! at start, and every action a job had to download (its Worker's `Download action
//! repository '…' (SHA:…)` line), fetched once after. Each archive is written to a
//! temporary name, checked (gzip, and no larger than 200 MB) and renamed into place, so a
//! job never sees a partial one (a truncated archive fails the job: the runner does not
//! fall back to downloading). Job containers mount it read-only.
//!
//! It must not: let a job write it, or publish an archive that is not complete.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::github::GithubClient;

/// Where job containers see it.
pub const IN_CONTAINER: &str = "/opt/actionarchivecache";
/// The runner's variable.
pub const VAR: &str = "ACTIONS_RUNNER_ACTION_ARCHIVE_CACHE";

const MAX_BYTES: u64 = 200 * 1024 * 1024;

pub struct ActionCache {
    dir: PathBuf,
    /// Fetches under way (`repo@sha`): one at a time for each.
    busy: Mutex<HashSet<String>>,
}

impl ActionCache {
    pub fn open(dir: &Path) -> std::io::Result<ActionCache> {
        std::fs::create_dir_all(dir)?;
        // Partial downloads of a killed run.
        for e in std::fs::read_dir(dir)?.flatten() {
            if let Ok(rd) = std::fs::read_dir(e.path()) {
                for f in rd.flatten() {
                    if f.file_name().to_string_lossy().starts_with('.') {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
        }
        Ok(ActionCache {
            dir: dir.to_path_buf(),
            busy: Mutex::new(HashSet::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/<owner>_<repo>/<sha>.tar.gz`.
    pub fn path(&self, repository: &str, sha: &str) -> PathBuf {
        self.dir
            .join(repository.replace('/', "_"))
            .join(format!("{sha}.tar.gz"))
    }

    /// Fetch `repository`'s archive at `sha` unless it is there: true when it was added.
    pub async fn fetch(
        &self,
        gh: &GithubClient,
        repository: &str,
        sha: &str,
    ) -> Result<bool, String> {
        let dest = self.path(repository, sha);
        if dest.is_file() {
            return Ok(false);
        }
        let key = format!("{repository}@{sha}");
        if !self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return Ok(false);
        }
        let r = self.fetch_into(gh, repository, sha, &dest).await;
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        r.map(|()| true)
    }

    async fn fetch_into(
        &self,
        gh: &GithubClient,
        repository: &str,
        sha: &str,
        dest: &Path,
    ) -> Result<(), String> {
        let dir = dest.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".{sha}.{}.part", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let url = gh.tarball_url(repository, sha);
        let n = gh
            .download(&url, MAX_BYTES, Duration::from_secs(300), |chunk| {
                f.write_all(chunk)
            })
            .await;
        let ok = n.map_err(|e| e.to_string()).and_then(|n| {
            f.sync_all().map_err(|e| e.to_string())?;
            let mut magic = [0u8; 2];
            use std::io::Read;
            std::fs::File::open(&tmp)
                .and_then(|mut r| r.read_exact(&mut magic))
                .map_err(|e| e.to_string())?;
            if n < 20 || magic != [0x1f, 0x8b] {
                return Err(format!("{url} is not a gzip archive ({n} bytes)"));
            }
            Ok(())
        });
        match ok {
            Ok(()) => std::fs::rename(&tmp, dest).map_err(|e| format!("{}: {e}", dest.display())),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Remove archives, oldest first (by modification time), while `more` says space is
    /// still wanted. Returns (archives, bytes) removed. A Worker copies an archive whole
    /// before it uses it, so removing one between jobs is safe.
    pub fn reclaim_oldest(&self, mut more: impl FnMut() -> bool) -> (usize, u64) {
        let mut all = vec![];
        for d in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                if let Ok(m) = f.metadata() {
                    all.push((m.modified().ok(), m.len(), f.path()));
                }
            }
        }
        all.sort_by_key(|(t, _, _)| *t);
        let (mut n, mut bytes) = (0, 0);
        for (_, len, p) in all {
            if !more() {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                n += 1;
                bytes += len;
            }
        }
        (n, bytes)
    }

    /// `owner/repo@ref` entries resolved to their commits and fetched; what failed is
    /// logged and left to the jobs to download.
    pub async fn fill(&self, gh: &GithubClient, actions: &[String]) {
        for a in actions {
            let Some((repo, rf)) = a.split_once('@') else {
                continue;
            };
            let r = match gh.commit_sha(repo, rf).await {
                Ok(sha) => self.fetch(gh, repo, &sha).await.map(|added| (sha, added)),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok((sha, added)) => {
                    tracing::info!(event = "action_cached", action = %a, sha = %sha, added, "action archive cache: {a} ({sha})")
                }
                Err(e) => {
                    tracing::warn!(event = "action_cache_failed", action = %a, error = %e, "cannot cache {a}; jobs download it themselves")
                }
            }
        }
    }
}
