//! The command line: subcommands and the flags that override configuration (this file:
//! no logic), [`cmd`] which parses it and runs one handler per subcommand,
//! [`preflight`] the checks `run` logs and `doctor` prints, and [`diagnose`] the host
//! checks only `doctor` runs.

pub mod cmd;
pub mod diagnose;
pub mod preflight;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::CliInput;

/// Keeps self-hosted GitHub Actions runners alive.
#[derive(Debug, Parser)]
#[command(name = "supervisor", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags that override any configuration source.
#[derive(Debug, Args, Default)]
pub struct Overrides {
    /// TOML configuration file (also SUPERVISOR_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Runners supervised at once ([runner] slots).
    #[arg(long, global = true, value_name = "N")]
    pub slots: Option<String>,
    /// The runner install directory ([runner] dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub runner_dir: Option<String>,
    /// GitHub API base URL ([github] api_url).
    #[arg(long, global = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// State directory ([state] dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<String>,
    /// Comma-separated labels ([runner] labels).
    #[arg(long, global = true, value_name = "A,B")]
    pub labels: Option<String>,
    /// Any key: --set runner.drain_timeout=5m (repeatable).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

impl Overrides {
    /// Turn the flags into configuration input; a malformed --set is an error.
    pub fn to_input(&self) -> Result<CliInput, String> {
        let mut sets = vec![];
        for (flag, key, v) in [
            ("--slots", "runner.slots", &self.slots),
            ("--runner-dir", "runner.dir", &self.runner_dir),
            ("--api-url", "github.api_url", &self.api_url),
            ("--state-dir", "state.dir", &self.state_dir),
            ("--labels", "runner.labels", &self.labels),
        ] {
            if let Some(v) = v {
                sets.push((flag.to_string(), key.to_string(), v.clone()));
            }
        }
        for s in &self.set {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| format!("--set {s:?}: expected SECTION.KEY=VALUE"))?;
            sets.push(("--set".to_string(), k.trim().to_string(), v.to_string()));
        }
        Ok(CliInput {
            config_path: self.config.clone(),
            sets,
        })
    }
}

/// `supervisor breaker ...`.
#[derive(Debug, Subcommand)]
pub enum BreakerAction {
    /// Close the circuit breaker (of one slot, or all) and let the slots go on now.
    Reset {
        /// Only this slot.
        #[arg(long, value_name = "N")]
        slot: Option<usize>,
    },
}

/// `supervisor runner ...`.
#[derive(Debug, Subcommand)]
pub enum RunnerAction {
    /// Look for a newer runner release now: the running supervisor downloads it and moves
    /// the slots to it between jobs, one canary slot first (`[runner] auto_update = "on"`).
    Upgrade,
    /// Forget the runner versions marked bad after a rollback, and look again now.
    Retry,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Supervise runners until SIGTERM or SIGINT (a second signal forces the stop).
    Run,
    /// Print the resolved configuration with the source of each value (secrets redacted).
    Config {
        /// Print the commented example configuration instead.
        #[arg(long)]
        example: bool,
    },
    /// Diagnose the host and the token, and say how to fix each problem (exit 0 all pass,
    /// 1 warnings, 2 failures).
    Doctor {
        /// Print the checks as JSON (README "doctor --json").
        #[arg(long)]
        json: bool,
        /// Read the token from standard input, e.g. a root-only credential:
        /// `sudo cat /etc/runner-supervisor/github_pat | supervisor doctor --token-stdin`.
        #[arg(long)]
        token_stdin: bool,
        /// Read the GitHub App's private key (PEM) from standard input, e.g. a root-only
        /// credential: `sudo cat /etc/runner-supervisor/github_app_key | supervisor doctor --app-key-stdin`.
        #[arg(long, conflicts_with = "token_stdin")]
        app_key_stdin: bool,
    },
    /// Show the running supervisor's slots, runners, jobs, breakers and host state
    /// (through its control socket; exit 1 when none runs).
    Status {
        /// Print the status as JSON (schema runner-supervisor.status.v1, README "Status").
        #[arg(long)]
        json: bool,
        /// Refresh every second (the breaker countdowns run).
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// The circuit breaker of the running supervisor.
    Breaker {
        #[command(subcommand)]
        action: BreakerAction,
    },
    /// Ask the running supervisor to drain: no new jobs, idle runners stop now, busy ones
    /// finish their job, then it exits (as the first SIGTERM does).
    Drain,
    /// Ask the running supervisor to replace its idle listeners (fresh connections).
    Recycle {
        /// Only this slot.
        #[arg(long, value_name = "N")]
        slot: Option<usize>,
    },
    /// Exit 0 if the running supervisor is healthy (for container health checks).
    Health,
    /// The runner versions here (the configured directory and the versions directory),
    /// the newest release, GitHub's deadline for the installed one, and what the running
    /// supervisor's slots run; `upgrade` and `retry` ask the running supervisor.
    Runner {
        #[command(subcommand)]
        action: Option<RunnerAction>,
    },
    /// The jobs this supervisor's slots ran: who each was (repository, workflow, job, run
    /// and attempt, from the runner's job hooks), when, and how it ended; lost ones with
    /// their cause.
    Jobs {
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
        /// Only the lost jobs.
        #[arg(long)]
        lost: bool,
    },
    /// Run by the runner's job hooks (never by hand): report the job to the running
    /// supervisor, within 2 s, and always exit 0.
    #[command(hide = true)]
    Hook {
        /// `job-started` or `job-completed`.
        #[arg(value_parser = ["job-started", "job-completed"])]
        which: String,
        /// The supervisor's control socket.
        #[arg(long)]
        socket: std::path::PathBuf,
    },
    /// Be this Docker engine's one pruner: prune when disk runs low and no runner of the
    /// fleet runs a job (a service of its own in the compose stack).
    Pruner,
    /// Restart unhealthy containers that carry the autoheal label, job-aware and
    /// rate-limited (a service of its own in the compose stack).
    Autoheal,
}
