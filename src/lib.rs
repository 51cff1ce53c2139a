//! runner-supervisor keeps self-hosted GitHub Actions runners alive on laptops, WSL2 boxes
//! and small servers: one JIT-registered ephemeral runner per slot, one job at a time.
//!
//! The crate is twelve rooms, listed from the top of the module graph to its bottom; a
//! module imports only those below it (`tests/it/layering.rs` holds it to that, and
//! ARCHITECTURE.md says what each room may import).

/// The command line and its commands: arguments, one handler per subcommand, `doctor`'s checks.
pub mod cli;
/// Configuration: defaults, the TOML file, the environment and flags, resolved and checked.
pub mod config;
/// The Docker engine and its host-wide services: disk pruning, autoheal, the fleet of runners.
pub mod docker;
/// The GitHub REST client and the runner scale-set protocol.
pub mod github;
/// Jobs: their records, hooks, protection and re-runs of lost ones.
pub mod jobs;
/// The host monitors, siblings that watch one thing each and tell the slots through `status::host`.
pub mod monitors;
/// Operating-system plumbing: clocks, processes, signals, sockets, the state directory, logs.
pub mod os;
/// Pure decisions and their words: no IO, no clock but the one passed in.
pub mod policy;
/// The runner: its versions and how a runner is started (today a child process).
pub mod runner;
/// A slot: one runner at a time, driven by its machine, and where its demand comes from.
pub mod slot;
/// What is shared and shown: the board, the host state, status.json, health, metrics, the control socket.
pub mod status;
/// `supervisor run` put together: the slots, the monitors and the host-wide services.
pub mod supervisor;
