//! The idle footprint of the real `supervisor` binary: CPU time, wake-ups and memory of
//! all its threads while its listeners wait for jobs (the fake runner long-polling the
//! fake GitHub, which holds each poll 50 s as GitHub does).
//!
//! Run: `cargo build --release --workspace && cargo bench --bench idle`
//! (`IDLE_SECS=60` by default: the measured window after every slot listens and a
//! settling period).
//! Figures, with 2 slots and with 50 (issue 26's targets):
//! - CPU: nanoseconds on CPU of every thread (`/proc/<pid>/task/*/schedstat`) over the
//!   window, as a share of one core (target ≤ 0.02 %);
//! - wake-ups: voluntary + involuntary context switches of every thread, summed, per
//!   second in each 20-second window of the minute: the worst window (target ≤ 1.0/s,
//!   and no more with 50 slots than with 2), and per thread by name;
//! - memory: RSS (VmRSS) and peak RSS (VmHWM) (targets: ≤ 8 MB with 2 slots, ≤ 11 MB with
//!   50), split (`/proc/<pid>/smaps`) into the binary's own code pages (its file-backed
//!   mappings), other file-backed pages (libc, the loader) and anonymous memory (heap,
//!   stacks; target ≤ 3 MB with 2 slots);
//! - the binary's size.
//!
//! `IDLE_SUPERVISOR=/path/to/supervisor` measures another build (an older one: the
//! "before") in the same harness.
//!
//! Threads that end inside the window would take their counts with them: the figures
//! print how many threads there were at each end, so a churn shows.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sim::github::{FakeGithub, Options};
use tokio::io::{AsyncBufReadExt, BufReader};

fn fake_runner() -> PathBuf {
    sim::fixture::fake_runner_beside(Path::new(env!("CARGO_BIN_EXE_supervisor")))
}

#[derive(Debug, Clone, Default)]
struct TaskCounts {
    name: String,
    cpu_ns: u64,
    switches: u64,
}

/// Per thread: time on CPU and context switches.
fn sample(pid: u32) -> HashMap<u32, TaskCounts> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let cpu_ns = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let name = std::fs::read_to_string(t.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        out.insert(
            tid,
            TaskCounts {
                name,
                cpu_ns,
                switches: field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"),
            },
        );
    }
    out
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory by kind, kB: the binary's own pages, other file-backed pages,
/// anonymous memory.
#[derive(Debug, Clone, Copy, Default)]
struct Split {
    binary_kb: u64,
    other_file_kb: u64,
    anon_kb: u64,
}

/// `/proc/<pid>/smaps`, summed by kind.
fn split(pid: u32, binary: &Path) -> Split {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let binary = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    let mut out = Split::default();
    let mut path = String::new();
    for l in text.lines() {
        let mut parts = l.split_whitespace();
        let first = parts.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: `start-end perms offset dev inode [path]`.
            path = l.split_whitespace().nth(5).unwrap_or("").to_string();
            continue;
        }
        let kb = || {
            parts
                .clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" if path.starts_with('/') => {
                if Path::new(&path) == binary {
                    out.binary_kb += kb();
                } else {
                    out.other_file_kb += kb();
                }
            }
            "Anonymous:" => out.anon_kb += kb(),
            _ => {}
        }
    }
    out
}

