//! Resolution of the API host through the system resolver, reported as the `dns`
//! condition.

use std::net::IpAddr;
use std::time::Duration;

use crate::status::{Board, Condition, Health};

/// The API host and port, from the API URL.
pub(super) fn api_host(api_url: &str) -> Option<(String, u16)> {
    let rest = api_url.split("://").nth(1)?;
    let hostport = rest.split('/').next()?;
    let (hostname, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h.to_string(), p.parse().ok()?),
        _ => (
            hostport.to_string(),
            if api_url.starts_with("https") {
                443
            } else {
                80
            },
        ),
    };
    Some((hostname.trim_matches(['[', ']']).to_string(), port))
}

/// The API host's resolution, watched while it is a name (an address needs none).
pub(super) struct ApiDns {
    /// The API host's name and port; `None` when the API URL names an address.
    name: Option<(String, u16)>,
    failing: bool,
}

impl ApiDns {
    pub(super) fn new(api_url: &str) -> ApiDns {
        ApiDns {
            name: api_host(api_url).filter(|(h, _)| h.parse::<IpAddr>().is_err()),
            failing: false,
        }
    }

    /// The name the resolvers are asked about: the API host's, else `github.com`.
    pub(super) fn probe_name(&self) -> String {
        self.name
            .as_ref()
            .map(|(h, _)| h.clone())
            .unwrap_or_else(|| "github.com".into())
    }

    /// Resolve the API host once; log a change, and set or clear the condition.
    pub(super) async fn check(&mut self, board: &Board) {
        let Some((h, port)) = &self.name else {
            return;
        };
        let ok = match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((h.as_str(), *port)),
        )
        .await
        {
            Ok(Ok(mut a)) => a.next().is_some(),
            _ => false,
        };
        if ok == self.failing {
            self.failing = !ok;
            if ok {
                tracing::info!(event = "dns_recovered", host = %h, "the API host resolves again");
            } else {
                tracing::error!(event = "dns_failed", host = %h, "cannot resolve the API host");
            }
        }
        board.set_condition(
            Condition::Dns,
            self.failing
                .then(|| (Health::Degraded, format!("cannot resolve {h}"))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_hosts() {
        assert_eq!(
            api_host("https://api.github.com"),
            Some(("api.github.com".into(), 443))
        );
        assert_eq!(
            api_host("http://127.0.0.1:8080/api/v3"),
            Some(("127.0.0.1".into(), 8080))
        );
    }
}
