//! The container deployment: `compose/compose.yaml` read and validated by the compose
//! tool, and the whole stack run end to end on a Docker engine this test starts itself
//! (see `support::dockerd`), built from `compose/Dockerfile` without any pull.
//!
//! Stand-ins, all assembled here: the base images (`debian:bookworm-slim` and
//! `rust:1.95-bookworm` are a debootstrap of bookworm minbase, `docker:27-cli` holds this
//! machine's docker CLI), `mongo:7.0` (busybox answering on 27017 and a `mongosh` that
//! answers the health check), the runner tarball (the fake runner as
//! `bin/Runner.Listener`) and the fake GitHub (a service added by an override file).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

mod arc_pod;
mod e2e;
mod jobs;
mod stack;
mod stand_ins;

pub(super) const PROJECT: &str = "rse2e";
pub(super) const T: Duration = Duration::from_secs(120);
/// The runner version of the test tarball (its checksum is the test's own).
pub(super) const RUNNER_VERSION: &str = "2.336.0";
pub(super) const TOKEN: &str = "ghp_simulated_token_0000000000000000000000";

pub(super) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `docker-compose config` of the shipped file with `env`: the resolved YAML.
fn compose_config(env: &[(&str, &str)]) -> Value {
    compose_config_with(&[], env)
}

/// The same, with the shipped override files `extra` on top (`compose/compose.app.yaml`).
fn compose_config_with(extra: &[&str], env: &[(&str, &str)]) -> Value {
    let mut args = vec!["-f", "compose/compose.yaml"];
    for f in extra {
        args.extend(["-f", f]);
    }
    args.push("config");
    let out = Command::new("docker-compose")
        .args(&args)
        .current_dir(repo())
        .env_remove("DOCKER_GID")
        .envs(env.iter().copied())
        .output()
        .expect("docker-compose (apt-get install docker-compose; tests/run does)");
    assert!(
        out.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).expect("YAML");
    serde_json::to_value(yaml).expect("JSON")
}

fn env_of(svc: &Value) -> BTreeMap<String, String> {
    svc["environment"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_string)))
                .collect()
        })
        .unwrap_or_default()
}

