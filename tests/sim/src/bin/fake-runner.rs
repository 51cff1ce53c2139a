//! A stand-in for the official `Runner.Listener`; see `sim::runner`.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

fn main() {
    std::process::exit(sim::runner::main());
}
