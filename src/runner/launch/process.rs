//! The listener process: spawn it, read both streams line by line, stop it.
//!
//! `bin/Runner.Listener run` is spawned directly (not `run.sh`, which hides exit codes),
//! with the runner root as working directory and a clean environment.
//! It must not: put a secret on argv, pass the GitHub token in the environment, or
//! SIGKILL before SIGINT and a grace period.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::os::procs;
use crate::policy::events::{clean_line, parse_line, RunnerEvent, Stream};
use crate::policy::exit::Ended;

/// The longest line kept; the rest of a longer line is dropped and counted.
pub const MAX_LINE: usize = 8 * 1024;

/// What a listener produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A line, cleaned, with the event it carries if any.
    Line {
        stream: Stream,
        text: String,
        event: Option<RunnerEvent>,
    },
    /// The process ended. Always the last item.
    Exited(Ended),
}

/// A running listener (or config.sh: any runner-side process we watch).
pub struct Listener {
    pid: i32,
    rx: mpsc::Receiver<Output>,
    name: String,
    /// A listener in a job container: signals go through the engine.
    container: Option<super::container::Handle>,
    /// The engine said the container was OOM-killed (set before `Exited` is sent).
    oom: Arc<AtomicBool>,
}

/// Debug builds only: `SUPERVISOR_TEST_REAP_DELAY=<ms>` leaves an exited listener a
/// zombie that long before it is reaped (once its stdout has closed), as a busy host may:
/// what an unprivileged connection watch sees then is tested.
pub const TEST_REAP_DELAY_ENV: &str = "SUPERVISOR_TEST_REAP_DELAY";

/// Variables passed from the supervisor's own environment to the runner, if set.
pub const ENV_ALLOWLIST: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "RUNNER_ALLOW_RUNASROOT",
    "DOCKER_HOST",
    // Where actions/setup-* keep tools (a volume in the compose stack).
    "RUNNER_TOOL_CACHE",
    "AGENT_TOOLSDIRECTORY",
];

