//! The container backend's cost, side by side with the process backend in one run, on a
//! real Docker engine of the bench's own (`dockerd --bridge=none --iptables=false`, data
//! root and socket in a temporary directory; the job image is a static busybox root
//! `docker import`ed, nothing pulled):
//! - start: from the listener being asked for (`Listener::spawn`, `Jobs::start`) to its
//!   first output line;
//! - end: from its last line (the job's end) to `Exited`, which the container backend
//!   sends once the container is removed (and its tool-cache view with it);
//!
//! p50 and p99 over `CONTAINER_BENCH_RUNS` (default 40) of each. The listener is a
//! shell script that prints a line, waits 100 ms, prints another and exits, so the figures
//! are what the backend adds; a real `Runner.Listener` adds its own .NET start-up (about
//! 0.5–1.5 s to its first line on a laptop) in both backends alike.
//!
//! Run: `cargo bench --bench containers` (as root: it starts dockerd). Target: the
//! container backend adds at most 300 ms (p50) to a job's start.
// Benches measure real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runner_supervisor::config::{ContainerConfig, JobDocker};
use runner_supervisor::runner::launch::container::{Jobs, StartRequest};
use runner_supervisor::runner::launch::process::{Listener, Output};

const IMAGE: &str = "rs-bench:busybox";

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox (apt-get install busybox-static)")
}

struct Dockerd(std::process::Child);

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn dockerd(d: &Path) -> (Dockerd, String) {
    let host = format!("unix://{}", d.join("docker.sock").display());
    let child = Command::new("dockerd")
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
        .arg(&host)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("dockerd.log")).unwrap())
        .spawn()
        .expect("dockerd (apt-get install docker.io)");
    let k = Dockerd(child);
    for _ in 0..600 {
        let ok = Command::new("docker")
            .args(["-H", &host, "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return (k, host);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("dockerd did not come up");
}

fn import(d: &Path, host: &str) {
    let root = d.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
    for tool in ["sh", "bash", "sleep", "echo", "cat", "rm", "touch", "test"] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(tool));
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let st = Command::new("docker")
        .args([
            "-H",
            host,
            "import",
            "--change",
            "ENV PATH=/bin",
            "-",
            IMAGE,
        ])
        .stdin(tar.stdout.take().unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        tar.wait().unwrap().success() && st.success(),
        "docker import"
    );
}

/// A listener that says two lines 100 ms apart and exits 0.
fn install(d: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = d.join("actions-runner");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let l = dir.join("bin/Runner.Listener");
    std::fs::write(
        &l,
        "#!/bin/sh\necho \"√ Connected to GitHub\"\nsleep 0.1\necho done\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&l, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// (start, end) of one listener: to its first line, and from its last line to `Exited`.
async fn measure(mut l: Listener, asked: Instant) -> (Duration, Duration) {
    let mut first = None;
    let mut last = asked;
    while let Some(o) = l.next().await {
        match o {
            Output::Line { .. } => {
                let now = Instant::now();
                first.get_or_insert(now - asked);
                last = now;
            }
            Output::Exited(_) => return (first.unwrap_or_default(), last.elapsed()),
        }
    }
    panic!("no exit")
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let runs: usize = std::env::var("CONTAINER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let tmp = tempfile::Builder::new()
        .prefix("cb")
        .tempdir_in("/tmp")
        .unwrap();
    let (_dk, host) = dockerd(tmp.path());
    import(tmp.path(), &host);
    let install = install(tmp.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = ContainerConfig {
        image: IMAGE.into(),
        docker_host: host.clone(),
        network: Some("none".into()),
        memory: None,
        nano_cpus: None,
        pids_limit: None,
        shm_size: None,
        volumes: vec![],
        env: Default::default(),
        user: None,
        docker: JobDocker::None,
        tool_cache: tmp.path().join("toolcache"),
    };
    rt.block_on(async {
        let jobs = Jobs::new(&cfg, "bench-host", None).unwrap();
        jobs.probe(&install).await.expect("the probe");
        let tc = jobs
            .tool_cache_off()
            .map_or("with a copy-on-write tool-cache view".to_string(), |w| {
                format!("without a tool-cache view ({w})")
            });
        let env = vec![("LANG".to_string(), "C.UTF-8".to_string())];
        let (mut ps, mut pe, mut cs, mut ce) = (vec![], vec![], vec![], vec![]);
        for i in 0..runs {
            // Alternate, so that the two see the same machine.
            let asked = Instant::now();
            let l = Listener::spawn(
                "bench",
                &install.join("bin/Runner.Listener"),
                &["run"],
                &install,
                &env,
            )
            .unwrap();
            let (s, e) = measure(l, asked).await;
            ps.push(s);
            pe.push(e);
            let name = format!("bench-{i}");
            let asked = Instant::now();
            let l = jobs
                .start(StartRequest {
                    slot: 0,
                    name: &name,
                    install: &install,
                    env: &env,
                    jit: Some("c2VjcmV0"),
                    placeholders: &[],
                })
                .await
                .expect("a job container");
            let (s, e) = measure(l, asked).await;
            jobs.job_done(&name, true).await;
            cs.push(s);
            ce.push(e);
        }
        println!(
            "container backend bench: {runs} listeners each, engine {host}, image {IMAGE} ({tc})"
        );
        println!("                        start p50   start p99   end p50    end p99");
        println!(
            "process backend         {:<11} {:<11} {:<10} {}",
            ms(pct(&mut ps, 0.5)),
            ms(pct(&mut ps, 0.99)),
            ms(pct(&mut pe, 0.5)),
            ms(pct(&mut pe, 0.99))
        );
        println!(
            "container backend       {:<11} {:<11} {:<10} {}",
            ms(pct(&mut cs, 0.5)),
            ms(pct(&mut cs, 0.99)),
            ms(pct(&mut ce, 0.5)),
            ms(pct(&mut ce, 0.99))
        );
        let added = pct(&mut cs, 0.5).saturating_sub(pct(&mut ps, 0.5));
        println!(
            "the container backend adds {} to a job's start (p50; target <= 300 ms)",
            ms(added)
        );
        let left = Command::new("docker")
            .args(["-H", &host, "ps", "-aq"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap_or(0);
        println!("containers left on the engine: {left}");
    });
}
