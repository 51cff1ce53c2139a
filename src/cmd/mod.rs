//! One handler per subcommand. Handlers return exit statuses; only `main` exits.

use std::process::ExitCode;

use crate::cli::{Command, EXIT_CONFIG};
use crate::config::{CliInput, Config, ConfigErrors, OsEnv, Purpose};

pub mod config;
pub mod doctor;
pub mod health;
pub mod run;
pub mod service;

/// Run a subcommand.
pub fn dispatch(cmd: Command, input: CliInput) -> ExitCode {
    match cmd {
        Command::Run => run::main(input),
        Command::Config { example } => config::main(input, example),
        Command::Doctor => doctor::main(input),
        Command::Health => health::main(input),
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

/// A runtime for a subcommand: two workers, as the machines have two cores.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
