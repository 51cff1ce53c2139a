//! Test doubles for runner-supervisor: a fake GitHub API ([`github`]) and a fake
//! `Runner.Listener` ([`runner`]), plus [`fixture`] helpers that lay out a runner directory.
//!
//! Both doubles follow `src/runner/protocol.md` (the project's account of the runner and the API) to the byte: strings,
//! streams, exit codes, status codes, headers and JSON shapes.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod fixture;
pub mod github;
pub mod hooks;
pub mod longpoll;
pub mod protocol;
pub mod runner;
