//! A Docker engine of the test's own: `dockerd --bridge=none --iptables=false
//! --ip-forward=false --ip-masq=false`, with its data root, exec root and socket in a
//! temporary directory, stopped (SIGTERM to our own child, by PID) when dropped. Nothing
//! of the machine's own Docker is touched, and no host-wide setting is changed.
//! Images come from root file systems assembled here and `docker import`ed: nothing is
//! pulled.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::eventually;

pub struct Dockerd {
    child: std::process::Child,
    pub dir: tempfile::TempDir,
}

impl Dockerd {
    /// Start it and wait until it answers.
    pub async fn start() -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("dk")
            .tempdir_in("/tmp")
            .unwrap();
        let child = spawn(dir.path());
        let mut k = Dockerd { child, dir };
        k.wait_up().await;
        k
    }

    async fn wait_up(&mut self) {
        let ok = eventually(Duration::from_secs(60), || self.docker(&["info"]).is_some()).await;
        assert!(
            ok,
            "dockerd did not come up: {}",
            std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
        );
    }

    /// Stop the engine (SIGTERM to our child, as a host's service manager does): its
    /// containers stop with it. Its data root stays.
    pub fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }

    /// Start it again on the same data root and socket, and wait until it answers.
    pub async fn restart(&mut self) {
        self.child = spawn(self.dir.path());
        self.wait_up().await;
    }

    /// `unix://<socket>`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// `docker <args>` against this engine: its stdout when it succeeds.
    pub fn docker(&mut self, args: &[&str]) -> Option<String> {
        if self.child.try_wait().ok().flatten().is_some() {
            return None;
        }
        let out = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The engine's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `program` with `DOCKER_HOST` pointing at this engine.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("DOCKER_HOST", self.host());
        c
    }

    /// `docker <args>` that must succeed: its stdout, or a panic with its stderr.
    pub fn must(&mut self, args: &[&str]) -> String {
        let out = self
            .command("docker")
            .args(args)
            .output()
            .expect("run docker");
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker import` the root file system at `rootfs` (a directory or a tar) as `tag`,
    /// with Dockerfile `changes` such as `ENV PATH=/bin`.
    pub fn import_rootfs(&mut self, rootfs: &Path, tag: &str, changes: &[&str]) {
        let mut import = self.command("docker");
        import.arg("import");
        for c in changes {
            import.args(["--change", c]);
        }
        let st = if rootfs.is_dir() {
            let mut tar = Command::new("tar")
                .arg("-C")
                .arg(rootfs)
                .args(["-c", "."])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let st = import
                .args(["-", tag])
                .stdin(tar.stdout.take().unwrap())
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(tar.wait().unwrap().success(), "tar {}", rootfs.display());
            st
        } else {
            import
                .arg(rootfs)
                .arg(tag)
                .stdout(Stdio::null())
                .status()
                .unwrap()
        };
        assert!(st.success(), "docker import {tag}");
    }

    /// `docker import` a busybox root file system as `tag`.
    pub fn import(&mut self, tag: &str) {
        let rootfs = self.dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let st = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(["import", "-", tag])
            .stdin(tar.stdout.take().unwrap())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar");
        assert!(st.success(), "docker import {tag}");
    }
}

/// `dockerd` on the data root, exec root and socket under `d`.
fn spawn(d: &Path) -> std::process::Child {
    Command::new("dockerd")
        .args([
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
        ])
        .arg("--data-root")
        .arg(d.join("root"))
        .arg("--exec-root")
        .arg(d.join("exec"))
        .arg("--pidfile")
        .arg(d.join("docker.pid"))
        .arg("-H")
        .arg(format!("unix://{}", d.join("docker.sock").display()))
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.join("dockerd.log"))
                .unwrap(),
        )
        .spawn()
        .expect("dockerd (apt-get install docker.io; tests/run does)")
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Our own child, by PID: SIGTERM lets it stop its containerd too.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // dockerd leaves its default network namespace mounted under the exec root, which
        // keeps the temporary directory (and its image store) from being removed.
        let netns = self.dir.path().join("exec/netns/default");
        if netns.exists() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&netns)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The static busybox.
pub fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox (apt-get install busybox-static; tests/run does)")
}
