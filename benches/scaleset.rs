//! Scale-set mode beside slots mode (issue 19 §7): the real `supervisor` binary against
//! the fake GitHub, capacity 4 in both (`[runner] slots = 4`; `[scaleset] max_runners = 4`),
//! GitHub's 50 s hold for the runner's message long-poll and for the scale-set poll alike.
//!
//! Run: `cargo build --release --workspace && cargo bench --bench scaleset`
//! (`SCALESET_IDLE_SECS=60` by default: the idle window, `SCALESET_SETTLE_SECS=5` after
//! every slot listens or the scale-set poll is held; connections pooled at start-up close
//! after reqwest's 90 s idle timeout, so a settle of 200 s shows the steady state).
//! - Idle: processes of the supervisor's tree (listeners by `/proc/*/exe` under the state
//!   dir), its RSS (VmRSS, VmHWM), wake-ups/s (voluntary + involuntary context switches of
//!   every thread) of the supervisor and of the tree, established TCP connections from the
//!   tree to the fake's port (`/proc/<pid>/fd` socket inodes in `/proc/net/tcp{,6}`), and
//!   API calls in the window per hour (the fake's log, where a long poll is logged when
//!   answered), the supervisor's User-Agent apart from the runners'.
//! - Pickup: 10 jobs queued one at a time, each done and the mode idle again before the
//!   next: queued → its runner says Listening (0 in slots mode: it already listened) and
//!   → job started (the fake's `started_at`); in scale-set mode also → `JobAssigned` read
//!   by the supervisor, and the runner's own start there (JIT registration → Listening).
//! - The fake runner's own start alone (spawn → Listening, 10 JIT starts), beside what is
//!   published for the real runner.
//!
//! Scale-set targets: no listener, one connection, at most one wake-up a second, RSS within
//! 1 MB of slots mode's supervisor.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sim::github::scaleset::ScaleSetOptions;
use sim::github::{FakeGithub, JobSpec, Options};
use tokio::io::{AsyncBufReadExt, BufReader};

const CAPACITY: usize = 4;
const JOBS: usize = 10;
const NAME: &str = "bench-set";
const HOLD: Duration = Duration::from_secs(50);
const WAIT: Duration = Duration::from_secs(120);
/// What is published of the real runner's start: no figure from GitHub.
const REAL_START: &str = "not published by GitHub; live probes saw scale-set runners take a job about 2 s after start (scaleset-protocol.md §3.3, S6 §2b-4), and the .NET runner typically takes several seconds to start and connect";

fn fake_runner() -> PathBuf {
    sim::fixture::fake_runner_beside(Path::new(env!("CARGO_BIN_EXE_supervisor")))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Slots,
    ScaleSet,
}

impl Mode {
    fn env(self) -> Vec<(&'static str, String)> {
        match self {
            Mode::Slots => vec![("SUPERVISOR_RUNNER_SLOTS", CAPACITY.to_string())],
            Mode::ScaleSet => vec![
                ("SUPERVISOR_RUNNER_MODE", "scaleset".into()),
                ("SUPERVISOR_SCALESET_NAME", NAME.into()),
                ("SUPERVISOR_SCALESET_MAX_RUNNERS", CAPACITY.to_string()),
            ],
        }
    }
}

/// One line of the supervisor's JSON log.
struct Ev {
    at: DateTime<Utc>,
    event: String,
    runner: String,
    kind: String,
}

type Log = Arc<Mutex<Vec<Ev>>>;

fn parse(raw: &str) -> Option<Ev> {
    let v: serde_json::Value = serde_json::from_str(raw).ok()?;
    let f = &v["fields"];
    let s = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
    Some(Ev {
        at: DateTime::parse_from_rfc3339(v["timestamp"].as_str()?)
            .ok()?
            .with_timezone(&Utc),
        event: s(&f["event"]),
        runner: s(&f["runner"]),
        kind: s(&f["kind"]),
    })
}

fn count(log: &Log, event: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|e| e.event == event)
        .count()
}

fn first(log: &Log, event: &str, pred: impl Fn(&Ev) -> bool) -> Option<DateTime<Utc>> {
    log.lock()
        .unwrap()
        .iter()
        .find(|e| e.event == event && pred(e))
        .map(|e| e.at)
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn status_field(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The supervisor and every process under it.
fn tree(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .map(|p| (p, status_field(p, "PPid:") as i32))
        .collect();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Runner.Listener processes whose executable is under the state dir's slots.
fn listeners(state: &Path) -> Vec<i32> {
    let slots = state.join("slots");
    all_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| {
                e.starts_with(&slots) && e.file_name().is_some_and(|n| n == "Runner.Listener")
            })
        })
        .collect()
}

