//! The runner's action archive cache (`ACTIONS_RUNNER_ACTION_ARCHIVE_CACHE`), filled by the
//! supervisor and never by a job: the `[runner] actions` list at start, and every action a
//! job had to download (its Worker's `Download action repository` line). A job that uses
//! three actions, cold and warm, against a codeload that takes 300 ms per archive.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::JobSpec;

use crate::support::{setup, Daemon};

const T: Duration = Duration::from_secs(60);

pub fn three_actions(name: &str) -> JobSpec {
    JobSpec {
        name: name.into(),
        duration_ms: 200,
        actions: vec![
            "actions/checkout@v4".into(),
            "actions/setup-node@v4".into(),
            "pnpm/action-setup@v4".into(),
        ],
        ..Default::default()
    }
}

fn downloads(gh: &sim::github::FakeGithub) -> usize {
    gh.state(|s| s.codeload_downloads.len())
}

/// Seconds from a job's "Running job" to its completion, from the log's own timestamps.
fn job_secs(d: &Daemon, job: &str) -> f64 {
    let ev = d.events();
    let at = |name: &str| {
        ev.iter()
            .find(|e| e.name == name && e.is("job", job))
            .map(|e| e.at)
            .expect(name)
    };
    (at("job_completed") - at("runner_job_started")).num_milliseconds() as f64 / 1000.0
}

#[tokio::test]
async fn actions_a_job_downloaded_are_cached_for_the_next_and_the_configured_ones_at_start() {
    let (sb, gh, mut env) = setup(|o| o.codeload_delay = Duration::from_millis(300)).await;
    env.insert(
        "SUPERVISOR_RUNNER_ACTIONS".into(),
        "actions/upload-artifact@v4".into(),
    );
    let mut d = Daemon::start(&env, &["run"]).await;
    // The configured one, before any job.
    let cached = d.wait_event("action_cached", T).await;
    assert!(
        cached.is("action", "actions/upload-artifact@v4"),
        "{cached:?}"
    );
    assert_eq!(downloads(&gh), 1);
    // Cold: the job downloads its three; the supervisor fetches each once after it.
    gh.enqueue(three_actions("cold"), 1);
    d.wait_events("job_completed", |e| e.is("job", "cold"), 1, T)
        .await;
    d.wait_events("action_cached", |e| e.is("added", "true"), 4, T)
        .await;
    assert_eq!(downloads(&gh), 1 + 3 + 3);
    // Warm: nothing downloaded.
    gh.enqueue(three_actions("warm"), 1);
    d.wait_events("job_completed", |e| e.is("job", "warm"), 1, T)
        .await;
    assert_eq!(downloads(&gh), 7, "the warm job downloaded an action");
    let (cold, warm) = (job_secs(&d, "cold"), job_secs(&d, "warm"));
    println!("a job with three actions: cold {cold:.2} s, warm {warm:.2} s (codeload 300 ms per archive): {:.2} s saved", cold - warm);
    // The layout the runner reads, complete archives only.
    let cache = sb.state.join("actions");
    for repo in [
        "actions_checkout",
        "actions_setup-node",
        "pnpm_action-setup",
        "actions_upload-artifact",
    ] {
        let files: Vec<String> = std::fs::read_dir(cache.join(repo))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files.len(), 1, "{repo}: {files:?}");
        assert!(
            files[0].ends_with(".tar.gz") && files[0].len() == 40 + 7,
            "{files:?}"
        );
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
