//! Configuration: defaults < TOML file < environment < CLI flags, validated in one pass.
//!
//! Layout: `keys.rs` declares every key; `value.rs` is what a key and a value are;
//! `source.rs` the layers (one function each) and where each value came from; `file.rs`
//! the TOML file; `build/` the typed config, one function per section; `checks.rs`
//! checks of single values; `types.rs` what the rest of the supervisor reads.
//!
//! Every key is declared once in [`KEYS`]; that table gives its type, default, bounds,
//! environment names and documentation, so the TOML reader, the env reader, the
//! `--set` flag and `supervisor config` can never disagree.
//! Invariant: this is the only module that reads the process environment for settings.
//! It must not: perform network calls or start anything.

use std::collections::BTreeMap;

mod build;
mod checks;
mod example;
mod file;
mod keys;
mod source;
mod types;
mod value;

pub use build::container::{fill_placeholders, PLACEHOLDERS};
pub(crate) use build::*;
pub use checks::*;
pub use example::*;
pub use file::*;
pub use keys::KEYS;
pub use source::*;
pub use types::*;
pub use value::*;

impl Config {
    /// Where installed runner versions live: `[runner] versions_dir`, or
    /// `<state dir>/runners` (a disk that survives a reboot, unlike `[state] shared_dir`).
    pub fn versions_dir(&self) -> std::path::PathBuf {
        self.runner
            .versions_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("runners"))
    }

    /// Resolve defaults, the file, the environment and the flags into a validated config.
    pub fn resolve(
        env: &dyn Env,
        cli: &CliInput,
        purpose: Purpose,
    ) -> Result<Config, ConfigErrors> {
        Self::resolve_counting(env, cli, purpose).0
    }

    /// [`Config::resolve`], and how many times each key was read while building.
    pub(crate) fn resolve_counting(
        env: &dyn Env,
        cli: &CliInput,
        purpose: Purpose,
    ) -> (Result<Config, ConfigErrors>, BTreeMap<&'static str, u32>) {
        let mut errors = Vec::new();
        let mut layered = defaults();
        let file = config_file(env, cli);
        if let Some(path) = &file {
            layer_file(path, &mut layered, &mut errors);
        }
        let warnings = layer_env(env, &mut layered, &mut errors);
        reject_unknown_env(env, &mut errors);
        layer_flags(&cli.sets, &mut layered, &mut errors);
        let (cfg, reads) = build(&layered, env, purpose, file, &mut errors);
        let result = if errors.is_empty() {
            let mut cfg = cfg.expect("no errors means a config");
            // The environment's warnings first, then the build's.
            cfg.warnings.splice(0..0, warnings);
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        };
        (result, reads)
    }
}

