//! The stand-ins the end-to-end test assembles: base images, `mongo:7.0`, the runner
//! tarball, the build context, and the override that adds the fake GitHub.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::dockerd::{busybox, Dockerd};
use crate::support::rootfs::{debootstrap, write_exec};
use crate::support::sim_bin;

use super::*;

/// Every stand-in image, tagged as compose/Dockerfile and compose.yaml name them.
pub(super) fn import_images(dk: &mut Dockerd, work: &Path) {
    let bookworm = debootstrap("bookworm-minbase", &[]);
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

/// The build context under `work/proj`: the repository, the test runner tarball (its
/// SHA-256 returned), a prebuilt supervisor, and the token file readable by the image's
/// runner user only.
pub(super) fn build_context(work: &Path) -> (std::path::PathBuf, String) {
    let proj = work.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    copy_repo(&proj);
    let sha = crate::support::rootfs::runner_tarball(
        work,
        &proj.join(format!(
            "compose/runner/actions-runner-linux-x64-{}.tar.gz",
            super::RUNNER_VERSION
        )),
    );
    let prebuilt = proj.join("compose/prebuilt/supervisor");
    std::fs::copy(crate::support::supervisor_bin(), &prebuilt).unwrap();
    let _ = Command::new("strip").arg(&prebuilt).status();
    let secret = proj.join("compose/secrets/github_token");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(&secret, format!("{}\n", super::TOKEN)).unwrap();
    nix::unistd::chown(&secret, Some(nix::unistd::Uid::from_raw(1001)), None).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    (proj, sha)
}
