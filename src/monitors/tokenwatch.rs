//! Token watch: re-validate the token every `check_interval` and whenever asked (on
//! resume), warn before it expires, check scopes exactly, and mark health degraded while
//! GitHub refuses it. It recovers by itself when the token works again.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::TokenConfig;
use crate::github::{scope_verdict, GithubClient, GithubError, ScopeVerdict};
use crate::status::host::Host;
use crate::status::{Board, Condition, Health};

/// Check the token once.
pub async fn check(cfg: &TokenConfig, gh: &GithubClient, host: &Host, board: &Board) {
    match gh.get_user().await {
        Ok(info) => {
            host.set_token_state(board, false, "");
            if let ScopeVerdict::Missing(need) = scope_verdict(info.scopes.as_deref(), gh.scope()) {
                tracing::error!(
                    event = "token_scope",
                    scope = need,
                    "the token lacks the {need:?} scope; registrations will fail"
                );
                board.set_condition(
                    Condition::TokenScope,
                    Some((
                        Health::Degraded,
                        format!("classic token lacks the {need:?} scope"),
                    )),
                );
            } else {
                board.set_condition(Condition::TokenScope, None);
            }
            if let Some(exp) = info.expires_at {
                let left = exp - crate::os::clocks::wall_now();
                board.system(|s| s.token_expires_at = Some(exp));
                if left.to_std().unwrap_or_default() <= cfg.expiry_warning {
                    tracing::warn!(event = "token_expiry", expires_at = %exp, days_left = left.num_days(), "the token expires in {} days: renew it", left.num_days());
                    board.set_condition(
                        Condition::TokenExpiry,
                        Some((
                            Health::Ok,
                            format!("expires in {} days ({exp})", left.num_days()),
                        )),
                    );
                } else {
                    board.set_condition(Condition::TokenExpiry, None);
                }
            }
        }
        Err(GithubError::Unauthorized { message }) => host.set_token_state(board, true, &message),
        Err(e) => {
            tracing::warn!(event = "token_check_failed", error = %e, "cannot re-validate the token now")
        }
    }
}

/// How often a refused token is checked again.
pub const REFUSED_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Check every `check_interval` (every 30 s while refused) and on request, until cancelled.
pub async fn run(
    cfg: TokenConfig,
    gh: GithubClient,
    host: Arc<Host>,
    board: Arc<Board>,
    cancel: CancellationToken,
) {
    loop {
        // While GitHub refuses the token (or the App's installation), look again every
        // 30 s, so that a restored one is seen soon rather than at the next 6-hourly check.
        let every = if host.token_invalid() {
            cfg.check_interval.min(REFUSED_RECHECK)
        } else {
            cfg.check_interval
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = crate::os::clocks::tick(every) => {}
            _ = host.check_token.notified() => {}
        }
        check(&cfg, &gh, &host, &board).await;
    }
}
