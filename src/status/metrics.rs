//! Prometheus metrics, opt-in (`[metrics] listen`): rendered at each scrape from the
//! board's counters and histograms and the GitHub client's request counts, in the
//! Prometheus text format (0.0.4) by `prometheus-client`.
//!
//! Every name starts with `runner_supervisor_`; README "Metrics" lists them.
//! It must not: keep state of its own; counters live where they are counted.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::status::{Board, Counts, Health, SlotState, Stats, StatusFile};

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn fgauge(v: f64) -> FGauge {
    let g = FGauge::default();
    g.set(v);
    g
}

fn counters<'a>(
    name: &str,
    pairs: impl IntoIterator<Item = (&'a str, u64)>,
) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    for (v, n) in pairs {
        f.get_or_create(&vec![(name.to_string(), v.to_string())])
            .inc_by(n);
    }
    f
}

/// The word a slot state is counted under (`listening` is ARC's `idle`).
pub fn state_label(s: SlotState) -> &'static str {
    match s {
        SlotState::Listening => "idle",
        SlotState::Busy => "busy",
        SlotState::Backoff => "backoff",
        SlotState::Paused => "paused",
        SlotState::BreakerOpen => "breaker_open",
        SlotState::ClockFault => "clock_fault",
        SlotState::Closed => "closed",
        SlotState::Waiting => "waiting",
        SlotState::Registering => "registering",
        SlotState::Starting => "starting",
        SlotState::Finishing => "finishing",
        SlotState::Stopping => "stopping",
        SlotState::Stopped => "stopped",
    }
}

const STATES: [SlotState; 13] = [
    SlotState::Listening,
    SlotState::Busy,
    SlotState::Backoff,
    SlotState::Paused,
    SlotState::BreakerOpen,
    SlotState::ClockFault,
    SlotState::Closed,
    SlotState::Waiting,
    SlotState::Registering,
    SlotState::Starting,
    SlotState::Finishing,
    SlotState::Stopping,
    SlotState::Stopped,
];

/// One scrape. The metrics appear in the order they are registered here.
pub fn render(board: &Board) -> String {
    let snap = board.snapshot();
    let mut r = Registry::with_prefix("runner_supervisor");
    build_info(&mut r, &snap);
    jobs(&mut r, &snap.counts, &board.stats);
    listeners_and_slots(&mut r, &snap);
    registrations(&mut r, &snap.counts);
    health(&mut r, &snap);
    github(&mut r, board, &snap);
    disk(&mut r, &snap);
    let mut out = String::new();
    let _ = prometheus_text::encode(&mut out, &r);
    out
}

/// `build_info`: the supervisor's version and the runner's.
fn build_info(r: &mut Registry, snap: &StatusFile) {
    let info = Family::<Labels, Gauge>::default();
    info.get_or_create(&vec![
        ("version".into(), snap.version.clone()),
        (
            "runner_version".into(),
            snap.system.runner_version.clone().unwrap_or_default(),
        ),
    ])
    .set(1);
    r.register(
        "build_info",
        "The supervisor's version and the runner's, as labels",
        info,
    );
    let runner = &snap.system.runner;
    if let Some(v) = &runner.version {
        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&vec![
            ("version".into(), v.clone()),
            ("latest".into(), runner.latest.clone().unwrap_or_default()),
            ("deadline".into(), runner.deadline.clone()),
        ])
        .set(1);
        r.register(
            "runner_version_info",
            "The installed runner version (label version), the newest release (latest) and whether GitHub dates its deadline (deadline: dated, undated, unknown, unchecked)",
            info,
        );
    }
    if let Some(at) = runner.runtime_deprecates_at {
        r.register(
            "runner_version_deadline_timestamp_seconds",
            "When GitHub stops sending jobs to the installed runner version (Unix time)",
            fgauge(at.timestamp() as f64),
        );
    }
    runner_autopilot(r, snap);
    if let Some(p) = snap.system.memory_pressure {
        r.register(
            "memory_pressure_some_avg10",
            "Memory pressure: the share of the last 10 s in which some task waited for memory (PSI, percent)",
            fgauge(p),
        );
    }
    keep_awake(r, snap);
    scaleset(r, snap);
}

