//! `fake-runner`: a stand-in for `bin/Runner.Listener` that prints the real runner's exact
//! strings on the real streams, writes `_diag/Runner_*.log`, and exits with the real codes.
//!
//! It talks to fake-github's `/_sim` endpoints where the real one talks to the Actions
//! service. Faults come from a [`Script`] handed over with the session.
//! It must not: print anything the real runner would not, or exit with codes it would not use.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use serde_json::json;
use tokio::sync::watch;

use crate::protocol::{
    decode_jit_config, Credentials, JobCompletion, JobMessage, RegisterRequest, RegisterResponse,
    RunnerSettings, Script, SessionRequest, SessionResponse, RUNNER_VERSION,
};

/// `{DateTime.UtcNow:u}`, e.g. `2020-02-11 14:57:17Z`.
pub fn utc() -> String {
    Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// The runner's `ITerminal`: stdout and stderr, mirrored into the diag log.
struct Term {
    diag: Mutex<Option<File>>,
}

impl Term {
    fn new(root: &Path) -> Term {
        let dir = root.join("_diag");
        let file = fs::create_dir_all(&dir).ok().and_then(|_| {
            let name = format!("Runner_{}-utc.log", Utc::now().format("%Y%m%d-%H%M%S"));
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .ok()
        });
        Term {
            diag: Mutex::new(file),
        }
    }

    fn trace(&self, level: &str, source: &str, msg: &str) {
        if let Ok(mut g) = self.diag.lock() {
            if let Some(f) = g.as_mut() {
                let _ = writeln!(f, "[{} {level} {source}] {msg}", utc());
            }
        }
    }

    /// `WriteLine`: stdout, and `WRITE LINE:` in the diag log.
    fn line(&self, s: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
        self.trace("INFO", "Terminal", &format!("WRITE LINE: {s}"));
    }

    /// `WriteError`: stderr, and `WRITE ERROR:` in the diag log.
    fn error(&self, s: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{s}");
        self.trace("ERR ", "Terminal", &format!("WRITE ERROR: {s}"));
    }

    /// `WriteSuccessMessage`: `√ msg` on stdout, not in the diag log.
    fn success(&self, s: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\u{221a} {s}");
        let _ = out.flush();
    }

    /// `WriteSection`: blank line, `# msg`, blank line.
    fn section(&self, s: &str) {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\n# {s}\n\n");
        let _ = out.flush();
    }

    fn raw(&self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
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
            println!("{RUNNER_VERSION}");
            return 0;
        }
        match args.command.as_str() {
            "run" => run(&args, &root).await,
            "configure" => configure(&args, &root).await,
            "update-helper" => update_helper(&args).await,
            "--version" | "version" => {
                println!("{RUNNER_VERSION}");
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

    async fn delete_session(&mut self) {
        if let Some(sid) = self.session.take() {
            let _ = self
                .http
                .delete(self.url(&format!("/_sim/sessions/{sid}")))
                .timeout(Duration::from_secs(30))
                .send()
                .await;
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

    fn version_deprecated(&self) -> i32 {
        self.term.error(&format!(
            "An error occurred: Runner version v{RUNNER_VERSION} is deprecated and cannot receive messages."
        ));
        let env = std::env::var("ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE")
            .unwrap_or_default()
            .to_ascii_lowercase();
        if ["1", "true", "$true"].contains(&env.as_str()) {
            7
        } else {
            1
        }
    }

    /// The OAuth clock-skew path: the line every 30 s for 1800 s, then exit 1.
    async fn clock_skew(&mut self) -> i32 {
        let mut waited = 0.0;
        loop {
            self.term.error("The local machine's clock may be out of sync with the server time by more than five minutes. Please sync your clock with your domain or internet time and try again.");
            if waited >= 1800.0 {
                self.term
                    .error("Stopped retrying OAuth token request exception after 1800 seconds.");
                return 1;
            }
            if self.sleep_or_shutdown(self.scaled(30.0)).await {
                return self.exiting().await;
            }
            waited += 30.0;
        }
    }

    /// Create a session, retrying as the runner does; `Ok(script)` once connected.
    async fn create_session(&mut self) -> Result<Script, Next> {
        let name = self.settings.agent_name.clone();
        let mut conflicts = 0u32;
        loop {
            if *self.shutdown.borrow() {
                return Err(Next::Exit(self.exiting().await));
            }
            self.term.success("Connected to GitHub");
            let req = SessionRequest {
                client_id: self.creds.data.client_id.clone(),
                local_time_ms: Utc::now().timestamp_millis(),
                version: RUNNER_VERSION.to_string(),
            };
            let resp = self
                .http
                .post(self.url("/_sim/sessions"))
                .json(&req)
                .timeout(Duration::from_secs(60))
                .send()
                .await;
            let retry_msg = match resp {
                Ok(r) if r.status().as_u16() == 201 => {
                    let Ok(s) = r.json::<SessionResponse>().await else {
                        self.term
                            .error("An error occurred: Unexpected session response.");
                        return Err(Next::Exit(2));
                    };
                    self.session = Some(s.session_id);
                    self.reconnected();
                    return Ok(s.script);
                }
                Ok(r) if r.status().as_u16() == 409 => {
                    self.term.error("A session for this runner already exists.");
                    conflicts += 1;
                    self.connect_error(&format!(
                        "The actions runner {name} already has an active session."
                    ));
                    if conflicts * 30 >= 240 {
                        self.term.error(
                            "Stop retry on SessionConflictException after retried for 240 seconds.",
                        );
                        self.term.error(&format!(
                            "Failed to create session. The actions runner {name} already has an active session."
                        ));
                        return Err(Next::Exit(5));
                    }
                    None
                }
                Ok(r) if r.status().as_u16() == 401 => {
                    self.term.error("Failed to create a session. The runner registration has been deleted from the server, please re-configure. Runner registrations are automatically deleted for runners that have not connected to the service recently.");
                    return Err(Next::Exit(1));
                }
                Ok(r) if r.status().as_u16() == 404 => {
                    self.term.error(
                        "The runner no longer exists on the server. Please reconfigure the runner.",
                    );
                    self.term
                        .error("Failed to create session. The runner no longer exists.");
                    return Err(Next::Exit(1));
                }
                Ok(r) if r.status().as_u16() == 400 => {
                    return Err(Next::Exit(self.clock_skew().await));
                }
                Ok(r) if r.status().as_u16() == 403 => {
                    return Err(Next::Exit(self.version_deprecated()));
                }
                Ok(r) => Some(format!(
                    "Response status code does not indicate success: {} ({}).",
                    r.status().as_u16(),
                    r.status().canonical_reason().unwrap_or("Error")
                )),
                Err(e) if e.is_timeout() => {
                    Some("The HTTP request timed out after 00:01:00.".to_string())
                }
                Err(_) => Some(format!(
                    "Connection refused ({})",
                    self.settings.server_url.trim_start_matches("http://")
                )),
            };
            if let Some(msg) = retry_msg {
                self.connect_error(&msg);
            }
            // `_sessionCreationRetryInterval` is 30 s.
            if self.sleep_or_shutdown(self.scaled(30.0)).await {
                return Err(Next::Exit(self.exiting().await));
            }
        }
    }

    async fn run_job(&mut self, job: JobMessage, script: &Script) -> i32 {
        self.term
            .line(&format!("{}: Running job: {}", utc(), job.display_name));
        let started = tokio::time::Instant::now();
        let total = Duration::from_millis(job.duration_ms);
        let mut result = job.result.clone();
        let mut shut = false;
        // "Set up runner": the job-started hook; its failure fails the job.
        let hook = crate::hooks::Hook::JobStarted;
        if crate::hooks::run(hook, &self.settings, &job, &self.root).await == Some(false) {
            result = "Failed".into();
        }
        if let Script::ConnectionLoss {
            after_ms,
            recover_after_ms,
            during_job: true,
            ..
        } = script
        {
            if !self
                .sleep_or_shutdown(Duration::from_millis(*after_ms))
                .await
            {
                self.connect_error("The HTTP request timed out after 00:01:00.");
                if let Some(rec) = recover_after_ms {
                    if !self.sleep_or_shutdown(Duration::from_millis(*rec)).await {
                        self.reconnected();
                    } else {
                        shut = true;
                    }
                }
            } else {
                shut = true;
            }
        }
        if let Script::Crash {
            after_ms,
            during_job: true,
        } = script
        {
            if !self
                .sleep_or_shutdown(Duration::from_millis(*after_ms))
                .await
            {
                self.term.error(
                    "An error occurred: Object reference not set to an instance of an object.",
                );
                return 2;
            }
        }
        if !shut {
            // Renew the job lock while working, as the real runner does.
            let renew_url = self.url(&format!("/_sim/jobs/{}/renew", job.job_id));
            loop {
                let left = total.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                if self
                    .sleep_or_shutdown(left.min(Duration::from_millis(500)))
                    .await
                {
                    shut = true;
                    break;
                }
                let _ = self
                    .http
                    .post(&renew_url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
            }
        }
        if shut {
            self.term.line("Exiting...");
            result = "Canceled".into();
        }
        // "Complete runner": before the job completes; its exit does not change the result.
        let hook = crate::hooks::Hook::JobCompleted;
        let _ = crate::hooks::run(hook, &self.settings, &job, &self.root).await;
        self.term.line(&format!(
            "{}: Job {} completed with result: {}",
            utc(),
            job.display_name,
            result
        ));
        let _ = self
            .http
            .post(self.url(&format!("/_sim/jobs/{}/complete", job.job_id)))
            .json(&JobCompletion { result })
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        self.delete_session().await;
        if self.settings.ephemeral {
            self.remove_config();
        }
        0
    }

    /// Emulate losing the connection while idle.
    async fn idle_connection_loss(
        &mut self,
        recover_after_ms: Option<u64>,
        give_up: bool,
    ) -> Option<i32> {
        let msg = "The HTTP request timed out after 00:01:00.";
        self.connect_error(msg);
        if give_up {
            // The broker flow gives up after 10 consecutive errors and exits 2.
            for _ in 0..10 {
                let wait = rand::thread_rng().gen_range(15.0..30.0);
                if self.sleep_or_shutdown(self.scaled(wait)).await {
                    return Some(self.exiting().await);
                }
            }
            self.term.error(&format!("An error occurred: {msg}"));
            return Some(2);
        }
        match recover_after_ms {
            Some(ms) => {
                if self.sleep_or_shutdown(Duration::from_millis(ms)).await {
                    return Some(self.exiting().await);
                }
                self.reconnected();
                None
            }
            None => {
                wait_shutdown(&mut self.shutdown).await;
                Some(self.exiting().await)
            }
        }
    }

    async fn listen(&mut self, script: Script) -> i32 {
        let listening_since = tokio::time::Instant::now();
        let mut idle_fault = match &script {
            Script::ConnectionLoss {
                after_ms,
                recover_after_ms,
                give_up,
                during_job: false,
            } => Some((*after_ms, *recover_after_ms, *give_up)),
            _ => None,
        };
        let hang_at = match &script {
            Script::Hang { after_ms } => Some(listening_since + Duration::from_millis(*after_ms)),
            _ => None,
        };
        loop {
            if let Some(at) = hang_at {
                if tokio::time::Instant::now() >= at {
                    // Ignore every signal from now on; only SIGKILL ends us.
                    std::future::pending::<()>().await;
                }
            }
            let fault_at =
                idle_fault.map(|(after, _, _)| listening_since + Duration::from_millis(after));
            let sid = self.session.clone().unwrap_or_default();
            let path = format!("/_sim/sessions/{sid}/message");
            let poll = self.poll.get(&path);
            let wake_at = match (fault_at, hang_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let resp = tokio::select! {
                r = poll => r,
                _ = wait_shutdown(&mut self.shutdown) => return self.exiting().await,
                _ = async { tokio::time::sleep_until(wake_at.expect("guarded")).await }, if wake_at.is_some() => {
                    // A scripted fault or hang interrupts the poll: the connection goes.
                    self.poll.reset();
                    if fault_at.is_some_and(|a| tokio::time::Instant::now() >= a) {
                        let (_, rec, give_up) = idle_fault.take().expect("fault present");
                        if let Some(code) = self.idle_connection_loss(rec, give_up).await {
                            return code;
                        }
                    }
                    continue;
                }
            };
            match resp {
                Ok(r) if r.status == 200 => {
                    self.poll_errors = 0;
                    self.reconnected();
                    let Ok(job) = serde_json::from_slice::<JobMessage>(&r.body) else {
                        continue;
                    };
                    return self.run_job(job, &script).await;
                }
                Ok(r) if r.status == 404 => {
                    self.term.error(
                        "The runner no longer exists on the server. Cleaning up local configuration.",
                    );
                    self.remove_config();
                    return 0;
                }
                Ok(r) if (200..300).contains(&r.status) => {
                    self.poll_errors = 0;
                    self.reconnected();
                }
                other => {
                    let msg = match other {
                        Ok(r) => {
                            self.poll.reset();
                            format!(
                                "Failed to get job message. Request to {} failed with status: {}. Error message {}",
                                self.url("/_sim/message"),
                                r.status,
                                reqwest::StatusCode::from_u16(r.status)
                                    .ok()
                                    .and_then(|s| s.canonical_reason())
                                    .unwrap_or("")
                            )
                        }
                        Err(e) => e.0,
                    };
                    self.connect_error(&msg);
                    // 15-30 s for the first five consecutive errors, then 30-60 s.
                    self.poll_errors += 1;
                    let wait = if self.poll_errors <= 5 {
                        rand::thread_rng().gen_range(15.0..30.0)
                    } else {
                        rand::thread_rng().gen_range(30.0..60.0)
                    };
                    if self.sleep_or_shutdown(self.scaled(wait)).await {
                        return self.exiting().await;
                    }
                }
            }
        }
    }

    fn hostile_output(&self) {
        // A 2 MiB line, invalid UTF-8, escape sequences, a carriage return.
        let mut huge = vec![b'A'; 2 * 1024 * 1024];
        huge.push(b'\n');
        self.term.raw(&huge);
        self.term.raw(b"invalid utf-8: \xff\xfe\xc3\x28 end\n");
        self.term
            .raw(b"\x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b[2J\x1b[Hcursor\r\n");
    }

    async fn self_update(&mut self, code: i32) -> i32 {
        self.term
            .line("Runner update in progress, do not shutdown runner.");
        self.term.line("Downloading 2.337.0 runner");
        self.term.line("Waiting for current job finish running.");
        self.term.line("Generate and execute update script.");
        // The detached update script waits for us to exit, then touches update.finished
        // in its working directory, which it inherits from us.
        if let Ok(exe) = std::env::current_exe() {
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new(exe);
            cmd.arg("update-helper")
                .arg(std::process::id().to_string())
                .arg("--time-scale")
                .arg(self.scale.to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid().map_err(std::io::Error::from)?;
                    Ok(())
                });
            }
            let _ = cmd.spawn();
        }
        self.term
            .line("Runner will exit shortly for update, should be back online within 10 seconds.");
        self.delete_session().await;
        self.term.line("Runner update process finished.");
        code
    }
}

async fn run(args: &Args, root: &Path) -> i32 {
    let term = Term::new(root);
    if let Some(blob) = args.value("jitconfig") {
        match decode_jit_config(&blob) {
            Err(msg) => {
                term.error(&msg);
                return 1;
            }
            Ok(files) => {
                for (name, content) in files {
                    if name.contains('/') || fs::write(root.join(&name), content).is_err() {
                        term.error(&format!(
                            "Access to the path '{}' is denied.",
                            root.join(&name).display()
                        ));
                        return 1;
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
        return 1;
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
    match script {
        Script::VersionDeprecated => {
            r.delete_session().await;
            return r.version_deprecated();
        }
        Script::ClockSkew => {
            r.delete_session().await;
            return r.clock_skew().await;
        }
        _ => {}
    }
    r.term.line("");
    r.term
        .line(&format!("Current runner version: '{RUNNER_VERSION}'"));
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

/// How the runner turns `--url` into its API base (`UrlUtil.IsHostedServer`).
fn api_base(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?.to_ascii_lowercase();
    let hosted = host == "github.com"
        || host == "www.github.com"
        || host == "github.localhost"
        || host.ends_with(".ghe.localhost")
        || host.ends_with(".ghe.com");
    if hosted {
        Some(format!("https://api.{host}"))
    } else {
        let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
        Some(format!("{}://{host}{port}/api/v3", u.scheme()))
    }
}

fn dotnet_status(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        422 => "UnprocessableEntity",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

async fn configure(args: &Args, root: &Path) -> i32 {
    let term = Term::new(root);
    if root.join(".runner").exists() {
        term.error("Cannot configure the runner because it is already configured. To reconfigure the runner, run 'config.cmd remove' or './config.sh remove' first.");
        return 1;
    }
    let Some(url) = args.value("url") else {
        term.error("Invalid configuration provided for url. Terminating unattended configuration.");
        return 1;
    };
    let Some(token) = args.value("token") else {
        term.error(
            "Invalid configuration provided for token. Terminating unattended configuration.",
        );
        return 1;
    };
    let name = args.value("name").unwrap_or_else(|| "myrunner".into());
    let mut labels: Vec<String> = vec!["self-hosted".into(), "Linux".into(), "X64".into()];
    for l in args.value("labels").unwrap_or_default().split(',') {
        let l = l.trim();
        if !l.is_empty() && !labels.iter().any(|x| x.eq_ignore_ascii_case(l)) {
            labels.push(l.to_string());
        }
    }
    let work = args.value("work").unwrap_or_else(|| "_work".into());
    term.section("Authentication");
    let Some(api) = api_base(&url) else {
        term.error("Invalid configuration provided for url. Terminating unattended configuration.");
        return 1;
    };
    let http = runner_http_client();
    let reg_url = format!("{api}/actions/runner-registration");
    let resp = http
        .post(&reg_url)
        .header("Authorization", format!("RemoteAuth {token}"))
        .json(&json!({"url": url, "runner_event": "register"}))
        .send()
        .await;
    let auth: serde_json::Value = match resp {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
        Ok(r) => {
            let code = r.status().as_u16();
            let id = r
                .headers()
                .get("x-github-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = r.text().await.unwrap_or_default();
            term.error(&format!(
                "Http response code: {} from 'POST {reg_url}' (Request Id: {id})",
                dotnet_status(code)
            ));
            term.error(&body);
            term.error(&format!(
                "Response status code does not indicate success: {code} ({}).",
                r_reason(code)
            ));
            return 1;
        }
        Err(e) => {
            term.error(&format!("An error occurred: {e}"));
            return 1;
        }
    };
    term.success("Connected to GitHub");
    term.section("Runner Registration");
    let tenant = auth["token"].as_str().unwrap_or_default().to_string();
    let server = auth["url"].as_str().unwrap_or_default().to_string();
    let req = RegisterRequest {
        name: name.clone(),
        labels,
        replace: args.flag("replace"),
        ephemeral: args.flag("ephemeral"),
        disable_update: args.flag("disableupdate"),
        work_folder: work,
    };
    let resp = http
        .post(format!("{server}/_sim/register"))
        .bearer_auth(tenant)
        .json(&req)
        .send()
        .await;
    let reg: RegisterResponse = match resp {
        Ok(r) if r.status().is_success() => match r.json().await {
            Ok(v) => v,
            Err(e) => {
                term.error(&format!("An error occurred: {e}"));
                return 1;
            }
        },
        Ok(r) if r.status().as_u16() == 409 => {
            term.line("A runner exists with the same name");
            term.error(&format!("A runner exists with the same name {name}."));
            return 1;
        }
        Ok(r) => {
            term.error(&format!("Failed: {}", r.status()));
            return 1;
        }
        Err(e) => {
            term.error(&format!("An error occurred: {e}"));
            return 1;
        }
    };
    if reg.replaced {
        term.line("A runner exists with the same name");
        term.success("Successfully replaced the runner");
    } else {
        term.success("Runner successfully added");
    }
    term.section("Runner settings");
    let mut settings = reg.settings;
    if let Some(scale) = args.time_scale {
        settings.sim_time_scale = scale;
    }
    let ok = fs::write(
        root.join(".runner"),
        serde_json::to_vec_pretty(&settings).unwrap_or_default(),
    )
    .is_ok()
        && fs::write(
            root.join(".credentials"),
            serde_json::to_vec_pretty(&reg.credentials).unwrap_or_default(),
        )
        .is_ok()
        && fs::write(root.join(".credentials_rsaparams"), b"{}").is_ok();
    if !ok {
        term.error("Failed: Saving settings");
        return 1;
    }
    term.success("Settings Saved.");
    0
}

fn r_reason(code: u16) -> &'static str {
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Error",
    }
}

/// The detached update script: wait for the listener to exit, then `touch update.finished`.
async fn update_helper(args: &Args) -> i32 {
    let Some(pid) = args.flags.first().and_then(|(p, _)| p.parse::<i32>().ok()) else {
        return 1;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    while nix::sys::signal::kill(pid, None).is_ok() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let root = runner_root();
    let scale = args.time_scale.unwrap_or(1.0);
    tokio::time::sleep(Duration::from_secs_f64(2.0 * scale)).await;
    let stamp = Utc::now().format("%Y%m%d-%H%M%S");
    let log = root.join("_diag").join(format!("SelfUpdate-{stamp}.log"));
    let _ = fs::write(&log, format!("[{}] Update finished.\n", utc()));
    let _ = fs::write("update.finished", b"");
    let _ = fs::rename(&log, log.with_extension("log.succeed"));
    0
}
