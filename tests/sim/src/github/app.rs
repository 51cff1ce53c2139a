//! GitHub App authentication (`app-auth-openapi.json`): `GET /app`, the repository's and
//! the organisation's installation, and `POST /app/installations/{id}/access_tokens`,
//! each authenticated by an RS256 JWT verified against the App's public key, with `iat`
//! and `exp` checked on this server's clock as GitHub does; installation tokens that
//! expire, and that the runner endpoints accept with the installation's permissions.

use super::*;

/// GitHub's tolerance for the JWT's times, seconds.
pub const LEEWAY: i64 = 30;

/// A GitHub App that the fake knows.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub app_id: u64,
    pub slug: String,
    /// The App's public key (PEM), to verify JWTs.
    pub public_key_pem: String,
    pub installation_id: u64,
    /// The scopes its installation covers: `repos/octo/app`, `orgs/acme` (lower case).
    pub covers: Vec<String>,
    /// The installation's permissions (`administration`: `write`...).
    pub permissions: BTreeMap<String, String>,
    /// How long an installation token lives (GitHub: one hour).
    pub token_ttl: Duration,
}

impl AppOptions {
    /// An App installed on octo/app (and the acme organisation) with what runners need.
    pub fn new(public_key_pem: String) -> AppOptions {
        AppOptions {
            app_id: 4242,
            slug: "runner-supervisor-ci".into(),
            public_key_pem,
            installation_id: 777,
            covers: vec!["repos/octo/app".into(), "orgs/acme".into()],
            permissions: [
                ("administration", "write"),
                ("organization_self_hosted_runners", "write"),
                ("actions", "write"),
                ("metadata", "read"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            token_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    iat: Option<i64>,
    exp: Option<i64>,
    iss: Option<Value>,
}

fn unauthorized(m: &str) -> Resp {
    basic_error(StatusCode::UNAUTHORIZED, m)
}

/// Verify the request's JWT as GitHub does.
#[allow(clippy::result_large_err)]
fn verify(app: &AppOptions, ctx: &Ctx) -> Result<(), Resp> {
    let jwt = ctx
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(|t| t.trim().to_string()))
        .ok_or_else(|| unauthorized("A JSON web token could not be decoded"))?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes())
        .expect("the App's public key is PEM");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(&jwt, &key, &v)
        .map_err(|_| unauthorized("A JSON web token could not be decoded"))?;
    let c = data.claims;
    let iss_ok = match &c.iss {
        Some(Value::Number(n)) => n.as_u64() == Some(app.app_id),
        Some(Value::String(s)) => s == &app.app_id.to_string(),
        _ => false,
    };
    if !iss_ok {
        return Err(unauthorized("'Issuer' claim ('iss') must be an Integer"));
    }
    let now = Utc::now().timestamp();
    let iat = c.iat.ok_or_else(|| {
        unauthorized("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued")
    })?;
    if iat > now + LEEWAY {
        return Err(unauthorized(
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
        ));
    }
    let exp = c.exp.ok_or_else(|| {
        unauthorized("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires")
    })?;
    if exp > now + 600 + LEEWAY {
        return Err(unauthorized(
            "'Expiration time' claim ('exp') is too far in the future",
        ));
    }
    if exp < now - LEEWAY {
        return Err(unauthorized(
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        ));
    }
    Ok(())
}

pub(super) fn user(shared: &Shared, login: &str, id: u64, kind: &str) -> Value {
    let u = format!("{}/users/{login}", shared.base_url);
    json!({
        "login": login, "id": id, "node_id": format!("MDQ6VXNlcj{id}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}"),
        "gravatar_id": "", "url": u, "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{u}/followers"), "following_url": format!("{u}/following{{/other_user}}"),
        "gists_url": format!("{u}/gists{{/gist_id}}"), "starred_url": format!("{u}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{u}/subscriptions"), "organizations_url": format!("{u}/orgs"),
        "repos_url": format!("{u}/repos"), "events_url": format!("{u}/events{{/privacy}}"),
        "received_events_url": format!("{u}/received_events"), "type": kind, "site_admin": false,
    })
}

fn installation(shared: &Shared, app: &AppOptions, account: &str, org: bool) -> Value {
    let s = shared.lock();
    let suspended = s.installation_suspended;
    let id = app.installation_id;
    json!({
        "id": id, "app_id": app.app_id, "app_slug": app.slug, "client_id": "Iv1.0123456789abcdef",
        "target_id": 99, "target_type": if org { "Organization" } else { "User" },
        "single_file_name": null, "repository_selection": "selected",
        "access_tokens_url": format!("{}/app/installations/{id}/access_tokens", shared.base_url),
        "html_url": format!("https://github.com/settings/installations/{id}"),
        "repositories_url": format!("{}/installation/repositories", shared.base_url),
        "events": [], "account": user(shared, account, 99, if org { "Organization" } else { "User" }),
        "permissions": app.permissions,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "suspended_by": if suspended { user(shared, "admin", 7, "User") } else { Value::Null },
        "suspended_at": if suspended { json!("2026-12-01T00:00:00Z") } else { Value::Null },
    })
}

/// The App's own endpoints, or None when `segs` is not one of them.
pub(super) fn route(shared: &Shared, ctx: &Ctx, segs: &[&str]) -> Option<Resp> {
    let is_app = matches!(
        segs,
        ["app"]
            | ["app", "installations", _, "access_tokens"]
            | ["repos", _, _, "installation"]
            | ["orgs", _, "installation"]
    );
    if !is_app {
        return None;
    }
    let Some(app) = shared.opts.app.clone() else {
        return Some(basic_error(StatusCode::NOT_FOUND, "Not Found"));
    };
    if let Err(r) = verify(&app, ctx) {
        return Some(r);
    }
    let m = &ctx.method;
    Some(match (m.as_str(), segs) {
        ("GET", ["app"]) => json_resp(
            StatusCode::OK,
            &json!({
                "id": app.app_id, "slug": app.slug, "node_id": "MDM6QXBwNDI0Mg==", "client_id": "Iv1.0123456789abcdef",
                "owner": user(shared, "octo", 99, "User"), "name": "runner-supervisor CI",
                "description": "Registers self-hosted runners", "external_url": "https://example.com",
                "html_url": format!("https://github.com/apps/{}", app.slug),
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                "permissions": app.permissions, "events": [], "installations_count": 1,
            }),
        ),
        ("GET", ["repos", o, r, "installation"]) => {
            let scope = format!("repos/{}/{}", o.to_lowercase(), r.to_lowercase());
            if app.covers.contains(&scope) {
                json_resp(StatusCode::OK, &installation(shared, &app, o, false))
            } else {
                basic_error(StatusCode::NOT_FOUND, "Not Found")
            }
        }
        ("GET", ["orgs", o, "installation"]) => {
            let scope = format!("orgs/{}", o.to_lowercase());
            if app.covers.contains(&scope) {
                json_resp(StatusCode::OK, &installation(shared, &app, o, true))
            } else {
                basic_error(StatusCode::NOT_FOUND, "Not Found")
            }
        }
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            if id.parse::<u64>().ok() != Some(app.installation_id) {
                return Some(basic_error(StatusCode::NOT_FOUND, "Not Found"));
            }
            let body: Value = serde_json::from_slice(&ctx.body).unwrap_or(Value::Null);
            // Repositories the installation does not cover cannot be asked for.
            if let Some(repos) = body.get("repositories").and_then(Value::as_array) {
                let bad = repos.iter().any(|r| {
                    !app.covers.iter().any(|c| {
                        c.ends_with(&format!("/{}", r.as_str().unwrap_or("").to_lowercase()))
                    })
                });
                if bad {
                    return Some(validation_error(
                        "There is at least one repository that does not exist or is not accessible to the parent installation.",
                        vec![],
                    ));
                }
            }
            let mut s = shared.lock();
            if s.installation_suspended {
                return Some(basic_error(
                    StatusCode::FORBIDDEN,
                    "This installation has been suspended",
                ));
            }
            let token = format!("ghs_{}", super::random_token(36));
            let expires = Utc::now()
                + chrono::Duration::from_std(app.token_ttl).unwrap_or(chrono::Duration::hours(1));
            s.installation_tokens.insert(token.clone(), expires);
            s.installation_tokens_issued += 1;
            drop(s);
            json_resp(
                StatusCode::CREATED,
                &json!({
                    "token": token,
                    "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "permissions": app.permissions,
                    "repository_selection": "selected",
                }),
            )
        }
        _ => basic_error(StatusCode::NOT_FOUND, "Not Found"),
    })
}

