//! Scale-set mode (`[runner] mode = "scaleset"`): can this host hold the scale set's
//! session, and what must jobs say to reach it. It mints a registration token and an
//! admin connection (both expire by themselves) and looks the scale set up by name; it
//! creates nothing.

use std::time::Duration;

use crate::cli::preflight::{Check, Level};
use crate::config::{Config, RunnerMode};
use crate::github::scaleset::client::Service;
use crate::github::GithubClient;

/// What jobs must say, and what never matches a scale set.
pub fn runs_on_advice(name: &str) -> String {
    format!(
        "jobs reach it only with `runs-on: {name}` ([self-hosted, Linux, X64] never matches a scale set, and extra labels are not reliably honoured)"
    )
}

/// The scale set: the admin connection, the runner group, the set by name.
pub async fn check_scaleset(cfg: &Config, gh: &GithubClient) -> Option<Check> {
    if cfg.runner.mode != RunnerMode::ScaleSet {
        return None;
    }
    let s = &cfg.scaleset;
    let advice = runs_on_advice(&s.name);
    let fail = |detail: String, fix: &str| Check {
        name: "scale set",
        level: Level::Fail,
        detail,
        fix: Some(fix.to_string()),
    };
    let token = match gh.registration_token().await {
        Ok(t) => t,
        Err(e) => return Some(fail(
            format!("cannot get a registration token, which the scale-set session starts from: {e}"),
            "the token needs what registering runners needs: classic repo (admin:org for an organisation); fine-grained Administration read and write (Self-hosted runners for an organisation); a GitHub App administration: write (organization_self_hosted_runners: write)",
        )),
    };
    let Some(scope) = &cfg.github.scope else {
        return None;
    };
    let k = cfg.network.keepalive_for_own();
    let svc = match Service::tuned(crate::github::USER_AGENT_VALUE, Duration::from_secs(30), &k) {
        Ok(s) => s,
        Err(e) => return Some(fail(e, "report this")),
    };
    let config_url = format!(
        "{}/{}",
        cfg.github.web_url.trim_end_matches('/'),
        scope.web_path()
    );
    let admin = match svc
        .connect(&cfg.github.api_url, &config_url, token.token.expose())
        .await
    {
        Ok(a) => a,
        Err(e) => return Some(fail(
            format!("the scale-set service refused the admin connection for {config_url}: {e}"),
            "check [github] web_url (the config URL is <web_url>/<owner>/<repo> or <web_url>/<org>) and that the server has the runner scale-set API (GHES 3.9 or newer)",
        )),
    };
    let group = match svc.runner_group(&admin, &s.runner_group).await {
        Ok(g) => g,
        Err(e) => {
            return Some(fail(
                format!("runner group {:?}: {e}", s.runner_group),
                "set [scaleset] runner_group to an existing group (Default always exists)",
            ))
        }
    };
    Some(
        match svc.scale_set_by_name(&admin, group.id, &s.name).await {
            Ok(Some(set)) => Check {
                name: "scale set",
                level: Level::Ok,
                detail: format!(
                    "{} exists (id {}) in group {}; {advice}",
                    set.name, set.id, s.runner_group
                ),
                fix: None,
            },
            Ok(None) => Check {
                name: "scale set",
                level: Level::Ok,
                detail: format!(
                    "{} does not exist yet; `supervisor run` creates it in group {} (the admin connection works); {advice}",
                    s.name, s.runner_group
                ),
                fix: None,
            },
            Err(e) => fail(
                format!("cannot look up scale set {:?}: {e}", s.name),
                "check the token's permissions and [scaleset] name",
            ),
        },
    )
}