/// Scale-set mode: the session, the service's statistics, this host's runners.
fn scaleset(r: &mut Registry, snap: &StatusFile) {
    let Some(ss) = &snap.system.scaleset else {
        return;
    };
    let state = Family::<Labels, Gauge>::default();
    for s in [
        "connecting",
        "conflict",
        "polling",
        "rebuilding",
        "failing",
        "closed",
    ] {
        state
            .get_or_create(&vec![("state".into(), s.into())])
            .set(i64::from(ss.session == s));
    }
    r.register(
        "scaleset_session",
        "Scale-set mode: 1 for the session's state (polling when healthy)",
        state,
    );
    r.register(
        "scaleset_last_message_id",
        "Scale-set mode: the last queue message taken and acknowledged",
        fgauge(ss.last_message_id as f64),
    );
    r.register(
        "scaleset_conflicts_waited",
        "Scale-set mode: session conflicts (409) waited out",
        counter(ss.conflicts_waited),
    );
    r.register(
        "scaleset_polls_timed_out",
        "Scale-set mode: long polls that neither answered nor failed within [scaleset] poll_timeout",
        counter(ss.polls_timed_out),
    );
    r.register(
        "scaleset_runners_started",
        "Scale-set mode: runners started, one per assigned job (plus warm ones)",
        counter(ss.runners_started),
    );
    let ours = Family::<Labels, Gauge>::default();
    for (k, v) in [
        ("starting", ss.runners_starting),
        ("idle", ss.runners_idle),
        ("busy", ss.runners_busy),
    ] {
        ours.get_or_create(&vec![("state".into(), k.into())])
            .set(v as i64);
    }
    r.register(
        "scaleset_runners",
        "Scale-set mode: this host's runners by state",
        ours,
    );
    if let Some(st) = &ss.statistics {
        let f = Family::<Labels, Gauge>::default();
        for (k, v) in [
            ("assigned_jobs", st.total_assigned_jobs),
            ("running_jobs", st.total_running_jobs),
            ("available_jobs", st.total_available_jobs),
            ("acquired_jobs", st.total_acquired_jobs),
            ("registered_runners", st.total_registered_runners),
            ("idle_runners", st.total_idle_runners),
            ("busy_runners", st.total_busy_runners),
        ] {
            f.get_or_create(&vec![("kind".into(), k.into())])
                .set(v as i64);
        }
        r.register(
            "scaleset_statistics",
            "Scale-set mode: the statistics the service sent with its last message",
            f,
        );
    }
}

/// Whether the machine (and Windows, under WSL2) is kept awake now.
fn keep_awake(r: &mut Registry, snap: &StatusFile) {
    let held = |w: &String| fgauge(if w == "held" { 1.0 } else { 0.0 });
    if let Some(w) = &snap.system.inhibitor {
        // `held on sleep only; …`: some of the locks are held.
        r.register(
            "inhibitor_held",
            "1 while systemd-logind inhibitor locks on sleep and shutdown are held (a slot runs a job; also when only one of them could be had, which status names), else 0 (also when [host] inhibit is off or logind is unavailable)",
            fgauge(if w.starts_with("held") { 1.0 } else { 0.0 }),
        );
    }
    if let Some(w) = &snap.system.windows_keep_awake {
        r.register(
            "windows_keep_awake_held",
            "WSL2: 1 while the Windows helper keeps Windows awake (a slot runs a job), else 0",
            held(w),
        );
    }
    if let Some(i) = &snap.system.intake {
        let g = Family::<Labels, Gauge>::default();
        g.get_or_create(&vec![(
            "reason".to_string(),
            i.reason.clone().unwrap_or_default(),
        )])
        .set(i64::from(i.open));
        r.register(
            "intake_open",
            "1 while the host takes jobs; 0 while [intake] closes it (on battery, low battery, quiet hours), with the reason",
            g,
        );
    }
}

