//! `fake-runner`: a stand-in for `bin/Runner.Listener` that prints the real runner's exact
//! strings on the real streams, writes `_diag/Runner_*.log`, and exits with the real codes.
//!
//! It talks to fake-github's `/_sim` endpoints where the real one talks to the Actions
//! service. Faults come from a [`Script`] handed over with the session.
//!
//! Layout by concern: this file is the command line, the process and [`run`] (startup to
//! the first "Listening for Jobs"); `term.rs` the terminal and diag log; `session.rs` the
//! broker session; `listen.rs` listening and idle faults; `job.rs` a job; `configure.rs`
//! `config.sh`; `update.rs` self-update.
//! It must not: print anything the real runner would not, or exit with codes it would not use.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::protocol::{decode_jit_config, Credentials, RunnerSettings, Script, RUNNER_VERSION};

mod configure;
mod job;
mod listen;
mod session;
mod term;
mod update;

use configure::configure;
use term::Term;
use update::update_helper;

/// `{DateTime.UtcNow:u}`, e.g. `2020-02-11 14:57:17Z`.
pub fn utc() -> String {
    Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Parsed arguments.
struct Args {
    command: String,
    flags: Vec<(String, Option<String>)>,
    time_scale: Option<f64>,
}

impl Args {
    fn parse(argv: &[String]) -> Args {
        let mut command = String::new();
        let mut flags = vec![];
        let mut time_scale = None;
        let mut i = 0;
        while i < argv.len() {
            let a = &argv[i];
            if let Some(name) = a.strip_prefix("--") {
                let takes_value = matches!(
                    name,
                    "url"
                        | "token"
                        | "name"
                        | "labels"
                        | "work"
                        | "jitconfig"
                        | "runnergroup"
                        | "startuptype"
                        | "time-scale"
                        | "pat"
                );
                let value = if takes_value && i + 1 < argv.len() {
                    i += 1;
                    Some(argv[i].clone())
                } else {
                    None
                };
                if name == "time-scale" {
                    time_scale = value.as_deref().and_then(|v| v.parse().ok());
                } else {
                    flags.push((name.to_ascii_lowercase(), value));
                }
            } else if command.is_empty() {
                command = a.clone();
            } else {
                flags.push((a.clone(), None));
            }
            i += 1;
        }
        Args {
            command,
            flags,
            time_scale,
        }
    }

    fn value(&self, name: &str) -> Option<String> {
        let env = format!("ACTIONS_RUNNER_INPUT_{}", name.to_ascii_uppercase());
        self.flags
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
            .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
    }

    fn flag(&self, name: &str) -> bool {
        let env = format!("ACTIONS_RUNNER_INPUT_{}", name.to_ascii_uppercase());
        self.flags.iter().any(|(n, _)| n == name)
            || std::env::var(env).is_ok_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// The version this fake runner claims: `bin/sim-version` beside it when present (tests
/// install older or newer "releases"), else [`RUNNER_VERSION`].
pub(crate) fn version() -> String {
    std::fs::read_to_string(runner_root().join("bin/sim-version"))
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| RUNNER_VERSION.to_string())
}

/// `bin/sim-crash-after-ms`: this "release" is broken, its listener crashes that long
/// after it listens.
fn broken_release() -> Option<u64> {
    std::fs::read_to_string(runner_root().join("bin/sim-crash-after-ms"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The runner root: the parent of the directory holding this executable.
fn runner_root() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Entry point for the `fake-runner` binary; returns the exit code.
pub fn main() -> i32 {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // A listener that refuses to have its descriptors taken (`pidfd_getfd` and
    // `/proc/<pid>/fd` need a dumpable target, or CAP_SYS_PTRACE).
    if std::env::var("SIM_RUNNER_UNDUMPABLE").as_deref() == Ok("1") {
        // SAFETY: a plain prctl on this process.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    rt.block_on(async move {
        let args = Args::parse(&argv);
        let root = runner_root();
        // `Runner.Listener --version` prints the version and exits 0, as the real one does.
        if args.command.is_empty() && args.flags.iter().any(|(f, _)| f == "version") {
            println!("{}", version());
            return 0;
        }
        match args.command.as_str() {
            // `Runner.Worker spawnclient`: the job's process; it lives until the listener
            // closes its end of the pipe (the job is done, or the listener died).
            "spawnclient" => {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
                0
            }
            "run" => run(&args, &root).await,
            "configure" => configure(&args, &root).await,
            "update-helper" => update_helper(&args).await,
            "--version" | "version" => {
                println!("{}", version());
                0
            }
            other => {
                eprintln!("Unrecognized command-line input arguments: '{other}'. For usage refer to: .\\config.cmd --help or ./config.sh --help");
                1
            }
        }
    })
}

/// Shutdown requests (SIGINT, SIGTERM), as a watch that flips to true.
fn shutdown_watch() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        }
    });
    rx
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

struct Runner {
    term: Term,
    root: PathBuf,
    settings: RunnerSettings,
    creds: Credentials,
    scale: f64,
    http: reqwest::Client,
    shutdown: watch::Receiver<bool>,
    session: Option<String>,
    /// Set while a connection error is outstanding (printed once per episode).
    connect_error: bool,
    /// The message long-poll's pooled connection.
    poll: crate::longpoll::PollConn,
    /// Consecutive poll errors (the back-off grows after five).
    poll_errors: u32,
    /// When the last renewal line was printed.
    last_renew_line: Option<tokio::time::Instant>,
}

enum Next {
    Exit(i32),
}

impl Runner {
    fn scaled(&self, secs: f64) -> Duration {
        Duration::from_secs_f64((secs * self.scale).max(0.0))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.settings.server_url.trim_end_matches('/'), path)
    }

    /// Sleep unless shut down first; true when shut down.
    async fn sleep_or_shutdown(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = wait_shutdown(&mut self.shutdown) => true,
        }
    }

    fn connect_error(&mut self, msg: &str) {
        if !self.connect_error {
            self.connect_error = true;
            self.term.error(&format!(
                "{}: Runner connect error: {msg}. Retrying until reconnected.",
                utc()
            ));
        }
    }

    fn reconnected(&mut self) {
        if self.connect_error {
            self.connect_error = false;
            self.term.line(&format!("{}: Runner reconnected.", utc()));
        }
    }

    fn remove_config(&self) {
        let _ = fs::remove_file(self.root.join(".credentials"));
        let _ = fs::remove_file(self.root.join(".credentials_rsaparams"));
        self.term.success("Removed .credentials");
        let _ = fs::remove_file(self.root.join(".runner"));
        self.term.success("Removed .runner");
    }

    async fn exiting(&mut self) -> i32 {
        self.term.line("Exiting...");
        self.delete_session().await;
        0
    }
}

