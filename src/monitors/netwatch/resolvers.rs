//! The resolver fallback in container mode: fallback nameservers put first in
//! `resolv.conf` while the primary ones fail, the original restored once they answer (and
//! at exit). The primary ones are asked directly, over the DNS wire format.
//!
//! It must not: touch `resolv.conf` unless fallback resolvers are configured.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::NetworkConfig;
use crate::status::Board;

/// Marks the lines we put into `resolv.conf`.
const MARK: &str = "# runner-supervisor: fallback resolvers while the primary ones fail";

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

/// The fallback's state: the original `resolv.conf` while the fallback is in it.
#[derive(Default)]
pub(super) struct Fallback {
    switched: Option<String>,
}

impl Fallback {
    /// Ask the primary resolvers about `probe_name`: put the fallback first while none
    /// answers, restore the original once one does.
    pub(super) async fn check(&mut self, net: &NetworkConfig, probe_name: &str, board: &Board) {
        let path = &net.resolv_conf;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let original = self.switched.clone().unwrap_or_else(|| text.clone());
        let primary = nameservers(&original);
        let mut primary_ok = false;
        for ip in &primary {
            if ask(*ip, net.dns_port, probe_name).await {
                primary_ok = true;
                break;
            }
        }
        match (&self.switched, primary_ok) {
            (None, false) if !primary.is_empty() => {
                match crate::os::layout::write_atomic(
                    path,
                    with_fallback(&original, &net.fallback_resolvers).as_bytes(),
                ) {
                    Ok(()) => {
                        tracing::warn!(event = "resolvers_fallback", primary = ?primary, fallback = ?net.fallback_resolvers, file = %path.display(), "primary resolvers do not answer: fallback resolvers put first");
                        self.switched = Some(original);
                    }
                    Err(e) => {
                        tracing::error!(event = "resolv_conf_failed", error = %e, file = %path.display(), "cannot rewrite resolv.conf")
                    }
                }
            }
            (Some(orig), true)
                if crate::os::layout::write_atomic(path, orig.as_bytes()).is_ok() =>
            {
                tracing::info!(event = "resolvers_restored", file = %path.display(), "primary resolvers answer again: resolv.conf restored");
                self.switched = None;
            }
            _ => {}
        }
        let order = if self.switched.is_some() {
            "fallback first"
        } else {
            "primary"
        };
        board.system(|s| s.resolvers = Some(order.into()));
    }

    /// Leave `resolv.conf` as we found it.
    pub(super) fn restore(self, net: &NetworkConfig) {
        if let Some(orig) = self.switched {
            let _ = crate::os::layout::write_atomic(&net.resolv_conf, orig.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