/// The autopilot: which version each slot runs, and the versions rolled back.
fn runner_autopilot(r: &mut Registry, snap: &StatusFile) {
    let runner = &snap.system.runner;
    let slots = Family::<Labels, Gauge>::default();
    for s in &snap.slots {
        let v = s.runner_version.clone().or_else(|| runner.version.clone());
        if let Some(v) = v {
            slots.get_or_create(&vec![("version".into(), v)]).inc();
        }
    }
    r.register(
        "runner_slots_by_version",
        "Slots by the runner version their listener runs (the canary's differs while it is tried)",
        slots,
    );
    if !runner.rolled_back.is_empty() {
        let bad = Family::<Labels, Gauge>::default();
        for b in &runner.rolled_back {
            let (v, why) = b.split_once(": ").unwrap_or((b.as_str(), ""));
            bad.get_or_create(&vec![
                ("version".into(), v.to_string()),
                ("reason".into(), why.to_string()),
            ])
            .set(1);
        }
        r.register(
            "runner_version_rolled_back",
            "Runner versions rolled back after two canary failures, with the reason: not tried again until a newer release or `supervisor runner retry`",
            bad,
        );
    }
}

/// Jobs by result, their duration, and the turnaround to the next listener.
fn jobs(r: &mut Registry, c: &Counts, st: &Stats) {
    let mut results: Vec<(&str, u64)> = c
        .job_results
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    results.push(("lost", c.jobs_lost));
    r.register(
        "jobs",
        "Jobs by the result the runner printed (Succeeded, Failed, Canceled...); lost: the listener ended mid-job",
        counters("result", results),
    );
    r.register(
        "jobs_lost",
        "Jobs lost with their host, by cause (killed, crashed, stalled, stop_timeout, supervisor)",
        counters(
            "cause",
            c.jobs_lost_by_cause.iter().map(|(k, v)| (k.as_str(), *v)),
        ),
    );
    r.register(
        "jobs_rerun",
        "Re-runs of lost jobs, by result (accepted: GitHub made the next attempt; refused: GitHub said no; given_up; skipped: never_rerun)",
        counters(
            "result",
            c.jobs_rerun_by_result.iter().map(|(k, v)| (k.as_str(), *v)),
        ),
    );
    r.register(
        "jobs_rerun_pending",
        "Lost jobs whose re-run waits for their run to complete",
        {
            let g: Gauge = Gauge::default();
            g.set(c.reruns_pending as i64);
            g
        },
    );
    r.register_with_unit(
        "job_duration",
        "From \"Running job\" to its completion",
        Unit::Seconds,
        st.job_duration.clone(),
    );
    r.register_with_unit(
        "turnaround",
        "From a job's completion to the slot's next listener listening",
        Unit::Seconds,
        st.turnaround.clone(),
    );
}

/// Listeners started and how they exited, watchdog fires, breakers, and slots by state.
fn listeners_and_slots(r: &mut Registry, snap: &StatusFile) {
    let c = &snap.counts;
    r.register(
        "listeners_started",
        "Runner.Listener processes started",
        counter(c.listeners_started),
    );
    r.register(
        "listener_exits",
        "Listener exits by reason (job_done, crashed, watchdog, session_conflict...)",
        counters(
            "reason",
            c.listener_exits.iter().map(|(k, v)| (k.as_str(), *v)),
        ),
    );
    r.register(
        "watchdog_fires",
        "Watchdog fires by root cause (clock, token, network, unknown)",
        counters(
            "cause",
            c.watchdog_fires.iter().map(|(k, v)| (k.as_str(), *v)),
        ),
    );
    let breaker = Family::<Labels, Gauge>::default();
    let now = snap.updated_at;
    for (i, s) in snap.slots.iter().enumerate() {
        let open = s.breaker.open_until.is_some_and(|u| u > now);
        breaker
            .get_or_create(&vec![("slot".into(), i.to_string())])
            .set(open as i64);
    }
    r.register(
        "breaker_open",
        "1 while the slot's circuit breaker is open",
        breaker,
    );
    r.register(
        "session_conflicts",
        "\"A session for this runner already exists.\" seen",
        counter(c.session_conflicts),
    );
    let slots = Family::<Labels, Gauge>::default();
    for state in STATES {
        let n = snap.slots.iter().filter(|s| s.state == state).count();
        slots
            .get_or_create(&vec![("state".into(), state_label(state).into())])
            .set(n as i64);
    }
    r.register(
        "slots",
        "Slots by state: idle (listening), busy, backoff, paused, breaker_open, clock_fault...",
        slots,
    );
}

