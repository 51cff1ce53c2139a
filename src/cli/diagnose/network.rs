//! Network checks: DNS for the API host, reachability without a token, the keepalive
//! sysctls, and the dependencies.

use std::time::Duration;

use super::{bad, ok, HostRoot};
use crate::cli::preflight::{Check, Level};
use crate::config::Config;

/// The API host resolves.
pub async fn check_dns(cfg: &Config) -> Check {
    let Some(host) = url_host(&cfg.github.api_url) else {
        return bad(
            "dns",
            Level::Fail,
            format!("no host in {}", cfg.github.api_url),
            "fix github.api_url",
        );
    };
    let port = if cfg.github.api_url.starts_with("http://") {
        80
    } else {
        443
    };
    let lookup = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host.clone(), port)),
    )
    .await;
    match lookup {
        Ok(Ok(mut a)) => match a.next() {
            Some(addr) => ok("dns", format!("{host} resolves ({})", addr.ip())),
            None => bad(
                "dns",
                Level::Fail,
                format!("{host} resolves to nothing"),
                dns_fix(),
            ),
        },
        Ok(Err(e)) => bad(
            "dns",
            Level::Fail,
            format!("cannot resolve {host}: {e}"),
            dns_fix(),
        ),
        Err(_) => bad(
            "dns",
            Level::Fail,
            format!("resolving {host} timed out (5 s)"),
            dns_fix(),
        ),
    }
}

fn dns_fix() -> &'static str {
    "check /etc/resolv.conf and that its nameservers answer (after a VPN change on WSL2: `wsl --shutdown`, or see the WSL2 checks)"
}

/// The host of `http(s)://host[:port]/...`.
pub(super) fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let hostport = rest.split('/').next()?;
    let hostname = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
    };
    (!hostname.is_empty()).then(|| hostname.to_string())
}

/// Without a token: does anything answer HTTP at the API URL?
pub async fn check_reachable(cfg: &Config) -> Check {
    let client = match reqwest::Client::builder()
        .connect_timeout(cfg.github.connect_timeout)
        .timeout(Duration::from_secs(15))
        .build()
    {
        Ok(c) => c,
        Err(e) => return bad("github", Level::Fail, e.to_string(), "report this bug"),
    };
    match client.get(format!("{}/", cfg.github.api_url)).send().await {
        Ok(r) => ok(
            "github",
            format!(
                "{} answers (HTTP {})",
                cfg.github.api_url,
                r.status().as_u16()
            ),
        ),
        Err(e) => bad(
            "github",
            Level::Fail,
            format!("{} is unreachable: {e}", cfg.github.api_url),
            "check network access to the GitHub API (DNS, proxy, firewall)",
        ),
    }
}

/// The keepalive sysctls: what a connection the supervisor cannot reach gets.
pub fn check_sysctls(root: &HostRoot, cfg: &Config) -> Check {
    let Some([t, i, p]) = crate::monitors::netwatch::read_sysctls(&root.path("/proc/sys/net/ipv4"))
    else {
        return ok("sysctls", "tcp_keepalive_* not readable here");
    };
    let ptrace = root
        .read("/proc/sys/kernel/yama/ptrace_scope")
        .map(|s| format!("; yama ptrace_scope {}", s.trim()))
        .unwrap_or_else(|| "; no Yama".into());
    let detail = format!(
        "net.ipv4.tcp_keepalive_time={t} intvl={i} probes={p}{ptrace} (the supervisor sets keepalive on its own and, where allowed, the listener's sockets)"
    );
    let worst = t + i * p;
    if worst > 1800 && cfg.network.listener_keepalive == crate::config::ListenerKeepalive::Off {
        bad(
            "sysctls",
            Level::Warn,
            detail,
            format!("with listener_keepalive = off, a dead long-poll is found only after {worst} s by the kernel: set net.ipv4.tcp_keepalive_time=60, intvl=10, probes=6 (sysctl.d), or let the read-only watch find it (watchdog.silent_after)"),
        )
    } else {
        ok("sysctls", detail)
    }
}

/// Each `[health] dependencies` entry answers a TCP connect.
pub async fn check_dependencies(cfg: &Config) -> Vec<Check> {
    let mut out = vec![];
    if cfg.health.dependencies.is_empty() {
        return vec![ok(
            "dependencies",
            "none configured ([health] dependencies)",
        )];
    }
    for dep in &cfg.health.dependencies {
        let up = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(dep.as_str()),
        )
        .await;
        out.push(match up {
            Ok(Ok(_)) => ok("dependency", format!("{dep} answers")),
            Ok(Err(e)) => bad(
                "dependency",
                Level::Warn,
                format!("{dep} does not answer: {e}"),
                format!("start it (jobs that need {dep} will fail; the runners stay up)"),
            ),
            Err(_) => bad(
                "dependency",
                Level::Warn,
                format!("{dep} did not answer within 3 s"),
                format!("start it (jobs that need {dep} will fail; the runners stay up)"),
            ),
        });
    }
    out
}
