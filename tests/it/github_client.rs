//! The GitHub client against the fake GitHub: headers, endpoints for both scopes,
//! pagination, typed errors, retries, rate limits, keepalive on its own sockets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runner_supervisor::config::{Config, Purpose};
use runner_supervisor::github::{GithubClient, GithubError, RetryPolicy};
use sim::github::{FakeGithub, Fault, FaultKind, TokenKind};

use crate::support::github;

fn config(gh: &FakeGithub, extra: &[(&str, &str)]) -> Config {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in [
        ("GITHUB_PAT", sim::github::Options::default().token.as_str()),
        ("REPO_OWNER", "octo"),
        ("REPO_NAME", "app"),
        ("SUPERVISOR_GITHUB_API_URL", gh.url().as_str()),
        ("SUPERVISOR_GITHUB_BACKOFF_BASE", "20ms"),
    ] {
        env.insert(k.into(), v.into());
    }
    for (k, v) in extra {
        if v.is_empty() {
            env.remove(*k);
        } else {
            env.insert(k.to_string(), v.to_string());
        }
    }
    Config::resolve(&env, &Default::default(), Purpose::Inspect).expect("valid config")
}

pub fn client(gh: &FakeGithub, extra: &[(&str, &str)]) -> GithubClient {
    let cfg = config(gh, extra);
    GithubClient::new(&cfg, cfg.github.token.clone().unwrap()).unwrap()
}

#[tokio::test]
async fn every_runner_endpoint_for_repo_scope_with_the_right_headers() {
    let gh = github(|o| o.token_expiration = Some("2027-10-12 09:00:00 UTC".into())).await;
    let c = client(&gh, &[]);
    let info = c.get_user().await.unwrap();
    assert_eq!(info.login, "octocat");
    assert_eq!(
        info.scopes,
        Some(vec!["repo".to_string(), "admin:org".to_string()])
    );
    assert_eq!(
        info.expires_at.unwrap().to_rfc3339(),
        "2027-10-12T09:00:00+00:00"
    );

    let jit = c
        .generate_jitconfig("n1", &["self-hosted".into(), "mongo".into()], 1, "_work")
        .await
        .unwrap();
    assert_eq!(jit.runner.name, "n1");
    let files = sim::protocol::decode_jit_config(&jit.encoded_jit_config).unwrap();
    assert!(
        files.contains_key(".runner")
            && files.contains_key(".credentials")
            && files.contains_key(".credentials_rsaparams")
    );

    let t = c.registration_token().await.unwrap();
    assert!(t.expires_at > chrono::Utc::now() + chrono::Duration::minutes(50));
    assert!(c.remove_token().await.unwrap().expires_at > chrono::Utc::now());

    for i in 0..250 {
        gh.add_runner("repos/octo/app", &format!("r{i}"), i % 2 == 0);
    }
    let all = c.list_runners(None).await.unwrap();
    assert_eq!(all.len(), 251, "all pages followed");
    let one = c.list_runners(Some("r7")).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].status, "offline");

    let r = c.get_runner(jit.runner.id).await.unwrap();
    assert_eq!(
        r.labels.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["self-hosted", "mongo"]
    );
    c.delete_runner(jit.runner.id).await.unwrap();
    assert!(matches!(
        c.get_runner(jit.runner.id).await,
        Err(GithubError::NotFound { .. })
    ));
    c.delete_runner(jit.runner.id)
        .await
        .expect("deleting a deleted runner is fine");
    assert!(!c.runner_downloads().await.unwrap().is_empty());

    let calls = gh.calls();
    assert!(
        calls
            .iter()
            .filter(|c| c.path.ends_with("/actions/runners"))
            .count()
            >= 3,
        "three pages of 100"
    );
    for call in &calls {
        assert!(
            call.user_agent
                .as_deref()
                .unwrap()
                .starts_with("runner-supervisor/"),
            "{call:?}"
        );
        assert_eq!(call.accept.as_deref(), Some("application/vnd.github+json"));
        assert_eq!(call.api_version.as_deref(), Some("2022-11-28"));
        assert_eq!(call.auth_scheme.as_deref(), Some("Bearer"));
    }
    assert_eq!(
        c.stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed) as usize,
        calls.len()
    );
}