fn duration(s: &str) -> Duration {
    runner_supervisor::config::parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn the_shipped_compose_file_validates_and_keeps_its_invariants() {
    let env = [
        ("DOCKER_GID", "998"),
        ("REPO_OWNER", "octo"),
        ("REPO_NAME", "app"),
    ];
    let cfg = compose_config(&env);
    let services = cfg["services"].as_object().expect("services");
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for s in ["runner-1", "runner-2", "mongo", "pruner", "autoheal"] {
        assert!(names.contains(&s), "service {s} in {names:?}");
    }
    // No token in any environment; the runners read it from a compose secret.
    let text = serde_json::to_string(&cfg).unwrap();
    assert!(!text.contains("ghp_") && !text.contains("github_pat_"));
    for (name, svc) in services {
        for k in env_of(svc).keys() {
            let upper = k.to_ascii_uppercase();
            let secret_name =
                upper.contains("TOKEN") || upper == "GITHUB_PAT" || upper.ends_with("_PAT");
            assert!(
                !secret_name || upper.ends_with("_FILE"),
                "{name} has {k} in its environment"
            );
        }
    }
    assert_eq!(
        cfg["secrets"]["github_token"]["file"]
            .as_str()
            .map(|f| f.ends_with("secrets/github_token")),
        Some(true),
        "{}",
        cfg["secrets"]
    );
    let mut prefixes = vec![];
    for r in ["runner-1", "runner-2"] {
        let svc = &services[r];
        let e = env_of(svc);
        assert_eq!(
            e.get("SUPERVISOR_GITHUB_TOKEN_FILE").map(String::as_str),
            Some("/run/secrets/github_token"),
            "{r}"
        );
        assert!(svc["secrets"].to_string().contains("github_token"), "{r}");
        assert_eq!(e.get("SUPERVISOR_SLOTS").map(String::as_str), Some("1"));
        prefixes.push(e["RUNNER_NAME"].clone());
        // A drained job is never SIGKILLed by Docker.
        let drain = duration(&e["SUPERVISOR_RUNNER_DRAIN_TIMEOUT"]);
        let grace = duration(&e["SUPERVISOR_RUNNER_STOP_GRACE"]);
        let period = duration(
            svc["stop_grace_period"]
                .as_str()
                .expect("stop_grace_period"),
        );
        assert!(
            period >= drain + grace,
            "{r}: stop_grace_period {period:?} < drain {drain:?} + grace {grace:?}"
        );
        assert_eq!(
            svc["healthcheck"]["test"],
            json!(["CMD", "supervisor", "health"]),
            "{r}"
        );
        assert_eq!(
            svc["depends_on"]["mongo"]["condition"], "service_healthy",
            "{r}"
        );
        assert!(e["SUPERVISOR_HEALTH_DEPENDENCIES"].contains("mongo:27017"));
        assert_eq!(svc["restart"], "unless-stopped");
        for k in [
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ] {
            assert!(!svc["sysctls"][k].is_null(), "{r} sets {k}");
        }
        let vols = svc["volumes"].to_string();
        assert!(vols.contains(&format!("{r}-state:/var/lib/runner-supervisor")));
        assert!(vols.contains(&format!("{r}-toolcache:/opt/hostedtoolcache")));
        assert!(vols.contains("supervisor-shared:/run/runner-supervisor"));
        // One versions volume for both runners: a release is downloaded once per host.
        assert!(vols.contains("runner-versions:/opt/runner-versions"), "{r}");
        assert_eq!(e["SUPERVISOR_RUNNER_VERSIONS_DIR"], "/opt/runner-versions");
        assert_eq!(
            svc["labels"]["io.github.runner-supervisor.autoheal"], "true",
            "{r} opts in to autoheal"
        );
        assert_eq!(svc["group_add"], json!(["998"]), "{r}: the socket's group");
    }
    assert_ne!(prefixes[0], prefixes[1], "distinct name prefixes");
    let mongo = &services["mongo"];
    assert_eq!(mongo["image"], "mongo:7.0");
    assert!(mongo["volumes"].to_string().contains("mongo-data:/data/db"));
    assert!(!mongo["healthcheck"]["test"].is_null());
    assert!(
        mongo["labels"]["io.github.runner-supervisor.autoheal"].is_null(),
        "mongo is never restarted by autoheal"
    );
    assert_eq!(services["pruner"]["command"], json!(["pruner"]));
    assert_eq!(services["autoheal"]["command"], json!(["autoheal"]));
    for v in [
        "supervisor-shared",
        "runner-1-state",
        "runner-2-state",
        "runner-versions",
        "mongo-data",
    ] {
        assert!(cfg["volumes"].get(v).is_some(), "named volume {v}");
    }

    // Without DOCKER_GID the tool refuses, naming the variable.
    let out = Command::new("docker-compose")
        .args(["-f", "compose/compose.yaml", "config", "-q"])
        .current_dir(repo())
        .env_remove("DOCKER_GID")
        .env("REPO_OWNER", "octo")
        .env("REPO_NAME", "app")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DOCKER_GID"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_metrics_override_adds_prometheus_and_grafana_and_turns_metrics_on() {
    let cfg = compose_config_with(
        &["compose/compose.metrics.yaml"],
        &[
            ("DOCKER_GID", "999"),
            ("REPO_OWNER", "octo"),
            ("REPO_NAME", "app"),
        ],
    );
    let svcs = &cfg["services"];
    for r in ["runner-1", "runner-2"] {
        assert_eq!(
            env_of(&svcs[r])["SUPERVISOR_METRICS_LISTEN"],
            "0.0.0.0:9464"
        );
        assert!(
            svcs[r]["ports"].is_null(),
            "metrics stay on the compose network"
        );
    }
    assert!(svcs["prometheus"]["image"]
        .as_str()
        .unwrap()
        .starts_with("prom/prometheus"));
    assert!(svcs["grafana"]["image"]
        .as_str()
        .unwrap()
        .starts_with("grafana/grafana"));
    // Prometheus scrapes the runners by their service names and the port they listen on.
    let prom = std::fs::read_to_string(repo().join("compose/prometheus.yml")).unwrap();
    assert!(
        prom.contains("\"runner-1:9464\", \"runner-2:9464\""),
        "{prom}"
    );
    // The shipped compose.yaml alone leaves metrics off.
    let plain = compose_config(&[
        ("DOCKER_GID", "999"),
        ("REPO_OWNER", "o"),
        ("REPO_NAME", "r"),
    ]);
    assert!(!env_of(&plain["services"]["runner-1"]).contains_key("SUPERVISOR_METRICS_LISTEN"));
    // The dashboard is valid JSON that Grafana provisions from this path.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("compose/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dash["uid"], "runner-supervisor");
    assert!(dash["panels"].as_array().unwrap().len() >= 12);
    let provider = std::fs::read_to_string(
        repo().join("compose/grafana/provisioning/dashboards/runner-supervisor.yaml"),
    )
    .unwrap();
    assert!(provider.contains("/var/lib/grafana/dashboards"));
}

#[test]
fn the_app_override_swaps_the_token_for_the_apps_key() {
    let cfg = compose_config_with(
        &["compose/compose.app.yaml"],
        &[
            ("DOCKER_GID", "999"),
            ("REPO_OWNER", "octo"),
            ("REPO_NAME", "app"),
            ("GITHUB_APP_ID", "123456"),
        ],
    );
    for r in ["runner-1", "runner-2"] {
        let env = env_of(&cfg["services"][r]);
        assert_eq!(env["SUPERVISOR_GITHUB_APP_ID"], "123456");
        assert_eq!(
            env["SUPERVISOR_GITHUB_APP_PRIVATE_KEY_FILE"],
            "/run/secrets/github_app_key"
        );
        assert_eq!(env["SUPERVISOR_GITHUB_TOKEN_FILE"], "");
        // The supervisor reads those empty values as unset: an App, no token.
        let out = crate::support::cli(&env, &["config"]);
        let text = out.stdout;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(
            text.contains("github.token_file")
                && text
                    .lines()
                    .any(|l| l.starts_with("github.token_file") && l.contains("(unset)")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("github.app_id") && l.contains("123456")),
            "{text}"
        );
    }
    assert_eq!(cfg["secrets"]["github_token"]["file"], "/dev/null");
    // Without GITHUB_APP_ID the tool refuses, naming it.
    let out = Command::new("docker-compose")
        .args([
            "-f",
            "compose/compose.yaml",
            "-f",
            "compose/compose.app.yaml",
            "config",
            "-q",
        ])
        .current_dir(repo())
        .env("DOCKER_GID", "999")
        .env("REPO_OWNER", "octo")
        .env("REPO_NAME", "app")
        .env_remove("GITHUB_APP_ID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GITHUB_APP_ID"));
}
