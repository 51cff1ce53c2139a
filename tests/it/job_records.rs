//! Every job known (issue 18 §1), through the binary: the runner's job hooks report who
//! each job is to the supervisor, a hook the user set still runs after ours with its exit
//! status, the hook never fails a job when the supervisor does not answer, and every job
//! gets a record that `supervisor jobs` and `GET /v1/jobs` show, lost ones with a cause,
//! also across a supervisor killed mid-job.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use runner_supervisor::jobs::{JobRecord, Outcome};
use runner_supervisor::status::SlotState;

use crate::support::{job, setup, Cli, Daemon};

const T: Duration = Duration::from_secs(60);

pub async fn records(env: &BTreeMap<String, String>, args: &[&str]) -> Vec<JobRecord> {
    let mut a = vec!["jobs", "--json"];
    a.extend_from_slice(args);
    let out = Cli::new(env, &a).run_async().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// Wait (at most `T`) until the records satisfy `cond`; they are written by the
/// supervisor's own thread, just after the event that tells of them.
pub async fn wait_records(
    env: &BTreeMap<String, String>,
    args: &[&str],
    cond: impl Fn(&[JobRecord]) -> bool,
) -> Vec<JobRecord> {
    let start = std::time::Instant::now();
    loop {
        let r = records(env, args).await;
        if cond(&r) {
            return r;
        }
        assert!(start.elapsed() < T, "the records never matched: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_job_gets_a_record_with_who_it_was_from_its_hooks() {
    let (sb, gh, env) = setup(|_| {}).await;
    gh.enqueue(job("e2e", 1500), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    // While it runs, status names the job's repository, workflow and run.
    let s = sb.wait_status(T, |s| s.slots[0].job_of.is_some()).await;
    let of = s.slots[0].job_of.clone().unwrap();
    assert_eq!(s.slots[0].state, SlotState::Busy);
    assert_eq!(
        (
            of.repository.as_str(),
            of.workflow.as_str(),
            of.job.as_str(),
            of.run_attempt
        ),
        ("octo/app", "CI", "e2e", 1)
    );
    assert_eq!(Some(&of.runner), s.slots[0].runner.as_ref());
    let text = crate::support::cli(&env, &["status"]).stdout;
    assert!(text.contains("octo/app, workflow CI, job e2e"), "{text}");
    d.wait_event("job_completed", T).await;
    gh.enqueue(job("unit", 100), 1);
    d.wait_events("job_completed", |_| true, 2, T).await;
    let hooks = d.count_events("job_hook", |e| e.is("hook", "job-completed"));
    assert!(hooks >= 1, "the completed hook reports too");
    let all = wait_records(&env, &[], |r| {
        r.len() == 2 && r.iter().all(|x| x.outcome != Outcome::Running)
    })
    .await;
    assert_eq!(all[0].display_name, "e2e");
    assert_eq!(all[1].display_name, "unit");
    for r in &all {
        assert_eq!(
            r.outcome,
            Outcome::Done {
                result: "Succeeded".into()
            }
        );
        let i = r.identity.as_ref().expect("identified by its hook");
        assert_eq!(i.repository, "octo/app");
        assert!(i.run_id > 0 && r.duration_s().is_some(), "{r:?}");
    }
    // The same over the control socket, and none lost.
    let (code, body) = runner_supervisor::status::control::request(
        &sb.state.join("control.sock"),
        "GET",
        "/v1/jobs",
    )
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Vec<JobRecord>>(&body).unwrap(), all);
    assert!(records(&env, &["--lost"]).await.is_empty());
    // A job that ended by itself needs no lookup at GitHub.
    assert_eq!(
        gh.calls()
            .iter()
            .filter(|c| c.path.contains("/attempts/"))
            .count(),
        0
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    // With no supervisor running, `supervisor jobs` reads the file.
    assert_eq!(records(&env, &[]).await, all);
    let table = crate::support::cli(&env, &["jobs"]).stdout;
    assert!(
        table.contains("CI / e2e") && table.contains("Succeeded"),
        "{table}"
    );
}

#[tokio::test]
async fn a_hook_the_user_set_still_runs_after_ours_with_its_exit_status() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    let marker = sb.dir.path().join("user-hook-ran");
    let user = sb.dir.path().join("user-hook.sh");
    std::fs::write(
        &user,
        format!("echo \"$GITHUB_JOB\" > {}\nexit 3\n", marker.display()),
    )
    .unwrap();
    env.insert(
        "SUPERVISOR_RUNNER_ENV".into(),
        format!("ACTIONS_RUNNER_HOOK_JOB_STARTED={}", user.display()),
    );
    gh.enqueue(job("deploy", 100), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let done = d.wait_event("job_completed", T).await;
    // Ours reported first; the user's ran, and its failure failed the job, as the
    // runner does for a failing started hook.
    assert_eq!(
        d.count_events("job_hook", |e| e.is("hook", "job-started")),
        1
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "deploy");
    assert!(done.is("result", "Failed"), "{done:?}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn the_hook_exits_0_and_says_so_when_the_supervisor_does_not_take_the_report() {
    let (sb, _gh, _env) = setup(|_| {}).await;
    let job_env: BTreeMap<String, String> = [
        ("GITHUB_REPOSITORY", "octo/app"),
        ("GITHUB_RUN_ID", "7"),
        ("GITHUB_RUN_ATTEMPT", "1"),
        ("GITHUB_JOB", "build"),
        ("GITHUB_WORKFLOW", "CI"),
        ("RUNNER_NAME", "ci-elsewhere-0-abcdef"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // Nothing listens on the socket.
    let none = sb.dir.path().join("none.sock");
    let out = Cli::new(
        &job_env,
        &["hook", "job-started", "--socket", none.to_str().unwrap()],
    )
    .run_async()
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("did not take this job's report"),
        "{out:?}"
    );
    // A socket that accepts and never answers: the hook gives up after 2 s, exit 0.
    let silent = sb.dir.path().join("silent.sock");
    let l = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let held = std::thread::spawn(move || l.accept().map(|(s, _)| s));
    let out = Cli::new(
        &job_env,
        &["hook", "job-started", "--socket", silent.to_str().unwrap()],
    )
    .run_async()
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("no answer within 2 s"), "{out:?}");
    drop(held.join());
}

#[tokio::test]
async fn a_report_for_a_runner_that_is_not_one_of_ours_is_refused() {
    let (sb, _gh, env) = setup(|_| {}).await;
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let job_env: BTreeMap<String, String> = [
        ("GITHUB_REPOSITORY", "octo/app"),
        ("GITHUB_RUN_ID", "7"),
        ("RUNNER_NAME", "ci-elsewhere-0-abcdef"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let socket = sb.state.join("control.sock");
    let out = Cli::new(
        &job_env,
        &["hook", "job-started", "--socket", socket.to_str().unwrap()],
    )
    .run_async()
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("404"), "{out:?}");
    assert_eq!(d.count_events("job_hook", |_| true), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_listener_killed_mid_job_is_recorded_lost_with_its_cause() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    // Only recorded (and looked up at once): re-runs are tests/it/reruns.rs.
    env.insert("SUPERVISOR_JOBS_RERUN_LOST".into(), "false".into());
    gh.enqueue(job("long", 60_000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    sb.wait_status(T, |s| s.slots[0].job_of.is_some()).await;
    for pid in crate::support::listeners(&sb, 1) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    let lost = d.wait_event("job_lost", T).await;
    assert!(lost.is("cause", "killed"), "{lost:?}");
    // Its id at GitHub, looked up once: the job of its run attempt that ran on it.
    let found = d.wait_event("job_looked_up", T).await;
    let github_id = gh.state(|s| *s.actions_jobs.keys().next().unwrap());
    assert_eq!(found.u64("job_id"), Some(github_id), "{found:?}");
    let recs = wait_records(&env, &["--lost"], |r| {
        r.first().is_some_and(|x| x.job_id.is_some())
    })
    .await;
    assert_eq!(recs[0].job_id, Some(github_id));
    assert_eq!(
        gh.calls()
            .iter()
            .filter(|c| c.path.contains("/attempts/"))
            .count(),
        1
    );
    assert_eq!(recs.len(), 1);
    assert_eq!(
        recs[0].outcome,
        Outcome::Lost {
            cause: "killed".into(),
            action: "recorded".into()
        }
    );
    assert_eq!(recs[0].identity.as_ref().unwrap().job, "long");
    let s = crate::support::status(&env);
    assert_eq!(s.counts.jobs_lost_by_cause.get("killed"), Some(&1));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_job_left_running_by_a_killed_supervisor_is_closed_as_lost_at_the_next_start() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_JOBS_RERUN_LOST".into(), "false".into());
    gh.enqueue(job("long", 60_000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    sb.wait_status(T, |s| s.slots[0].job_of.is_some()).await;
    // The record is written (its identity too) before the kill.
    let open = wait_records(&env, &[], |r| {
        r.first().is_some_and(|x| x.identity.is_some())
    })
    .await;
    assert_eq!(open[0].outcome, Outcome::Running);
    d.kill_with_listeners(&sb, 1, T).await;
    let mut d = Daemon::start(&env, &["run"]).await;
    let e = d.wait_event("jobs_lost_with_supervisor", T).await;
    assert!(e.has("records", "1"), "{e:?}");
    let lost = records(&env, &["--lost"]).await;
    assert_eq!(lost.len(), 1);
    assert_eq!(
        lost[0].outcome,
        Outcome::Lost {
            cause: "supervisor".into(),
            action: "recorded".into()
        }
    );
    d.wait_listening(1, T).await;
    let s = crate::support::status(&env);
    assert_eq!(s.counts.jobs_lost_by_cause.get("supervisor"), Some(&1));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn the_records_survive_a_sigkill_in_the_middle_of_a_stream_of_writes() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    gh.enqueue(job("quick", 20), 400);
    let mut d = Daemon::start(&env, &["run"]).await;
    // Jobs end and start every few milliseconds on both slots: records are being written.
    d.wait_events("job_completed", |_| true, 30, T).await;
    d.kill_with_listeners(&sb, 2, T).await;
    // Readable, numbered without a gap, and complete: every job the fake saw completed
    // before the kill and that has a record is recorded done; at most one per slot open.
    let recs = records(&env, &[]).await;
    assert!(recs.len() >= 30, "{}", recs.len());
    for w in recs.windows(2) {
        assert_eq!(w[1].id, w[0].id + 1, "no record lost or half written");
    }
    let open = recs
        .iter()
        .filter(|r| r.outcome == Outcome::Running)
        .count();
    assert!(open <= 2, "{open} open");
    let done = recs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Done { .. }))
        .count();
    assert!(done + open == recs.len(), "nothing else: {recs:#?}");
    // The next start closes the open ones as lost with the supervisor.
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_listening(2, T).await;
    let after = records(&env, &["--lost"]).await;
    assert_eq!(after.len(), open);
    assert!(after
        .iter()
        .all(|r| matches!(&r.outcome, Outcome::Lost { cause, .. } if cause == "supervisor")));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

/// `/proc/<pid>/stat`'s nice value (field 19).
fn nice_of(pid: i32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(16).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_jobs_runner_worker_gets_the_oom_score_adj_and_nice_configured_not_the_listener() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_JOB_OOM_SCORE_ADJ".into(), "700".into());
    env.insert("SUPERVISOR_JOB_NICE".into(), "5".into());
    gh.enqueue(job("heavy", 5000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let e = d.wait_event("worker_protected", T).await;
    let worker = e.u64("pid").unwrap() as i32;
    // The fake runner's Runner.Worker, a child of the listener, while the job runs.
    let listener = crate::support::listeners(&sb, 1)[0];
    assert_eq!(
        runner_supervisor::jobs::protect::find_worker(listener),
        Some(worker)
    );
    let adj = std::fs::read_to_string(format!("/proc/{worker}/oom_score_adj")).unwrap();
    assert_eq!(adj.trim(), "700");
    assert_eq!(nice_of(worker), 5);
    // The listener keeps its own.
    let own = std::fs::read_to_string(format!("/proc/{listener}/oom_score_adj")).unwrap();
    assert_ne!(own.trim(), "700");
    assert_eq!(nice_of(listener), 0);
    d.wait_event("job_completed", T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn memory_pressure_is_shown_and_logged_once_per_episode() {
    let (sb, _gh, mut env) = setup(|_| {}).await;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.insert("SUPERVISOR_METRICS_LISTEN".into(), metrics.to_string());
    // A made-up PSI file (debug builds read it instead of /proc/pressure/memory).
    let psi = sb.dir.path().join("psi-memory");
    let write = |avg10: &str| {
        std::fs::write(
            &psi,
            format!("some avg10={avg10} avg60=0.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
        )
        .unwrap()
    };
    write("0.00");
    env.insert("SUPERVISOR_PSI_MEMORY".into(), psi.display().to_string());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    sb.wait_status(T, |s| s.system.memory_pressure == Some(0.0))
        .await;
    write("35.50");
    let e = d.wait_event("memory_pressure", T).await;
    assert_eq!(e.str("some_avg10").as_deref(), Some("35.5"), "{e:?}");
    sb.wait_status(T, |s| s.system.memory_pressure == Some(35.5))
        .await;
    let text = crate::support::cli(&env, &["status"]).stdout;
    assert!(text.contains("pressure 35.5%"), "{text}");
    let (_, _, body) = crate::metrics::http_get(metrics, "/metrics");
    assert!(
        body.contains("runner_supervisor_memory_pressure_some_avg10 35.5"),
        "{body}"
    );
    // Still high: no second line; below half the threshold: over.
    write("20.00");
    sb.wait_status(T, |s| s.system.memory_pressure == Some(20.0))
        .await;
    write("1.00");
    d.wait_event("memory_pressure_over", T).await;
    assert_eq!(d.count_events("memory_pressure", |_| true), 1);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_listener_the_oom_killer_took_mid_job_is_lost_with_cause_oom() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    // A made-up cgroup memory.events (debug builds read it instead of this cgroup's).
    let events = sb.dir.path().join("memory.events");
    let write = |n: u64| {
        std::fs::write(
            &events,
            format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {n}\noom_group_kill 0\n"),
        )
        .unwrap()
    };
    write(0);
    env.insert(
        "SUPERVISOR_MEMORY_EVENTS".into(),
        events.display().to_string(),
    );
    gh.enqueue(job("hungry", 60_000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    sb.wait_status(T, |s| s.slots[0].job_of.is_some()).await;
    // The kernel counts an OOM kill in the cgroup, and the listener dies of SIGKILL.
    write(1);
    for pid in crate::support::listeners(&sb, 1) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    let lost = d.wait_event("job_lost", T).await;
    assert!(lost.is("cause", "oom"), "{lost:?}");
    let recs = wait_records(&env, &["--lost"], |r| !r.is_empty()).await;
    assert!(matches!(&recs[0].outcome, Outcome::Lost { cause, .. } if cause == "oom"));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