/// An installation token on the runner endpoints: Ok(()) if it may, else the answer.
#[allow(clippy::result_large_err)]
pub(super) fn check_installation_token(
    shared: &Shared,
    s: &State,
    token: &str,
    ctx: &Ctx,
    segs: &[&str],
) -> Option<Result<(), Resp>> {
    let app = shared.opts.app.as_ref()?;
    let expires = *s.installation_tokens.get(token)?;
    if expires <= Utc::now() || s.installation_suspended {
        return Some(Err(unauthorized("Bad credentials")));
    }
    if segs == ["user"] {
        return Some(Err(basic_error(
            StatusCode::FORBIDDEN,
            "Resource not accessible by integration",
        )));
    }
    let org = segs.first() == Some(&"orgs");
    let scope = match segs {
        ["repos", o, r, ..] => format!("repos/{}/{}", o.to_lowercase(), r.to_lowercase()),
        ["orgs", o, ..] => format!("orgs/{}", o.to_lowercase()),
        _ => return Some(Ok(())),
    };
    if !app.covers.contains(&scope) {
        return Some(Err(basic_error(StatusCode::NOT_FOUND, "Not Found")));
    }
    let _ = org;
    let name = super::rest::permission_for(segs);
    let write = ctx.method != Method::GET;
    let perm = app
        .permissions
        .get(name)
        .map(String::as_str)
        .unwrap_or("none");
    if perm == "write" || (perm == "read" && !write) {
        return Some(Ok(()));
    }
    let mut r = basic_error(
        StatusCode::FORBIDDEN,
        "Resource not accessible by integration",
    );
    r.headers_mut().insert(
        "x-accepted-github-permissions",
        HeaderValue::from_str(&format!("{name}={}", if write { "write" } else { "read" }))
            .expect("ascii"),
    );
    Some(Err(r))
}
