//! Operating-system plumbing: the clocks ([`clocks`]), child processes and orphans
//! ([`procs`]), signals turned into modes ([`shutdown`]), sockets, keepalive and who owns
//! a connection ([`sockets`]), the state directory and atomic writes ([`layout`]), and the
//! log's set-up ([`telemetry`]). It decides nothing: it imports only `policy` (the words),
//! never the configuration or anything above.

pub mod clocks;
pub mod layout;
pub mod procs;
pub mod shutdown;
pub mod sockets;
pub mod telemetry;
