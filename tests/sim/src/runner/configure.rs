//! `config.sh`: registering with a registration token, as the real runner does (its API
//! base from `--url`, its error lines and exit codes), writing `.runner` and the
//! credentials.

use std::fs;
use std::path::Path;

use serde_json::json;

use super::term::Term;
use super::{runner_http_client, Args};
use crate::protocol::{RegisterRequest, RegisterResponse};

pub(super) async fn configure(args: &Args, root: &Path) -> i32 {
    let term = Term::new(root);
    if root.join(".runner").exists() {
        term.error("Cannot configure the runner because it is already configured. To reconfigure the runner, run 'config.cmd remove' or './config.sh remove' first.");
        return 1;
    }
    let Some(url) = args.value("url") else {
        term.error("Invalid configuration provided for url. Terminating unattended configuration.");
        return 1;
    };
    let Some(token) = args.value("token") else {
        term.error(
            "Invalid configuration provided for token. Terminating unattended configuration.",
        );
        return 1;
    };
    let name = args.value("name").unwrap_or_else(|| "myrunner".into());
    let mut labels: Vec<String> = vec!["self-hosted".into(), "Linux".into(), "X64".into()];
    for l in args.value("labels").unwrap_or_default().split(',') {
        let l = l.trim();
        if !l.is_empty() && !labels.iter().any(|x| x.eq_ignore_ascii_case(l)) {
            labels.push(l.to_string());
        }
    }
    let work = args.value("work").unwrap_or_else(|| "_work".into());
    term.section("Authentication");
    let Some(api) = api_base(&url) else {
        term.error("Invalid configuration provided for url. Terminating unattended configuration.");
        return 1;
    };
    let http = runner_http_client();
    let reg_url = format!("{api}/actions/runner-registration");
    let resp = http
        .post(&reg_url)
        .header("Authorization", format!("RemoteAuth {token}"))
        .header(
            "User-Agent",
            format!("GitHubActionsRunner-linux-x64/{}", super::version()),
        )
        .json(&json!({"url": url, "runner_event": "register"}))
        .send()
        .await;
    let auth: serde_json::Value = match resp {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
        Ok(r) => {
            let code = r.status().as_u16();
            let id = r
                .headers()
                .get("x-github-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = r.text().await.unwrap_or_default();
            // Below the registration floor (reference A8): the boxed notice first.
            if code == 404 && body.contains("minimum runner version") {
                let floor = crate::protocol::REGISTRATION_FLOOR;
                let star = "*".repeat(86);
                term.error(&star);
                term.error(&format!("*{:^84}*", "RUNNER UPDATE REQUIRED"));
                term.error(&format!(
                    "*{:^84}*",
                    format!("The minimum runner version required to register with GitHub Actions is now {floor}")
                ));
                term.error(&star);
                term.error(&format!(
                    "Response status code does not indicate success: {code} ({}).",
                    r_reason(code)
                ));
                return 1;
            }
            term.error(&format!(
                "Http response code: {} from 'POST {reg_url}' (Request Id: {id})",
                dotnet_status(code)
            ));
            term.error(&body);
            term.error(&format!(
                "Response status code does not indicate success: {code} ({}).",
                r_reason(code)
            ));
            return 1;
        }
        Err(e) => {
            term.error(&format!("An error occurred: {e}"));
            return 1;
        }
    };
    term.success("Connected to GitHub");
    term.section("Runner Registration");
    let tenant = auth["token"].as_str().unwrap_or_default().to_string();
    let server = auth["url"].as_str().unwrap_or_default().to_string();
    let req = RegisterRequest {
        name: name.clone(),
        labels,
        replace: args.flag("replace"),
        ephemeral: args.flag("ephemeral"),
        disable_update: args.flag("disableupdate"),
        work_folder: work,
    };
    let resp = http
        .post(format!("{server}/_sim/register"))
        .bearer_auth(tenant)
        .json(&req)
        .send()
        .await;
    let reg: RegisterResponse = match resp {
        Ok(r) if r.status().is_success() => match r.json().await {
            Ok(v) => v,
            Err(e) => {
                term.error(&format!("An error occurred: {e}"));
                return 1;
            }
        },
        Ok(r) if r.status().as_u16() == 409 => {
            term.line("A runner exists with the same name");
            term.error(&format!("A runner exists with the same name {name}."));
            return 1;
        }
        Ok(r) => {
            term.error(&format!("Failed: {}", r.status()));
            return 1;
        }
        Err(e) => {
            term.error(&format!("An error occurred: {e}"));
            return 1;
        }
    };
    if reg.replaced {
        term.line("A runner exists with the same name");
        term.success("Successfully replaced the runner");
    } else {
        term.success("Runner successfully added");
    }
    term.section("Runner settings");
    let mut settings = reg.settings;
    if let Some(scale) = args.time_scale {
        settings.sim_time_scale = scale;
    }
    let ok = fs::write(
        root.join(".runner"),
        serde_json::to_vec_pretty(&settings).unwrap_or_default(),
    )
    .is_ok()
        && fs::write(
            root.join(".credentials"),
            serde_json::to_vec_pretty(&reg.credentials).unwrap_or_default(),
        )
        .is_ok()
        && fs::write(root.join(".credentials_rsaparams"), b"{}").is_ok();
    if !ok {
        term.error("Failed: Saving settings");
        return 1;
    }
    term.success("Settings Saved.");
    0
}

/// How the runner turns `--url` into its API base (`UrlUtil.IsHostedServer`).
fn api_base(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?.to_ascii_lowercase();
    let hosted = host == "github.com"
        || host == "www.github.com"
        || host == "github.localhost"
        || host.ends_with(".ghe.localhost")
        || host.ends_with(".ghe.com");
    if hosted {
        Some(format!("https://api.{host}"))
    } else {
        let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
        Some(format!("{}://{host}{port}/api/v3", u.scheme()))
    }
}

fn dotnet_status(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        422 => "UnprocessableEntity",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

fn r_reason(code: u16) -> &'static str {
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Error",
    }
}
