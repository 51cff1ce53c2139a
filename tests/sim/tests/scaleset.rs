//! The fake GitHub's scale-set service, checked through HTTP as a listener would use it
//! (`../shared/reference/scaleset-protocol.md`, section 9): the happy path from a
//! registration token to a completed job and its runner gone, redelivery, capacity,
//! sessions (409 until a dead one expires, 401 and refresh, 404 after eviction), deletion,
//! the GHES acquire flow, lapses, late and missing lifecycle messages, admin-token expiry,
//! runners, and the faults. Every hold and expiry is scaled down.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use sim::github::scaleset::ScaleSetOptions;
use sim::github::{FakeGithub, JobSpec, Options};

#[path = "scaleset/client.rs"]
mod client;
#[path = "scaleset/faults.rs"]
mod faults;
#[path = "scaleset/flows.rs"]
mod flows;
#[path = "scaleset/jobs.rs"]
mod jobs;
#[path = "scaleset/sessions.rs"]
mod sessions;

use client::Client;

/// Holds of 300 ms (the queue and the runner's poll), sessions dead after 800 ms.
pub fn opts() -> Options {
    Options {
        poll_timeout: Duration::from_millis(300),
        scaleset: ScaleSetOptions {
            poll_hold: Duration::from_millis(300),
            session_expiry: Duration::from_millis(800),
            ..ScaleSetOptions::default()
        },
        ..Options::default()
    }
}

/// A job whose `runs-on` is `label`.
pub fn job(label: &str) -> JobSpec {
    JobSpec {
        name: "build".into(),
        duration_ms: 100,
        labels: vec![label.into()],
        ..JobSpec::default()
    }
}

/// The fake with `o`, a client connected for `orgs/octo`, and scale set `laptop`'s id.
pub async fn setup(o: Options) -> (FakeGithub, Client, u64) {
    let gh = FakeGithub::start(o).await.unwrap();
    let c = Client::connect(&gh, "orgs/octo").await;
    let set = c.create_set("laptop", &[]).await;
    let id = set["id"].as_u64().unwrap();
    (gh, c, id)
}
