//! The token: revoked mid-run, fine-grained, and its expiry (scenarios 20 and 21).
//! Each through the real binary; a scenario test is named after its number in
//! `ghostrunner.md` §3.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::{JobSpec, TokenKind};

use crate::support::{github, setup, wait_health, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn scenario_20_a_token_revoked_mid_run_degrades_health_and_recovers_by_itself() {
    let (_sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_TOKEN_CHECK_INTERVAL".into(), "500ms".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    gh.state(|s| s.revoked = true);
    d.wait_event("token_refused", T).await;
    let last = wait_health(
        &env,
        "token: GitHub refuses the token (401)",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(last.0, Some(0), "degraded: {}", last.1);
    // A job finishes; the next registration is refused and backs off for five minutes...
    gh.enqueue(
        JobSpec {
            duration_ms: 100,
            ..Default::default()
        },
        1,
    );
    let line = d.wait_event("registration_failed", T).await;
    assert_eq!(line.u64("wait_s"), Some(300), "{line:?}");
    // ...until the token works again: then it recovers at once, by itself.
    gh.state(|s| s.revoked = false);
    d.wait_event("token_recovered", T).await;
    d.wait_listening(2, Duration::from_secs(10)).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_21_a_fine_grained_token_passes_preflight_by_a_capability_probe() {
    for (perm, ok) in [("write", true), ("read", false)] {
        let sb = Sandbox::new();
        let gh = github(|o| {
            o.token_kind = TokenKind::FineGrained {
                administration: perm.into(),
                organization_self_hosted_runners: "none".into(),
                actions: "write".into(),
            }
        })
        .await;
        let text = crate::support::Cli::new(&sb.env(&gh), &["doctor"])
            .run_async()
            .await
            .stdout;
        let line = text
            .lines()
            .find(|l| l.contains("permissions"))
            .unwrap_or_else(|| panic!("{text}"));
        if ok {
            assert!(
                line.starts_with("pass ") && line.contains("can create registration tokens"),
                "{text}"
            );
        } else {
            assert!(line.starts_with("fail "), "{text}");
            assert!(
                text.contains("Administration: Read and write"),
                "the fix is named: {text}"
            );
        }
        assert!(
            !text.contains("scopes"),
            "no scope check for fine-grained tokens: {text}"
        );
    }
}

#[tokio::test]
async fn the_token_expiry_is_warned_about_from_14_days_before() {
    let sb = Sandbox::new();
    let soon = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    let gh = github(|o| o.token_expiration = Some(soon)).await;
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_TOKEN_CHECK_INTERVAL".into(), "500ms".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    let e = d.wait_event("token_expiry", T).await;
    assert!(matches!(e.u64("days_left"), Some(2) | Some(3)), "{e:?}");
    let (code, out) = wait_health(&env, "token expiry: expires in", Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "a warning, not a failure: {out}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
