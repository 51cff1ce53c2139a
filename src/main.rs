//! `supervisor`: see the README. All logic lives in the library.

fn main() -> std::process::ExitCode {
    runner_supervisor::cli::cmd::main()
}
