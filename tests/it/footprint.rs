//! The idle footprint's one product behaviour (issue 26 §2): once the host is quiet
//! (every slot listening) the supervisor gives back what start-up needed (the heap
//! trimmed, its binary's own pages paged out), again after each busy period, and never
//! while a job runs. The figures themselves are `cargo bench --bench idle`'s.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{job, setup, Daemon};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_quiet_host_gives_back_its_start_up_memory_and_again_after_each_job() {
    let (_sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_TEST_SETTLE_AFTER_MS".into(), "300".into());
    env.insert("SUPERVISOR_LOG".into(), "debug".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let first = d.wait_event("memory_settled", T).await;
    let (before, after) = (
        first.u64("rss_before_kb").unwrap(),
        first.u64("rss_after_kb").unwrap(),
    );
    assert!(first.u64("paged_out").unwrap() >= 1, "{first:?}");
    assert!(
        after < before,
        "resident memory went down: {before} kB -> {after} kB"
    );

    // A job: nothing is given back while it runs, and again once the host is quiet.
    gh.enqueue(job("build", 1500), 1);
    let started = d.wait_event("runner_job_started", T).await;
    let done = d.wait_event("job_completed", T).await;
    let again = d
        .wait_events("memory_settled", |e| e.at > done.at, 1, T)
        .await;
    assert!(again.at > done.at);
    assert_eq!(
        d.count_events("memory_settled", |e| e.at > started.at && e.at < done.at),
        0,
        "settled while a job ran"
    );
    assert_eq!(
        d.count_events("memory_settled", |_| true),
        2,
        "once per quiet period"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
