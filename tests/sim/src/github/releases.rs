//! Runner releases as the fake serves them: the downloads endpoint, and tarballs laid out
//! like the official ones (`bin/Runner.Listener`, `config.sh`, `run.sh` at the top),
//! built from the fake runner at a version (its `bin/sim-version`), with their real
//! SHA-256 (or a wrong one, for the versions the options say).

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::*;

/// This host's architecture as GitHub names it.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "arm" => "arm",
        _ => "x64",
    }
}

fn filename(version: &str) -> String {
    format!("actions-runner-linux-{}-{version}.tar.gz", arch())
}

/// `GET …/actions/runners/downloads`.
pub(super) fn downloads(shared: &Shared) -> Resp {
    let released = shared.lock().released.clone();
    let v = released
        .as_ref()
        .unwrap_or(&shared.opts.latest_runner_version);
    let Some(bin) = &shared.opts.runner_binary else {
        return placeholder_downloads(v);
    };
    let tarball = match tarball(shared, bin, v) {
        Ok(t) => t,
        Err(e) => return basic_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let sha = if shared.opts.bad_checksums.contains(v) {
        format!("{:x}", Sha256::digest(b"not this tarball"))
    } else {
        format!("{:x}", Sha256::digest(&tarball))
    };
    let file = filename(v);
    json_resp(
        StatusCode::OK,
        &json!([{
            "os": "linux",
            "architecture": arch(),
            "filename": file,
            "download_url": format!("{}/actions/runner/releases/download/v{v}/{file}", shared.base_url),
            "sha256_checksum": sha,
        }]),
    )
}

/// `GET /actions/runner/releases/download/v{version}/{file}`.
pub(super) fn serve(shared: &Shared, tag: &str, file: &str) -> Resp {
    let version = tag.trim_start_matches('v');
    let Some(bin) = &shared.opts.runner_binary else {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    };
    if file != filename(version) {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    }
    match tarball(shared, bin, version) {
        Ok(t) => {
            *shared.lock().downloads.entry(file.to_string()).or_default() += 1;
            let mut r = Response::new(Full::new(t));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        Err(e) => basic_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The tarball of `version`, built once.
fn tarball(shared: &Shared, bin: &Path, version: &str) -> std::io::Result<Bytes> {
    if let Some(t) = shared.lock().tarballs.get(version) {
        return Ok(t.clone());
    }
    let broken = shared.opts.broken_releases.get(version).copied();
    let t = Bytes::from(build(bin, version, broken)?);
    shared
        .lock()
        .tarballs
        .insert(version.to_string(), t.clone());
    Ok(t)
}

/// A release tarball: the fake runner installed as the official layout, claiming
/// `version`; with `crash_after_ms`, a broken release whose listener crashes that long
/// after it listens.
pub fn build(
    fake_runner: &Path,
    version: &str,
    crash_after_ms: Option<u64>,
) -> std::io::Result<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!(
        "sim-release-{version}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    crate::fixture::install_runner(&dir, fake_runner)?;
    std::fs::write(dir.join("bin/sim-version"), version)?;
    if let Some(ms) = crash_after_ms {
        std::fs::write(dir.join("bin/sim-crash-after-ms"), ms.to_string())?;
    }
    // Stored, not compressed: a debug build of the fake runner is 80 MB, and compressing
    // it would hold up every other request of the fake for seconds.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    {
        let mut ar = tar::Builder::new(&mut gz);
        ar.follow_symlinks(true);
        ar.append_dir_all(".", &dir)?;
        ar.finish()?;
    }
    gz.flush()?;
    let out = gz.finish()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// The runtime deadlines GitHub's deprecations endpoint returned (reference A8): observed
/// for 2.333.0 to 2.336.0; 2.337.0 modelled on them (about 64 days after the next
/// release, 2.338.0 on 2026-10-06); the newest release has no date yet.
pub fn default_deprecations(
) -> std::collections::BTreeMap<String, Option<chrono::DateTime<chrono::Utc>>> {
    let at = |d: &str| Some(format!("{d}T00:00:00Z").parse().expect("a date"));
    [
        ("2.333.0", at("2026-05-29")),
        ("2.333.1", at("2026-06-30")),
        ("2.334.0", at("2026-08-10")),
        ("2.335.0", at("2026-08-14")),
        ("2.335.1", at("2026-09-24")),
        ("2.336.0", at("2026-11-05")),
        ("2.337.0", at("2026-12-09")),
        ("2.338.0", None),
    ]
    .into_iter()
    .map(|(v, d)| (v.to_string(), d))
    .collect()
}
