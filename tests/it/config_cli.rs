//! Configuration through the real binary: precedence, sources, redaction, bad input.

use std::collections::BTreeMap;

use crate::support::{cli, Sandbox};

fn run(args: &[&str], env: &BTreeMap<String, String>) -> (Option<i32>, String, String) {
    let out = cli(env, args);
    (out.code, out.stdout, out.stderr)
}

fn base(sb: &Sandbox) -> BTreeMap<String, String> {
    let mut e = BTreeMap::new();
    e.insert("GITHUB_PAT".into(), "ghp_secretvalue123".into());
    e.insert("REPO_OWNER".into(), "octo".into());
    e.insert("REPO_NAME".into(), "app".into());
    e.insert(
        "SUPERVISOR_RUNNER_DIR".into(),
        sb.install.display().to_string(),
    );
    e.insert(
        "SUPERVISOR_STATE_DIR".into(),
        sb.state.display().to_string(),
    );
    e.insert(
        "SUPERVISOR_GITHUB_API_URL".into(),
        "http://127.0.0.1:9".into(),
    );
    e
}

#[test]
fn config_shows_each_value_with_its_source_and_redacts_secrets() {
    let sb = Sandbox::new();
    let file = sb.dir.path().join("supervisor.toml");
    std::fs::write(
        &file,
        "[runner]\nslots = 2\ndrain_timeout = \"10m\"\nstop_grace = \"20s\"\n",
    )
    .unwrap();
    let mut env = base(&sb);
    env.insert("SUPERVISOR_CONFIG".into(), file.display().to_string());
    env.insert("SUPERVISOR_RUNNER_DRAIN_TIMEOUT".into(), "15m".into());
    let (code, out, err) = run(
        &["config", "--slots", "3", "--set", "runner.update_wait=40s"],
        &env,
    );
    assert_eq!(code, Some(0), "{err}");
    let line = |k: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{k} ")))
            .unwrap_or_else(|| panic!("{k} missing:\n{out}"))
            .to_string()
    };
    assert!(
        line("runner.slots").contains("= 3") && line("runner.slots").contains("flag --slots"),
        "{}",
        line("runner.slots")
    );
    assert!(
        line("runner.drain_timeout").contains("15m")
            && line("runner.drain_timeout").contains("env SUPERVISOR_RUNNER_DRAIN_TIMEOUT")
    );
    assert!(
        line("runner.stop_grace").contains("20s")
            && line("runner.stop_grace").contains("supervisor.toml:4")
    );
    assert!(
        line("runner.update_wait").contains("40s")
            && line("runner.update_wait").contains("flag --set")
    );
    assert!(line("runner.labels").contains("default"));
    assert!(
        line("github.token").contains("<redacted>")
            && line("github.token").contains("env GITHUB_PAT")
    );
    assert!(!out.contains("ghp_secretvalue123") && !err.contains("ghp_secretvalue123"));
}

#[test]
fn example_configuration_is_the_shipped_one() {
    let (code, out, _) = run(&["config", "--example"], &BTreeMap::new());
    assert_eq!(code, Some(0));
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/supervisor.toml"
    ))
    .unwrap();
    assert_eq!(
        out, shipped,
        "config/supervisor.toml is stale: regenerate it with `supervisor config --example`"
    );
}

#[test]
fn token_file_is_read_and_its_newline_stripped() {
    let sb = Sandbox::new();
    let tf = sb.dir.path().join("token");
    std::fs::write(&tf, "ghp_fromfile\n").unwrap();
    let mut env = base(&sb);
    env.remove("GITHUB_PAT");
    env.insert(
        "SUPERVISOR_GITHUB_TOKEN_FILE".into(),
        tf.display().to_string(),
    );
    let cfg = runner_supervisor::config::Config::resolve(
        &env,
        &Default::default(),
        runner_supervisor::config::Purpose::Run,
    )
    .unwrap();
    assert_eq!(cfg.github.token.unwrap().expose(), "ghp_fromfile");
}