/// This machine's host part of runner names (`policy::naming::host_part` of its hostname),
/// the default in names the configuration derives.
pub fn this_host() -> String {
    let h = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    crate::policy::naming::host_part(&h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every declared key is read exactly once while building (a forgotten key is read
    /// zero times, a key read in two places could disagree with itself), and appears in
    /// the shipped example with its default.
    #[test]
    fn every_key_is_consumed_exactly_once_and_shipped_with_its_default() {
        let e = env(&[
            ("GITHUB_PAT", "ghp_x"),
            ("REPO_OWNER", "octo"),
            ("REPO_NAME", "app"),
        ]);
        let (cfg, reads) = Config::resolve_counting(&e, &CliInput::default(), Purpose::Inspect);
        cfg.unwrap();
        for k in KEYS {
            assert_eq!(
                reads.get(k.dotted()).copied(),
                Some(1),
                "{} was read {:?} times",
                k.dotted(),
                reads.get(k.dotted())
            );
        }
        assert_eq!(reads.len(), KEYS.len(), "{reads:?}");
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/supervisor.toml"
        ))
        .unwrap();
        for k in KEYS {
            // The key's line, with its default, inside its own section.
            let block = shipped
                .split(&format!("\n[{}]\n", k.section))
                .nth(1)
                .and_then(|rest| rest.split("\n[").next())
                .unwrap_or_else(|| panic!("no [{}] in config/supervisor.toml", k.section));
            let line = example::example_line(k);
            assert!(
                block.lines().any(|l| l == line),
                "config/supervisor.toml [{}] lacks {line:?}",
                k.section
            );
        }
    }
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("GITHUB_PAT", "ghp_x"),
            ("REPO_OWNER", "octo"),
            ("REPO_NAME", "app"),
        ]
    }

    fn resolve(pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        Config::resolve(&env(pairs), &CliInput::default(), Purpose::Inspect)
    }

    #[test]
    fn metrics_listen_and_the_control_socket() {
        let c = resolve(&base()).unwrap();
        assert_eq!(c.control.metrics_listen, None, "off by default");
        assert!(c.control.socket.ends_with("control.sock"));
        for (v, want) in [
            ("127.0.0.1:9464", "127.0.0.1:9464"),
            ("[::1]:9464", "[::1]:9464"),
            ("", ""),
        ] {
            let mut p = base();
            p.push(("SUPERVISOR_METRICS_LISTEN", v));
            let got = resolve(&p)
                .unwrap()
                .control
                .metrics_listen
                .map(|a| a.to_string());
            assert_eq!(got.unwrap_or_default(), want);
        }
        let mut p = base();
        p.push(("SUPERVISOR_METRICS_LISTEN", "9464"));
        let e = resolve(&p).unwrap_err().to_string();
        assert!(
            e.contains("metrics.listen") && e.contains("SUPERVISOR_METRICS_LISTEN"),
            "{e}"
        );
    }

    #[test]
    fn ghostrunner_names_work() {
        let mut p = base();
        p.extend([
            ("RUNNER_NAME", "ci"),
            ("SESSION_CONFLICT_WAIT", "45"),
            ("WATCHDOG_MAX_FIRES", "7"),
        ]);
        let c = resolve(&p).unwrap();
        assert_eq!(c.github.token.unwrap().expose(), "ghp_x");
        assert_eq!(
            c.github.scope,
            Some(Scope::Repo {
                owner: "octo".into(),
                repo: "app".into()
            })
        );
        assert_eq!(c.runner.name_prefix, "ci");
        assert_eq!(c.runner.session_conflict_wait, Duration::from_secs(45));
        assert_eq!(c.watchdog.max_fires, 7);
    }

    #[test]
    fn generic_env_names_and_durations() {
        let mut p = base();
        p.extend([
            ("SUPERVISOR_RUNNER_DRAIN_TIMEOUT", "15m"),
            ("SUPERVISOR_RUNNER_STOP_GRACE", "90s"),
            ("SUPERVISOR_SLOTS", "3"),
            ("SUPERVISOR_LABELS", "a, b,c"),
            ("SUPERVISOR_STATE_DIR", "/tmp/x"),
        ]);
        let c = resolve(&p).unwrap();
        assert_eq!(c.runner.drain_timeout, Duration::from_secs(900));
        assert_eq!(c.runner.stop_grace, Duration::from_secs(90));
        assert_eq!(c.runner.slots, 3);
        assert_eq!(c.runner.labels, vec!["a", "b", "c"]);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn errors_are_collected_and_named() {
        let e = resolve(&[
            ("REPO_OWNER", "-bad"),
            ("REPO_NAME", "a/b"),
            ("SUPERVISOR_RUNNER_DRAIN_TIMEOUT", "-5s"),
            ("SUPERVISOR_RUNNER_STOP_GRACE", "100y"),
            ("SUPERVISOR_SLOTS", "0"),
        ])
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "github.owner",
            "github.repo",
            "runner.drain_timeout",
            "runner.stop_grace",
            "runner.slots",
        ] {
            assert!(keys.contains(&k), "{k} missing from {e}");
        }
    }

    #[test]
    fn org_excludes_repo() {
        let e = resolve(&[
            ("GITHUB_PAT", "x"),
            ("REPO_OWNER", "o"),
            ("REPO_NAME", "r"),
            ("SUPERVISOR_GITHUB_ORG", "o"),
        ])
        .unwrap_err();
        assert_eq!(e.0[0].key, "github.org");
        let c = resolve(&[("GITHUB_PAT", "x"), ("SUPERVISOR_GITHUB_ORG", "acme")]).unwrap();
        assert_eq!(c.github.scope.unwrap().api_path(), "/orgs/acme");
    }

    #[test]
    fn labels_limits() {
        assert!(check_labels(&["a".into()]).is_ok());
        assert!(check_labels(&[]).is_err());
        assert!(check_labels(&(0..101).map(|i| i.to_string()).collect::<Vec<_>>()).is_err());
        assert!(check_labels(&["x".repeat(257)]).is_err());
        assert!(check_labels(&["x".repeat(256)]).is_ok());
        assert!(check_labels(&["A".into(), "a".into()]).is_err());
    }

    #[test]
    fn unknown_supervisor_env_is_rejected() {
        let mut p = base();
        p.push(("SUPERVISOR_RUNNER_DRAIN_TIMOUT", "1m"));
        let e = resolve(&p).unwrap_err();
        assert_eq!(e.0[0].key, "SUPERVISOR_RUNNER_DRAIN_TIMOUT");
    }

    #[test]
    fn web_url_derivation() {
        assert_eq!(
            derive_web_url("https://api.github.com"),
            "https://github.com"
        );
        assert_eq!(
            derive_web_url("https://ghe.example/api/v3"),
            "https://ghe.example"
        );
        assert_eq!(
            derive_web_url("http://127.0.0.1:9/api/v3"),
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(6 * 3600));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn example_covers_every_key_and_parses() {
        let text = example_toml();
        for k in KEYS {
            assert!(text.contains(&format!("{} =", k.key)), "{}", k.dotted());
        }
        let mut l = BTreeMap::new();
        let mut errors = vec![];
        read_file(Path::new("example.toml"), &text, &mut l, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }
}
