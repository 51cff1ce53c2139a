//! The `[github]` section: the API and web URLs, the credentials (a token, from the
//! environment or a file, or a GitHub App and its private key), and the scope.

use std::path::{Path, PathBuf};

use super::{Problems, Reader};
use crate::config::keys::*;
use crate::config::*;

/// `[github]`: the URLs, the credentials (a token or an App) and the scope.
pub(super) fn github(r: &Reader, purpose: Purpose, p: &mut Problems) -> GithubConfig {
    let api_url = r.get(&GITHUB_API_URL).trim_end_matches('/').to_string();
    let web_url = match r.get(&GITHUB_WEB_URL) {
        Some(w) => w.trim_end_matches('/').to_string(),
        None => derive_web_url(&api_url),
    };
    for (key, u) in [
        (GITHUB_API_URL.name(), &api_url),
        (GITHUB_WEB_URL.name(), &web_url),
    ] {
        if let Err(m) = check_url(u) {
            p.add(key, m);
        }
    }
    // `doctor` and `config` report an unreadable token file or App key (a root-only
    // credential) instead of refusing to run.
    let mut token_error: Option<String> = None;
    let token = token(r, purpose, &mut token_error, p);
    let app = app(r, purpose, &mut token_error, p);
    GithubConfig {
        api_url,
        web_url,
        token,
        token_error,
        app,
        scope: scope(r, purpose, p),
        connect_timeout: r.get(&GITHUB_CONNECT_TIMEOUT),
        request_timeout: r.get(&GITHUB_REQUEST_TIMEOUT),
        max_retries: r.get(&GITHUB_MAX_RETRIES) as u32,
        backoff_base: r.get(&GITHUB_BACKOFF_BASE),
        backoff_cap: r.get(&GITHUB_BACKOFF_CAP),
        max_rate_limit_wait: r.get(&GITHUB_MAX_RATE_LIMIT_WAIT),
    }
}

/// The token: the higher layer wins; the same layer twice is ambiguous.
fn token(
    r: &Reader,
    purpose: Purpose,
    token_error: &mut Option<String>,
    p: &mut Problems,
) -> Option<Secret> {
    let token_src = r.source(&GITHUB_TOKEN);
    let file_src = r.source(&GITHUB_TOKEN_FILE);
    let (token_value, token_file) = (r.get(&GITHUB_TOKEN), r.get(&GITHUB_TOKEN_FILE));
    let mut from_file = |f: PathBuf| match read_token_file(&f) {
        Ok(t) => Some(t),
        Err(m) if purpose == Purpose::Run => {
            p.add(GITHUB_TOKEN_FILE.name(), m);
            None
        }
        Err(m) => {
            *token_error = Some(m);
            None
        }
    };
    let token = match (&token_src, &file_src) {
        (Some(ts), Some(fs)) if ts.rank() == fs.rank() => {
            p.add(
                GITHUB_TOKEN.name(),
                format!("set only one of github.token ({ts}) and github.token_file ({fs})"),
            );
            None
        }
        (Some(ts), Some(fs)) if fs.rank() > ts.rank() => token_file.and_then(&mut from_file),
        (Some(_), _) => token_value,
        (None, Some(_)) => token_file.and_then(&mut from_file),
        (None, None) => None,
    };
    // One rule for every source (env, file, TOML): surrounding whitespace, such as the
    // newline an editor or `echo` leaves, is not part of a token.
    let token = token.map(|t| Secret(t.0.trim().to_string()));
    if let Some(t) = &token {
        if t.0.is_empty() {
            p.add(GITHUB_TOKEN.name(), "is empty".into());
        } else if t.0.chars().any(|c| c.is_whitespace() || c.is_control()) {
            p.add(
                GITHUB_TOKEN.name(),
                "contains whitespace or control characters".into(),
            );
        }
    } else if purpose == Purpose::Run
        && token_src.is_none()
        && file_src.is_none()
        && r.source(&GITHUB_APP_ID).is_none()
    {
        p.add(GITHUB_TOKEN.name(),
            "no token: set GITHUB_PAT, SUPERVISOR_GITHUB_TOKEN or github.token_file (or run the simulated demo, see README)".into(),
        );
    }
    token
}

