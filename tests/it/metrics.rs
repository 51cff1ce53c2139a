//! Prometheus metrics through the real binary: a supervisor that has run jobs and hit
//! faults (a 502, a crash mid-job, a watchdog fire) is scraped, and the scrape is read
//! back with a Prometheus text-format parser (`prometheus-parse`); values are asserted,
//! against the fake GitHub's own records where it keeps them.

use std::time::Duration;

use sim::github::{Fault, FaultKind, JobSpec};
use sim::protocol::Script;

use crate::support::{github, setup, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// GET `path` from `addr`: (status line, content type, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (
        head.lines().next().unwrap().to_string(),
        ctype,
        body.to_string(),
    )
}

struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("a valid Prometheus text scrape"))
    }

    /// The value of `name` with exactly these labels (histograms: their count).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        use prometheus_parse::Value;
        self.0
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                    && s.labels.len() == labels.len()
            })
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
                Value::Summary(_) => f64::NAN,
            })
    }

    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"))
    }

    fn sum(&self, name: &str, label: (&str, &str)) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => *v,
                _ => 0.0,
            })
            .sum()
    }
}

fn job(name: &str, result: &str) -> JobSpec {
    JobSpec {
        result: result.into(),
        ..crate::support::job(name, 300)
    }
}

#[tokio::test]
async fn a_scrape_after_jobs_and_faults_has_the_values_that_happened() {
    let sb = Sandbox::new();
    let gh = github(|o| {
        o.token_expiration = Some("2027-10-12 09:00:00 UTC".into());
        // GitHub abandons the crashed runner's job soon, and lets its registration go.
        o.job_lock_timeout = Duration::from_secs(2);
    })
    .await;
    // The first registration call fails once with 502 (retried by the client).
    gh.fault(Fault {
        body: None,
        method: Some("POST".into()),
        path: Some("generate-jitconfig".into()),
        kind: FaultKind::Status { status: 502 },
        times: 1,
    });
    // Listener 1 runs a job; listener 2 crashes mid-job; listener 3 loses its connection
    // for good (a watchdog fire); listener 4 runs a job that fails.
    gh.script(Script::Normal);
    gh.script(Script::Crash {
        after_ms: 200,
        during_job: true,
    });
    gh.script(Script::ConnectionLoss {
        after_ms: 100,
        recover_after_ms: None,
        give_up: false,
        during_job: false,
    });
    let addr = free_port();
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_WATCHDOG_GRACE".into(), "1s".into());
    env.insert("SUPERVISOR_METRICS_LISTEN".into(), addr.to_string());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("metrics_ready", T).await;
    d.wait_listening(1, T).await;
    gh.enqueue(job("build", "Succeeded"), 1);
    assert!(gh.wait_for(T, |s| s.completed.len() == 1).await);
    d.wait_listening(2, T).await;
    gh.enqueue(job("e2e", "Succeeded"), 1);
    let lost = d.wait_event("job_lost", T).await;
    assert!(lost.level == "WARN" && lost.is("job", "e2e"), "{lost:?}");
    d.wait_event("watchdog_fire", T).await;
    d.wait_listening(4, T).await;
    gh.enqueue(job("lint", "Failed"), 1);
    assert!(
        gh.wait_for(T, |s| s.completed.iter().any(|j| j.name == "lint"))
            .await
    );
    d.wait_listening(5, T).await;

    let (status, ctype, body) = http_get(addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let m = Scrape::parse(&body);
    let n = |name: &str| format!("runner_supervisor_{name}");
    // Jobs by result, and the lost one.
    assert_eq!(m.must(&n("jobs_total"), &[("result", "Succeeded")]), 1.0);
    assert_eq!(m.must(&n("jobs_total"), &[("result", "Failed")]), 1.0);
    assert_eq!(m.must(&n("jobs_total"), &[("result", "lost")]), 1.0);
    // Two jobs ran to completion: two durations; each was followed by a listener listening.
    assert_eq!(m.must(&n("job_duration_seconds_count"), &[]), 2.0);
    assert_eq!(m.must(&n("turnaround_seconds_count"), &[]), 2.0);
    let took = m.must(&n("job_duration_seconds_sum"), &[]);
    assert!((0.5..30.0).contains(&took), "two 300 ms jobs took {took} s");
    // Listeners: five started; exits by reason.
    assert_eq!(m.must(&n("listeners_started_total"), &[]), 5.0);
    assert_eq!(
        m.must(&n("listener_exits_total"), &[("reason", "job_done")]),
        2.0
    );
    assert_eq!(
        m.must(&n("listener_exits_total"), &[("reason", "watchdog")]),
        1.0
    );
    assert_eq!(
        m.must(&n("watchdog_fires_total"), &[("cause", "network")]),
        1.0
    );
    assert_eq!(m.must(&n("breaker_open"), &[("slot", "0")]), 0.0);
    assert_eq!(m.must(&n("session_conflicts_total"), &[]), 0.0);
    // The ARC-style gauges: one slot, idle.
    assert_eq!(m.must(&n("slots"), &[("state", "idle")]), 1.0);
    assert_eq!(m.must(&n("slots"), &[("state", "busy")]), 0.0);
    assert_eq!(m.must(&n("slots"), &[("state", "backoff")]), 0.0);
    assert_eq!(m.must(&n("slots"), &[("state", "paused")]), 0.0);
    // API requests by endpoint and status, as the fake GitHub counted them.
    let jit = "POST /repos/:owner/:repo/actions/runners/generate-jitconfig";
    assert_eq!(
        m.must(
            &n("api_requests_total"),
            &[("endpoint", jit), ("status", "502")]
        ),
        1.0
    );
    let fake_jit = gh
        .calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("generate-jitconfig"))
        .count() as f64;
    assert_eq!(m.sum(&n("api_requests_total"), ("endpoint", jit)), fake_jit);
    let v = crate::support::status(&env);
    let total: f64 =
        m.0.samples
            .iter()
            .filter(|s| s.metric == n("api_requests_total"))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(x) | prometheus_parse::Value::Untyped(x) => x,
                _ => 0.0,
            })
            .sum();
    // The status call above may have raced one more request: at most one apart.
    let counted = v.counts.api_requests as f64;
    assert!((counted - total).abs() <= 1.0, "{counted} vs {total}");
    let remaining = m.must(&n("rate_limit_remaining"), &[]);
    assert!(remaining < 5000.0 && remaining > 4900.0, "{remaining}");
    // Clock offset (GitHub's Date header), token expiry, build info.
    let offset = m.must(&n("clock_offset_seconds"), &[]);
    assert!(offset.abs() < 5.0, "{offset}");
    assert_eq!(
        m.must(&n("token_expiry_timestamp_seconds"), &[]),
        chrono::DateTime::parse_from_rfc3339("2027-10-12T09:00:00Z")
            .unwrap()
            .timestamp() as f64
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        m.must(
            &n("build_info"),
            &[
                ("version", version),
                ("runner_version", sim::protocol::RUNNER_VERSION)
            ]
        ),
        1.0
    );
    assert_eq!(m.must(&n("health"), &[]), 0.0);
    assert_eq!(m.must(&n("pruned_bytes_total"), &[]), 0.0);
    // Every metric the shipped Grafana dashboard queries is in the scrape (disk_free_bytes
    // only while pruning is on, which this test leaves off).
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compose/grafana-dashboard.json"
    ))
    .unwrap();
    let mut queried: Vec<String> = dash
        .match_indices("runner_supervisor_")
        .map(|(i, _)| {
            dash[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 15, "{queried:?}");
    for name in queried {
        if name == "runner_supervisor_disk_free_bytes" {
            continue;
        }
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))),
            "the dashboard queries {name}, which the scrape lacks"
        );
    }
    // Anything but GET /metrics is refused.
    assert!(http_get(addr, "/").0.contains("404"));

    d.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, s) = d.wait_summary(T).await;
    assert_eq!(code, Some(0));
    // The summary agrees with itself: 2 completed = 2 job_done; every registration is
    // accounted for.
    assert_eq!(s.jobs_completed, 2, "{s:?}");
    assert_eq!(
        s.job_results,
        [("Failed".into(), 1), ("Succeeded".into(), 1)].into(),
        "{s:?}"
    );
    assert_eq!(s.jobs_lost, 1, "{s:?}");
    assert_eq!(s.removed_by_github(), 2, "{s:?}");
    assert_eq!((s.deregistrations, s.deletions_pending), (3, 0), "{s:?}");
    assert_eq!(s.watchdog_fires, [("network".into(), 1)].into(), "{s:?}");
    assert_eq!(s.unaccounted(), 0, "{s:?}");
}

#[tokio::test]
async fn the_summary_is_json_with_json_logs() {
    let (_sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_LOG_FORMAT".into(), "json".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    gh.enqueue(job("build", "Succeeded"), 1);
    assert!(gh.wait_for(T, |s| s.completed.len() == 1).await);
    d.wait_listening(2, T).await;
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, out) = d.wait_exit(T).await;
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 1, "one JSON line: {out}");
    let s: runner_supervisor::status::Summary =
        serde_json::from_str(out.trim()).expect("the summary's fields");
    assert_eq!(s.jobs_completed, 1);
    assert_eq!(s.exits.get("job_done"), Some(&1));
    assert_eq!(s.registrations, 2);
    assert_eq!(s.deregistrations, 1);
    assert_eq!(s.deletions_pending, 0);
}
