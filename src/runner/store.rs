//! The runner versions directory (`[runner] versions_dir`): one directory per version,
//! shared by every supervisor that points at it.
//!
//! A version is downloaded once (one downloader at a time, by an exclusive `flock` on
//! `.lock`; whoever waited finds it there), through the GitHub client (proxy, TLS,
//! keepalive, time limit, size bound), verified against its SHA-256 (a mismatch is refused
//! and never unpacked), unpacked into a temporary directory and renamed into place: a
//! directory named for a version is always complete, and an interrupted upgrade leaves only
//! a `.partial-*` entry, removed by the next one to take the lock.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::github::{GithubClient, RunnerApplication};

/// The largest tarball accepted (official ones are about 200 MB).
pub const MAX_TARBALL: u64 = 1 << 30;
/// The longest a download may take.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(1800);

/// Why a version could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(String),
    #[error("download: {0}")]
    Download(String),
    #[error("the checksum of {file} does not match: GitHub lists {want}, the download is {got}; refused, not unpacked")]
    Checksum {
        file: String,
        want: String,
        got: String,
    },
    #[error("{0} lists no sha256_checksum: refused, not unpacked")]
    NoChecksum(String),
    #[error("{file}: {why}")]
    Unpack { file: String, why: String },
}

fn io(what: &str, p: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", p.display()))
}

/// A versions directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The directory, created if missing.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// Where `version` lives once installed.
    pub fn path_of(&self, version: &str) -> PathBuf {
        self.dir.join(version)
    }

    /// The complete versions here, oldest first.
    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<((u64, u64, u64), String)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| Some((super::version::parse_version(&n)?, n)))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    /// Install `version` from `app` (its download URL and checksum), unless it is here
    /// already (another supervisor sharing the directory may have done it). Returns its
    /// directory and whether this call downloaded it.
    pub async fn install(
        &self,
        gh: &GithubClient,
        version: &str,
        app: &RunnerApplication,
    ) -> Result<(PathBuf, bool), StoreError> {
        let lock = self.lock().await?;
        let dest = self.path_of(version);
        if dest.is_dir() {
            drop(lock);
            return Ok((dest, false));
        }
        self.remove_partials();
        let want = app
            .sha256_checksum
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| StoreError::NoChecksum(app.filename.clone()))?
            .to_ascii_lowercase();
        let tarball = self
            .dir
            .join(format!(".partial-{version}-{}.tar.gz", std::process::id()));
        let mut file = fs::File::create(&tarball).map_err(|e| io("cannot create", &tarball, e))?;
        let mut hash = Sha256::new();
        let got = gh
            .download(&app.download_url, MAX_TARBALL, DOWNLOAD_TIMEOUT, |chunk| {
                hash.update(chunk);
                file.write_all(chunk)
            })
            .await;
        drop(file);
        if let Err(e) = got {
            let _ = fs::remove_file(&tarball);
            return Err(StoreError::Download(e.to_string()));
        }
        let got = format!("{:x}", hash.finalize());
        if got != want {
            let _ = fs::remove_file(&tarball);
            return Err(StoreError::Checksum {
                file: app.filename.clone(),
                want,
                got,
            });
        }
        let partial = self
            .dir
            .join(format!(".partial-{version}-{}", std::process::id()));
        let (t, p, name) = (tarball.clone(), partial.clone(), app.filename.clone());
        let unpacked = tokio::task::spawn_blocking(move || unpack(&t, &p, &name))
            .await
            .map_err(|e| StoreError::Io(format!("unpacking: {e}")))?;
        let _ = fs::remove_file(&tarball);
        if let Err(e) = unpacked {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        fs::rename(&partial, &dest).map_err(|e| io("cannot rename into", &dest, e))?;
        drop(lock);
        Ok((dest, true))
    }

    /// Mark `version` bad (rolled back), with why: every supervisor sharing the directory,
    /// and this one after a restart, leaves it alone until a newer release or `retry`.
    pub fn mark_bad(&self, version: &str, why: &str) -> Result<(), StoreError> {
        let p = self.dir.join(format!(".bad-{version}"));
        fs::write(&p, why).map_err(|e| io("cannot write", &p, e))
    }

    /// The versions marked bad, with why.
    pub fn bad(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_prefix(".bad-")?.to_string();
                let why = fs::read_to_string(e.path()).unwrap_or_default();
                Some((name, why.trim().to_string()))
            })
            .collect();
        v.sort();
        v
    }

    /// Forget every bad mark (`supervisor runner retry`).
    pub fn clear_bad(&self) {
        for (v, _) in self.bad() {
            let _ = fs::remove_file(self.dir.join(format!(".bad-{v}")));
        }
    }

    /// Remove every version but `keep`.
    pub fn prune(&self, keep: &[&str]) -> Vec<String> {
        let mut removed = vec![];
        for v in self.versions() {
            if !keep.contains(&v.as_str()) && fs::remove_dir_all(self.path_of(&v)).is_ok() {
                removed.push(v);
            }
        }
        removed
    }

    /// What an interrupted install left (only ever called under the lock).
    fn remove_partials(&self) {
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".partial-") {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }

    /// The exclusive lock on `.lock`, held until the returned file is dropped.
    async fn lock(&self) -> Result<fs::File, StoreError> {
        let path = self.dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io("cannot open", &path, e))?;
        tokio::task::spawn_blocking(move || {
            // SAFETY: flock on a descriptor this closure owns; released when it is closed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                Ok(file)
            } else {
                Err(StoreError::Io(format!(
                    "cannot lock {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                )))
            }
        })
        .await
        .map_err(|e| StoreError::Io(format!("locking: {e}")))?
    }
}

/// Unpack a `.tar.gz` into `into`, refusing entries that would land outside it.
fn unpack(tarball: &Path, into: &Path, name: &str) -> Result<(), StoreError> {
    let bad = |why: String| StoreError::Unpack {
        file: name.to_string(),
        why,
    };
    fs::create_dir_all(into).map_err(|e| io("cannot create", into, e))?;
    let f = fs::File::open(tarball).map_err(|e| io("cannot open", tarball, e))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    ar.set_preserve_permissions(true);
    let mut entries = 0;
    for entry in ar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
        {
            return Err(bad(format!(
                "an entry outside the archive: {}",
                path.display()
            )));
        }
        entry.unpack_in(into).map_err(|e| bad(e.to_string()))?;
        entries += 1;
    }
    if !into.join("bin/Runner.Listener").is_file() {
        return Err(bad(format!(
            "no bin/Runner.Listener among its {entries} entries"
        )));
    }
    Ok(())
}
