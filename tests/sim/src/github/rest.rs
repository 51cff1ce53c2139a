//! The REST API of the runner endpoints (`runners-openapi.json`): authentication and rate limits, list, get, delete, downloads, registration and remove tokens, generate-jitconfig; and the runner's token exchange.

use super::*;

/// Authentication, User-Agent, primary rate limit. Returns the error answer, if any.
#[allow(clippy::result_large_err)]
pub(super) fn rest_gate(shared: &Shared, ctx: &Ctx, segs: &[&str]) -> Result<(), Resp> {
    if ctx.header("user-agent").is_none_or(|u| u.trim().is_empty()) {
        return Err(basic_error(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.",
        ));
    }
    let auth = ctx.header("authorization");
    let token = auth.as_deref().and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("token "))
            .map(str::trim)
    });
    let mut s = shared.lock();
    let mut installation = false;
    match token {
        None => {
            return Err(basic_error(
                StatusCode::UNAUTHORIZED,
                "Requires authentication",
            ))
        }
        Some(t) if t.starts_with("ghs_") => {
            match super::app::check_installation_token(shared, &s, t, ctx, segs) {
                Some(Ok(())) => installation = true,
                Some(Err(r)) => return Err(r),
                None => return Err(basic_error(StatusCode::UNAUTHORIZED, "Bad credentials")),
            }
        }
        Some(t) if t != shared.opts.token || s.revoked => {
            return Err(basic_error(StatusCode::UNAUTHORIZED, "Bad credentials"))
        }
        Some(_) => {}
    }
    if s.rate_remaining == 0 && Utc::now().timestamp() < s.rate_reset {
        return Err(basic_error(
            StatusCode::FORBIDDEN,
            "API rate limit exceeded for user ID 1.",
        ));
    }
    s.rate_remaining = s.rate_remaining.saturating_sub(1);
    // Scopes and permissions for the runner endpoints (an installation's were checked).
    let org = segs.first() == Some(&"orgs");
    if !installation && (segs.first() == Some(&"repos") || org) {
        let write = ctx.method != Method::GET;
        match s.token_kind.clone() {
            Some(TokenKind::Classic { scopes }) => {
                let need = if org { "admin:org" } else { "repo" };
                if !scopes.iter().any(|sc| sc == need) {
                    // GitHub hides private resources behind 404 rather than 403.
                    return Err(basic_error(StatusCode::NOT_FOUND, "Not Found"));
                }
            }
            Some(TokenKind::FineGrained {
                administration,
                organization_self_hosted_runners,
                actions,
            }) => {
                let name = permission_for(segs);
                let perm = match name {
                    "actions" => actions,
                    "organization_self_hosted_runners" => organization_self_hosted_runners,
                    _ => administration,
                };
                let ok = perm == "write" || (perm == "read" && !write);
                if !ok {
                    let level = if write { "write" } else { "read" };
                    let mut r = basic_error(
                        StatusCode::FORBIDDEN,
                        "Resource not accessible by personal access token",
                    );
                    r.headers_mut().insert(
                        "x-accepted-github-permissions",
                        HeaderValue::from_str(&format!("{name}={level}")).expect("ascii"),
                    );
                    return Err(r);
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// The fine-grained permission (or the App's) a path needs: `actions` for the Actions
/// endpoints (runs, jobs, re-runs), `organization_self_hosted_runners` or `administration`
/// for the runner endpoints.
pub(super) fn permission_for(segs: &[&str]) -> &'static str {
    match segs {
        ["repos", _, _, "actions", "runs" | "jobs", ..] => "actions",
        ["repos", _, _, "commits", ..] => "contents",
        ["orgs", ..] => "organization_self_hosted_runners",
        _ => "administration",
    }
}

pub(super) fn rest(shared: &Shared, ctx: &Ctx, segs: &[&str]) -> Resp {
    if segs == ["user"] && ctx.method == Method::GET {
        // A public user, as GitHub's `public-user` schema has it.
        let mut u = super::app::user(shared, "octocat", 1, "User");
        for (k, v) in [
            ("name", json!("The Octocat")),
            ("company", Value::Null),
            ("blog", json!("")),
            ("location", Value::Null),
            ("email", Value::Null),
            ("hireable", Value::Null),
            ("bio", Value::Null),
            ("public_repos", json!(8)),
            ("public_gists", json!(8)),
            ("followers", json!(0)),
            ("following", json!(0)),
            ("created_at", json!("2011-01-25T18:44:36Z")),
            ("updated_at", json!("2026-11-01T00:00:00Z")),
        ] {
            u[k] = v;
        }
        return json_resp(StatusCode::OK, &u);
    }
    if let (["repos", o, r, "commits", rf], &Method::GET) = (segs, &ctx.method) {
        return super::codeload::commit(o, r, rf);
    }
    if let ["repos", o, r, "actions", "runs", run, "attempts", n, "jobs"] = segs {
        expire_locks(&mut shared.lock(), shared.opts.job_lock_timeout);
        return attempt_jobs(shared, o, r, run, n);
    }
    if let (["repos", o, r, "actions", "runs", run], &Method::GET) = (segs, &ctx.method) {
        expire_locks(&mut shared.lock(), shared.opts.job_lock_timeout);
        return super::actions::workflow_run(shared, o, r, run);
    }
    if let (["repos", o, r, "actions", "jobs", job, "rerun"], &Method::POST) = (segs, &ctx.method) {
        expire_locks(&mut shared.lock(), shared.opts.job_lock_timeout);
        let r = super::actions::rerun_job(shared, o, r, job);
        shared.changed.notify_waiters();
        return r;
    }
    let (scope, rest) = match segs {
        ["repos", o, r, "actions", "runners", rest @ ..] => (
            format!("repos/{}/{}", o.to_lowercase(), r.to_lowercase()),
            rest,
        ),
        ["orgs", o, "actions", "runners", rest @ ..] => {
            (format!("orgs/{}", o.to_lowercase()), rest)
        }
        _ => return basic_error(StatusCode::NOT_FOUND, "Not Found"),
    };
    expire_locks(&mut shared.lock(), shared.opts.job_lock_timeout);
    let m = &ctx.method;
    match (m.as_str(), rest) {
        ("GET", []) => list_runners(shared, ctx, &scope),
        ("GET", ["downloads"]) => super::releases::downloads(shared),
        ("GET", ["deprecations", version]) => deprecation(&shared.opts, version),
        ("POST", ["generate-jitconfig"]) => generate_jitconfig(shared, ctx, &scope),
        ("POST", ["registration-token"]) | ("POST", ["remove-token"]) => {
            let token = random_token(29);
            let expires = (Utc::now() + chrono::Duration::hours(1))
                .with_timezone(&chrono::FixedOffset::west_opt(8 * 3600).expect("valid offset"))
                .to_rfc3339_opts(SecondsFormat::Millis, false);
            shared
                .lock()
                .reg_tokens
                .insert(token.clone(), scope.clone());
            json_resp(
                StatusCode::CREATED,
                &json!({"token": token, "expires_at": expires}),
            )
        }
        ("GET", [id]) => match id.parse::<u64>().ok().and_then(|id| {
            let s = shared.lock();
            s.runners
                .get(&id)
                .filter(|r| r.scope == scope)
                .map(|r| r.to_json())
        }) {
            Some(v) => json_resp(StatusCode::OK, &v),
            None => basic_error(StatusCode::NOT_FOUND, "Not Found"),
        },
        ("DELETE", [id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return basic_error(StatusCode::NOT_FOUND, "Not Found");
            };
            let mut s = shared.lock();
            match s.runners.get(&id) {
                Some(r) if r.scope == scope => {
                    if r.busy {
                        return validation_error(
                            &format!(
                                "Bad request - Runner \"{}\" is still running a job\"",
                                r.name
                            ),
                            vec![],
                        );
                    }
                    delete_runner(&mut s, id);
                    drop(s);
                    shared.changed.notify_waiters();
                    empty(StatusCode::NO_CONTENT)
                }
                _ => basic_error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        _ => basic_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

pub(super) fn list_runners(shared: &Shared, ctx: &Ctx, scope: &str) -> Resp {
    let per_page: usize = ctx
        .query
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page: usize = ctx
        .query
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let name = ctx.query.get("name");
    let all: Vec<Value> = {
        let s = shared.lock();
        s.runners
            .values()
            .filter(|r| r.scope == scope && name.is_none_or(|n| &r.name == n))
            .map(|r| r.to_json())
            .collect()
    };
    let total = all.len();
    let pages = total.div_ceil(per_page).max(1);
    let items: Vec<Value> = all
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let mut resp = json_resp(
        StatusCode::OK,
        &json!({"total_count": total, "runners": items}),
    );
    if pages > 1 {
        let base = format!("{}{}", shared.base_url, ctx.path);
        let link_for = |p: usize| {
            let mut q = format!("per_page={per_page}&page={p}");
            if let Some(n) = name {
                q.push_str(&format!("&name={n}"));
            }
            format!("{base}?{q}")
        };
        let mut links = vec![];
        if page < pages {
            links.push(format!("<{}>; rel=\"next\"", link_for(page + 1)));
            links.push(format!("<{}>; rel=\"last\"", link_for(pages)));
        }
        if page > 1 {
            links.push(format!("<{}>; rel=\"prev\"", link_for(page - 1)));
            links.push(format!("<{}>; rel=\"first\"", link_for(1)));
        }
        resp.headers_mut().insert(
            "link",
            HeaderValue::from_str(&links.join(", ")).expect("ascii links"),
        );
    }
    resp
}

/// `GET .../actions/runners/deprecations/{version}` (`actions-runs-openapi.json`, a
/// hand-written path): the version's dates, or 404 for a version it does not know (or
/// for the path itself on a server without the endpoint).
pub(super) fn deprecation(opts: &super::Options, version: &str) -> Resp {
    if !opts.deprecations_endpoint {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    }
    match opts.deprecations.get(version) {
        Some(runtime) => json_resp(
            StatusCode::OK,
            &json!({
                "runner_version": version,
                "registration_deprecates_at": null,
                "runtime_deprecates_at": runtime.map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true)),
            }),
        ),
        None => basic_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

pub(super) fn placeholder_downloads(v: &str) -> Resp {
    let items: Vec<Value> = [("linux", "x64"), ("linux", "arm64"), ("osx", "x64")]
        .iter()
        .map(|(os, arch)| {
            let filename = format!("actions-runner-{os}-{arch}-{v}.tar.gz");
            json!({
                "os": os, "architecture": arch, "filename": filename,
                "download_url": format!("https://github.com/actions/runner/releases/download/v{v}/{filename}"),
                "sha256_checksum": format!("{:064x}", 0u8),
            })
        })
        .collect();
    json_resp(StatusCode::OK, &Value::Array(items))
}

pub(super) fn generate_jitconfig(shared: &Shared, ctx: &Ctx, scope: &str) -> Resp {
    if !shared.opts.jit {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    }
    let body: Value = match serde_json::from_slice(&ctx.body) {
        Ok(v) => v,
        Err(_) => return validation_error("Problems parsing JSON", vec![]),
    };
    let mut errors = vec![];
    let name = body.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        errors.push("name is missing or not a string".to_string());
    }
    let group = body.get("runner_group_id").and_then(Value::as_u64);
    if group.is_none() {
        errors.push("runner_group_id is missing or not an integer".to_string());
    }
    let labels: Vec<String> = body
        .get("labels")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if labels.is_empty() || labels.len() > 100 {
        errors.push("labels must have between 1 and 100 items".to_string());
    }
    if labels.iter().any(|l| l.is_empty() || l.len() > 256) {
        errors.push("each label must be 1 to 256 characters".to_string());
    }
    let work = body
        .get("work_folder")
        .and_then(Value::as_str)
        .unwrap_or("_work")
        .to_string();
    if !errors.is_empty() {
        return validation_error("Invalid request.", errors);
    }
    let mut s = shared.lock();
    if s.runners
        .values()
        .any(|r| r.scope == scope && r.name.eq_ignore_ascii_case(name))
    {
        return json_resp(
            StatusCode::CONFLICT,
            &json!({"message": format!("Already exists - A runner with the name {name} already exists."),
                    "documentation_url": DOCS, "status": "409"}),
        );
    }
    let id = new_runner(&mut s, scope, name, labels, group.unwrap_or(1), true);
    let runner = s.runners[&id].clone();
    drop(s);
    shared.changed.notify_waiters();
    let settings = settings_for(shared, &runner, scope, &work);
    let creds = credentials_for(shared, &runner);
    let mut files = BTreeMap::new();
    files.insert(
        ".runner".to_string(),
        serde_json::to_vec_pretty(&settings).expect("serialisable"),
    );
    files.insert(
        ".credentials".to_string(),
        serde_json::to_vec_pretty(&creds).expect("serialisable"),
    );
    files.insert(
        ".credentials_rsaparams".to_string(),
        serde_json::to_vec(
            &json!({"d": random_token(16), "modulus": random_token(16), "exponent": "AQAB"}),
        )
        .expect("serialisable"),
    );
    let mut rj = runner.to_json();
    rj["os"] = json!("unknown");
    json_resp(
        StatusCode::CREATED,
        &json!({"runner": rj, "encoded_jit_config": encode_jit_config(&files)}),
    )
}

pub(super) fn settings_for(
    shared: &Shared,
    r: &SimRunner,
    scope: &str,
    work: &str,
) -> RunnerSettings {
    RunnerSettings {
        agent_id: r.id,
        agent_name: r.name.clone(),
        pool_id: r.group_id,
        pool_name: "Default".into(),
        server_url: shared.base_url.clone(),
        git_hub_url: format!(
            "https://github.com/{}",
            scope
                .trim_start_matches("repos/")
                .trim_start_matches("orgs/")
        ),
        work_folder: work.to_string(),
        ephemeral: r.ephemeral,
        disable_update: true,
        use_v2_flow: true,
        sim_time_scale: shared.opts.time_scale,
        sim_startup_ms: shared.opts.runner_startup_ms,
        sim_http_timeout_ms: shared.opts.runner_http_timeout.as_millis() as u64,
    }
}

pub(super) fn credentials_for(shared: &Shared, r: &SimRunner) -> Credentials {
    Credentials {
        scheme: "OAuth".into(),
        data: CredentialData {
            client_id: r.client_id.clone(),
            authorization_url: format!("{}/_sim/oauth2/token", shared.base_url),
            require_fips_cryptography: "False".into(),
        },
    }
}

/// `POST /actions/runner-registration`: config.sh's token exchange (`RemoteAuth`).
pub(super) fn runner_registration(shared: &Shared, ctx: &Ctx) -> Resp {
    let token = ctx
        .header("authorization")
        .and_then(|a| a.strip_prefix("RemoteAuth ").map(str::to_string));
    let mut s = shared.lock();
    let Some(scope) = token.as_ref().and_then(|t| s.reg_tokens.get(t).cloned()) else {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    };
    // The runner says its version in its User-Agent; below the floor it may not register.
    // Other clients of the scale-set service (ARC's listener, ours) are no runner.
    let version = ctx
        .header("user-agent")
        .filter(|ua| ua.starts_with("GitHubActionsRunner"))
        .and_then(|ua| ua.rsplit('/').next().map(str::to_string))
        .unwrap_or_default();
    if crate::protocol::older(&version, crate::protocol::REGISTRATION_FLOOR) {
        return basic_error(
            StatusCode::NOT_FOUND,
            &format!(
                "The minimum runner version required to register with GitHub Actions is now {}",
                crate::protocol::REGISTRATION_FLOOR
            ),
        );
    }
    // The admin connection: a JWT with `exp` (the scale-set client parses it) and the
    // service URL, which config.sh's registration also uses.
    let (url, tenant) = super::scaleset::admin_connection(shared, &mut s, &scope);
    s.tenant_tokens.insert(tenant.clone(), scope);
    json_resp(
        StatusCode::OK,
        &json!({"url": url, "token": tenant, "token_schema": "OAuthAccessToken", "use_v2_flow": true}),
    )
}

/// `GET /repos/{owner}/{repo}/actions/runs/{run_id}/attempts/{attempt_number}/jobs`
/// (`actions-runs-openapi.json`): the jobs of one attempt of one run.
fn attempt_jobs(shared: &Shared, owner: &str, repo: &str, run: &str, attempt: &str) -> Resp {
    let (Ok(run), Ok(attempt)) = (run.parse::<u64>(), attempt.parse::<u32>()) else {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let s = shared.lock();
    let jobs: Vec<&super::ActionsJob> = s
        .actions_jobs
        .values()
        .filter(|j| j.run_id == run && j.run_attempt == attempt)
        .collect();
    if jobs.is_empty() {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    }
    let base = &shared.base_url;
    let web = "https://github.com";
    let ts = |t: &chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let list: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            json!({
                "id": j.id,
                "run_id": j.run_id,
                "run_url": format!("{base}/repos/{owner}/{repo}/actions/runs/{}", j.run_id),
                "run_attempt": j.run_attempt,
                "node_id": format!("CR_kwDO{:08}", j.id),
                "head_sha": "009b8a3a9ccbb128af87f9b1c0f4c62e8a304f6d",
                "url": format!("{base}/repos/{owner}/{repo}/actions/jobs/{}", j.id),
                "html_url": format!("{web}/{owner}/{repo}/actions/runs/{}/job/{}", j.run_id, j.id),
                "status": j.status,
                "conclusion": j.conclusion,
                "created_at": ts(&j.created_at),
                "started_at": ts(&j.started_at.unwrap_or(j.created_at)),
                "completed_at": j.completed_at.as_ref().map(ts),
                "name": j.name,
                "steps": [],
                "check_run_url": format!("{base}/repos/{owner}/{repo}/check-runs/{}", j.id),
                "labels": j.labels,
                "runner_id": j.runner_id,
                "runner_name": j.runner_name,
                "runner_group_id": j.runner_id.map(|_| 1),
                "runner_group_name": j.runner_id.map(|_| "Default"),
                "workflow_name": j.spec.workflow.as_deref().unwrap_or("CI"),
                "head_branch": "main",
            })
        })
        .collect();
    json_resp(
        StatusCode::OK,
        &json!({"total_count": list.len(), "jobs": list}),
    )
}
