//! Turning the listener's console lines into events.
//!
//! Pure: no IO. Matches the exact strings of `src/runner/protocol.md` §1; a line that
//! matches nothing is still logged by the caller, it just carries no event.

/// The heading of the box `config.sh` prints for a runner below GitHub's registration
/// floor (reference A8), before `The minimum runner version required to register with
/// GitHub Actions is now 2.329.0` and an exit 1.
pub const UPDATE_REQUIRED: &str = "RUNNER UPDATE REQUIRED";

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Something the listener said that the supervisor acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerEvent {
    /// `Current runner version: '2.336.0'`.
    Version(String),
    /// `[RUNNER … JobDispatcher] Successfully renew job …` (the listener's trace on stdout,
    /// `ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT=1`): the job's lease was renewed.
    LeaseRenewed,
    /// `[RUNNER … JobDispatcher] Catch exception during renew runner job …`: a renewal
    /// failed (on the Run Service path one failure abandons the job, actions/runner #4635).
    LeaseRenewFailed { message: String },
    /// `[WORKER …] Download action repository 'owner/repo@ref' (SHA:…)`: a job downloaded
    /// an action the runner's archive cache did not have.
    ActionDownloaded { repository: String, sha: String },
    /// `{utc}: Listening for Jobs`: the readiness signal.
    Listening,
    /// `{utc}: Running job: {name}`.
    JobStarted { name: String },
    /// `{utc}: Job {name} completed with result: {result}`.
    JobCompleted { name: String, result: String },
    /// `{utc}: Runner connect error: {message}. Retrying until reconnected.`
    ConnectError { message: String },
    /// `{utc}: Runner reconnected.`
    Reconnected,
    /// `A session for this runner already exists.`
    SessionConflict,
    /// The registration is gone; `idle_cleanup` is the exit-0 "Cleaning up" path.
    RegistrationDeleted { idle_cleanup: bool },
    /// The clock-skew line (OAuth fails beyond five minutes).
    ClockSkew,
    /// The service refuses this runner version.
    VersionDeprecated { message: String },
    /// `An error occurred: {message}`.
    Fatal { message: String },
}

impl RunnerEvent {
    /// The event's name in the supervisor's JSON log (`event` of a forwarded line).
    pub fn name(&self) -> &'static str {
        match self {
            RunnerEvent::Version(_) => "runner_version",
            RunnerEvent::LeaseRenewed => "runner_lease_renewed",
            RunnerEvent::LeaseRenewFailed { .. } => "runner_lease_renew_failed",
            RunnerEvent::ActionDownloaded { .. } => "runner_action_downloaded",
            RunnerEvent::Listening => "runner_listening",
            RunnerEvent::JobStarted { .. } => "runner_job_started",
            RunnerEvent::JobCompleted { .. } => "runner_job_completed",
            RunnerEvent::ConnectError { .. } => "runner_connect_error",
            RunnerEvent::Reconnected => "runner_reconnected",
            RunnerEvent::SessionConflict => "runner_session_conflict",
            RunnerEvent::RegistrationDeleted { .. } => "runner_registration_deleted",
            RunnerEvent::ClockSkew => "runner_clock_skew",
            RunnerEvent::VersionDeprecated { .. } => "runner_version_deprecated",
            RunnerEvent::Fatal { .. } => "runner_fatal",
        }
    }
}

/// The message of a trace line the listener prints with
/// `ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT=1`: `[RUNNER 2026-… INFO JobDispatcher] msg` (or
/// `[WORKER …]`, relayed). None for a console line.
pub fn trace_message(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("[RUNNER ")
        .or_else(|| line.strip_prefix("[WORKER "))?;
    rest.split_once("] ").map(|(_, m)| m)
}

/// The trace lines that mean something: the job lease's renewals (reference
/// caches-and-containment 5.6). Both paths' wordings: the Run Service's (`renew job {id}`)
/// and the legacy pool's (`renew job request {id}`).
fn trace_event(msg: &str) -> Option<RunnerEvent> {
    if msg.starts_with("Successfully renew job ") {
        return Some(RunnerEvent::LeaseRenewed);
    }
    if let Some(rest) = msg.strip_prefix("Download action repository '") {
        let (action, rest) = rest.split_once("' (SHA:")?;
        let sha = rest.strip_suffix(')')?;
        let repository = action.split_once('@').map_or(action, |(r, _)| r);
        let valid = sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit());
        let parts: Vec<&str> = repository.split('/').collect();
        if !valid || parts.len() < 2 {
            return None;
        }
        // `owner/repo/path@ref` is cached by repository.
        return Some(RunnerEvent::ActionDownloaded {
            repository: format!("{}/{}", parts[0], parts[1]),
            sha: sha.to_ascii_lowercase(),
        });
    }
    if msg.starts_with("Catch exception during renew runner job") {
        return Some(RunnerEvent::LeaseRenewFailed {
            message: msg.to_string(),
        });
    }
    None
}

