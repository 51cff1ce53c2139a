//! `supervisor status`, `supervisor breaker reset`, `supervisor drain` and
//! `supervisor recycle`: clients of the running supervisor's control socket.

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use crate::config::{CliInput, Purpose};
use crate::status::control::{self, ClientError};
use crate::status::{
    ClockInfo, Dependency, DiskInfo, KeepaliveInfo, SlotStatus, StatusFile, TokenStatus,
};

/// What to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Status { json: bool, watch: bool },
    BreakerReset { slot: Option<usize> },
    Drain,
    Recycle { slot: Option<usize> },
    RunnerUpgrade,
    RunnerRetry,
}

/// Ask the running supervisor; exit 1 when none answers.
pub fn main(input: CliInput, ask: Ask) -> ExitCode {
    let cfg = match super::resolve(&input, Purpose::Local) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let sock = &cfg.control.socket;
    let slot_q = |slot: Option<usize>| slot.map(|s| format!("?slot={s}")).unwrap_or_default();
    let (method, target) = match ask {
        Ask::Status { .. } => ("GET", "/v1/status".to_string()),
        Ask::BreakerReset { slot } => ("POST", format!("/v1/breaker/reset{}", slot_q(slot))),
        Ask::Drain => ("POST", "/v1/drain".to_string()),
        Ask::Recycle { slot } => ("POST", format!("/v1/recycle{}", slot_q(slot))),
        Ask::RunnerUpgrade => ("POST", "/v1/runner/upgrade".to_string()),
        Ask::RunnerRetry => ("POST", "/v1/runner/retry".to_string()),
    };
    loop {
        let (code, body) = match control::request(sock, method, &target) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("supervisor: {e}");
                if matches!(e, ClientError::NotRunning { .. }) {
                    eprintln!(
                        "  (is `supervisor run` running with this configuration? its socket is control.socket, by default <state dir>/control.sock)"
                    );
                }
                return ExitCode::from(1);
            }
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if !(200..300).contains(&code) {
            eprintln!("supervisor: {}", v["error"].as_str().unwrap_or(body.trim()));
            return ExitCode::from(1);
        }
        match ask {
            Ask::Status { json: true, .. } => print!("{body}"),
            Ask::Status { watch, .. } => {
                let s: StatusFile = match serde_json::from_str(&body) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("supervisor: the status does not parse: {e}");
                        return ExitCode::from(1);
                    }
                };
                let text = render(&s, crate::os::clocks::wall_now());
                if watch {
                    // Clear the screen and home the cursor: a live view, the countdowns running.
                    print!("\x1b[2J\x1b[H{text}");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    continue;
                }
                print!("{text}");
            }
            Ask::BreakerReset { .. } => {
                let slots = list(&v["reset"]);
                println!("circuit breaker reset: slot {slots}");
            }
            Ask::Drain => {
                if v["started"].as_bool() == Some(true) {
                    println!("draining: no new jobs; idle runners stop now, busy ones may finish their job; the supervisor exits when all have stopped");
                } else {
                    println!("already stopping");
                }
            }
            Ask::RunnerUpgrade => {
                println!("looking for a newer runner release now: the slots move to it between jobs, one canary slot first (`supervisor runner` and `supervisor status` show it)");
            }
            Ask::RunnerRetry => {
                let cleared: Vec<&str> = v["cleared"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                if cleared.is_empty() {
                    println!("no runner version was marked bad; looking for a newer release now");
                } else {
                    println!(
                        "cleared the bad-version mark of {}; looking for a newer release now",
                        cleared.join(", ")
                    );
                }
            }
            Ask::Recycle { .. } => {
                let slots = list(&v["recycled"]);
                if slots.is_empty() {
                    println!("no idle listener to recycle");
                } else {
                    println!("recycling the idle listener of slot {slots}");
                }
            }
        }
        return ExitCode::SUCCESS;
    }
}

fn list(v: &serde_json::Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// `3h02m`, `4m05s`, `12s`.
pub fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ago", human(now - t))
}