/// The crate (our own crate by its top-level module) a demangled symbol belongs to:
/// the first path in it that starts with a crate other than the standard library's
/// (`core::ptr::drop_in_place<tokio::…>` is tokio's), else the standard library's.
fn crate_of(sym: &str) -> String {
    let std_crates = ["core", "alloc", "std", "hashbrown", "compiler_builtins"];
    let b = sym.as_bytes();
    let mut first = None;
    let mut i = 0;
    while i < b.len() {
        let starts = (b[i].is_ascii_alphabetic() || b[i] == b'_')
            && (i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':'));
        if !starts {
            i += 1;
            continue;
        }
        let end = i + b[i..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count();
        if sym[end..].starts_with("::") {
            let name = &sym[i..end];
            if name == "runner_supervisor" {
                let module: String = sym[end + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                return format!("runner_supervisor::{module}");
            }
            if !std_crates.contains(&name) {
                return name.to_string();
            }
            first.get_or_insert(name.to_string());
        }
        i = end;
    }
    first.unwrap_or_else(|| "(C or unnamed)".into())
}

/// The binary's code pages resident in `pid`, by crate (kB), from `/proc/<pid>/pagemap`
/// and the binary's symbols (`nm`); empty when either cannot be read.
fn code_by_crate(pid: u32, binary: &Path) -> Vec<(String, f64)> {
    use std::io::{Read, Seek, SeekFrom};
    let binary = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut base = None;
    let mut text = vec![];
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || Path::new(f[5]) != binary {
            continue;
        }
        let (a, b) = f[0].split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        if u64::from_str_radix(f[2], 16).unwrap() == 0 {
            base.get_or_insert(a);
        }
        if f[1].contains('x') {
            text.push((a, b));
        }
    }
    let (Some(base), Ok(mut pagemap)) = (base, std::fs::File::open(format!("/proc/{pid}/pagemap")))
    else {
        return vec![];
    };
    let mut present = vec![];
    for (a, b) in text {
        let n = ((b - a) / 4096) as usize;
        let mut buf = vec![0u8; n * 8];
        if pagemap.seek(SeekFrom::Start(a / 4096 * 8)).is_err()
            || pagemap.read_exact(&mut buf).is_err()
        {
            return vec![];
        }
        for i in 0..n {
            let e = u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
            if e >> 63 == 1 {
                present.push(a - base + i as u64 * 4096);
            }
        }
    }
    let Ok(out) = std::process::Command::new("nm")
        .args(["-C", "-n", "-S", "--defined-only"])
        .arg(&binary)
        .output()
    else {
        return vec![];
    };
    let mut syms: Vec<(u64, u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(4, ' ');
            let addr = u64::from_str_radix(p.next()?, 16).ok()?;
            let size = u64::from_str_radix(p.next()?, 16).ok()?;
            let kind = p.next()?;
            let name = p.next()?;
            matches!(kind, "t" | "T" | "W" | "w").then(|| (addr, size, crate_of(name)))
        })
        .collect();
    syms.sort();
    let mut by: HashMap<String, f64> = HashMap::new();
    for page in present {
        let end = page + 4096;
        let from = syms.partition_point(|s| s.0 + s.1 <= page);
        let mut seen = 0u64;
        for (addr, size, c) in syms[from..].iter().take_while(|s| s.0 < end) {
            let overlap = (addr + size).min(end).saturating_sub((*addr).max(page));
            seen += overlap;
            *by.entry(c.clone()).or_default() += overlap as f64 / 1024.0;
        }
        *by.entry("(no symbol)".into()).or_default() +=
            4096u64.saturating_sub(seen) as f64 / 1024.0;
    }
    let mut v: Vec<(String, f64)> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

struct Figures {
    /// The binary's resident code by crate, kB.
    code: Vec<(String, f64)>,
    slots: usize,
    cpu_percent: f64,
    wakeups_per_s: f64,
    /// Wake-ups per second in each window, summed over the threads.
    windows: Vec<f64>,
    /// Each window's context switches by thread name.
    window_threads: Vec<String>,
    /// By thread name: wake-ups per second over the whole window.
    per_thread: Vec<(String, usize, f64)>,
    rss_kb: u64,
    hwm_kb: u64,
    split: Split,
    threads: (usize, usize),
    /// The most threads seen at once.
    most_threads: usize,
}

/// Per thread over `samples` (taken every second): its name, CPU time and context
/// switches from the first sample to the last, a thread born in between counted from
/// zero and one that ended counted to its last sample, so that a short-lived thread
/// (a blocking-pool thread for a DNS lookup) is not lost.
fn deltas(samples: &[HashMap<u32, TaskCounts>]) -> HashMap<u32, TaskCounts> {
    let mut out: HashMap<u32, TaskCounts> = HashMap::new();
    let Some(first) = samples.first() else {
        return out;
    };
    for s in samples {
        for (tid, t) in s {
            let base = first.get(tid).cloned().unwrap_or_default();
            out.insert(
                *tid,
                TaskCounts {
                    name: t.name.clone(),
                    cpu_ns: t.cpu_ns.saturating_sub(base.cpu_ns),
                    switches: t.switches.saturating_sub(base.switches),
                },
            );
        }
    }
    out
}

/// Context switches summed over every thread of `samples`.
fn switches(samples: &[HashMap<u32, TaskCounts>]) -> u64 {
    deltas(samples).values().map(|t| t.switches).sum()
}

/// How long each wake-up window lasts.
const WINDOW: Duration = Duration::from_secs(20);

