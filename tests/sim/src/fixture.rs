//! Lays out a runner install directory whose `bin/Runner.Listener` is the fake runner.
//!
//! It must not: touch anything outside the directory it is given.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the workspace's binaries are, given any binary built in the same target dir.
pub fn sibling_binary(anchor: &Path, name: &str) -> PathBuf {
    anchor
        .parent()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The fake runner built beside `supervisor`; exits with a hint when it is not built.
pub fn fake_runner_beside(supervisor: &Path) -> PathBuf {
    let p = sibling_binary(supervisor, "fake-runner");
    if !p.exists() {
        eprintln!(
            "fake-runner is not built beside {}: run `cargo build --release --workspace` first",
            supervisor.display()
        );
        std::process::exit(2);
    }
    p
}

/// The environment for a `supervisor` against a fake GitHub at `api_url`: the simulated
/// token, repository `octo/app`, runner names `<prefix>-...`, the given directories, and
/// no clock sources beyond the fake's `Date` header.
pub fn supervisor_env(
    api_url: &str,
    prefix: &str,
    install: &Path,
    state: &Path,
) -> Vec<(String, String)> {
    [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("GITHUB_PAT", crate::github::Options::default().token),
        ("REPO_OWNER", "octo".into()),
        ("REPO_NAME", "app".into()),
        ("RUNNER_NAME", prefix.into()),
        ("SUPERVISOR_GITHUB_API_URL", api_url.into()),
        ("SUPERVISOR_RUNNER_DIR", install.display().to_string()),
        ("SUPERVISOR_STATE_DIR", state.display().to_string()),
        // The fleet directory is the machine's (/run/runner-supervisor) unless told otherwise.
        (
            "SUPERVISOR_STATE_SHARED_DIR",
            state.join("shared").display().to_string(),
        ),
        // Never reach public NTP servers from a test or the demo; tests add a loopback chronyd.
        ("SUPERVISOR_CLOCK_NTP_SERVERS", String::new()),
        ("SUPERVISOR_CLOCK_CHRONYC", "off".into()),
        // The machine's own sysctls are not a test's to change (a test opts in, in a netns).
        ("SUPERVISOR_NETWORK_SET_SYSCTLS", "off".into()),
        // Nor is the machine's Docker (a test opts in with its own dockerd).
        ("SUPERVISOR_DISK_PRUNE", "off".into()),
        // Nor its logind (the system bus) or, under WSL2, Windows' sleep: tests opt in
        // against a private dbus-daemon and a fake powershell.exe (tests/it/keepawake.rs).
        ("SUPERVISOR_HOST_INHIBIT", "off".into()),
        ("SUPERVISOR_HOST_WINDOWS_KEEP_AWAKE", "off".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Create `dir` as a runner install: `bin/Runner.Listener` (the fake runner, hard-linked
/// or copied), and `config.sh` / `run.sh` that call it as the real scripts do.
pub fn install_runner(dir: &Path, fake_runner: &Path) -> io::Result<()> {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    let listener = bin.join("Runner.Listener");
    let _ = fs::remove_file(&listener);
    if fs::hard_link(fake_runner, &listener).is_err() {
        fs::copy(fake_runner, &listener)?;
    }
    fs::set_permissions(&listener, fs::Permissions::from_mode(0o755))?;
    // The job's process, as the real runner has it (`Runner.Worker spawnclient …`).
    let worker = bin.join("Runner.Worker");
    let _ = fs::remove_file(&worker);
    if fs::hard_link(fake_runner, &worker).is_err() {
        fs::copy(fake_runner, &worker)?;
    }
    fs::set_permissions(&worker, fs::Permissions::from_mode(0o755))?;
    write_script(
        &dir.join("config.sh"),
        "#!/bin/bash\n# Stand-in for the runner's config.sh.\ncd \"$(dirname \"$0\")\"\nexec ./bin/Runner.Listener configure \"$@\"\n",
    )?;
    write_script(
        &dir.join("run.sh"),
        "#!/bin/bash\ncd \"$(dirname \"$0\")\"\nexec ./bin/Runner.Listener run \"$@\"\n",
    )?;
    Ok(())
}

fn write_script(path: &Path, body: &str) -> io::Result<()> {
    fs::write(path, body)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}
