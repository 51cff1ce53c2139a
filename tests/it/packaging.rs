//! What ships beside the binary: the systemd unit.

use std::time::Duration;

use runner_supervisor::config::{CliInput, Config, Purpose};

const UNIT: &str = include_str!("../../systemd/runner-supervisor.service");

fn directive<'a>(key: &str) -> Vec<&'a str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .collect()
}

#[test]
fn the_systemd_unit_verifies_and_lets_a_drain_finish() {
    // systemd-analyze checks the unit as systemd would load it; point it at the built binary
    // and an existing user, since this machine has no /usr/local/bin/supervisor or `runner`.
    let t = tempfile::tempdir().unwrap();
    let unit = UNIT
        .replace(
            "ExecStart=/usr/local/bin/supervisor",
            &format!("ExecStart={}", crate::support::supervisor_bin().display()),
        )
        .replace("User=runner", "User=root")
        .replace("Group=runner", "Group=root");
    let path = t.path().join("runner-supervisor.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd; tests/run does)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze: {err}"
    );

    // Only the supervisor gets SIGTERM: it drains and stops its listeners itself.
    assert_eq!(directive("KillMode"), ["mixed"]);
    assert_eq!(directive("KillSignal"), ["SIGTERM"]);
    // The stop timeout outlasts the default drain plus the SIGINT grace.
    let env: std::collections::BTreeMap<String, String> = [("REPO_OWNER", "o"), ("REPO_NAME", "r")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
    let cfg = Config::resolve(&env, &CliInput::default(), Purpose::Inspect).unwrap();
    let stop = humantime::parse_duration(directive("TimeoutStopSec")[0]).unwrap();
    assert!(
        stop >= cfg.runner.drain_timeout + cfg.runner.stop_grace + Duration::from_secs(30),
        "TimeoutStopSec {stop:?}"
    );
    // A configuration error is not fixed by restarting.
    assert_eq!(
        directive("RestartPreventExitStatus"),
        [runner_supervisor::cli::cmd::EXIT_CONFIG
            .to_string()
            .as_str()]
    );
    // The token comes as a credential file, never through the environment.
    assert!(directive("LoadCredential")[0].starts_with("github_pat:"));
    assert!(directive("Environment").contains(&"SUPERVISOR_GITHUB_TOKEN_FILE=%d/github_pat"));
    assert!(directive("Environment")
        .iter()
        .all(|e| !e.starts_with("GITHUB_PAT")));
}
