//! Operating-system plumbing: the clocks ([`clocks`]), the thread that writes files
//! ([`files`]), child processes and orphans
//! ([`procs`]), signals turned into modes ([`shutdown`]), sockets, keepalive and who owns
//! a connection ([`sockets`]), the state directory and atomic writes ([`layout`]), memory
//! given back once the host is quiet ([`memory`]), and the log's set-up ([`telemetry`]). It decides nothing: it imports only `policy` (the words),
//! never the configuration or anything above.

pub mod clocks;
pub mod files;
pub mod layout;
pub mod memory;
pub mod procs;
pub mod shutdown;
pub mod sockets;
pub mod telemetry;
