//! The network around the supervisor: TCP keepalive sysctls (set in a container's own
//! network namespace, reported always), periodic resolution of the API host, the resolver
//! fallback in container mode (fallback nameservers put first in `resolv.conf` while the
//! primary ones fail, the original restored once they answer), and dependency probes.
//!
//! It must not: touch `resolv.conf` unless fallback resolvers are configured, or change a
//! sysctl outside a network namespace of its own unless told to (`set_sysctls = on`); the
//! namespace is told apart by its inode, never by a marker file.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, NetworkConfig, Toggle};
use crate::status::{Board, Condition, Health};

const KEEPALIVE_SYSCTLS: [&str; 3] = [
    "tcp_keepalive_time",
    "tcp_keepalive_intvl",
    "tcp_keepalive_probes",
];
/// Marks the lines we put into `resolv.conf`.
const MARK: &str = "# runner-supervisor: fallback resolvers while the primary ones fail";

/// The inode of the initial (host) network namespace: `0xEFFFFFF9` on current kernels
/// (PROC_NET_INIT_INO), 4026531992 on older ones.
const INIT_NET_INODES: [u64; 2] = [0xEFFF_FFF9, 4_026_531_992];

/// The inode of a `/proc/<pid>/ns/net` link target such as `net:[4026531833]`.
pub fn netns_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether this process has a network namespace of its own, proved by the namespace
/// itself (not by a marker file: a host-network container has `/.dockerenv` and shares
/// the host's namespace). Only then are its sysctls ours to set.
pub fn own_network_namespace() -> bool {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|l| netns_inode(&l.to_string_lossy()))
        .is_some_and(|ino| !INIT_NET_INODES.contains(&ino))
}

/// Read the keepalive sysctls under `root` (normally `/proc/sys/net/ipv4`).
pub fn read_sysctls(root: &Path) -> Option<[u64; 3]> {
    let mut v = [0u64; 3];
    for (i, name) in KEEPALIVE_SYSCTLS.iter().enumerate() {
        v[i] = std::fs::read_to_string(root.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
    }
    Some(v)
}

/// Set the keepalive sysctls under `root` to the configured values; returns the values in effect.
pub fn apply_sysctls(root: &Path, net: &NetworkConfig) -> Result<[u64; 3], String> {
    let want = [
        net.keepalive_idle.as_secs(),
        net.keepalive_interval.as_secs(),
        net.keepalive_probes as u64,
    ];
    for (name, v) in KEEPALIVE_SYSCTLS.iter().zip(want) {
        std::fs::write(root.join(name), v.to_string())
            .map_err(|e| format!("net.ipv4.{name}: {e}"))?;
    }
    read_sysctls(root).ok_or_else(|| "cannot read the sysctls back".to_string())
}

/// Set (where allowed) and report the keepalive sysctls.
pub fn sysctls(net: &NetworkConfig, board: &Board) {
    let root = Path::new("/proc/sys/net/ipv4");
    let set = match net.set_sysctls {
        Toggle::On => true,
        Toggle::Off => false,
        Toggle::Auto => own_network_namespace(),
    };
    let result = if set {
        apply_sysctls(root, net).map(|v| (v, "set"))
    } else {
        read_sysctls(root)
            .map(|v| (v, "unchanged"))
            .ok_or_else(|| "unreadable".into())
    };
    match result {
        Ok(([t, i, p], how)) => {
            tracing::info!(
                event = "sysctls",
                time = t,
                intvl = i,
                probes = p,
                how,
                "tcp keepalive sysctls in effect"
            );
            board.system(|s| {
                s.tcp_keepalive_sysctls = Some(format!("time={t} intvl={i} probes={p} ({how})"))
            });
        }
        Err(e) => {
            tracing::warn!(event = "sysctls_failed", error = %e, "cannot set the tcp keepalive sysctls (the supervisor's own sockets carry keepalive anyway)")
        }
    }
}

/// Encode a DNS query for `name`, type A.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `answer` is a response to query `id` from a working server (NOERROR or NXDOMAIN).
pub fn dns_answer_ok(id: u16, answer: &[u8]) -> bool {
    answer.len() >= 12
        && answer[..2] == id.to_be_bytes()
        && answer[2] & 0x80 != 0
        && matches!(answer[3] & 0x0f, 0 | 3)
}

/// Ask nameserver `ip:port` about `name` directly.
pub async fn ask(ip: IpAddr, port: u16, name: &str) -> bool {
    let bind: SocketAddr = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal");
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return false;
    };
    if sock.connect((ip, port)).await.is_err() {
        return false;
    }
    let id: u16 = rand::random();
    if sock.send(&dns_query(id, name)).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await, Ok(Ok(n)) if dns_answer_ok(id, &buf[..n]))
}

