//! The stand-ins the end-to-end test assembles: base images, `mongo:7.0`, the runner
//! tarball, the build context, and the override that adds the fake GitHub.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::dockerd::{busybox, Dockerd};
use crate::support::sim_bin;

use super::*;

/// The debootstrap of bookworm minbase, as a tar, cached under `target/`.
pub(super) fn bookworm_rootfs() -> PathBuf {
    let cache = crate::support::supervisor_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("e2e-cache");
    let tar = cache.join("bookworm-minbase.tar");
    if tar.exists() {
        return tar;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("dbs")
        .tempdir_in("/tmp")
        .unwrap();
    let root = tmp.path().join("root");
    let st = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&root)
        .arg("http://deb.debian.org/debian")
        .stdout(Stdio::null())
        .status()
        .expect("debootstrap (apt-get install debootstrap; tests/run does)");
    assert!(st.success(), "debootstrap bookworm minbase");
    let part = cache.join("bookworm-minbase.tar.part");
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

pub(super) fn write_exec(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every stand-in image, tagged as compose/Dockerfile and compose.yaml name them.
pub(super) fn import_images(dk: &mut Dockerd, work: &Path) {
    let bookworm = bookworm_rootfs();
    dk.import_rootfs(
        &bookworm,
        "debian:bookworm-slim",
        &["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    );
    dk.must(&["tag", "debian:bookworm-slim", "rust:1.95-bookworm"]);
    // docker:27-cli: only its /usr/local/bin/docker is used.
    let cli = work.join("cli");
    std::fs::create_dir_all(cli.join("usr/local/bin")).unwrap();
    let docker_cli = ["/usr/bin/docker", "/usr/local/bin/docker"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a docker CLI");
    std::fs::copy(docker_cli, cli.join("usr/local/bin/docker")).unwrap();
    dk.import_rootfs(&cli, "docker:27-cli", &[]);
    // mongo:7.0: listens on 27017; its health check fails while /tmp/unhealthy exists.
    let m = work.join("mongo");
    std::fs::create_dir_all(m.join("bin")).unwrap();
    std::fs::create_dir_all(m.join("tmp")).unwrap();
    std::fs::create_dir_all(m.join("srv")).unwrap();
    std::fs::create_dir_all(m.join("data/db")).unwrap();
    std::fs::write(m.join("srv/index.html"), "stand-in for mongod\n").unwrap();
    std::fs::copy(busybox(), m.join("bin/busybox")).unwrap();
    write_exec(
        &m.join("usr/local/bin/mongod"),
        "#!/bin/busybox sh\n# Stand-in for MongoDB 7.0: something that listens on 27017.\nexec /bin/busybox httpd -f -p 27017 -h /srv\n",
    );
    write_exec(
        &m.join("usr/local/bin/mongosh"),
        "#!/bin/busybox sh\n# Stand-in: answers the health check while mongod answers.\n[ ! -e /tmp/unhealthy ] && exec /bin/busybox wget -q -O /dev/null http://127.0.0.1:27017/\nexit 1\n",
    );
    dk.import_rootfs(&m, "mongo:7.0", &["ENV PATH=/usr/local/bin:/bin"]);
    dk.import("rs-e2e/keep:1");
}

/// The runner tarball of the test: the fake runner as bin/Runner.Listener.
pub(super) fn runner_tarball(work: &Path, dest: &Path) -> String {
    let dir = work.join("actions-runner");
    sim::fixture::install_runner(&dir, &sim_bin("fake-runner")).unwrap();
    // A copy, not the hard link: other tests link the same file at the same time, which
    // changes its ctime under tar ("file changed as we read it").
    let listener = dir.join("bin/Runner.Listener");
    std::fs::remove_file(&listener).unwrap();
    std::fs::copy(sim_bin("fake-runner"), &listener).unwrap();
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

/// A copy of the repository as a build context (without `target` and `.git`).
pub(super) fn copy_repo(dst: &Path) {
    let mut pack = Command::new("tar")
        .arg("-C")
        .arg(repo())
        .args([
            "--exclude=./target",
            "--exclude=./.git",
            "--exclude=./compose/secrets",
            "--exclude=./compose/.env",
            "-cf",
            "-",
            ".",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let x = Command::new("tar")
        .arg("-C")
        .arg(dst)
        .arg("-xf")
        .arg("-")
        .stdin(pack.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(pack.wait().unwrap().success() && x.success());
}

/// The override the test adds to the shipped compose.yaml: the fake GitHub as a
/// service, the runners pointed at it, offline build arguments, short timers.
pub(super) fn override_yaml(threshold_gb: u64) -> String {
    format!(
        r#"# The end-to-end test's override: the fake GitHub as a service, every runner pointed
# at it, offline build arguments and short timers. Nothing else changes.
services:
  github:
    image: debian:bookworm-slim
    command: ["/sim/fake-github", "--listen", "0.0.0.0:8080", "--public-url", "http://github:8080", "--time-scale", "0.05"]
    volumes:
      - {fake_github}:/sim/fake-github:ro
  runner-1:
    build: &build
      network: none
      args:
        APT_PACKAGES: ""
    environment: &env
      SUPERVISOR_GITHUB_API_URL: http://github:8080
      SUPERVISOR_CLOCK_NTP_SERVERS: ""
      SUPERVISOR_CLOCK_CHRONYC: "off"
      SUPERVISOR_GITHUB_BACKOFF_BASE: 50ms
      SUPERVISOR_WATCHDOG_GRACE: 2s
      SUPERVISOR_HEALTH_UNHEALTHY_AFTER: 2s
    healthcheck: &health
      interval: 1s
      timeout: 5s
      start_period: 1s
      retries: 2
  runner-2:
    build: *build
    environment: *env
    healthcheck: *health
  pruner:
    build: *build
    healthcheck: *health
    environment:
      PRUNE_THRESHOLD_GB: "{threshold_gb}"
      SUPERVISOR_DISK_INTERVAL: 300ms
      SUPERVISOR_DISK_UNTIL: 0s
      SUPERVISOR_DISK_KEEP_IMAGES: mongo:7.0,rs-e2e/keep:1
  autoheal:
    build: *build
    healthcheck: *health
    environment:
      SUPERVISOR_AUTOHEAL_INTERVAL: 1s
      SUPERVISOR_AUTOHEAL_MAX_RESTARTS: "1"
  mongo:
    healthcheck:
      interval: 1s
      start_period: 1s
      retries: 1
"#,
        fake_github = sim_bin("fake-github").display()
    )
}
