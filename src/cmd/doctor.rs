//! `supervisor doctor`: diagnose the host and the token; say how to fix each problem.

use std::process::ExitCode;

use crate::config::{CliInput, Purpose};
use crate::github::GithubClient;
use crate::preflight::{self, Check, Level};

/// Run every check and print the results.
pub fn main(input: CliInput, json: bool) -> ExitCode {
    let _ = json;
    let cfg = match super::resolve(&input, Purpose::Inspect) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut checks: Vec<Check> = preflight::check_local(&cfg);
    match cfg.github.token.clone() {
        None => checks.push(Check {
            name: "token",
            level: Level::Fail,
            detail: "no token configured".into(),
            fix: Some("set GITHUB_PAT or github.token_file".into()),
        }),
        Some(token) => {
            let rt = match super::runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            rt.block_on(async {
                match GithubClient::new(&cfg, token) {
                    Ok(gh) => {
                        let (c, _) = preflight::check_token(
                            &gh,
                            cfg.token.expiry_warning,
                            crate::clocks::wall_now(),
                        )
                        .await;
                        checks.extend(c);
                        checks.extend(preflight::check_clock(&gh, &cfg.clock));
                        checks.extend(preflight::check_time(&cfg).await);
                    }
                    Err(e) => checks.push(Check {
                        name: "http client",
                        level: Level::Fail,
                        detail: e.to_string(),
                        fix: None,
                    }),
                }
            });
        }
    }
    let mut worst = Level::Ok;
    for c in &checks {
        let mark = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("[{mark}] {:<14} {}", c.name, c.detail);
        if let Some(f) = &c.fix {
            println!("       fix: {f}");
        }
        worst = worst.max(c.level);
    }
    if worst == Level::Fail {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
