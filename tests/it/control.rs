//! The control socket and its clients through the real binary: `supervisor status`
//! (text and `--json`), `breaker reset`, `drain`, `recycle`, and what each says when no
//! supervisor runs.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use sim::protocol::Script;

use runner_supervisor::status::SlotState;

use crate::support::{cli, eventually, github, setup, status, Daemon, Out, Sandbox};

const T: Duration = Duration::from_secs(60);

/// Socket inodes of `pid` that listen on TCP (v4 or v6).
fn tcp_listeners(pid: i32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_string_lossy()
                .strip_prefix("socket:[")
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .collect();
    let mut out = vec![];
    for f in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // st 0A is LISTEN; column 9 is the inode.
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                out.push(format!("{} {}", f, cols[1]));
            }
        }
    }
    out
}

#[tokio::test]
async fn status_shows_slots_jobs_and_the_host_and_json_follows_the_schema() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_listening(2, T).await;
    gh.enqueue(crate::support::job("e2e mongo", 4000), 1);
    d.wait_events("runner_job_started", |e| e.is("job", "e2e mongo"), 1, T)
        .await;

    // The socket: in the state directory, a socket, ours, mode 0660; no TCP listener.
    let sock = sb.state.join("control.sock");
    let m = std::fs::metadata(&sock).expect("control.sock exists");
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert_eq!(m.uid(), nix::unistd::getuid().as_raw());
    assert_eq!(
        tcp_listeners(d.pid),
        Vec::<String>::new(),
        "nothing listens on TCP unless asked"
    );

    let Out {
        code,
        stdout: text,
        stderr: err,
    } = cli(&env, &["status"]);
    assert_eq!(code, Some(0), "{err}");
    for want in [
        "mode run",
        "slot 0",
        "slot 1",
        "e2e mongo, running",
        "token         valid",
        "rate limit",
        "requests left",
        "keepalive     listener: on",
        "breaker    closed",
        "clock",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let v = status(&env);
    assert_eq!(v.schema, "runner-supervisor.status.v1");
    assert_eq!(v.pid, d.pid as u32);
    assert_eq!(v.slots.len(), 2);
    let busy: Vec<_> = v
        .slots
        .iter()
        .filter(|s| s.state == SlotState::Busy)
        .collect();
    assert_eq!(busy.len(), 1, "{:?}", v.slots);
    assert_eq!(busy[0].job.as_deref(), Some("e2e mongo"));
    assert!(busy[0].job_started_at.is_some());
    let runner = busy[0].runner.clone().unwrap();
    assert!(gh.state(|s| s.runners.values().any(|r| r.name == runner)));
    let rl = v.system.rate_limit.as_ref().expect("a rate limit");
    assert!(rl.remaining < rl.limit, "{rl:?}");
    assert_eq!(v.system.token.valid, Some(true));
    // Two listeners, and the busy slot's next registration made in advance.
    assert!(
        eventually(T, || status(&env).counts.registrations == 3).await,
        "{v:?}"
    );
    // health names the runners and the job too.
    // (The file is rewritten within 100 ms of a change; the socket is live.)
    let want = format!("busy: {runner}, job \"e2e mongo\" for ");
    assert!(
        eventually(T, || {
            let Out {
                code,
                stdout: health,
                ..
            } = cli(&env, &["health"]);
            code == Some(0) && health.contains(&want)
        })
        .await,
        "{}",
        cli(&env, &["health"]).stdout
    );
    // status.json, which health reads, is the same schema.
    let file = sb.status().expect("status.json in the schema");
    assert_eq!(file.schema, v.schema);
    assert_eq!(file.slots.len(), 2);

    // Drain through the socket: the busy job finishes, the supervisor exits 0.
    let Out {
        code, stdout: out, ..
    } = cli(&env, &["drain"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("draining"), "{out}");
    let (code, summary) = d.wait_summary(T).await;
    assert_eq!(code, Some(0));
    assert!(gh.state(|s| s
        .completed
        .iter()
        .any(|j| j.name == "e2e mongo" && j.result == "Succeeded")));
    assert_eq!(summary.jobs_completed, 1, "{summary:?}");
    assert!(!sock.exists(), "the socket is removed at exit");
    // Nothing answers now.
    let Out {
        code, stderr: err, ..
    } = cli(&env, &["status"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no supervisor is running"), "{err}");
}

#[tokio::test]
async fn without_a_supervisor_each_client_says_so_and_exits_1() {
    let (_sb, _gh, env) = setup(|_| {}).await;
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["breaker", "reset"],
        &["breaker", "reset", "--slot", "0"],
        &["drain"],
        &["recycle"],
    ] {
        let Out {
            code,
            stdout: out,
            stderr: err,
        } = cli(&env, args);
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert!(
            err.contains("no supervisor is running") && err.contains("control.sock"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn breaker_reset_lets_a_paused_slot_go_on_at_once() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.script(Script::ConnectionLoss {
        after_ms: 100,
        recover_after_ms: None,
        give_up: false,
        during_job: false,
    });
    gh.script(Script::ConnectionLoss {
        after_ms: 100,
        recover_after_ms: None,
        give_up: false,
        during_job: false,
    });
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_WATCHDOG_GRACE".into(), "1s".into());
    env.insert("WATCHDOG_MAX_FIRES".into(), "1".into());
    env.insert("SUPERVISOR_WATCHDOG_OPEN_FOR".into(), "1h".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("breaker_open", T).await;
    assert!(eventually(T, || status(&env).slots[0].state == SlotState::BreakerOpen).await);
    let b = status(&env).slots[0].breaker.clone();
    assert!(b.open_until.is_some(), "{b:?}");
    assert_eq!(
        b.fires.get("network"),
        Some(&1),
        "the window restarts with the fire that opened it: {b:?}"
    );
    let Out {
        code: _,
        stdout: text,
        ..
    } = cli(&env, &["status"]);
    assert!(
        text.contains("breaker    OPEN for 59m") && text.contains("2 fires (network:2)"),
        "{text}"
    );
    let registrations = || {
        gh.calls()
            .iter()
            .filter(|c| c.path.ends_with("generate-jitconfig"))
            .count()
    };
    let before = registrations();

    // A slot that does not exist is refused, naming the range.
    let Out {
        code, stderr: err, ..
    } = cli(&env, &["breaker", "reset", "--slot", "7"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no slot 7") && err.contains("0..0"), "{err}");

    let Out {
        code,
        stdout: out,
        stderr: err,
    } = cli(&env, &["breaker", "reset", "--slot", "0"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("circuit breaker reset: slot 0"), "{out}");
    d.wait_event("breaker_reset", T).await;
    // The slot registers and listens again now, not in an hour.
    d.wait_listening(3, T).await;
    assert_eq!(registrations(), before + 1);
    let v = status(&env);
    assert!(v.slots[0].breaker.open_until.is_none(), "{v:?}");
    // Persisted: a restart does not bring it back.
    let saved = std::fs::read_to_string(sb.state.join("breaker.json")).unwrap();
    assert!(
        saved.contains("\"open_until\":null") || saved.contains("\"open_until\": null"),
        "{saved}"
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn recycle_replaces_only_idle_listeners() {
    let (_sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_listening(2, T).await;
    gh.enqueue(crate::support::job("long", 3000), 1);
    d.wait_events("runner_job_started", |e| e.is("job", "long"), 1, T)
        .await;
    let idle = status(&env)
        .slots
        .iter()
        .position(|s| s.state == SlotState::Listening)
        .expect("one idle slot");
    let Out {
        code,
        stdout: out,
        stderr: err,
    } = cli(&env, &["recycle"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        format!("recycling the idle listener of slot {idle}")
    );
    d.wait_events(
        "listener_exited",
        |e| e.u64("slot") == Some(idle as u64) && e.is("reason", "recycled"),
        1,
        T,
    )
    .await;
    // The busy one kept its job.
    assert!(
        gh.wait_for(T, |s| s
            .completed
            .iter()
            .any(|j| j.name == "long" && j.result == "Succeeded"))
            .await
    );
    let Out {
        code, stderr: err, ..
    } = cli(&env, &["recycle", "--slot", "5"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no slot 5"), "{err}");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
