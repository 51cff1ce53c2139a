//! Checks of single values: names, URLs, labels, log filters, and "did you mean".

use std::path::Path;

/// A tracing filter made of levels and `target=level` directives. A bare word that is not
/// a level would be taken for a target and silence everything else, so it is refused.
pub fn check_log_level(filter: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    if filter.trim().is_empty() {
        return Err("is empty; use info, debug, or target=level directives".into());
    }
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{d:?} is not a level ({}) or a target=level directive",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The known name closest to `name`, if it is close enough to be a typo.
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (edit_distance(&name, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d > 0 && *d <= (k.len() / 4).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `https://api.github.com` → `https://github.com`; `https://h/api/v3` → `https://h`.
pub fn derive_web_url(api: &str) -> String {
    let api = api.trim_end_matches('/');
    if let Some(rest) = api.strip_prefix("https://api.") {
        return format!("https://{rest}");
    }
    api.strip_suffix("/api/v3").unwrap_or(api).to_string()
}

pub(crate) fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("{u:?} must start with https:// (or http:// for a local test server)")
        })?;
    let hostname = rest.split(['/', '?', '#']).next().unwrap_or("");
    if hostname.is_empty() || hostname.contains(char::is_whitespace) {
        return Err(format!("{u:?} has no host"));
    }
    Ok(())
}

/// GitHub user and organisation names: 1 to 39 letters, digits or single inner hyphens.
pub fn check_owner(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 39
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid GitHub account name (1 to 39 letters, digits or single inner hyphens)"))
    }
}

/// Repository names: 1 to 100 of letters, digits, '.', '-', '_', not `.` or `..`.
pub fn check_repo(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 100
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid repository name (1 to 100 letters, digits, '.', '-' or '_')"
        ))
    }
}

/// GitHub's limits: 1 to 100 labels, each 1 to 256 characters, no commas, no duplicates.
pub fn check_labels(labels: &[String]) -> Result<(), String> {
    if labels.is_empty() {
        return Err("needs at least one label".into());
    }
    if labels.len() > 100 {
        return Err(format!(
            "{} labels; GitHub allows at most 100",
            labels.len()
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for l in labels {
        if l.trim().is_empty() {
            return Err("a label is empty".into());
        }
        if l.chars().count() > 256 {
            return Err(format!(
                "label {}... is {} characters; GitHub allows at most 256",
                &l[..16.min(l.len())],
                l.chars().count()
            ));
        }
        if l.contains(',') {
            return Err(format!("label {l:?} contains a comma"));
        }
        if !seen.insert(l.to_ascii_lowercase()) {
            return Err(format!(
                "label {l:?} appears twice (labels are case-insensitive)"
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_env_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(format!("{name:?} is not a valid environment variable name"));
    }
    if name == "GITHUB_PAT"
        || name.starts_with("SUPERVISOR_GITHUB_TOKEN")
        || name.starts_with("ACTIONS_RUNNER_INPUT_")
    {
        return Err(format!(
            "{name} must not be passed to the runner: jobs would see it"
        ));
    }
    Ok(())
}

pub(crate) fn check_runner_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin").join("Runner.Listener");
    match std::fs::metadata(&bin) {
        Err(_) if !dir.exists() => Err(format!(
            "{} does not exist; install the runner there or set SUPERVISOR_RUNNER_DIR",
            dir.display()
        )),
        Err(_) => Err(format!(
            "{} has no bin/Runner.Listener; is this an actions/runner install?",
            dir.display()
        )),
        Ok(m) if !m.is_file() => Err(format!("{} is not a file", bin.display())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err(format!("{} is not executable", bin.display()))
        }
        Ok(_) => Ok(()),
    }
}
