//! runner-supervisor keeps self-hosted GitHub Actions runners alive on laptops, WSL2 boxes
//! and small servers: one JIT-registered ephemeral runner per slot, one job at a time.
//!
//! # Layout
//! - [`cli`] parses the command line; [`cmd`] has one handler per subcommand.
//! - [`config`] resolves defaults, the TOML file, the environment and flags.
//! - [`github`] is the REST client.
//! - [`supervisor`] runs the slots ([`slot`]), each driving a listener ([`runner`]).
//! - [`status`] is the shared status and the file `supervisor health` reads.
//! - [`shutdown`] turns signals into modes; [`procs`] spawns children and reaps orphans.
//! - [`naming`] and [`layout`] own runner names and the state directory.
//! - [`preflight`] has the checks `run` logs and `doctor` prints; [`diagnose`] the host
//!   checks only `doctor` runs.
//! - [`control`] serves the control socket (`status`, `breaker reset`, `drain`,
//!   `recycle`); [`metrics`] renders Prometheus metrics; [`sdnotify`] speaks systemd's
//!   notify protocol.
//! - [`watchdog`] (pure) decides when a listener is stuck and when the breaker opens;
//!   [`connwatch`] sets keepalive on the listeners' own connections ([`sockets`], which
//!   also reads keepalive back on our own) and
//!   finds dead paths and silent hangs in their `TCP_INFO` ([`tcpinfo`], pure);
//!   [`clocks`] reads the clocks;
//!   [`clockwatch`] measures the offset and watches chronyd; [`sleepwake`] detects suspends
//!   and wall-clock steps; [`tokenwatch`] re-validates the token; [`netwatch`] watches
//!   DNS, resolvers, dependencies and keepalive sysctls; [`disk`] prunes Docker on low disk,
//!   one pruner per engine, aware of every runner's job through the [`fleet`];
//!   [`autoheal`] restarts labelled unhealthy containers; [`docker`] is the engine;
//!   [`offline`] replaces a listener GitHub shows offline; [`keepawake`] keeps the
//!   machine (and Windows under WSL2) awake while a job runs.
//! - [`cause`] (pure) is what a watchdog fire is attributed to, and the commands
//!   monitors send to slots.

pub mod autoheal;
pub mod cause;
pub mod cli;
pub mod clocks;
pub mod clockwatch;
pub mod cmd;
pub mod config;
pub mod connwatch;
pub mod control;
pub mod diagnose;
pub mod disk;
pub mod docker;
pub mod fleet;
pub mod github;
pub mod host;
pub mod intake;
pub mod jobs;
pub mod keepawake;
pub mod layout;
pub mod metrics;
pub mod naming;
pub mod netwatch;
pub mod offline;
pub mod preflight;
pub mod pressure;
pub mod procs;
pub mod runner;
pub mod scaleset;
pub mod sdnotify;
pub mod shutdown;
pub mod sleepwake;
pub mod slot;
pub mod sockets;
pub mod status;
pub mod supervisor;
pub mod tcpinfo;
pub mod telemetry;
pub mod tokenwatch;
pub mod versionwatch;
pub mod watchdog;