/// The nameservers of a resolv.conf, ignoring the lines we added.
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    let mut ours = false;
    let mut out = vec![];
    for line in text.lines() {
        if line == MARK {
            ours = true;
            continue;
        }
        if ours && line.trim().is_empty() {
            ours = false;
            continue;
        }
        if ours {
            continue;
        }
        if let Some(ip) = line
            .trim()
            .strip_prefix("nameserver")
            .and_then(|r| r.trim().parse().ok())
        {
            out.push(ip);
        }
    }
    out
}

/// `resolv.conf` with `fallback` first, above the original text.
pub fn with_fallback(original: &str, fallback: &[String]) -> String {
    let mut s = format!("{MARK}\n");
    for f in fallback {
        s.push_str(&format!("nameserver {f}\n"));
    }
    s.push('\n');
    s.push_str(original);
    s
}

/// The API host, if it is a name.
fn api_host(api_url: &str) -> Option<(String, u16)> {
    let rest = api_url.split("://").nth(1)?;
    let hostport = rest.split('/').next()?;
    let (host, port) = match hostport.rsplit_once(':') {
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
    Some((host.trim_matches(['[', ']']).to_string(), port))
}

/// Watch resolution, resolvers and dependencies every `dns_interval` until cancelled.
pub async fn run(cfg: Arc<Config>, board: Arc<Board>, cancel: CancellationToken) {
    let net = &cfg.network;
    sysctls(net, &board);
    let host = api_host(&cfg.github.api_url);
    let probe_name = host
        .as_ref()
        .filter(|(h, _)| h.parse::<IpAddr>().is_err())
        .map(|(h, _)| h.clone())
        .unwrap_or_else(|| "github.com".into());
    let mut switched: Option<String> = None;
    let mut dns_failing = false;
    let mut deps_down: std::collections::BTreeSet<String> = Default::default();
    loop {
        // 1. Resolution of the API host, through the system resolver.
        if let Some((h, port)) = host.as_ref().filter(|(h, _)| h.parse::<IpAddr>().is_err()) {
            let ok = match tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((h.as_str(), *port)),
            )
            .await
            {
                Ok(Ok(mut a)) => a.next().is_some(),
                _ => false,
            };
            if ok == dns_failing {
                dns_failing = !ok;
                if ok {
                    tracing::info!(event = "dns_recovered", host = %h, "the API host resolves again");
                } else {
                    tracing::error!(event = "dns_failed", host = %h, "cannot resolve the API host");
                }
            }
            board.set_condition(
                Condition::Dns,
                dns_failing.then(|| (Health::Degraded, format!("cannot resolve {h}"))),
            );
        }
        // 2. Container mode: fallback resolvers while the primary ones fail.
        if !net.fallback_resolvers.is_empty() {
            let path = &net.resolv_conf;
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let original = switched.clone().unwrap_or_else(|| text.clone());
            let primary = nameservers(&original);
            let mut primary_ok = false;
            for ip in &primary {
                if ask(*ip, net.dns_port, &probe_name).await {
                    primary_ok = true;
                    break;
                }
            }
            match (&switched, primary_ok) {
                (None, false) if !primary.is_empty() => {
                    match crate::layout::write_atomic(
                        path,
                        with_fallback(&original, &net.fallback_resolvers).as_bytes(),
                    ) {
                        Ok(()) => {
                            tracing::warn!(event = "resolvers_fallback", primary = ?primary, fallback = ?net.fallback_resolvers, file = %path.display(), "primary resolvers do not answer: fallback resolvers put first");
                            switched = Some(original);
                        }
                        Err(e) => {
                            tracing::error!(event = "resolv_conf_failed", error = %e, file = %path.display(), "cannot rewrite resolv.conf")
                        }
                    }
                }
                (Some(orig), true)
                    if crate::layout::write_atomic(path, orig.as_bytes()).is_ok() =>
                {
                    tracing::info!(event = "resolvers_restored", file = %path.display(), "primary resolvers answer again: resolv.conf restored");
                    switched = None;
                }
                _ => {}
            }
            let order = if switched.is_some() {
                "fallback first"
            } else {
                "primary"
            };
            board.system(|s| s.resolvers = Some(order.into()));
        }
        // 3. Dependencies (e.g. the shared MongoDB): reported, never acted on.
        for dep in &cfg.health.dependencies {
            let up = matches!(
                tokio::time::timeout(
                    Duration::from_secs(3),
                    tokio::net::TcpStream::connect(dep.as_str())
                )
                .await,
                Ok(Ok(_))
            );
            let changed = if up {
                deps_down.remove(dep)
            } else {
                deps_down.insert(dep.clone())
            };
            if changed {
                if up {
                    tracing::info!(event = "dependency_up", dependency = %dep, "dependency reachable again");
                } else {
                    tracing::warn!(event = "dependency_down", dependency = %dep, "dependency unreachable; runners stay up");
                }
            }
            board.system(|s| {
                s.dependencies.insert(dep.clone(), up);
            });
            board.set_condition(
                Condition::Dependency(dep.clone()),
                (!up).then(|| (Health::Degraded, "unreachable".to_string())),
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = crate::clocks::tick(net.dns_interval) => {}
        }
    }
    // Leave resolv.conf as we found it.
    if let Some(orig) = switched {
        let _ = crate::layout::write_atomic(&net.resolv_conf, orig.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_namespace_is_told_apart_by_its_inode() {
        assert_eq!(netns_inode("net:[4026531833]"), Some(4026531833));
        assert_eq!(netns_inode("mnt:[4026531833]"), None);
        assert_eq!(netns_inode("net:[x]"), None);
        for host in INIT_NET_INODES {
            assert!(INIT_NET_INODES.contains(&host));
        }
        assert_eq!(INIT_NET_INODES[0], 4026531833);
        // This test process runs in the machine's own namespace unless a test put it in
        // one of its own: either way the answer follows the inode.
        let ino = std::fs::read_link("/proc/self/ns/net")
            .ok()
            .and_then(|l| netns_inode(&l.to_string_lossy()))
            .unwrap();
        assert_eq!(own_network_namespace(), !INIT_NET_INODES.contains(&ino));
    }

    #[test]
    fn resolv_conf_round_trip() {
        let orig = "search lan\nnameserver 10.0.0.1\nnameserver 10.0.0.2\n";
        let fb = with_fallback(orig, &["1.1.1.1".into()]);
        assert!(fb.starts_with(MARK));
        assert_eq!(fb.lines().nth(1), Some("nameserver 1.1.1.1"));
        assert_eq!(nameservers(&fb), nameservers(orig));
        assert_eq!(
            nameservers(orig),
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn dns_wire() {
        let q = dns_query(0x1234, "api.github.com");
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[12..16], &[3, b'a', b'p', b'i']);
        let mut a = q.clone();
        a[2] |= 0x80;
        assert!(dns_answer_ok(0x1234, &a));
        assert!(!dns_answer_ok(0x1235, &a));
        assert!(!dns_answer_ok(0x1234, &q), "a query is not an answer");
        a[3] = (a[3] & 0xf0) | 2; // SERVFAIL
        assert!(!dns_answer_ok(0x1234, &a));
    }

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

    #[test]
    fn sysctls_are_written_and_read_back() {
        let t = tempfile::tempdir().unwrap();
        for n in KEEPALIVE_SYSCTLS {
            std::fs::write(t.path().join(n), "7200\n").unwrap();
        }
        let net = NetworkConfig {
            keepalive_idle: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_probes: 6,
            set_sysctls: Toggle::On,
            listener_keepalive: crate::config::ListenerKeepalive::Auto,
            user_timeout: Duration::from_secs(120),
            dns_interval: Duration::from_secs(60),
            fallback_resolvers: vec![],
            resolv_conf: "/etc/resolv.conf".into(),
            dns_port: 53,
        };
        assert_eq!(apply_sysctls(t.path(), &net).unwrap(), [60, 10, 6]);
    }
}
