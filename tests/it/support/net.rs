//! Network helpers: free loopback ports, and a blackhole for one loopback port.

/// A free UDP port on loopback.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Silently drop every TCP packet to and from one loopback port, until dropped.
/// Only the test's own port is touched; the rules are removed on drop.
pub struct Blackhole {
    rules: Vec<Vec<String>>,
}

impl Blackhole {
    pub fn port(port: u16) -> Blackhole {
        let p = port.to_string();
        let rules: Vec<Vec<String>> = [["--dport", p.as_str()], ["--sport", p.as_str()]]
            .iter()
            .map(|[k, v]| {
                ["INPUT", "-i", "lo", "-p", "tcp", k, v, "-j", "DROP"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
            .collect();
        for r in &rules {
            let st = std::process::Command::new("iptables")
                .arg("-I")
                .args(r)
                .status()
                .expect("iptables (apt-get install iptables; tests/run does)");
            assert!(st.success(), "iptables -I {r:?} failed");
        }
        Blackhole { rules }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for r in &self.rules {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(r)
                .status();
        }
    }
}