/// Each bad input: exit 64, the key named, no panic, and the token never echoed.
#[test]
fn bad_input_exits_64_and_names_the_key() {
    let sb = Sandbox::new();
    let empty_dir = sb.dir.path().join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    type Edit = Box<dyn Fn(&mut BTreeMap<String, String>, &std::path::Path)>;
    let toml = |body: &'static str| -> Edit {
        Box::new(move |e, dir| {
            let f = dir.join("bad.toml");
            std::fs::write(&f, body).unwrap();
            e.insert("SUPERVISOR_CONFIG".into(), f.display().to_string());
        })
    };
    let set = |k: &'static str, v: String| -> Edit {
        Box::new(move |e, _| {
            e.insert(k.into(), v.clone());
        })
    };
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "malformed TOML",
            toml("[runner\nslots = 2\n"),
            vec!["malformed TOML", "line 1, column"],
        ),
        (
            "unknown key",
            toml("[runner]\nslots = 2\nslotz = 3\n"),
            vec!["runner.slotz", "bad.toml:3:1", "unknown key"],
        ),
        (
            "unknown section",
            toml("[runers]\nslots = 2\n"),
            vec!["[runers]", "unknown section"],
        ),
        (
            "wrong type",
            toml("[runner]\nslots = \"two\"\n"),
            vec!["runner.slots", "bad.toml:2:1", "expected an integer"],
        ),
        (
            "wrong type for a duration",
            toml("[runner]\ndrain_timeout = true\n"),
            vec!["runner.drain_timeout", "expected a duration"],
        ),
        (
            "missing token",
            Box::new(|e: &mut BTreeMap<String, String>, _: &std::path::Path| {
                e.remove("GITHUB_PAT");
            }),
            vec!["github.token", "no token"],
        ),
        (
            "unreadable token file",
            Box::new(|e: &mut BTreeMap<String, String>, _: &std::path::Path| {
                e.remove("GITHUB_PAT");
                e.insert(
                    "SUPERVISOR_GITHUB_TOKEN_FILE".into(),
                    "/nonexistent/token".into(),
                );
            }),
            vec!["github.token_file", "/nonexistent/token"],
        ),
        (
            "invalid owner",
            set("REPO_OWNER", "bad owner".into()),
            vec!["github.owner", "not a valid GitHub account name"],
        ),
        (
            "invalid repo",
            set("REPO_NAME", "a/b".into()),
            vec!["github.repo", "not a valid repository name"],
        ),
        (
            "too many labels",
            set(
                "SUPERVISOR_LABELS",
                (0..101)
                    .map(|i| format!("l{i}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            vec!["runner.labels", "at most 100"],
        ),
        (
            "label too long",
            set("SUPERVISOR_LABELS", "x".repeat(257)),
            vec!["runner.labels", "at most 256"],
        ),
        (
            "negative duration",
            set("SUPERVISOR_RUNNER_DRAIN_TIMEOUT", "-5m".into()),
            vec!["runner.drain_timeout", "negative"],
        ),
        (
            "absurd duration",
            set("SUPERVISOR_RUNNER_STOP_GRACE", "300d".into()),
            vec!["runner.stop_grace", "out of range"],
        ),
        (
            "zero slots",
            set("SUPERVISOR_SLOTS", "0".into()),
            vec!["runner.slots", "out of range"],
        ),
        (
            "runner dir without listener",
            set("SUPERVISOR_RUNNER_DIR", empty_dir.display().to_string()),
            vec!["runner.dir", "bin/Runner.Listener"],
        ),
        (
            "unknown SUPERVISOR_ variable",
            set("SUPERVISOR_RUNNER_DRAIN_TIMOUT", "1m".into()),
            vec!["SUPERVISOR_RUNNER_DRAIN_TIMOUT", "unknown"],
        ),
        (
            "token passed to jobs",
            set("SUPERVISOR_RUNNER_PASS_ENV", "GITHUB_PAT".into()),
            vec!["runner.pass_env", "jobs would see it"],
        ),
        (
            "a log level that would silence everything",
            set("SUPERVISOR_LOG_LEVEL", "verbose".into()),
            vec!["log.level", "\"verbose\" is not a level"],
        ),
        (
            "a configuration file that never ends",
            set("SUPERVISOR_CONFIG", "/dev/zero".into()),
            vec!["config file", "/dev/zero", "larger than"],
        ),
        (
            "a token file that never ends",
            Box::new(|e: &mut BTreeMap<String, String>, _: &std::path::Path| {
                e.remove("GITHUB_PAT");
                e.insert("SUPERVISOR_GITHUB_TOKEN_FILE".into(), "/dev/zero".into());
            }),
            vec!["github.token_file", "/dev/zero", "larger than"],
        ),
        (
            "a warning beyond the fault",
            set("SUPERVISOR_CLOCK_WARN_OFFSET", "10m".into()),
            vec!["clock.warn_offset", "larger than clock.fault_offset"],
        ),
        (
            "a misspelt variable gets a suggestion",
            set("SUPERVISOR_RUNNER_DRAIN_TIMOUT", "1m".into()),
            vec!["did you mean SUPERVISOR_RUNNER_DRAIN_TIMEOUT?"],
        ),
        (
            "an autoheal label that no container could carry",
            set("SUPERVISOR_AUTOHEAL_LABEL", "a label=x".into()),
            vec!["autoheal.label", "not a Docker label key"],
        ),
        (
            "a Docker engine over TCP",
            set("SUPERVISOR_DISK_DOCKER_HOST", "tcp://127.0.0.1:2375".into()),
            vec!["disk.docker_host", "must be a Unix socket"],
        ),
        (
            "an empty shared directory",
            set("SUPERVISOR_STATE_SHARED_DIR", String::new()),
            vec!["state.shared_dir", "must not be empty"],
        ),
        (
            "a misspelt key in the file gets a suggestion",
            toml("[runner]\nslot = 2\n"),
            vec!["runner.slot", "did you mean slots?"],
        ),
    ];
    for (what, edit, wants) in cases {
        let mut env = base(&sb);
        edit(&mut env, sb.dir.path());
        let (code, _, err) = run(&["run"], &env);
        assert_eq!(code, Some(64), "{what}: {err}");
        for w in wants {
            assert!(err.contains(w), "{what}: {w:?} not in:\n{err}");
        }
        assert!(
            !err.contains("panicked") && !err.contains("ghp_secretvalue123"),
            "{what}: {err}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let sb = Sandbox::new();
    let mut env = base(&sb);
    env.insert("REPO_OWNER".into(), "-x".into());
    env.insert("SUPERVISOR_SLOTS".into(), "1000".into());
    env.insert("SUPERVISOR_RUNNER_DRAIN_TIMEOUT".into(), "soon".into());
    env.remove("GITHUB_PAT");
    let (code, _, err) = run(&["run"], &env);
    assert_eq!(code, Some(64));
    for k in [
        "github.owner",
        "runner.slots",
        "runner.drain_timeout",
        "github.token",
        "4 problems",
    ] {
        assert!(err.contains(k), "{k} not in {err}");
    }
}

#[test]
fn usage_errors_exit_64() {
    let (code, _, err) = run(&["frobnicate"], &BTreeMap::new());
    assert_eq!(code, Some(64), "{err}");
    let (code, _, err) = run(&["run", "--set", "novalue"], &BTreeMap::new());
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("SECTION.KEY=VALUE"));
}

/// Two environment names for one key with different values: accepted with a warning
/// naming both (the generic name wins), not silently.
#[test]
fn an_alias_conflict_is_warned_about_naming_both_variables() {
    let sb = Sandbox::new();
    let mut env = base(&sb);
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    env.insert("SUPERVISOR_RUNNER_SLOTS".into(), "3".into());
    let (code, out, err) = run(&["config"], &env);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: SUPERVISOR_SLOTS=2 and SUPERVISOR_RUNNER_SLOTS=3 both set runner.slots; SUPERVISOR_RUNNER_SLOTS wins"),
        "{err}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("runner.slots") && l.contains('3')),
        "{out}"
    );
    // A secret's values are never shown, even in the warning.
    env.insert("SUPERVISOR_GITHUB_TOKEN".into(), "ghp_othervalue456".into());
    let (_, _, err) = run(&["config"], &env);
    assert!(
        err.contains("GITHUB_PAT=<redacted> and SUPERVISOR_GITHUB_TOKEN=<redacted>"),
        "{err}"
    );
    assert!(!err.contains("ghp_"), "{err}");
}

/// One rule for a token's surrounding whitespace, wherever it comes from: forgiven.
#[test]
fn a_token_with_a_trailing_newline_is_accepted_from_the_environment_too() {
    let sb = Sandbox::new();
    let mut env = base(&sb);
    env.insert("GITHUB_PAT".into(), "ghp_fromenv\n".into());
    let cfg = runner_supervisor::config::Config::resolve(
        &env,
        &Default::default(),
        runner_supervisor::config::Purpose::Run,
    )
    .unwrap();
    assert_eq!(cfg.github.token.unwrap().expose(), "ghp_fromenv");
    // Whitespace inside a token is still refused.
    env.insert("GITHUB_PAT".into(), "ghp_a b".into());
    let (code, _, err) = run(&["run"], &env);
    assert_eq!(code, Some(64));
    assert!(
        err.contains("github.token") && err.contains("whitespace"),
        "{err}"
    );
}