impl Listener {
    /// Spawn `program args...` in `cwd` with exactly `env`, and start reading it.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        cwd: &Path,
        env: &[(String, String)],
    ) -> std::io::Result<Listener> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let mut child = procs::spawn(&mut cmd)?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let (tx, rx) = mpsc::channel(256);
        let out = child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_lines(s, Stream::Stdout, name.to_string(), tx.clone())));
        let err = child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_lines(s, Stream::Stderr, name.to_string(), tx.clone())));
        #[cfg(debug_assertions)]
        let reap_delay = std::env::var(TEST_REAP_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        tokio::spawn(async move {
            #[cfg(debug_assertions)]
            let out = match (reap_delay, out) {
                (Some(d), Some(h)) => {
                    let _ = h.await;
                    tokio::time::sleep(d).await;
                    None
                }
                (_, out) => out,
            };
            let status = child.wait().await;
            procs::untrack(pid);
            // Let the readers drain what the process wrote before it exited. A detached
            // grandchild (the update script) may hold the pipes open, so do not wait for ever.
            for h in [out, err].into_iter().flatten() {
                let _ = tokio::time::timeout(Duration::from_millis(500), h).await;
            }
            let ended = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (s.code(), s.signal()) {
                        (Some(c), _) => Ended::Code(c),
                        (None, Some(sig)) => Ended::Signal(sig),
                        (None, None) => Ended::Code(-1),
                    }
                }
                Err(_) => Ended::Code(-1),
            };
            let _ = tx.send(Output::Exited(ended)).await;
        });
        Ok(Listener {
            pid,
            rx,
            name: name.to_string(),
            container: None,
            oom: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A listener in a job container: its lines and exit come from `rx`.
    pub(super) fn in_container(
        pid: i32,
        rx: mpsc::Receiver<Output>,
        name: &str,
        handle: super::container::Handle,
        oom: Arc<AtomicBool>,
    ) -> Listener {
        Listener {
            pid,
            rx,
            name: name.to_string(),
            container: Some(handle),
            oom,
        }
    }

    /// Whether the engine OOM-killed its container (known once `Exited` arrived).
    pub fn oom_killed(&self) -> bool {
        self.oom.load(Ordering::Acquire)
    }

    /// The flag [`Self::oom_killed`] reads, to keep after the listener is handed on.
    pub fn oom_flag(&self) -> Arc<AtomicBool> {
        self.oom.clone()
    }

    /// The job container's name, when it runs in one.
    pub fn container(&self) -> Option<&str> {
        self.container.as_ref().map(|h| h.id())
    }

    /// The process id (and process-group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The runner name it serves.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next line or the exit; `None` after the exit was delivered.
    pub async fn next(&mut self) -> Option<Output> {
        self.rx.recv().await
    }

    /// An output already queued, without waiting.
    pub fn try_next(&mut self) -> Option<Output> {
        self.rx.try_recv().ok()
    }

    /// SIGINT to the listener: its graceful stop (cancels a running job, deletes the session).
    pub fn interrupt(&self) {
        if let Some(h) = &self.container {
            h.signal("SIGINT");
        } else if self.pid > 0 {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGINT);
        }
    }

    /// SIGKILL to the whole process group: the last resort.
    pub fn kill_group(&self) {
        if let Some(h) = &self.container {
            h.signal("SIGKILL");
        } else if self.pid > 0 {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// Read `r` line by line: bounded length, lossy UTF-8, ANSI stripped; log and parse each.
async fn read_lines<R: AsyncRead + Unpin>(
    mut r: R,
    stream: Stream,
    name: String,
    tx: mpsc::Sender<Output>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut lines = Lines::new(stream, name, tx);
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        lines.push(&buf[..n]).await;
    }
    lines.finish().await;
}

/// A stream's bytes cut into lines (at most [`MAX_LINE`] kept of each), each cleaned,
/// parsed, logged and delivered: the same for a child's pipe and a container's stream.
pub(super) struct Lines {
    line: Vec<u8>,
    dropped: usize,
    stream: Stream,
    name: String,
    tx: mpsc::Sender<Output>,
}

impl Lines {
    pub(super) fn new(stream: Stream, name: String, tx: mpsc::Sender<Output>) -> Lines {
        Lines {
            line: Vec::with_capacity(256),
            dropped: 0,
            stream,
            name,
            tx,
        }
    }

    /// The next bytes of the stream.
    pub(super) async fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                emit(
                    &mut self.line,
                    &mut self.dropped,
                    self.stream,
                    &self.name,
                    &self.tx,
                )
                .await;
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.dropped += 1;
            }
        }
    }

    /// The stream ended: a last line without its newline is still a line.
    pub(super) async fn finish(mut self) {
        if !self.line.is_empty() || self.dropped > 0 {
            emit(
                &mut self.line,
                &mut self.dropped,
                self.stream,
                &self.name,
                &self.tx,
            )
            .await;
        }
    }
}

async fn emit(
    line: &mut Vec<u8>,
    dropped: &mut usize,
    stream: Stream,
    name: &str,
    tx: &mpsc::Sender<Output>,
) {
    let text = clean_line(line);
    line.clear();
    let event = parse_line(&text);
    let ev = event.as_ref().map_or("runner_line", RunnerEvent::name);
    // A job's name and result are fields of their own: the log interface, not the wording.
    let (job, result) = match &event {
        Some(RunnerEvent::JobStarted { name }) => (Some(name.clone()), None),
        Some(RunnerEvent::JobCompleted { name, result }) => {
            (Some(name.clone()), Some(result.clone()))
        }
        _ => (None, None),
    };
    let truncated = std::mem::take(dropped);
    // Queue the event before logging it: whoever sees the log line can rely on the slot
    // having it (a drain decision consumes queued events first).
    let _ = tx
        .send(Output::Line {
            stream,
            text: text.clone(),
            event,
        })
        .await;
    // The listener's trace (`[RUNNER …]`, `[WORKER …]` with ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT)
    // is the diag log's copy: at debug, unless it carries an event.
    if ev == "runner_line" && crate::policy::events::trace_message(&text).is_some() {
        tracing::debug!(event = ev, runner = %name, stream = stream.as_str(), "{text}");
        return;
    }
    match (truncated, job) {
        (0, None) => tracing::info!(event = ev, runner = %name, stream = stream.as_str(), "{text}"),
        (_, None) => {
            tracing::info!(event = ev, runner = %name, stream = stream.as_str(), truncated, "{text}")
        }
        (_, Some(job)) => {
            tracing::info!(event = ev, runner = %name, stream = stream.as_str(), job, result = result.as_deref(), "{text}")
        }
    }
}