async fn run(slots: usize, idle: Duration, dir: &Path) -> Figures {
    let gh = FakeGithub::start(Options {
        runner_startup_ms: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let install = dir.join(format!("install-{slots}"));
    sim::fixture::install_runner(&install, &fake_runner()).unwrap();
    let state = dir.join(format!("state-{slots}"));
    // `IDLE_SUPERVISOR=/path/to/supervisor` measures another build (e.g. an older one) in
    // the same harness.
    let bin = supervisor_bin();
    let mut child = tokio::process::Command::new(&bin)
        .arg("run")
        .env_clear()
        .envs(sim::fixture::supervisor_env(
            &gh.url(),
            "idle",
            &install,
            &state,
        ))
        .env("SUPERVISOR_SLOTS", slots.to_string())
        .env("SUPERVISOR_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn supervisor");
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut listening = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while listening < slots {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) if l.contains("Listening for Jobs") => listening += 1,
            Ok(Ok(Some(_))) => {}
            _ => panic!("only {listening} of {slots} slots listen"),
        }
    }
    // Keep reading (and counting) what it logs while idle.
    let logged = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(_)) = lines.next_line().await {
            n += 1;
        }
        n
    });
    // Let start-up work finish (first socket scans, the first status writes).
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A sample every second (reading /proc wakes nothing in the supervisor).
    let started = tokio::time::Instant::now();
    let mut samples = vec![sample(pid)];
    let mut most_threads = samples[0].len();
    for i in 1..=idle.as_secs() {
        tokio::time::sleep_until(started + Duration::from_secs(i)).await;
        let s = sample(pid);
        most_threads = most_threads.max(s.len());
        samples.push(s);
    }
    let before = samples[0].clone();
    let after = samples.last().unwrap().clone();
    let rss_kb = status_kb(pid, "VmRSS:");
    let hwm_kb = status_kb(pid, "VmHWM:");
    let split = split(pid, Path::new(&bin));
    let code = code_by_crate(pid, Path::new(&bin));
    let all = deltas(&samples);
    let cpu: u64 = all.values().map(|t| t.cpu_ns).sum();
    let total: u64 = all.values().map(|t| t.switches).sum();
    let per = WINDOW.as_secs() as usize;
    let windows: Vec<f64> = (0..samples.len().saturating_sub(1) / per)
        .map(|w| switches(&samples[w * per..=(w + 1) * per]) as f64 / WINDOW.as_secs_f64())
        .collect();
    // Each window's wake-ups by thread name, to see where the worst one comes from.
    let window_threads: Vec<String> = (0..samples.len().saturating_sub(1) / per)
        .map(|w| {
            let mut by: std::collections::BTreeMap<String, u64> = Default::default();
            for t in deltas(&samples[w * per..=(w + 1) * per]).values() {
                *by.entry(t.name.clone()).or_default() += t.switches;
            }
            by.iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut by_name: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for t in all.values() {
        let e = by_name.entry(t.name.clone()).or_default();
        e.0 += 1;
        e.1 += t.switches;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let _ = logged.await;
    let secs = idle.as_secs_f64();
    Figures {
        code,
        slots,
        cpu_percent: cpu as f64 / (secs * 1e9) * 100.0,
        wakeups_per_s: total as f64 / secs,
        windows,
        window_threads,
        per_thread: by_name
            .into_iter()
            .map(|(n, (count, s))| (n, count, s as f64 / secs))
            .collect(),
        rss_kb,
        hwm_kb,
        split,
        threads: (before.len(), after.len()),
        most_threads,
    }
}

/// The binary measured: `IDLE_SUPERVISOR`, else this build's.
fn supervisor_bin() -> String {
    std::env::var("IDLE_SUPERVISOR")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_supervisor").to_string())
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn main() {
    let idle = Duration::from_secs(
        std::env::var("IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (two, fifty) = rt.block_on(async {
        let two = run(2, idle, dir.path()).await;
        let fifty = run(50, idle, dir.path()).await;
        (two, fifty)
    });
    let bin = supervisor_bin();
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!(
        "idle footprint of {bin} ({:.1} MB) over {} s after every slot listens:",
        size as f64 / 1e6,
        idle.as_secs()
    );
    for f in [&two, &fifty] {
        let worst = f.windows.iter().copied().fold(0.0, f64::max);
        println!(
            "  {:>2} slots: CPU {:.4} % of a core; {:.2} wake-ups/s (20 s windows: {}; worst {worst:.2}); RSS {:.1} MB (binary's code {:.1}, other files {:.1}, anonymous {:.1}), peak {:.1} MB; threads {}->{} (at most {} at once)",
            f.slots,
            f.cpu_percent,
            f.wakeups_per_s,
            f.windows
                .iter()
                .map(|w| format!("{w:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            mb(f.rss_kb),
            mb(f.split.binary_kb),
            mb(f.split.other_file_kb),
            mb(f.split.anon_kb),
            mb(f.hwm_kb),
            f.threads.0,
            f.threads.1,
            f.most_threads
        );
        for (name, count, w) in &f.per_thread {
            println!("      thread {name} (x{count}): {w:.2} wake-ups/s");
        }
        println!(
            "      context switches by window and thread: {}",
            f.window_threads.join("; ")
        );
        let shown: Vec<String> = f
            .code
            .iter()
            .take(24)
            .map(|(c, kb)| format!("{c} {kb:.0}"))
            .collect();
        println!("      resident code by crate, kB: {}", shown.join(", "));
    }
    let worst = |f: &Figures| f.windows.iter().copied().fold(0.0, f64::max);
    println!(
        "  targets: RSS <= 8 MB with 2 slots [{}], <= 11 MB with 50 [{}]; anonymous <= 3 MB with 2 [{}]; <= 1.0 wake-up/s in every 20 s window [{}, {} with 50], no more with 50 than with 2 (+0.25/s slack) [{}]; CPU <= 0.02 % of a core [{}]",
        mark(two.rss_kb <= 8 * 1024),
        mark(fifty.rss_kb <= 11 * 1024),
        mark(two.split.anon_kb <= 3 * 1024),
        mark(worst(&two) <= 1.0),
        mark(worst(&fifty) <= 1.0),
        mark(fifty.wakeups_per_s <= two.wakeups_per_s + 0.25),
        mark(two.cpu_percent <= 0.02),
    );
}