fn slot_block(i: usize, s: &SlotStatus, now: DateTime<Utc>) -> String {
    let mut out = format!(
        "slot {i}  {:<12} {} (for {})\n",
        s.state.as_str(),
        s.runner.as_deref().unwrap_or("-"),
        human(now - s.since)
    );
    let job = match (&s.job, s.job_started_at) {
        (Some(j), Some(t)) => format!("{j}, running {}", human(now - t)),
        (Some(j), None) => j.clone(),
        _ => "-".into(),
    };
    out += &format!("  job        {job}\n");
    if let Some(i) = &s.job_of {
        out += &format!(
            "  of         {}, workflow {}, job {}, run {} attempt {}\n",
            i.repository, i.workflow, i.job, i.run_id, i.run_attempt
        );
    }
    let exit = match (&s.last_exit, s.last_exit_at) {
        (Some(e), Some(t)) => format!("{e}, {}", ago(t, now)),
        (Some(e), None) => e.clone(),
        _ => "-".into(),
    };
    out += &format!("  last exit  {exit}\n");
    out += &format!(
        "  failures   {}{}\n",
        s.failures,
        s.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    let fires: Vec<String> = s
        .breaker
        .fires
        .iter()
        .map(|(c, n)| format!("{c}:{n}"))
        .collect();
    let fires = if fires.is_empty() {
        "no fires in the window".to_string()
    } else {
        format!("fires in the window {}", fires.join(" "))
    };
    let breaker = match s.breaker.open_until.filter(|u| *u > now) {
        Some(u) => format!(
            "OPEN for {} more (until {}), after {}; {fires}; `supervisor breaker reset --slot {i}` closes it",
            human(u - now),
            u.format("%H:%M:%SZ"),
            s.breaker.opened_by.as_deref().unwrap_or("fires")
        ),
        None => format!("closed; {fires}"),
    };
    out += &format!("  breaker    {breaker}\n");
    if let Some(c) = &s.container {
        out += &format!(
            "  container  {} (image {}, removed after its job)\n",
            c.name, c.image
        );
    }
    if let Some(w) = &s.lease_warning {
        out += &format!("  LEASE      {w}\n");
    }
    if let Some(k) = &s.keepalive {
        out += &format!("  keepalive  {}\n", keepalive_word(k));
    }
    if let Some(f) = &s.last_fire {
        out += &format!("  last fire  {f}\n");
    }
    out
}

/// One listener's keepalive: `on (2 connections)`, `refused: why. Fix: fix`.
pub fn keepalive_word(k: &crate::status::SlotKeepalive) -> String {
    use crate::status::KeepaliveState;
    match k.state {
        KeepaliveState::On => format!(
            "on ({} connection{})",
            k.connections,
            if k.connections == 1 { "" } else { "s" }
        ),
        KeepaliveState::Refused => format!(
            "refused: {}. Fix: {}",
            k.reason.as_deref().unwrap_or("?"),
            k.fix.as_deref().unwrap_or("-")
        ),
        s => s.as_str().to_string(),
    }
}

/// The status as text.
pub fn render(s: &StatusFile, now: DateTime<Utc>) -> String {
    let mut out = format!(
        "supervisor {} (pid {}) on {}: mode {}, health {:?}, up {}\n",
        s.version,
        s.pid,
        if s.hostname.is_empty() {
            "-"
        } else {
            &s.hostname
        },
        s.mode,
        s.health,
        human(now - s.started_at)
    );
    for r in &s.reasons {
        out += &format!("  ! {r}\n");
    }
    out += "\n";
    for (i, slot) in s.slots.iter().enumerate() {
        out += &slot_block(i, slot, now);
    }
    out += &host_block(s, now);
    out
}

/// The host's lines: token, clock, disk, dependencies, keepalive, rate limit, and the
/// counts so far.
fn host_block(s: &StatusFile, now: DateTime<Utc>) -> String {
    let sys = &s.system;
    let mut out = "\nhost\n".to_string();
    out += &format!("  token         {}\n", token_word(&sys.token, now));
    out += &clock_line(&sys.clock);
    out += &disk_line(&sys.disk);
    out += &format!("  dependencies  {}\n", dependencies_word(&sys.dependencies));
    out += &keepalive_line(&sys.keepalive);
    let rl = match &sys.rate_limit {
        Some(r) => format!(
            "{}/{} requests left, resets in {}",
            r.remaining,
            r.limit,
            human(DateTime::from_timestamp(r.reset, 0).unwrap_or(now) - now)
        ),
        None => "not known yet".into(),
    };
    out += &format!("  rate limit    {rl}\n");
    if let Some(p) = sys.memory_pressure {
        out += &format!("  memory        pressure {p:.1}% (PSI some avg10)\n");
    }
    if let Some(w) = &sys.inhibitor {
        let windows = sys.windows_keep_awake.as_deref();
        let windows = windows
            .map(|x| format!("; Windows {x}"))
            .unwrap_or_default();
        out += &format!("  keep awake    inhibitor {w}{windows}\n");
    }
    if let Some(i) = sys.intake.as_ref().filter(|i| !i.open) {
        out += &format!(
            "  intake        closed for {}: {}\n",
            human(now - i.since),
            i.reason.as_deref().unwrap_or("")
        );
    }
    if let Some(ss) = &sys.scaleset {
        out += &scaleset_lines(ss, now);
    }
    out += &format!("  runner        {}\n", runner_word(&sys.runner, now));
    let k = &s.counts;
    out += &format!(
        "  jobs          {} completed, {} lost; {} listeners started; {} API requests\n",
        k.jobs_completed, k.jobs_lost, k.listeners_started, k.api_requests
    );
    let r = &k.jobs_rerun_by_result;
    if k.reruns_pending > 0 || !r.is_empty() {
        let n = |w: &str| r.get(w).copied().unwrap_or(0);
        out += &format!(
            "  reruns        {} accepted, {} refused, {} given up, {} skipped; {} waiting for their run\n",
            n("accepted"),
            n("refused"),
            n("given_up"),
            n("skipped"),
            k.reruns_pending
        );
    }
    out
}

/// The runner: installed, the newest release, and GitHub's deadline for the installed one.
fn runner_word(r: &crate::status::RunnerStatus, now: DateTime<Utc>) -> String {
    let installed = r.version.as_deref().unwrap_or("version not known yet");
    let newest = match (&r.latest, &r.version) {
        (Some(l), Some(v)) if l == v => ", the newest release".to_string(),
        (Some(l), _) => format!("; newest release {l}"),
        (None, _) => String::new(),
    };
    let deadline = match (r.deadline.as_str(), r.runtime_deprecates_at) {
        (_, Some(at)) => {
            let past = if at <= now {
                ": PAST, GitHub sends it no jobs"
            } else {
                ""
            };
            format!(
                "; runtime deadline {}{past}",
                crate::runner::version::describe_deadline(at, now)
            )
        }
        ("undated", None) => "; no runtime deadline yet".to_string(),
        ("unknown", None) => "; deadline unknown (GitHub does not say)".to_string(),
        _ => "; deadline not checked yet".to_string(),
    };
    // The autopilot: what it tries, what it rolled back, the last upgrade.
    let mut auto = String::new();
    if let Some(c) = &r.canary {
        auto += &format!("; trying {c}");
    }
    for b in &r.rolled_back {
        auto += &format!("; rolled back {b}");
    }
    if let Some(u) = &r.last_upgrade {
        auto += &format!("; upgraded to {u}");
    }
    if let Some(a) = r.auto_update.as_deref().filter(|a| *a != "on") {
        auto += &format!("; auto_update {a}");
    }
    format!("{installed}{newest}{deadline}{auto}")
}

/// The token: refused, valid until, or not checked yet.
fn token_word(t: &TokenStatus, now: DateTime<Utc>) -> String {
    match (t.valid, t.expires_at) {
        (Some(false), _) => format!("REFUSED: {}", t.error.as_deref().unwrap_or("401")),
        (Some(true), Some(e)) => format!(
            "valid, expires {} ({} days)",
            e.format("%Y-%m-%d"),
            (e - now).num_days()
        ),
        (Some(true), None) => "valid, no expiry".into(),
        (None, _) => "not checked yet".into(),
    }
}

/// The clock's line: its offset, chronyd, and a fault.
fn clock_line(c: &ClockInfo) -> String {
    let clock = match c.offset_s {
        Some(o) => format!("{o:+.3}s from {}", c.source.as_deref().unwrap_or("?")),
        None => "not measured yet".into(),
    };
    format!(
        "  clock         {clock}; chronyd {}{}\n",
        c.chronyd.as_deref().unwrap_or("not watched"),
        c.fault
            .as_deref()
            .map(|f| format!("; FAULT: {f}"))
            .unwrap_or_default()
    )
}

/// The disk's line: free space, the pruner, the last prune.
fn disk_line(d: &DiskInfo) -> String {
    let disk = match d.free_bytes {
        Some(b) => format!("{:.1} GB free", b as f64 / 1e9),
        None => "not watched (no Docker engine, or [disk] prune = off)".into(),
    };
    format!(
        "  disk          {disk}{}{}\n",
        d.pruner
            .as_deref()
            .map(|p| format!("; pruner {p}"))
            .unwrap_or_default(),
        d.last_prune
            .as_deref()
            .map(|p| format!("; last prune {p}"))
            .unwrap_or_else(|| "; no prune yet".into())
    )
}

/// Each dependency and whether it is reachable.
fn dependencies_word(deps: &[Dependency]) -> String {
    let deps: Vec<String> = deps
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d.address,
                if d.reachable {
                    "reachable"
                } else {
                    "UNREACHABLE"
                }
            )
        })
        .collect();
    if deps.is_empty() {
        "none configured".into()
    } else {
        deps.join(", ")
    }
}