/// Split off the `{utc}: ` prefix (`2020-02-11 14:57:17Z: `), if present.
fn strip_timestamp(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    if b.len() < 22 {
        return None;
    }
    let shape = b"0000-00-00 00:00:00Z: ";
    for (i, want) in shape.iter().enumerate() {
        let ok = match want {
            b'0' => b[i].is_ascii_digit(),
            other => b[i] == *other,
        };
        if !ok {
            return None;
        }
    }
    Some(&line[22..])
}

/// Parse one cleaned line (ANSI stripped, no trailing newline).
pub fn parse_line(line: &str) -> Option<RunnerEvent> {
    let line = line.trim_end();
    if let Some(msg) = trace_message(line) {
        return trace_event(msg);
    }
    if let Some(rest) = strip_timestamp(line) {
        if rest == "Listening for Jobs" {
            return Some(RunnerEvent::Listening);
        }
        if rest == "Runner reconnected." {
            return Some(RunnerEvent::Reconnected);
        }
        if let Some(name) = rest.strip_prefix("Running job: ") {
            return Some(RunnerEvent::JobStarted {
                name: name.to_string(),
            });
        }
        if let Some(msg) = rest
            .strip_prefix("Runner connect error: ")
            .and_then(|m| m.strip_suffix(". Retrying until reconnected."))
        {
            return Some(RunnerEvent::ConnectError {
                message: msg.to_string(),
            });
        }
        if let Some(job) = rest.strip_prefix("Job ") {
            // The job name may contain spaces, so split at the last marker.
            if let Some(idx) = job.rfind(" completed with result: ") {
                return Some(RunnerEvent::JobCompleted {
                    name: job[..idx].to_string(),
                    result: job[idx + " completed with result: ".len()..].to_string(),
                });
            }
        }
        return None;
    }
    if let Some(v) = line
        .strip_prefix("Current runner version: '")
        .and_then(|v| v.strip_suffix('\''))
    {
        return Some(RunnerEvent::Version(v.to_string()));
    }
    match line {
        "A session for this runner already exists." => return Some(RunnerEvent::SessionConflict),
        "The runner no longer exists on the server. Cleaning up local configuration." => {
            return Some(RunnerEvent::RegistrationDeleted { idle_cleanup: true })
        }
        "The runner no longer exists on the server. Please reconfigure the runner." => {
            return Some(RunnerEvent::RegistrationDeleted {
                idle_cleanup: false,
            })
        }
        _ => {}
    }
    if line.starts_with(
        "Failed to create a session. The runner registration has been deleted from the server",
    ) {
        return Some(RunnerEvent::RegistrationDeleted {
            idle_cleanup: false,
        });
    }
    if line.starts_with("The local machine's clock may be out of sync with the server time") {
        return Some(RunnerEvent::ClockSkew);
    }
    if let Some(msg) = line.strip_prefix("An error occurred: ") {
        let lower = msg.to_ascii_lowercase();
        if lower.contains("deprecated") || lower.contains("too old") {
            return Some(RunnerEvent::VersionDeprecated {
                message: msg.to_string(),
            });
        }
        return Some(RunnerEvent::Fatal {
            message: msg.to_string(),
        });
    }
    None
}

