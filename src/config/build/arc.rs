//! An actions-runner-controller runner pod: `ACTIONS_RUNNER_INPUT_JITCONFIG` in the
//! environment and no credentials of ours. `run` then starts exactly that one JIT runner
//! (issue 19 §5): it needs no token, no repository or organisation, and one slot; what ARC
//! and its chart put in the `runner` container's environment for the runner is passed on.

use super::Reader;
use crate::config::keys::*;
use crate::config::*;

/// Where ARC puts the runner's JIT config (the runner reads it there itself, A3).
pub const JIT_CONFIG_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

/// What ARC and the `gha-runner-scale-set` chart set in the `runner` container for the
/// runner (scaleset-protocol.md §7), passed on to it in an ARC pod. The deprecated-version
/// switch ARC also sets is every listener's already.
pub const ARC_RUNNER_ENV: &[&str] = &[
    "GITHUB_ACTIONS_RUNNER_EXTRA_USER_AGENT",
    "ACTIONS_RUNNER_CONTAINER_HOOKS",
    "ACTIONS_RUNNER_CONTAINER_HOOK_TEMPLATE",
    "ACTIONS_RUNNER_POD_NAME",
    "ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER",
    "ACTIONS_RUNNER_IMAGE",
    "NODE_EXTRA_CA_CERTS",
    "RUNNER_UPDATE_CA_CERTS",
];

/// The JIT config of an ARC pod: set and not empty, for `run`, with no token, token file
/// or App configured. Set beside credentials it is ignored, with a warning.
pub(super) fn jit_config(
    r: &Reader,
    env: &dyn Env,
    purpose: Purpose,
    warnings: &mut Vec<String>,
) -> Option<Secret> {
    let blob = env.get(JIT_CONFIG_ENV).filter(|v| !v.trim().is_empty())?;
    if purpose != Purpose::Run {
        return None;
    }
    let credentials = r.source(&GITHUB_TOKEN).is_some()
        || r.source(&GITHUB_TOKEN_FILE).is_some()
        || r.source(&GITHUB_APP_ID).is_some();
    if credentials {
        warnings.push(format!(
            "{JIT_CONFIG_ENV} is set, and so are GitHub credentials: the supervisor registers its own runners and ignores it (unset the token or App to run that one JIT runner, as an actions-runner-controller pod)"
        ));
        return None;
    }
    Some(Secret::new(blob.trim()))
}

/// The longest a pod's runner gets between SIGINT and SIGKILL: Kubernetes' default
/// grace is 30 s from SIGTERM to SIGKILL, and ARC sets none of its own.
pub const POD_STOP_GRACE_MAX: std::time::Duration = std::time::Duration::from_secs(20);

/// An ARC pod's runner settings: one slot, a stop that fits the pod's grace, ARC's
/// variables for the runner, and a word on settings that do not apply.
pub(super) fn apply(
    runner: &mut RunnerConfig,
    env: &dyn Env,
    jit: Secret,
    warnings: &mut Vec<String>,
) {
    if runner.mode == RunnerMode::ScaleSet {
        warnings.push(format!(
            "runner.mode = \"scaleset\" does not apply with {JIT_CONFIG_ENV}: actions-runner-controller holds the scale set; this pod runs its one runner"
        ));
    }
    runner.slots = 1;
    runner.stop_grace = runner.stop_grace.min(POD_STOP_GRACE_MAX);
    for name in ARC_RUNNER_ENV {
        if runner.pass_env.contains_key(*name) || runner.env.contains_key(*name) {
            continue;
        }
        if let Some(v) = env.get(name) {
            runner.pass_env.insert(name.to_string(), v);
        }
    }
    runner.jit_config = Some(jit);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::config::{CliInput, Config, Purpose};

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // `run` checks the runner install: any existing directory with an executable
        // `bin/Runner.Listener` is not what these tests are about, so point at one.
        let dir = std::env::temp_dir().join(format!("arc-cfg-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let l = bin.join("Runner.Listener");
        std::fs::write(&l, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&l, std::fs::Permissions::from_mode(0o755)).unwrap();
        m.entry("SUPERVISOR_RUNNER_DIR".into())
            .or_insert(dir.display().to_string());
        m
    }

    fn run(pairs: &[(&str, &str)]) -> Result<Config, crate::config::ConfigErrors> {
        Config::resolve(&env(pairs), &CliInput::default(), Purpose::Run)
    }

    #[test]
    fn a_jit_config_without_credentials_needs_no_token_or_scope() {
        let c = run(&[
            ("ACTIONS_RUNNER_INPUT_JITCONFIG", " eyJibG9iIjoxfQ== \n"),
            ("SUPERVISOR_SLOTS", "4"),
            (
                "GITHUB_ACTIONS_RUNNER_EXTRA_USER_AGENT",
                "actions-runner-controller/0.13.1",
            ),
            (
                "ACTIONS_RUNNER_CONTAINER_HOOKS",
                "/home/runner/k8s/index.js",
            ),
            ("SECRET_OF_THE_POD", "x"),
        ])
        .expect("valid without a token");
        let jit = c.runner.jit_config.as_ref().expect("an ARC pod");
        assert_eq!(jit.expose(), "eyJibG9iIjoxfQ==");
        assert!(
            !format!("{c:?}").contains("eyJibG9iIjoxfQ=="),
            "the JIT config is redacted in Debug"
        );
        assert_eq!(c.runner.slots, 1, "one runner, whatever slots says");
        assert_eq!(
            c.runner.stop_grace.as_secs(),
            20,
            "within the pod's 30 s grace"
        );
        assert!(c.github.token.is_none() && c.github.scope.is_none());
        assert_eq!(
            c.runner
                .pass_env
                .get("GITHUB_ACTIONS_RUNNER_EXTRA_USER_AGENT")
                .map(String::as_str),
            Some("actions-runner-controller/0.13.1")
        );
        assert!(c
            .runner
            .pass_env
            .contains_key("ACTIONS_RUNNER_CONTAINER_HOOKS"));
        assert!(!c.runner.pass_env.contains_key("SECRET_OF_THE_POD"));
        assert!(!c
            .runner
            .pass_env
            .contains_key("ACTIONS_RUNNER_INPUT_JITCONFIG"));
    }

    #[test]
    fn beside_a_token_the_jit_config_is_ignored_with_a_warning() {
        let c = run(&[
            ("ACTIONS_RUNNER_INPUT_JITCONFIG", "eyJibG9iIjoxfQ=="),
            ("GITHUB_PAT", "ghp_x"),
            ("REPO_OWNER", "octo"),
            ("REPO_NAME", "app"),
        ])
        .unwrap();
        assert!(c.runner.jit_config.is_none());
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("ACTIONS_RUNNER_INPUT_JITCONFIG")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn without_either_run_still_asks_for_a_token_and_a_scope() {
        let e = run(&[("ACTIONS_RUNNER_INPUT_JITCONFIG", "  ")]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("github.token") && text.contains("github.owner"),
            "{text}"
        );
        // `config` and `doctor` never run the runner: no ARC pod for them.
        let c = Config::resolve(
            &env(&[
                ("ACTIONS_RUNNER_INPUT_JITCONFIG", "eyJibG9iIjoxfQ=="),
                ("REPO_OWNER", "octo"),
                ("REPO_NAME", "app"),
            ]),
            &CliInput::default(),
            Purpose::Inspect,
        )
        .unwrap();
        assert!(c.runner.jit_config.is_none());
    }
}
