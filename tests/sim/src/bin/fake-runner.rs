//! A stand-in for the official `Runner.Listener`; see `sim::runner`.

fn main() {
    std::process::exit(sim::runner::main());
}
