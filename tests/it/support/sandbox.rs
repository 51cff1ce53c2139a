//! The sandbox: a fake runner install and a state directory in a temporary directory,
//! the environment that points a supervisor at them, and what the supervisor writes there.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use runner_supervisor::status::StatusFile;
use sim::github::FakeGithub;

/// The supervisor binary under test.
pub fn supervisor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_supervisor"))
}

/// A binary of the sim crate, built beside the supervisor by `cargo test --workspace`.
pub fn sim_bin(name: &str) -> PathBuf {
    let p = sim::fixture::sibling_binary(&supervisor_bin(), name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// A temporary runner install and state directory.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub install: PathBuf,
    pub state: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let install = dir.path().join("actions-runner");
        sim::fixture::install_runner(&install, &sim_bin("fake-runner"))
            .expect("install fake runner");
        let state = dir.path().join("state");
        Sandbox {
            dir,
            install,
            state,
        }
    }

    /// The environment for a supervisor against `gh`.
    pub fn env(&self, gh: &FakeGithub) -> BTreeMap<String, String> {
        let mut e: BTreeMap<String, String> =
            sim::fixture::supervisor_env(&gh.url(), "ci", &self.install, &self.state)
                .into_iter()
                .collect();
        e.remove("PATH");
        for (k, v) in [
            ("SUPERVISOR_RUNNER_STOP_GRACE", "5s"),
            ("SUPERVISOR_GITHUB_BACKOFF_BASE", "50ms"),
            ("SUPERVISOR_LOG", "info"),
            // Typed events: tests wait on `event` names, never on wording.
            ("SUPERVISOR_LOG_FORMAT", "json"),
        ] {
            e.insert(k.to_string(), v.to_string());
        }
        e
    }

    /// The `status.json` the supervisor writes (what `health` reads), typed; `None` while
    /// it is missing or half written.
    pub fn status(&self) -> Option<StatusFile> {
        read_status(&self.state)
    }

    /// Wait until `status.json` satisfies `cond`; returns it (panics with the last one).
    pub async fn wait_status(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&StatusFile) -> bool,
    ) -> StatusFile {
        let mut last = None;
        let ok = super::eventually(timeout, || {
            last = self.status();
            last.as_ref().is_some_and(&mut cond)
        })
        .await;
        assert!(ok, "status.json never matched; last: {last:#?}");
        last.unwrap()
    }

    /// Slot `n`'s runner root.
    pub fn slot_root(&self, n: usize) -> PathBuf {
        self.state.join("slots").join(n.to_string())
    }
}

/// The runner name pattern: `<prefix>-<host>-<slot>-<6 chars>`.
pub fn looks_like_jit_name(name: &str, prefix: &str, slot: usize) -> bool {
    let host = runner_supervisor::config::this_host();
    name.starts_with(&format!("{prefix}-{host}-{slot}-"))
        && runner_supervisor::policy::naming::is_ours(name, prefix, &host)
}

/// Insert `K=V,K=V` pairs into `env`.
pub fn apply(env: &mut BTreeMap<String, String>, kvs: &str) {
    for kv in kvs.split(',') {
        let (k, v) = kv.split_once('=').unwrap();
        env.insert(k.into(), v.into());
    }
}

/// Run a command as nobody: `setpriv` with uid and gid 65534 and no groups.
pub const NOBODY: [&str; 5] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--",
];

/// Give `env` a state directory nobody owns, in a sandbox nobody can enter.
pub fn as_nobody(sb: &Sandbox, env: &mut BTreeMap<String, String>) {
    use std::os::unix::fs::PermissionsExt;
    let state = sb.dir.path().join("nobody-state");
    std::fs::create_dir_all(&state).unwrap();
    nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.insert("SUPERVISOR_STATE_DIR".into(), state.display().to_string());
}

/// The typed `status.json` in a state directory.
pub fn read_status(state: &std::path::Path) -> Option<StatusFile> {
    serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()
}

/// The common prelude: a sandbox, a fake GitHub started with `f` applied to its default
/// options, and the environment for a supervisor against both.
pub async fn setup(
    f: impl FnOnce(&mut sim::github::Options),
) -> (Sandbox, FakeGithub, BTreeMap<String, String>) {
    let sb = Sandbox::new();
    let gh = super::github(f).await;
    let env = sb.env(&gh);
    (sb, gh, env)
}
