//! Root file systems and runner installs the container tests assemble: a debootstrap of
//! Debian bookworm (cached under `target/e2e-cache`, so only the first run fetches it from
//! Debian's registry), and the runner tarball with the fake runner as its listener.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::sim_bin;

/// `debootstrap --variant=minbase [--include=...] bookworm`, as a tar, cached under
/// `target/e2e-cache/<name>.tar`.
pub fn debootstrap(name: &str, include: &[&str]) -> PathBuf {
    let cache = super::supervisor_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("e2e-cache");
    let tar = cache.join(format!("{name}.tar"));
    if tar.exists() {
        return tar;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("dbs")
        .tempdir_in("/tmp")
        .unwrap();
    let root = tmp.path().join("root");
    let mut dbs = Command::new("debootstrap");
    dbs.arg("--variant=minbase");
    if !include.is_empty() {
        dbs.arg(format!("--include={}", include.join(",")));
    }
    let st = dbs
        .arg("bookworm")
        .arg(&root)
        .arg("http://deb.debian.org/debian")
        .stdout(Stdio::null())
        .status()
        .expect("debootstrap (apt-get install debootstrap; tests/run does)");
    assert!(st.success(), "debootstrap bookworm {name}");
    // Unique per process: two tests may build the same root at once.
    let part = cache.join(format!("{name}.tar.part{}", std::process::id()));
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-cf"])
        .arg(&part)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::rename(&part, &tar).unwrap();
    tar
}

/// Write an executable file (0755), creating its directory.
pub fn write_exec(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The runner tarball of the test: the fake runner as bin/Runner.Listener.
pub fn runner_tarball(work: &Path, dest: &Path) -> String {
    let dir = work.join("actions-runner");
    sim::fixture::install_runner(&dir, &sim_bin("fake-runner")).unwrap();
    // A copy, not the hard link: other tests link the same file at the same time, which
    // changes its ctime under tar ("file changed as we read it").
    let listener = dir.join("bin/Runner.Listener");
    std::fs::remove_file(&listener).unwrap();
    std::fs::copy(sim_bin("fake-runner"), &listener).unwrap();
    // A copy, not a hard link, for the worker too: tar fails on a file whose link count
    // (its ctime) other tests change while it reads.
    let worker = dir.join("bin/Runner.Worker");
    let _ = std::fs::remove_file(&worker);
    std::fs::copy(sim_bin("fake-runner"), &worker).unwrap();
    write_exec(
        &dir.join("bin/installdependencies.sh"),
        "#!/bin/sh\n# Stand-in: the fake runner needs no .NET dependencies.\necho 'dependencies: nothing to install'\n",
    );
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-czf")
        .arg(dest)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let out = Command::new("sha256sum").arg(dest).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
