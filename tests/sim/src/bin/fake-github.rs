//! Runs the fake GitHub API on loopback until SIGINT or SIGTERM.
//!
//! Prints `fake-github listening on http://ADDR` as its first line (the readiness signal).
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use sim::github::{FakeGithub, JobSpec, Options, TokenKind};

fn usage() -> ! {
    eprintln!(
        "usage: fake-github [--listen 127.0.0.1:0] [--token T] [--scopes repo,admin:org | --fine-grained]\n\
         \x20                  [--time-scale F] [--startup-ms N] [--no-jit] [--jobs N] [--job-ms N]\n\
         \x20                  [--poll-timeout-ms N] [--runner-http-timeout-ms N] [--public-url http://github:8080]\n\
         \x20                  [--runner-binary PATH] [--latest-runner V] [--deadline V=YYYY-MM-DD|V=none]\n\
         \x20                  [--bad-checksum V] [--broken-release V=MS] [--job-lock-timeout-ms N]\n\
         \x20                  [--actions none|read|write]"
    );
    std::process::exit(64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut opts = Options::default();
    let mut listen = "127.0.0.1:0".to_string();
    let mut jobs = 0usize;
    let mut job_ms = 500u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = val(),
            "--token" => opts.token = val(),
            "--scopes" => {
                opts.token_kind = TokenKind::Classic {
                    scopes: val().split(',').map(|s| s.trim().to_string()).collect(),
                }
            }
            "--fine-grained" => {
                opts.token_kind = TokenKind::FineGrained {
                    administration: "write".into(),
                    organization_self_hosted_runners: "write".into(),
                    actions: "write".into(),
                }
            }
            "--time-scale" => opts.time_scale = val().parse().unwrap_or_else(|_| usage()),
            "--startup-ms" => opts.runner_startup_ms = val().parse().unwrap_or_else(|_| usage()),
            "--poll-timeout-ms" => {
                opts.poll_timeout = Duration::from_millis(val().parse().unwrap_or_else(|_| usage()))
            }
            "--runner-http-timeout-ms" => {
                opts.runner_http_timeout =
                    Duration::from_millis(val().parse().unwrap_or_else(|_| usage()))
            }
            "--no-jit" => opts.jit = false,
            "--public-url" => opts.public_url = Some(val()),
            "--jobs" => jobs = val().parse().unwrap_or_else(|_| usage()),
            "--job-ms" => job_ms = val().parse().unwrap_or_else(|_| usage()),
            // Release tarballs built from this fake runner binary, with real checksums.
            "--runner-binary" => opts.runner_binary = Some(val().into()),
            "--latest-runner" => opts.latest_runner_version = val(),
            "--deadline" => {
                let v = val();
                let (version, date) = v.split_once('=').unwrap_or_else(|| usage());
                let at = match date {
                    "none" => None,
                    d => Some(format!("{d}T00:00:00Z").parse().unwrap_or_else(|_| usage())),
                };
                opts.deprecations.insert(version.to_string(), at);
            }
            // How long a job whose runner stopped renewing it is kept (GitHub: about 10
            // minutes) before it is concluded `failure` and its run completes.
            "--job-lock-timeout-ms" => {
                opts.job_lock_timeout =
                    Duration::from_millis(val().parse().unwrap_or_else(|_| usage()))
            }
            // A fine-grained token with this Actions permission (re-runs need write).
            "--actions" => {
                opts.token_kind = TokenKind::FineGrained {
                    administration: "write".into(),
                    organization_self_hosted_runners: "write".into(),
                    actions: val(),
                }
            }
            "--bad-checksum" => {
                opts.bad_checksums.insert(val());
            }
            "--broken-release" => {
                let v = val();
                let (version, ms) = v.split_once('=').unwrap_or_else(|| usage());
                opts.broken_releases
                    .insert(version.to_string(), ms.parse().unwrap_or_else(|_| usage()));
            }
            _ => usage(),
        }
    }
    let addr = listen.parse().unwrap_or_else(|_| usage());
    let gh = match FakeGithub::start_on(addr, opts).await {
        Ok(gh) => gh,
        Err(e) => {
            eprintln!("fake-github: cannot listen on {listen}: {e}");
            std::process::exit(1)
        }
    };
    if jobs > 0 {
        gh.enqueue(
            JobSpec {
                duration_ms: job_ms,
                ..JobSpec::default()
            },
            jobs,
        );
    }
    println!("fake-github listening on {}", gh.url());
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
