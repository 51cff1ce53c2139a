//! `[container]`: the job containers of `[runner] backend = "container"`. Every value is
//! checked here, so a bad one stops `run` with the key that holds it (exit 64).

use std::path::Path;

use super::super::keys::*;
use super::super::{ContainerConfig, Env, JobDocker, Key, VolumeSpec};
use super::{check_env_name, Problems, Reader};

/// The placeholders `[container] env` values may hold.
pub const PLACEHOLDERS: &[&str] = &[
    "runner_name",
    "slot",
    "repo_owner",
    "repo_name",
    "org",
    "hostname",
];

pub(super) fn container(
    r: &Reader,
    env: &dyn Env,
    state_dir: &Path,
    p: &mut Problems,
) -> ContainerConfig {
    let image = r.get(&CONTAINER_IMAGE);
    if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
        p.add(
            CONTAINER_IMAGE.name(),
            format!("{image:?} is not an image reference (name[:tag] or name@digest)"),
        );
    }
    let docker_host = r
        .get(&CONTAINER_DOCKER_HOST)
        .or_else(|| env.get("DOCKER_HOST").filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    if let Err(m) = check_engine_url(&docker_host) {
        p.add(CONTAINER_DOCKER_HOST.name(), m);
    }
    let network = r.get(&CONTAINER_NETWORK);
    if let Some(n) = &network {
        if !valid_name(n) {
            p.add(
                CONTAINER_NETWORK.name(),
                format!("{n:?} is not a network name (letters, digits, '_', '.', '-'), nor host"),
            );
        }
    }
    let mut size = |key: &Key<Option<String>>| {
        let v = r.get(key)?;
        match parse_size(&v) {
            Ok(n) => Some(n),
            Err(m) => {
                p.add(key.name(), m);
                None
            }
        }
    };
    let memory = size(&CONTAINER_MEMORY);
    let shm_size = size(&CONTAINER_SHM_SIZE);
    if let Some(m) = memory {
        if m < 6 * 1024 * 1024 {
            p.add(
                CONTAINER_MEMORY.name(),
                "must be at least 6m (the engine's own minimum)".into(),
            );
        }
    }
    let nano_cpus = r.get(&CONTAINER_CPUS).and_then(|v| match parse_cpus(&v) {
        Ok(n) => Some(n),
        Err(m) => {
            p.add(CONTAINER_CPUS.name(), m);
            None
        }
    });
    let mut volumes = vec![];
    for v in r.get(&CONTAINER_VOLUMES).unwrap_or_default() {
        match parse_volume(&v) {
            Ok(s) => volumes.push(s),
            Err(m) => p.add(CONTAINER_VOLUMES.name(), m),
        }
    }
    let cenv = r.get(&CONTAINER_ENV).unwrap_or_default();
    for (name, value) in &cenv {
        if let Err(m) = check_env_name(name) {
            p.add(CONTAINER_ENV.name(), m);
        }
        if let Err(m) = check_placeholders(value) {
            p.add(CONTAINER_ENV.name(), format!("{name}: {m}"));
        }
    }
    let user = r.get(&CONTAINER_USER);
    if let Some(u) = &user {
        if u.is_empty() || u.chars().any(|c| c.is_whitespace() || c == '/') {
            p.add(
                CONTAINER_USER.name(),
                format!("{u:?} is not a user (uid[:gid] or name[:group])"),
            );
        }
    }
    let docker = match r.get(&CONTAINER_DOCKER).as_str() {
        "none" => JobDocker::None,
        "host" => JobDocker::Host,
        url => match check_engine_url(url) {
            Ok(()) => JobDocker::Url(url.to_string()),
            Err(m) => {
                p.add(
                    CONTAINER_DOCKER.name(),
                    format!("must be none, host or an engine URL: {m}"),
                );
                JobDocker::None
            }
        },
    };
    let tool_cache = r
        .get(&CONTAINER_TOOL_CACHE)
        .unwrap_or_else(|| state_dir.join("toolcache"));
    ContainerConfig {
        image,
        docker_host,
        network,
        memory,
        nano_cpus,
        pids_limit: r.get(&CONTAINER_PIDS_LIMIT).map(|n| n as i64),
        shm_size,
        volumes,
        env: cenv,
        user,
        docker,
        tool_cache,
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// `unix:///path` or `tcp://host:port`.
pub(crate) fn check_engine_url(url: &str) -> Result<(), String> {
    if let Some(path) = url.strip_prefix("unix://") {
        if path.starts_with('/') && path.len() > 1 {
            return Ok(());
        }
        return Err(format!(
            "{url:?}: a unix socket URL needs an absolute path (unix:///var/run/docker.sock)"
        ));
    }
    if let Some(rest) = url
        .strip_prefix("tcp://")
        .or_else(|| url.strip_prefix("http://"))
    {
        let hostport = rest.trim_end_matches('/');
        if let Some((h, port)) = hostport.rsplit_once(':') {
            if !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) {
                return Ok(());
            }
        }
        return Err(format!(
            "{url:?}: a TCP URL needs a host and a port (tcp://127.0.0.1:2375)"
        ));
    }
    Err(format!(
        "{url:?} is not an engine URL (unix:///path or tcp://host:port)"
    ))
}

/// `512m`, `4g`, `1024k`, `1048576` (bytes): binary units, as the engine reads them.
pub(crate) fn parse_size(v: &str) -> Result<i64, String> {
    let t = v.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let bad = || format!("{v:?} is not a size (a number with k, m, g or t, e.g. 512m or 4g)");
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 {
        return Err(bad());
    }
    let bytes = n * mul as f64;
    if bytes > (1i64 << 50) as f64 {
        return Err(format!("{v:?} is larger than any machine"));
    }
    Ok(bytes as i64)
}

/// `1.5` CPUs, as billionths.
pub(crate) fn parse_cpus(v: &str) -> Result<i64, String> {
    match v.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && (0.01..=1024.0).contains(&n) => Ok((n * 1e9) as i64),
        _ => Err(format!(
            "{v:?} is not a number of CPUs between 0.01 and 1024 (e.g. 2 or 1.5)"
        )),
    }
}