async fn run(args: &Args, root: &Path) -> i32 {
    let term = Term::new(root);
    let (settings, creds) = match configuration(args, root, &term) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let scale = args.time_scale.unwrap_or(settings.sim_time_scale);
    let shutdown = shutdown_watch();
    let mut r = Runner {
        term,
        root: root.to_path_buf(),
        scale,
        http: runner_http_client(),
        shutdown,
        session: None,
        connect_error: false,
        poll: crate::longpoll::PollConn::new(
            &settings.server_url,
            Duration::from_millis(settings.sim_http_timeout_ms),
        ),
        poll_errors: 0,
        last_renew_line: None,
        creds,
        settings,
    };
    if r.settings.sim_startup_ms > 0
        && r.sleep_or_shutdown(Duration::from_millis(r.settings.sim_startup_ms))
            .await
    {
        r.term.line("Exiting...");
        return 0;
    }
    let script = match r.create_session().await {
        Ok(s) => s,
        Err(Next::Exit(code)) => return code,
    };
    // A broken release (`bin/sim-crash-after-ms` in its tarball): every listener of it
    // crashes that long after it listens, whatever the script.
    let script = match broken_release() {
        Some(after_ms) => Script::Crash {
            after_ms,
            during_job: false,
        },
        None => script,
    };
    if script == Script::ClockSkew {
        r.delete_session().await;
        return r.clock_skew().await;
    }
    r.term.line("");
    r.term
        .line(&format!("Current runner version: '{}'", version()));
    if script == Script::HostileOutput {
        r.hostile_output();
        r.term
            .raw(format!("\x1b[32m{}: Listening for Jobs\x1b[0m\n", utc()).as_bytes());
        r.term.trace(
            "INFO",
            "Terminal",
            &format!("WRITE LINE: {}: Listening for Jobs", utc()),
        );
    } else {
        r.term.line(&format!("{}: Listening for Jobs", utc()));
    }
    match script {
        // Past its runtime deadline (reference A8): it listens, then the first poll
        // for a message is refused.
        Script::VersionDeprecated => {
            r.delete_session().await;
            r.version_deprecated()
        }
        Script::SelfUpdate { exit_code } => r.self_update(exit_code).await,
        Script::Crash {
            after_ms,
            during_job: false,
        } => {
            if r.sleep_or_shutdown(Duration::from_millis(after_ms)).await {
                return r.exiting().await;
            }
            r.term
                .error("An error occurred: Object reference not set to an instance of an object.");
            2
        }
        other => r.listen(other).await,
    }
}

/// The runner's configuration: the JIT config's files written first (`--jitconfig`), then
/// `.runner` and `.credentials` read; the exit code when that fails.
fn configuration(
    args: &Args,
    root: &Path,
    term: &Term,
) -> Result<(RunnerSettings, Credentials), i32> {
    if let Some(blob) = args.value("jitconfig") {
        match decode_jit_config(&blob) {
            Err(msg) => {
                term.error(&msg);
                return Err(1);
            }
            Ok(files) => {
                for (name, content) in files {
                    if name.contains('/') || fs::write(root.join(&name), content).is_err() {
                        term.error(&format!(
                            "Access to the path '{}' is denied.",
                            root.join(&name).display()
                        ));
                        return Err(1);
                    }
                }
            }
        }
    }
    let settings: Option<RunnerSettings> = fs::read(root.join(".runner"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let creds: Option<Credentials> = fs::read(root.join(".credentials"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (Some(settings), Some(creds)) = (settings, creds) else {
        term.error("Runner is not configured.");
        return Err(1);
    };
    Ok((settings, creds))
}

/// An HTTP client like the runner's: no TCP keepalive (its `SetTcpKeepAlive` does nothing
/// for `HttpClient`; facts A7), unlike reqwest's default of 15 s.
fn runner_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_keepalive(None)
        .tcp_keepalive_interval(None)
        .tcp_keepalive_retries(None)
        .build()
        .expect("a plain HTTP client")
}