/// Context switches per thread, keyed (pid, tid).
fn switches(pids: &[i32]) -> Switches {
    let mut out = HashMap::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in dir.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let field = |name: &str| -> u64 {
                st.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            out.insert(
                (pid, tid),
                field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"),
            );
        }
    }
    out
}

type Switches = HashMap<(i32, u32), u64>;

/// Wake-ups between two samples: in all, and by thread name (the busiest first).
fn wakeups(before: &Switches, after: &Switches) -> (u64, String) {
    let mut names: HashMap<String, u64> = HashMap::new();
    for ((pid, tid), a) in after {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"));
        let n = a.saturating_sub(before.get(&(*pid, *tid)).copied().unwrap_or(0));
        *names
            .entry(comm.unwrap_or_default().trim().into())
            .or_default() += n;
    }
    let mut v: Vec<_> = names.into_iter().filter(|(_, n)| *n > 0).collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1));
    let text: Vec<String> = v.iter().map(|(c, n)| format!("{c} {n}")).collect();
    (v.iter().map(|(_, n)| n).sum(), text.join(", "))
}

/// Inodes of established TCP sockets whose remote port is `port`.
fn established_to(port: u16) -> HashSet<u64> {
    let mut out = HashSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for l in text.lines().skip(1) {
            let c: Vec<&str> = l.split_whitespace().collect();
            if c.len() < 10 || c[3] != "01" {
                continue;
            }
            let rport = c[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if rport == Some(port) {
                if let Ok(inode) = c[9].parse() {
                    out.insert(inode);
                }
            }
        }
    }
    out
}

/// Connections to the fake held by `pids` (each socket once).
fn connections(pids: &[i32], port: u16) -> usize {
    let to = established_to(port);
    let mut held = HashSet::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in dir.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(i) = inode.filter(|i| to.contains(i)) {
                held.insert(i);
            }
        }
    }
    held.len()
}

#[derive(Default)]
struct Idle {
    procs: usize,
    listeners_max: usize,
    rss_kb: u64,
    hwm_kb: u64,
    sup_wakeups: f64,
    tree_wakeups: f64,
    conns_sup: usize,
    conns_runners: usize,
    /// Per-second samples of the tree's connections: first, lowest, highest.
    conns_seen: (usize, usize, usize),
    threads: String,
    calls_sup: usize,
    calls_runners: usize,
    secs: f64,
}

#[derive(Default)]
struct Pickup {
    listen_ms: Vec<f64>,
    start_ms: Vec<f64>,
    assigned_ms: Vec<f64>,
    own_start_ms: Vec<f64>,
}