/// `SRC:DST[:ro|:rw]`.
pub(crate) fn parse_volume(v: &str) -> Result<VolumeSpec, String> {
    let parts: Vec<&str> = v.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [s, t] => (*s, *t, false),
        [s, t, "ro"] => (*s, *t, true),
        [s, t, "rw"] => (*s, *t, false),
        [_, _, m] => {
            return Err(format!(
                "{v:?}: the mode {m:?} is neither ro nor rw (SRC:DST[:ro])"
            ))
        }
        _ => return Err(format!("{v:?} is not SRC:DST[:ro]")),
    };
    if !target.starts_with('/') || target.contains("..") || target == "/" {
        return Err(format!(
            "{v:?}: the destination {target:?} must be an absolute path inside the container"
        ));
    }
    for reserved in ["/runner", "/opt/runner-supervisor", "/.runner-supervisor"] {
        if target == reserved || target.starts_with(&format!("{reserved}/")) {
            return Err(format!(
                "{v:?}: {reserved} is where the supervisor mounts the runner; choose another destination"
            ));
        }
    }
    let named = !source.starts_with('/');
    if named && !valid_name(source) {
        return Err(format!(
            "{v:?}: {source:?} is neither an absolute host path nor a volume name"
        ));
    }
    if !named && source.contains("..") {
        return Err(format!(
            "{v:?}: the host path {source:?} must not hold '..'"
        ));
    }
    Ok(VolumeSpec {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
        named,
    })
}

/// Every `{name}` must be a known placeholder.
pub(crate) fn check_placeholders(v: &str) -> Result<(), String> {
    let mut rest = v;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            return Err(format!("{v:?} has a '{{' without its '}}'"));
        };
        let name = &after[..j];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "{{{name}}} is not a placeholder (known: {})",
                PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[j + 1..];
    }
    Ok(())
}

/// Fill `v`'s placeholders from `values` (`(name, value)`).
pub fn fill_placeholders(v: &str, values: &[(&str, &str)]) -> String {
    let mut out = v.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_the_engine_reads_them() {
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("4GB"), Ok(4 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        for bad in ["", "m", "-1g", "lots", "4x"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_are_billionths() {
        assert_eq!(parse_cpus("1.5"), Ok(1_500_000_000));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("two").is_err());
    }

    #[test]
    fn volumes_are_named_or_absolute_and_never_over_the_runner() {
        let v = parse_volume("pnpm-store:/home/runner/.pnpm-store").unwrap();
        assert!(v.named && !v.read_only);
        let v = parse_volume("/srv/cache:/cache:ro").unwrap();
        assert!(!v.named && v.read_only);
        for bad in [
            "x",
            "cache:relative",
            "cache:/runner/_work",
            "cache:/c:rx",
            "../up:/c",
            "bad name:/c",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn placeholders_are_known_or_refused() {
        assert!(check_placeholders("{runner_name}-{slot} on {hostname}").is_ok());
        assert!(check_placeholders("{nope}").is_err());
        assert!(check_placeholders("{runner_name").is_err());
        assert_eq!(
            fill_placeholders(
                "{repo_owner}/{repo_name}#{slot}",
                &[("repo_owner", "o"), ("repo_name", "r"), ("slot", "2")]
            ),
            "o/r#2"
        );
    }

    #[test]
    fn engine_urls() {
        assert!(check_engine_url("unix:///var/run/docker.sock").is_ok());
        assert!(check_engine_url("tcp://127.0.0.1:2375").is_ok());
        for bad in ["unix://rel", "tcp://host", "docker.sock", "ftp://x:1"] {
            assert!(check_engine_url(bad).is_err(), "{bad}");
        }
    }
}
