//! The runner side: what the listener says ([`events`]), what its exit means ([`exit`]),
//! and the process itself ([`process`]).

pub mod autopilot;
pub mod events;
pub mod exit;
pub mod process;
pub mod store;
pub mod version;