fn ms(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run(mode: Mode, (settle, idle): (Duration, Duration), dir: &Path) -> (Idle, Pickup) {
    let gh = FakeGithub::start(Options {
        runner_startup_ms: 0,
        poll_timeout: HOLD,
        scaleset: ScaleSetOptions {
            poll_hold: HOLD,
            ..ScaleSetOptions::default()
        },
        ..Options::default()
    })
    .await
    .unwrap();
    let port = gh.addr().port();
    let zero = gh.started_at();
    let tag = format!("{mode:?}").to_lowercase();
    let install = dir.join(format!("install-{tag}"));
    sim::fixture::install_runner(&install, &fake_runner()).unwrap();
    let state = dir.join(format!("state-{tag}"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .arg("run")
        .env_clear()
        .envs(sim::fixture::supervisor_env(
            &gh.url(),
            "ssb",
            &install,
            &state,
        ))
        .envs(mode.env())
        .env("SUPERVISOR_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn supervisor");
    let pid = child.id().unwrap() as i32;
    let log: Log = Arc::default();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let l2 = log.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(raw)) = lines.next_line().await {
            if let Some(e) = parse(&raw) {
                l2.lock().unwrap().push(e);
            }
        }
    });
    let ready = || match mode {
        Mode::Slots => count(&log, "runner_listening") >= CAPACITY,
        Mode::ScaleSet => {
            gh.state(|s| s.scalesets.sessions.values().any(|x| x.polls_in_flight > 0))
        }
    };
    until("the supervisor to be ready", ready).await;
    tokio::time::sleep(settle).await;

    // 1. Idle.
    let now_ms = || (Utc::now() - zero).num_milliseconds().max(0) as u64;
    let procs0 = tree(pid);
    let sup0 = switches(&[pid]);
    let tree0 = switches(&procs0);
    let w0 = now_ms();
    let t0 = Instant::now();
    let (mut seen, mut listeners_max) = (vec![], 0);
    while t0.elapsed() < idle {
        tokio::time::sleep(Duration::from_secs(1).min(idle.saturating_sub(t0.elapsed()))).await;
        seen.push(connections(&tree(pid), port));
        listeners_max = listeners_max.max(listeners(&state).len());
    }
    let secs = t0.elapsed().as_secs_f64();
    let w1 = now_ms();
    let procs1 = tree(pid);
    let mut both: Vec<i32> = procs0.clone();
    both.extend(procs1.iter().filter(|p| !procs0.contains(p)));
    let (sup_w, threads) = wakeups(&sup0, &switches(&[pid]));
    let (tree_w, _) = wakeups(&tree0, &switches(&both));
    let runners: Vec<i32> = procs1.iter().copied().filter(|p| *p != pid).collect();
    let calls: Vec<_> = gh
        .calls()
        .into_iter()
        .filter(|c| c.at_ms >= w0 && c.at_ms < w1)
        .collect();
    let ua = |c: &&sim::github::Call| c.user_agent.clone().unwrap_or_default();
    let calls_sup = calls
        .iter()
        .filter(|c| ua(c).starts_with("runner-supervisor"))
        .count();
    let idle_fig = Idle {
        procs: procs1.len(),
        listeners_max: listeners_max.max(listeners(&state).len()),
        rss_kb: status_field(pid, "VmRSS:"),
        hwm_kb: status_field(pid, "VmHWM:"),
        sup_wakeups: sup_w as f64 / secs,
        tree_wakeups: tree_w as f64 / secs,
        conns_sup: connections(&[pid], port),
        conns_runners: connections(&runners, port),
        conns_seen: (
            seen[0],
            *seen.iter().min().unwrap(),
            *seen.iter().max().unwrap(),
        ),
        threads,
        calls_sup,
        calls_runners: calls.len() - calls_sup,
        secs,
    };

    // 2. Pickup, one job at a time.
    let mut p = Pickup::default();
    for i in 0..JOBS {
        let spec = JobSpec {
            name: format!("pickup-{i}"),
            duration_ms: 200,
            ..JobSpec::default()
        };
        let id = match mode {
            Mode::Slots => {
                gh.enqueue(spec, 1);
                gh.state(|s| *s.actions_jobs.keys().max().unwrap())
            }
            Mode::ScaleSet => gh.enqueue_scaleset_job(JobSpec {
                labels: vec![NAME.into()],
                ..spec
            }),
        };
        let job = |id| gh.state(|s| s.actions_jobs.get(&id).cloned().unwrap());
        until(&format!("job {i}"), || job(id).status == "completed").await;
        let j = job(id);
        let (queued, started) = (j.created_at, j.started_at.unwrap());
        let runner = j.runner_name.unwrap_or_default();
        let listening = first(&log, "runner_listening", |e| e.runner == runner).unwrap_or(queued);
        p.listen_ms.push(ms(queued, listening).max(0.0));
        p.start_ms.push(ms(queued, started));
        if mode == Mode::ScaleSet {
            if let Some(a) = first(&log, "scaleset_message", |e| {
                e.kind == "JobAssigned" && e.at >= queued
            }) {
                p.assigned_ms.push(ms(queued, a));
            }
            if let Some(r) = first(&log, "scaleset_runner", |e| e.runner == runner) {
                p.own_start_ms.push(ms(r, listening));
            }
        }
        // Idle again: every slot listening again, or no listener at all.
        until("idle again", || match mode {
            Mode::Slots => count(&log, "runner_listening") > CAPACITY + i,
            Mode::ScaleSet => listeners(&state).is_empty(),
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let _ = reader.await;
    (idle_fig, p)
}

/// The fake runner alone: spawn → `Listening for Jobs`, with a JIT config of the fake's.
async fn fake_runner_start(dir: &Path, n: usize) -> Vec<f64> {
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    let install = dir.join("install-probe");
    sim::fixture::install_runner(&install, &fake_runner()).unwrap();
    let http = reqwest::Client::new();
    let url = format!(
        "{}/repos/octo/app/actions/runners/generate-jitconfig",
        gh.url()
    );
    let mut out = vec![];
    for i in 0..n {
        let name = format!("probe-{i}");
        let body = serde_json::json!({"name": name, "runner_group_id": 1, "labels": ["probe"]});
        let v: serde_json::Value = http
            .post(&url)
            .bearer_auth(Options::default().token)
            .header("User-Agent", "scaleset-bench")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let blob = v["encoded_jit_config"].as_str().expect("a JIT config");
        let t0 = Instant::now();
        let mut c = tokio::process::Command::new(install.join("bin/Runner.Listener"))
            .args(["run", "--jitconfig", blob])
            .current_dir(&install)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the fake runner");
        let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.ends_with("Listening for Jobs") {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(listening, Ok(true)), "no Listening");
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
    }
    out
}

fn p50_max(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!("{:.0} / {:.0}", s[(s.len() - 1) / 2], s[s.len() - 1])
}

fn mark(ok: bool) -> &'static str {
    ["MISSED", "met"][ok as usize]
}

fn row(what: &str, (slots, ss): (String, String), target: &str) {
    println!("  {what:<36} {slots:>18} {ss:>18}   {target}");
}

fn main() {
    let secs = |k: &str, d| Duration::from_secs(std::env::var(k).map_or(d, |s| s.parse().unwrap()));
    let (settle, window) = (
        secs("SCALESET_SETTLE_SECS", 5),
        secs("SCALESET_IDLE_SECS", 60),
    );
    let idle = (settle, window);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ((si, sp), (ci, cp), own) = rt.block_on(async {
        let slots = run(Mode::Slots, idle, dir.path()).await;
        let ss = run(Mode::ScaleSet, idle, dir.path()).await;
        let own = fake_runner_start(dir.path(), JOBS).await;
        (slots, ss, own)
    });
    let mb = |kb: u64| kb as f64 / 1024.0;
    let both = |f: &dyn Fn(&Idle) -> String| (f(&si), f(&ci));
    let none_ok = ci.listeners_max == 0 && ci.procs == 1;
    let rss_ok = mb(ci.rss_kb) <= mb(si.rss_kb) + 1.0;
    let wake_ok = ci.sup_wakeups <= 1.0;
    let conn_ok = ci.conns_seen.2 == 1 && ci.conns_sup + ci.conns_runners == 1;
    let (hold, secs, settle) = (HOLD.as_secs(), si.secs, settle.as_secs());
    println!("\nscale-set mode beside slots mode: capacity {CAPACITY}, polls held {hold} s");
    let head = ("slots".to_string(), "scaleset".to_string());
    let t = "target (scale-set mode)";
    let what = format!("idle {secs:.0} s, after {settle} s");
    row(&what, head.clone(), t);
    let procs = |f: &Idle| format!("{} ({} listeners)", f.procs, f.listeners_max);
    let t = format!("no listener: {}", mark(none_ok));
    row("processes (supervisor + listeners)", both(&procs), &t);
    let rss = |f: &Idle| format!("{:.1} / {:.1}", mb(f.rss_kb), mb(f.hwm_kb));
    let d = mb(ci.rss_kb) - mb(si.rss_kb);
    let t = format!("within 1 MB of slots ({d:+.2} MB): {}", mark(rss_ok));
    row("supervisor RSS / peak, MB", both(&rss), &t);
    let t = format!("<= 1/s: {}", mark(wake_ok));
    let w = |f: &Idle| format!("{:.2}", f.sup_wakeups);
    row("wake-ups/s, supervisor", both(&w), &t);
    let w = |f: &Idle| format!("{:.2}", f.tree_wakeups);
    row("wake-ups/s, whole tree", both(&w), "");
    let conns = |f: &Idle| format!("{}+{}", f.conns_sup, f.conns_runners);
    let t = format!("one connection: {}", mark(conn_ok));
    row("TCP conns at end, supervisor+runners", both(&conns), &t);
    let seen = |f: &Idle| format!("{:?}", f.conns_seen);
    row("  each second: first, min, max", both(&seen), "");
    let per_h = |n: usize, f: &Idle| format!("{:.0} ({n})", n as f64 * 3600.0 / f.secs);
    let calls = |f: &Idle| per_h(f.calls_sup, f);
    row("API calls/h (n), supervisor", both(&calls), "");
    let calls = |f: &Idle| per_h(f.calls_runners, f);
    row("API calls/h (n), runners", both(&calls), "");
    println!("  supervisor wake-ups by thread, slots:    {}", si.threads);
    println!("  supervisor wake-ups by thread, scaleset: {}", ci.threads);
    row(&format!("pickup, {JOBS} jobs, ms p50 / max"), head, "");
    let pk = |f: fn(&Pickup) -> &[f64]| (p50_max(f(&sp)), p50_max(f(&cp)));
    row("queued -> runner listening", pk(|p| &p.listen_ms), "");
    row("queued -> job started", pk(|p| &p.start_ms), "");
    row("  queued -> JobAssigned read", pk(|p| &p.assigned_ms), "");
    row(
        "  runner's start, JIT -> Listening",
        pk(|p| &p.own_start_ms),
        "",
    );
    let own = p50_max(&own);
    println!("  fake runner's own start, spawn -> Listening: {own} ms p50 / max");
    println!("  real runner's own start: {REAL_START}");
    let m = [none_ok, conn_ok, wake_ok, rss_ok].map(mark);
    println!(
        "  scale-set targets: no listener {}, one connection {}, <= 1 wake-up/s {}, RSS within 1 MB {}",
        m[0], m[1], m[2], m[3]
    );
}
