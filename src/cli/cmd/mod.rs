//! One handler per subcommand. Handlers return exit statuses; only `main` exits.

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{BreakerAction, Cli, Command, RunnerAction};
use crate::config::{CliInput, Config, ConfigErrors, OsEnv, Purpose};

pub mod config;
pub mod doctor;
pub mod health;
pub mod jobs;
pub mod run;
pub mod runner;
pub mod service;
pub mod status;

/// Exit status for bad configuration or usage.
pub const EXIT_CONFIG: u8 = 64;

/// Parse, dispatch, and turn the outcome into an exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let input = match cli.overrides.to_input() {
        Ok(i) => i,
        Err(m) => {
            eprintln!("supervisor: {m}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    dispatch(cli.command, input)
}

/// Run a subcommand.
pub fn dispatch(cmd: Command, input: CliInput) -> ExitCode {
    if !matches!(cmd, Command::Run | Command::Pruner | Command::Autoheal) {
        // A client printing into `| head` ends quietly when the reader goes, as Unix tools
        // do, instead of panicking on EPIPE. (Daemons keep SIGPIPE ignored.)
        // SAFETY: setting a signal disposition to its default, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cmd {
        Command::Run => run::main(input),
        Command::Config { example } => config::main(input, example),
        Command::Doctor {
            json,
            token_stdin,
            app_key_stdin,
        } => doctor::main(input, json, token_stdin, app_key_stdin),
        Command::Status { json, watch } => status::main(input, status::Ask::Status { json, watch }),
        Command::Runner { action: None } => runner::main(input),
        Command::Runner {
            action: Some(RunnerAction::Upgrade),
        } => status::main(input, status::Ask::RunnerUpgrade),
        Command::Runner {
            action: Some(RunnerAction::Retry),
        } => status::main(input, status::Ask::RunnerRetry),
        Command::Breaker {
            action: BreakerAction::Reset { slot },
        } => status::main(input, status::Ask::BreakerReset { slot }),
        Command::Drain => status::main(input, status::Ask::Drain),
        Command::Recycle { slot } => status::main(input, status::Ask::Recycle { slot }),
        Command::Health => health::main(input),
        Command::Jobs { json, lost } => jobs::main(input, json, lost),
        Command::Hook { which, socket } => jobs::hook(&which, &socket),
        Command::Pruner => service::main(input, service::Service::Pruner),
        Command::Autoheal => service::main(input, service::Service::Autoheal),
    }
}

/// Resolve the configuration or print every problem.
pub fn resolve(input: &CliInput, purpose: Purpose) -> Result<Config, ExitCode> {
    let cfg = Config::resolve(&OsEnv, input, purpose).map_err(|e: ConfigErrors| {
        eprint!("supervisor: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    for w in &cfg.warnings {
        eprintln!("supervisor: warning: {w}");
    }
    Ok(cfg)
}

/// A runtime for a subcommand: one thread. The supervisor waits on IO and timers; one
/// thread serves it with fewer wake-ups and less memory than a pool of workers handing
/// work to each other (`cargo bench --bench idle`, README "Footprint"). Files are written
/// on the files thread (`os::files`); blocking lookups go to the blocking pool.
/// On failure the error is printed and the exit status (1) returned.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        // The blocking pool serves only what has no async form (a DNS lookup, a tarball
        // unpacked): a thread leaves soon after, so an idle supervisor keeps none. Files
        // are written on their own thread (`os::files`).
        .thread_keep_alive(std::time::Duration::from_secs(5))
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("supervisor: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}
