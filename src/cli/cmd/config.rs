//! `supervisor config`: the resolved configuration, each value with its source.

use std::process::ExitCode;

use crate::config::{example_toml, CliInput, Purpose};

/// Print the configuration (or the example).
pub fn main(input: CliInput, example: bool) -> ExitCode {
    if example {
        print!("{}", example_toml());
        return ExitCode::SUCCESS;
    }
    let cfg = match super::resolve(&input, Purpose::Inspect) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(f) = &cfg.file {
        println!("# file: {}", f.display());
    }
    let width = cfg.entries.iter().map(|e| e.key.len()).max().unwrap_or(0);
    for e in &cfg.entries {
        println!("{:width$} = {:<40} # {}", e.key, e.value, e.source);
    }
    if cfg.runner.mode == crate::config::RunnerMode::ScaleSet {
        println!(
            "# scale-set mode: scale set {}; {}",
            cfg.scaleset.name,
            crate::cli::diagnose::runs_on_advice(&cfg.scaleset.name)
        );
    }
    ExitCode::SUCCESS
}
