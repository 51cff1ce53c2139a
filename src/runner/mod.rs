//! The runner: how one is started ([`launch`]), its versions ([`version`]), the versions
//! store ([`store`]) and the autopilot that chooses which version each slot runs
//! ([`autopilot`]). What the listener says and what its exit means are pure, in
//! `policy::events` and `policy::exit`.

pub mod actions;
pub mod autopilot;
pub mod launch;
pub mod store;
pub mod version;