#[tokio::test]
async fn org_scope_uses_org_paths() {
    let gh = github(|_| {}).await;
    let c = client(
        &gh,
        &[
            ("REPO_OWNER", ""),
            ("REPO_NAME", ""),
            ("SUPERVISOR_GITHUB_ORG", "acme"),
        ],
    );
    let jit = c
        .generate_jitconfig("o1", &["self-hosted".into()], 1, "_work")
        .await
        .unwrap();
    assert_eq!(c.list_runners(None).await.unwrap()[0].id, jit.runner.id);
    assert!(gh
        .calls()
        .iter()
        .all(|c| c.path == "/user" || c.path.starts_with("/orgs/acme/actions/runners")));
}

#[tokio::test]
async fn errors_are_typed() {
    let gh = github(|_| {}).await;
    let c = client(&gh, &[]);
    gh.state(|s| s.revoked = true);
    assert!(matches!(
        c.get_user().await,
        Err(GithubError::Unauthorized { .. })
    ));
    gh.state(|s| {
        s.revoked = false;
        s.token_kind = Some(TokenKind::Classic {
            scopes: vec!["public_repo".into()],
        });
    });
    assert!(
        matches!(
            c.registration_token().await,
            Err(GithubError::NotFound { .. })
        ),
        "private repos hide behind 404"
    );
    gh.state(|s| {
        s.token_kind = Some(TokenKind::FineGrained {
            administration: "read".into(),
            organization_self_hosted_runners: "none".into(),
            actions: "write".into(),
        })
    });
    match c.registration_token().await {
        Err(GithubError::Forbidden { accepted, .. }) => {
            assert_eq!(accepted.as_deref(), Some("administration=write"))
        }
        other => panic!("{other:?}"),
    }
    assert!(c.list_runners(None).await.is_ok(), "read suffices to list");
    gh.state(|s| {
        s.token_kind = Some(TokenKind::Classic {
            scopes: vec!["repo".into()],
        })
    });
    c.generate_jitconfig("dup", &["a".into()], 1, "_work")
        .await
        .unwrap();
    assert!(matches!(
        c.generate_jitconfig("dup", &["a".into()], 1, "_work").await,
        Err(GithubError::Conflict { .. })
    ));
    match c.generate_jitconfig("x", &[], 1, "_work").await {
        Err(GithubError::Validation { errors, .. }) => assert!(!errors.is_empty()),
        other => panic!("{other:?}"),
    }
    // A busy runner cannot be deleted: 422.
    let id = gh.add_runner("repos/octo/app", "busy-one", true);
    gh.state(|s| s.runners.get_mut(&id).unwrap().busy = true);
    assert!(matches!(
        c.delete_runner(id).await,
        Err(GithubError::Validation { .. })
    ));
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff() {
    let gh = github(|_| {}).await;
    let c = client(&gh, &[]);
    gh.fault(Fault {
        body: None,
        method: None,
        path: Some("/user".into()),
        kind: FaultKind::Status { status: 502 },
        times: 2,
    });
    c.get_user().await.unwrap();
    assert_eq!(
        gh.calls().iter().map(|c| c.status).collect::<Vec<_>>(),
        [502, 502, 200]
    );

    gh.fault(Fault {
        body: None,
        method: None,
        path: Some("/user".into()),
        kind: FaultKind::Reset,
        times: 1,
    });
    c.get_user().await.expect("a connection reset is retried");

    // A server that keeps failing: the client gives up after max_retries, typed Transient.
    let c2 = client(&gh, &[("SUPERVISOR_GITHUB_MAX_RETRIES", "2")]);
    gh.fault(Fault {
        body: None,
        method: None,
        path: Some("/user".into()),
        kind: FaultKind::Status { status: 503 },
        times: 0,
    });
    let before = gh.calls().len();
    let started = Instant::now();
    assert!(matches!(
        c2.get_user().await,
        Err(GithubError::Transient(_))
    ));
    assert_eq!(gh.calls().len() - before, 3);
    // Two back-offs of at least base/2 and base: never a tight loop.
    assert!(
        started.elapsed() >= Duration::from_millis(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rate_limits_are_honoured() {
    let gh = github(|_| {}).await;
    let c = client(&gh, &[]);
    // retry-after is waited out, then the request succeeds.
    gh.fault(Fault {
        body: None,
        method: None,
        path: Some("/user".into()),
        kind: FaultKind::RateLimit {
            status: 429,
            retry_after: Some(1),
            primary: false,
        },
        times: 1,
    });
    let t = Instant::now();
    c.get_user().await.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());

    // Waits longer than the client's limit come back to the caller, typed, with the wait.
    let short = RetryPolicy {
        max_rate_limit_wait: Duration::from_secs(1),
        ..c.retry().clone()
    };
    let c = c.with_retry(short);
    gh.fault(Fault {
        body: None,
        method: None,
        path: Some("/user".into()),
        kind: FaultKind::RateLimit {
            status: 429,
            retry_after: None,
            primary: false,
        },
        times: 1,
    });
    let t = Instant::now();
    match c.get_user().await {
        Err(GithubError::RateLimited { retry_after, .. }) => {
            assert_eq!(retry_after, Duration::from_secs(60))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "no waiting past the limit"
    );
    // The gate is closed for a minute: the next request waits for it, not the server.
    let before = gh.calls().len();
    let blocked = tokio::time::timeout(Duration::from_millis(300), c.get_user()).await;
    assert!(
        blocked.is_err(),
        "a request went out during the rate-limit wait"
    );
    assert_eq!(gh.calls().len(), before);
    // Primary limit: remaining 0 with a reset an hour away.
    let c = client(&gh, &[]).with_retry(RetryPolicy {
        max_rate_limit_wait: Duration::from_secs(1),
        ..c.retry().clone()
    });
    gh.fault(Fault {
        body: None,
        method: None,
        path: Some("/user".into()),
        kind: FaultKind::RateLimit {
            status: 403,
            retry_after: None,
            primary: true,
        },
        times: 1,
    });
    match c.get_user().await {
        Err(GithubError::RateLimited { retry_after, .. }) => assert!(
            retry_after > Duration::from_secs(3500) && retry_after <= Duration::from_secs(3600),
            "{retry_after:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn secondary_403_without_retry_after_is_a_rate_limit() {
    let gh = github(|_| {}).await;
    let c = client(&gh, &[]);
    let c = c.clone().with_retry(RetryPolicy {
        max_rate_limit_wait: Duration::from_secs(1),
        ..c.retry().clone()
    });
    gh.fault(Fault {
        body: None,
        method: None,
        path: Some("/user".into()),
        kind: FaultKind::RateLimit {
            status: 403,
            retry_after: None,
            primary: false,
        },
        times: 1,
    });
    match c.get_user().await {
        Err(GithubError::RateLimited {
            status: 403,
            retry_after,
        }) => assert_eq!(retry_after, Duration::from_secs(60)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn own_sockets_carry_the_configured_keepalive() {
    let gh = github(|_| {}).await;
    let check =
        |extra: &'static [(&'static str, &'static str)], idle: u64, intvl: u64, probes: u32| {
            let gh = &gh;
            async move {
                let c = client(gh, extra);
                c.get_user().await.unwrap();
                let conns: Vec<_> = runner_supervisor::os::sockets::own_connections()
                    .into_iter()
                    .filter(|(peer, _)| *peer == gh.addr())
                    .collect();
                assert!(!conns.is_empty(), "no connection to the fake found");
                let k = conns
                    .iter()
                    .map(|(_, k)| *k)
                    .find(|k| k.idle == Duration::from_secs(idle))
                    .unwrap_or_else(|| panic!("{conns:?}"));
                assert!(k.enabled);
                assert_eq!(k.interval, Duration::from_secs(intvl));
                assert_eq!(k.probes, probes);
                assert_eq!(
                    k.user_timeout,
                    Some(Duration::from_secs(idle + intvl * probes as u64))
                );
            }
        };
    check(&[], 60, 10, 6).await;
    check(
        &[
            ("SUPERVISOR_NETWORK_KEEPALIVE_IDLE", "33s"),
            ("SUPERVISOR_NETWORK_KEEPALIVE_INTERVAL", "7s"),
            ("SUPERVISOR_NETWORK_KEEPALIVE_PROBES", "4"),
        ],
        33,
        7,
        4,
    )
    .await;
}