/// Remove ANSI escape sequences (CSI, OSC, two-byte escapes) and control characters
/// other than tab; decode UTF-8 lossily.
pub fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            match chars.peek() {
                Some('[') => {
                    chars.next();
                    // CSI: parameters and intermediates, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    chars.next();
                    // OSC: up to BEL or ESC \.
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, want: Option<RunnerEvent>) {
        assert_eq!(parse_line(line), want, "{line:?}");
    }

    #[test]
    fn lease_renewals_come_from_the_listeners_trace_and_nothing_else_does() {
        use RunnerEvent::*;
        check(
            "[RUNNER 2026-12-08 01:53:23Z INFO JobDispatcher] Successfully renew job 8c1f2, job is valid till 12/08/2026 02:03:23",
            Some(LeaseRenewed),
        );
        check(
            "[RUNNER 2025-02-12 11:40:12Z INFO JobDispatcher] Successfully renew job request 412, job is valid till 02/12/2025 11:50:12",
            Some(LeaseRenewed),
        );
        check(
            "[RUNNER 2026-12-08 01:53:23Z ERR  JobDispatcher] Catch exception during renew runner job 8c1f2.",
            Some(LeaseRenewFailed {
                message: "Catch exception during renew runner job 8c1f2.".into(),
            }),
        );
        check(
            "[RUNNER 2026-12-08 01:53:23Z ERR  JobDispatcher] Catch exception during renew runner jobrequest 412.",
            Some(LeaseRenewFailed {
                message: "Catch exception during renew runner jobrequest 412.".into(),
            }),
        );
        // The trace repeats console lines: they are not events a second time.
        check(
            "[RUNNER 2026-12-08 01:53:23Z INFO Terminal] WRITE LINE: 2026-12-08 01:53:23Z: Listening for Jobs",
            None,
        );
        check(
            "[WORKER 2026-12-08 01:53:23Z INFO StepsRunner] An error occurred: x",
            None,
        );
        check(
            "[WORKER 2026-12-08 01:53:23Z INFO ActionManager] Download action repository 'actions/cache/save@v4' (SHA:0123456789abcdef0123456789abcdef01234567)",
            Some(ActionDownloaded {
                repository: "actions/cache".into(),
                sha: "0123456789abcdef0123456789abcdef01234567".into(),
            }),
        );
        check("[WORKER 2026-12-08 01:53:23Z INFO ActionManager] Download action repository 'x@y' (SHA:zz)", None);
        // Not from the trace: a job printing the words is nothing.
        check("Successfully renew job 1, job is valid till then", None);
    }

    #[test]
    fn the_exact_strings() {
        use RunnerEvent::*;
        check("2020-02-11 14:57:17Z: Listening for Jobs", Some(Listening));
        // Lines nothing acts on are not events (they are still logged).
        check("\u{221a} Connected to GitHub", None);
        check("Exiting...", None);
        check("Runner update in progress, do not shutdown runner.", None);
        check(
            "Current runner version: '2.336.0'",
            Some(Version("2.336.0".into())),
        );
        check(
            "2020-02-11 14:57:17Z: Running job: build and test",
            Some(JobStarted {
                name: "build and test".into(),
            }),
        );
        check(
            "2020-02-11 14:57:17Z: Job build and test completed with result: Succeeded",
            Some(JobCompleted {
                name: "build and test".into(),
                result: "Succeeded".into(),
            }),
        );
        check(
            "2020-02-11 14:57:17Z: Runner connect error: The HTTP request timed out after 00:01:00.. Retrying until reconnected.",
            Some(ConnectError { message: "The HTTP request timed out after 00:01:00.".into() }),
        );
        check(
            "2020-02-11 14:57:17Z: Runner reconnected.",
            Some(Reconnected),
        );
        check(
            "A session for this runner already exists.",
            Some(SessionConflict),
        );
        check(
            "The runner no longer exists on the server. Cleaning up local configuration.",
            Some(RegistrationDeleted { idle_cleanup: true }),
        );
        check(
            "The runner no longer exists on the server. Please reconfigure the runner.",
            Some(RegistrationDeleted {
                idle_cleanup: false,
            }),
        );
        check("Failed to create a session. The runner registration has been deleted from the server, please re-configure. Runner registrations are automatically deleted for runners that have not connected to the service recently.", Some(RegistrationDeleted { idle_cleanup: false }));
        check("The local machine's clock may be out of sync with the server time by more than five minutes. Please sync your clock with your domain or internet time and try again.", Some(ClockSkew));
        check(
            "An error occurred: Runner version v2.300.0 is deprecated and cannot receive messages.",
            Some(VersionDeprecated {
                message: "Runner version v2.300.0 is deprecated and cannot receive messages."
                    .into(),
            }),
        );
        check(
            "An error occurred: boom",
            Some(Fatal {
                message: "boom".into(),
            }),
        );
    }

    #[test]
    fn near_misses_are_not_events() {
        check("Listening for Jobs", None);
        check("2020-02-11 14:57:17Z: Listening for Jobs later", None);
        check(
            "job said: A session for this runner already exists. really",
            None,
        );
        check("2020-02-11 14:57Z: Listening for Jobs", None);
        check("", None);
    }

    #[test]
    fn cleaning() {
        assert_eq!(
            clean_line(b"\x1b[32m2020-02-11 14:57:17Z: Listening for Jobs\x1b[0m"),
            "2020-02-11 14:57:17Z: Listening for Jobs"
        );
        assert_eq!(clean_line(b"a\x1b]0;title\x07b\x1b[2J\x1b[Hc\r"), "abc");
        assert_eq!(
            clean_line(b"bad \xff\xfe utf8"),
            "bad \u{fffd}\u{fffd} utf8"
        );
        assert_eq!(clean_line(b"tab\there"), "tab\there");
    }
}