/// A GitHub App instead of a token: its ID and private key, both or neither.
fn app(
    r: &Reader,
    purpose: Purpose,
    token_error: &mut Option<String>,
    p: &mut Problems,
) -> Option<AppConfig> {
    let id = r.get(&GITHUB_APP_ID);
    let key_file = r.get(&GITHUB_APP_PRIVATE_KEY_FILE);
    let installation_id = r.get(&GITHUB_INSTALLATION_ID);
    let (app_id, file) = match (id, key_file) {
        (None, None) => {
            if installation_id.is_some() {
                p.add(
                    GITHUB_INSTALLATION_ID.name(),
                    "is set without github.app_id and github.app_private_key_file".into(),
                );
            }
            return None;
        }
        (Some(_), None) => {
            p.add(
                GITHUB_APP_PRIVATE_KEY_FILE.name(),
                "missing: github.app_id is set; the App's private key file is needed too".into(),
            );
            return None;
        }
        (None, Some(_)) => {
            p.add(
                GITHUB_APP_ID.name(),
                "missing: github.app_private_key_file is set; the App's ID is needed too".into(),
            );
            return None;
        }
        (Some(app_id), Some(file)) => (app_id, file),
    };
    let which = r
        .source(&GITHUB_TOKEN)
        .map(|s| format!("github.token ({s})"))
        .or_else(|| {
            r.source(&GITHUB_TOKEN_FILE)
                .map(|s| format!("github.token_file ({s})"))
        });
    if let Some(which) = which {
        p.add(
            GITHUB_APP_ID.name(),
            format!("a token and a GitHub App are both configured ({which}); use one of them"),
        );
    }
    match read_app_key(&file) {
        Ok(pem) => Some(AppConfig {
            app_id,
            private_key: pem,
            key_file: file,
            installation_id,
        }),
        Err(m) if purpose == Purpose::Run => {
            p.add(GITHUB_APP_PRIVATE_KEY_FILE.name(), m);
            None
        }
        Err(m) => {
            *token_error = Some(format!("the GitHub App's private key: {m}"));
            None
        }
    }
}

/// Which runners: a repository's (owner and repo) or an organisation's.
fn scope(r: &Reader, purpose: Purpose, p: &mut Problems) -> Option<Scope> {
    let (owner, repo, org) = (
        r.get(&GITHUB_OWNER),
        r.get(&GITHUB_REPO),
        r.get(&GITHUB_ORG),
    );
    match (&owner, &repo, &org) {
        (_, _, Some(o)) if owner.is_some() || repo.is_some() => {
            p.add(
                GITHUB_ORG.name(),
                format!("set either github.org ({o}) or github.owner and github.repo, not both"),
            );
            None
        }
        (_, _, Some(o)) => {
            if let Err(m) = check_owner(o) {
                p.add(GITHUB_ORG.name(), m);
            }
            Some(Scope::Org { org: o.clone() })
        }
        (Some(o), Some(r), None) => {
            if let Err(m) = check_owner(o) {
                p.add(GITHUB_OWNER.name(), m);
            }
            if let Err(m) = check_repo(r) {
                p.add(GITHUB_REPO.name(), m);
            }
            Some(Scope::Repo {
                owner: o.clone(),
                repo: r.clone(),
            })
        }
        (Some(_), None, None) => {
            p.add(
                GITHUB_REPO.name(),
                "missing: set REPO_NAME (github.repo), or github.org for an organisation runner"
                    .into(),
            );
            None
        }
        (None, Some(_), None) => {
            p.add(
                GITHUB_OWNER.name(),
                "missing: set REPO_OWNER (github.owner)".into(),
            );
            None
        }
        // `config` and `doctor` work before a repository is chosen: they say it is missing.
        (None, None, None) if purpose != Purpose::Run => None,
        (None, None, None) => {
            p.add(GITHUB_OWNER.name(),
                "missing: set REPO_OWNER and REPO_NAME (github.owner, github.repo) for a repository runner, or github.org for an organisation runner".into(),
            );
            None
        }
    }
}

/// The App's private key: owner-only, a PEM RSA private key.
fn read_app_key(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable or writable by group or others (mode {mode:04o}); a private key must not be: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    let pem = read_bounded(path, MAX_TOKEN_FILE).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Err(e) = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()) {
        return Err(format!(
            "{} is not a PEM RSA private key (the .pem file GitHub generates for the App): {e}",
            path.display()
        ));
    }
    Ok(Secret(pem))
}

/// A token file's token, or why it cannot be read.
fn read_token_file(path: &Path) -> Result<Secret, String> {
    read_bounded(path, MAX_TOKEN_FILE)
        .map(Secret)
        .map_err(|e| format!("{}: {e}", path.display()))
}
