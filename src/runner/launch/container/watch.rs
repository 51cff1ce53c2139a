//! A running job container: its stream cut into lines, its exit and `OOMKilled`, its
//! removal before `Exited`, the whole container killed on an OOM, the listener's PID.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::container::{
    InspectContainerOptions, KillContainerOptions, LogOutput, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::remove;
use crate::policy::events::Stream;
use crate::policy::exit::Ended;
use crate::runner::launch::process::{Lines, Output};

/// The exit code and `OOMKilled`, once the container is not running.
pub(super) async fn exit_code(docker: &Docker, id: &str) -> (i64, bool) {
    let mut wait = docker.wait_container(
        id,
        Some(WaitContainerOptions {
            condition: "not-running",
        }),
    );
    let code = match wait.next().await {
        Some(Ok(r)) => r.status_code,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        _ => -1,
    };
    let state = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|i| i.state);
    let oom = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
    let code = match (code, state.and_then(|s| s.exit_code)) {
        (-1, Some(c)) => c,
        (c, _) => c,
    };
    (code, oom)
}

/// Read the attach stream into lines, await the exit, remove the container, then deliver
/// `Exited`: lines first, the exit last, the container gone by then.
pub(super) async fn follow(
    docker: Docker,
    id: String,
    runner: String,
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    tx: mpsc::Sender<Output>,
    oom: Arc<AtomicBool>,
) {
    let oom_watch = tokio::spawn(kill_on_oom(docker.clone(), id.clone(), runner.clone()));
    let mut out = Lines::new(Stream::Stdout, runner.clone(), tx.clone());
    let mut err = Lines::new(Stream::Stderr, runner.clone(), tx.clone());
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                out.push(&message).await
            }
            Ok(LogOutput::StdErr { message }) => err.push(&message).await,
            Ok(LogOutput::StdIn { .. }) => {}
            Err(_) => break,
        }
    }
    out.finish().await;
    err.finish().await;
    oom_watch.abort();
    let (code, killed) = exit_code(&docker, &id).await;
    oom.store(killed, Ordering::Release);
    let removed = remove(&docker, &id).await;
    tracing::info!(event = "container_removed", container = %id, runner = %runner, exit = code, oom_killed = killed, removed, "job container ended");
    let ended = match code {
        _ if killed => Ended::Signal(9),
        // The init reports a listener killed by a signal as 128 + the signal.
        c @ 129..=159 => Ended::Signal((c - 128) as i32),
        c => Ended::Code(c as i32),
    };
    let _ = tx.send(Output::Exited(ended)).await;
}

/// An OOM kill inside the job container ends the whole container: a job over its memory
/// limit is lost as one and re-run, never left half-killed to report a misleading failure.
/// (With cgroup v2 the kernel does it at once, `memory.oom.group`; this covers v1 and a
/// cgroup not ours to write.)
pub(super) async fn kill_on_oom(docker: Docker, id: String, runner: String) {
    let mut events = docker.events(Some(bollard::system::EventsOptions::<String> {
        filters: HashMap::from([
            ("container".to_string(), vec![id.clone()]),
            ("event".to_string(), vec!["oom".to_string()]),
        ]),
        ..Default::default()
    }));
    if let Some(Ok(_)) = events.next().await {
        tracing::warn!(event = "container_oom", container = %id, runner = %runner, "the job went over its memory limit ([container] memory): its container is killed, the job lost and re-run");
        let _ = docker
            .kill_container(&id, Some(KillContainerOptions { signal: "SIGKILL" }))
            .await;
    }
}

/// The listener's PID on this host: the container's init's one child (the entry command
/// execs the listener). 0 when the engine's processes are not ours to see.
pub(super) async fn listener_pid(init: i32) -> i32 {
    if init <= 0 {
        return 0;
    }
    let path = format!("/proc/{init}/task/{init}/children");
    for _ in 0..40 {
        if let Ok(s) = std::fs::read_to_string(&path) {
            if let Some(p) = s.split_whitespace().next().and_then(|p| p.parse().ok()) {
                return p;
            }
        } else {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    init
}

/// An OOM kill takes the whole job container (`memory.oom.group`), so a job over its
/// limit is lost as one, not left half-killed. Where the cgroup is not ours to write,
/// the engine's per-process OOM kill stays.
pub(super) fn group_oom(pid: i32) {
    let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return;
    };
    let Some(path) = cg.lines().find_map(|l| l.strip_prefix("0::")) else {
        return;
    };
    let file = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("memory.oom.group");
    if let Err(e) = std::fs::write(&file, "1") {
        tracing::debug!(file = %file.display(), error = %e, "memory.oom.group not set");
    }
}
