//! The TCP keepalive sysctls: set in a network namespace of our own (or when told to),
//! reported always.
//!
//! It must not: change a sysctl outside a network namespace of its own unless told to
//! (`set_sysctls = on`); the namespace is told apart by its inode, never by a marker file.

use std::path::Path;

use crate::config::{NetworkConfig, Toggle};
use crate::status::Board;

const KEEPALIVE_SYSCTLS: [&str; 3] = [
    "tcp_keepalive_time",
    "tcp_keepalive_intvl",
    "tcp_keepalive_probes",
];

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_host_namespace_is_told_apart_by_its_inode() {
        assert_eq!(netns_inode("net:[4026531833]"), Some(4026531833));
        assert_eq!(netns_inode("mnt:[4026531833]"), None);
        assert_eq!(netns_inode("net:[x]"), None);
        for ino in INIT_NET_INODES {
            assert!(INIT_NET_INODES.contains(&ino));
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