/// Registrations made, deleted, and reaped at start.
fn registrations(r: &mut Registry, c: &Counts) {
    r.register(
        "registrations",
        "Runner registrations made (JIT or token)",
        counter(c.registrations),
    );
    r.register(
        "deregistrations",
        "Registrations deleted by the supervisor (the rest GitHub removed after their job)",
        counter(c.deregistrations),
    );
    r.register(
        "ghosts_reaped",
        "Offline runners of this host left by an earlier run, deleted at start",
        counter(c.ghosts_reaped),
    );
}

/// Health, and the clock and token facts behind it.
fn health(r: &mut Registry, snap: &StatusFile) {
    let health = Gauge::<i64>::default();
    health.set(match snap.health {
        Health::Ok => 0,
        Health::Degraded => 1,
        Health::Unhealthy => 2,
    });
    r.register("health", "0 ok, 1 degraded, 2 unhealthy", health);
    if let Some(o) = snap.system.clock.offset_s {
        r.register_with_unit(
            "clock_offset",
            "The local clock's offset as last measured (positive: ahead)",
            Unit::Seconds,
            fgauge(o),
        );
    }
    if let Some(e) = snap.system.token.expires_at {
        r.register(
            "token_expiry_timestamp_seconds",
            "When the token expires (Unix time)",
            fgauge(e.timestamp() as f64),
        );
    }
}

/// GitHub API requests and the rate limit.
fn github(r: &mut Registry, board: &Board, snap: &StatusFile) {
    let api = Family::<Labels, Counter>::default();
    if let Some(a) = board.api_stats() {
        for ((endpoint, status), n) in a.by_endpoint() {
            api.get_or_create(&vec![
                ("endpoint".into(), endpoint),
                ("status".into(), status),
            ])
            .inc_by(n);
        }
    }
    r.register(
        "api_requests",
        "GitHub API requests by endpoint and status code (error: no answer)",
        api,
    );
    if let Some(rl) = &snap.system.rate_limit {
        r.register(
            "rate_limit_remaining",
            "GitHub API requests left in the window (x-ratelimit-remaining)",
            fgauge(rl.remaining as f64),
        );
        r.register(
            "rate_limit_limit",
            "GitHub API requests allowed per window (x-ratelimit-limit)",
            fgauge(rl.limit as f64),
        );
        r.register(
            "rate_limit_reset_timestamp_seconds",
            "When the window resets (x-ratelimit-reset, Unix time)",
            fgauge(rl.reset as f64),
        );
    }
}

/// Free space and what prunes reclaimed.
fn disk(r: &mut Registry, snap: &StatusFile) {
    if let Some(f) = snap.system.disk.free_bytes {
        r.register_with_unit(
            "disk_free",
            "Free space on Docker's file system",
            Unit::Bytes,
            fgauge(f as f64),
        );
    }
    r.register_with_unit(
        "pruned",
        "Bytes reclaimed by Docker prunes of this supervisor",
        Unit::Bytes,
        counter(snap.system.disk.pruned_bytes),
    );
}

/// Count scrapes (for the log line at the first one).
pub static SCRAPES: AtomicU64 = AtomicU64::new(0);

/// The `/metrics` handler.
pub fn handler(board: std::sync::Arc<Board>) -> crate::status::control::Handler {
    std::sync::Arc::new(move |method, path, _query| {
        use hyper::{Method, StatusCode};
        match (method, path) {
            (&Method::GET, "/metrics") => {
                if SCRAPES.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::info!(event = "metrics_scraped", "first metrics scrape");
                }
                (StatusCode::OK, render(&board), CONTENT_TYPE)
            }
            (_, "/metrics") => (
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET\n".into(),
                "text/plain",
            ),
            _ => (StatusCode::NOT_FOUND, "see /metrics\n".into(), "text/plain"),
        }
    })
}
