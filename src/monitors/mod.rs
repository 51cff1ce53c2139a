//! The host monitors. Each watches one thing and is a sibling of the others: none imports
//! another monitor, a slot or the supervisor; they tell the slots through
//! [`crate::status::host`] (shared state and triggers) and [`crate::status::Board`].
//!
//! - [`clockwatch`]: the clock's offset, chronyd; [`sleepwake`]: suspends and wall-clock
//!   steps.
//! - [`tokenwatch`]: the token re-validated; [`versionwatch`]: newer runner releases.
//! - [`netwatch`]: DNS, resolvers, dependencies, keepalive sysctls; [`connwatch`]:
//!   keepalive on the listeners' own connections and what their `TCP_INFO` says.
//! - [`offline`]: a listener GitHub shows offline; [`pressure`]: memory pressure;
//!   [`intake`]: whether the host takes jobs now (battery, quiet hours); [`keepawake`]:
//!   the machine (and Windows under WSL2) kept awake while a job runs.
//!
//! A new monitor goes here, as a file or folder of its own, started by
//! `supervisor::spawn_host_monitors` (or beside it).

pub mod clockwatch;
pub mod connwatch;
pub mod intake;
pub mod keepawake;
pub mod netwatch;
pub mod offline;
pub mod pressure;
pub mod sleepwake;
pub mod tokenwatch;
pub mod versionwatch;