/// The host's keepalive line: the listeners' summary and counts, and the sysctls.
fn keepalive_line(k: &KeepaliveInfo) -> String {
    let refused = match (k.listeners_on, k.listeners_refused) {
        (0, 0) => String::new(),
        (on, refused) => format!("; listeners {on} on, {refused} refused"),
    };
    format!(
        "  keepalive     listener: {}{refused}{}\n",
        k.listener.as_deref().unwrap_or("no listener yet"),
        k.sysctls
            .as_deref()
            .map(|k| format!("; sysctls {k}"))
            .unwrap_or_default()
    )
}

/// Scale-set mode: the session, this host's runners and what the service says.
fn scaleset_lines(ss: &crate::status::ScaleSetStatus, now: DateTime<Utc>) -> String {
    let id = ss.id.map(|i| format!(" (id {i})")).unwrap_or_default();
    let since = ss
        .since
        .map(|t| format!(" for {}", human(now - t)))
        .unwrap_or_default();
    let detail = ss
        .detail
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    let mut out = format!(
        "  scale set     {}{id}, session {}{since}{detail}; last message {}, {} conflicts waited out, {} polls timed out\n",
        ss.name, ss.session, ss.last_message_id, ss.conflicts_waited, ss.polls_timed_out
    );
    out += &format!(
        "                jobs use runs-on: {}; runners {} starting, {} idle, {} busy (max {}, min {}); {} started, {} assignments lapsed\n",
        ss.name, ss.runners_starting, ss.runners_idle, ss.runners_busy, ss.max_runners, ss.min_runners, ss.runners_started, ss.assignments_lapsed
    );
    if let Some(st) = &ss.statistics {
        out += &format!(
            "                the service says: {} assigned, {} running, {} registered, {} idle, {} busy runners\n",
            st.total_assigned_jobs, st.total_running_jobs, st.total_registered_runners, st.total_idle_runners, st.total_busy_runners
        );
    }
    out
}
