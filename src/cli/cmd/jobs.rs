//! `supervisor jobs`: the job records, from the running supervisor (`GET /v1/jobs`) or,
//! when none runs, from `<state dir>/jobs.redb`; and `supervisor hook`, which the
//! runner's job hooks run.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{CliInput, Purpose};
use crate::jobs::hooks::{self, Hook};
use crate::jobs::{JobRecord, Outcome};

/// Print the records; exit 1 when they cannot be read.
pub fn main(input: CliInput, json: bool, lost: bool) -> ExitCode {
    let cfg = match super::resolve(&input, Purpose::Inspect) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let target = if lost { "/v1/jobs?lost" } else { "/v1/jobs" };
    let records = match crate::status::control::request(&cfg.control.socket, "GET", target) {
        Ok((200, body)) => serde_json::from_str::<Vec<JobRecord>>(&body)
            .map_err(|e| format!("the running supervisor's job records do not parse: {e}")),
        Ok((code, body)) => Err(format!(
            "the running supervisor answered {code}: {}",
            body.trim()
        )),
        // None runs: the file, read here.
        Err(crate::status::control::ClientError::NotRunning { .. }) => {
            let path = cfg.state_dir.join("jobs.redb");
            if !path.exists() {
                Ok(vec![])
            } else {
                crate::jobs::store::JobStore::open(&path, cfg.jobs.keep, cfg.jobs.keep_for)
                    .and_then(|s| s.list(lost))
                    .map_err(|e| e.to_string())
            }
        }
        Err(e) => Err(e.to_string()),
    };
    let records = match records {
        Ok(r) => r,
        Err(e) => {
            eprintln!("supervisor: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).unwrap_or_default()
        );
    } else {
        print!("{}", table(&records));
    }
    ExitCode::SUCCESS
}

/// The records as a table, newest first.
pub fn table(records: &[JobRecord]) -> String {
    if records.is_empty() {
        return "no job records\n".into();
    }
    let mut out = format!(
        "{:<5} {:<4} {:<20} {:<22} {:<24} {:<16} {:>9}  {}\n",
        "ID", "SLOT", "STARTED", "REPOSITORY", "WORKFLOW / JOB", "RUN", "DURATION", "RESULT"
    );
    for r in records.iter().rev() {
        let (repo, what, run) = match &r.identity {
            Some(i) => (
                i.repository.clone(),
                format!("{} / {}", i.workflow, i.job),
                format!("{} #{}", i.run_id, i.run_attempt),
            ),
            None => ("-".into(), r.display_name.clone(), "-".into()),
        };
        let result = match &r.outcome {
            Outcome::Running => "running".to_string(),
            Outcome::Done { result } => result.clone(),
            Outcome::Lost { cause, action } => format!("LOST ({cause}; {action})"),
        };
        let dur = r
            .duration_s()
            .map(|d| format!("{d:.1}s"))
            .unwrap_or_else(|| "-".into());
        out += &format!(
            "{:<5} {:<4} {:<20} {:<22} {:<24} {:<16} {:>9}  {}\n",
            r.id,
            r.slot,
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            repo,
            what,
            run,
            dur,
            result
        );
    }
    out
}

/// The hook: report the job and exit 0, whatever happens; one line in the job's log when
/// the supervisor did not take it.
pub fn hook(which: &str, socket: &Path) -> ExitCode {
    let hook = if which == "job-completed" {
        Hook::Completed
    } else {
        Hook::Started
    };
    let id = hooks::identity_from_env(|k| std::env::var(k).ok());
    if let Err(why) = hooks::report(socket, hook, &id) {
        println!(
            "runner-supervisor: the supervisor did not take this job's report ({why}); the job goes on"
        );
    }
    ExitCode::SUCCESS
}
