//! The network: DNS fallback resolvers (scenario 25), the API host resolved periodically, and the keepalive sysctls of a network namespace.
//! Each through the real binary; a scenario test is named after its number in
//! `ghostrunner.md` §3.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{github, setup, wait_health, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn scenario_25_dns_fallback_resolvers_while_the_primary_fails_then_restored() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let port = std::net::UdpSocket::bind("127.0.0.77:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let primary_up = Arc::new(AtomicBool::new(true));
    for (ip, flag) in [
        ("127.0.0.77", Some(primary_up.clone())),
        ("127.0.0.78", None),
    ] {
        let sock = tokio::net::UdpSocket::bind((ip, port)).await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if flag.as_ref().is_none_or(|f| f.load(Ordering::SeqCst)) && n >= 12 {
                    buf[2] |= 0x80; // a response: NOERROR, no answers
                    let _ = sock.send_to(&buf[..n], from).await;
                }
            }
        });
    }
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let resolv = sb.dir.path().join("resolv.conf");
    let original = "search lan\nnameserver 127.0.0.77\n";
    std::fs::write(&resolv, original).unwrap();
    let mut env = sb.env(&gh);
    env.insert(
        "SUPERVISOR_NETWORK_FALLBACK_RESOLVERS".into(),
        "127.0.0.78".into(),
    );
    env.insert(
        "SUPERVISOR_NETWORK_RESOLV_CONF".into(),
        resolv.display().to_string(),
    );
    env.insert("SUPERVISOR_NETWORK_DNS_PORT".into(), port.to_string());
    env.insert("SUPERVISOR_NETWORK_DNS_INTERVAL".into(), "300ms".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        original,
        "untouched while the primary answers"
    );
    // The VPN cycle breaks the primary resolver.
    primary_up.store(false, Ordering::SeqCst);
    d.wait_event("resolvers_fallback", T).await;
    let text = std::fs::read_to_string(&resolv).unwrap();
    let first = text.lines().find(|l| l.starts_with("nameserver")).unwrap();
    assert_eq!(first, "nameserver 127.0.0.78", "{text}");
    assert!(
        text.contains("nameserver 127.0.0.77"),
        "the original stays below: {text}"
    );
    primary_up.store(true, Ordering::SeqCst);
    d.wait_event("resolvers_restored", T).await;
    assert_eq!(std::fs::read_to_string(&resolv).unwrap(), original);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn keepalive_sysctls_are_set_in_a_network_namespace_of_their_own() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_time").unwrap();
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_NETWORK_SET_SYSCTLS".into(), "on".into());
    env.insert("SUPERVISOR_NETWORK_KEEPALIVE_IDLE".into(), "77s".into());
    env.insert("SUPERVISOR_NETWORK_KEEPALIVE_INTERVAL".into(), "7s".into());
    env.insert("SUPERVISOR_NETWORK_KEEPALIVE_PROBES".into(), "4".into());
    // A new network namespace, as a container has: the sysctls there are its own.
    let mut d = Daemon::start_wrapped(&env, &["unshare", "--net"], &["run"]).await;
    let e = d.wait_event("sysctls", T).await;
    assert!(
        e.u64("time") == Some(77)
            && e.u64("intvl") == Some(7)
            && e.u64("probes") == Some(4)
            && e.is("how", "set"),
        "{e:?}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_time").unwrap(),
        host_before,
        "the host's are untouched"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

/// `auto` decides from the network namespace itself, never from a marker file or from
/// being PID 1: in a namespace of its own the sysctls are set; as PID 1 (as in a
/// host-network container) in the machine's namespace, they are left alone.
#[tokio::test]
async fn set_sysctls_auto_sets_them_only_in_a_network_namespace_of_its_own() {
    let read = |k: &str| -> String {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{k}"))
            .unwrap()
            .trim()
            .to_string()
    };
    let host = [
        read("tcp_keepalive_time"),
        read("tcp_keepalive_intvl"),
        read("tcp_keepalive_probes"),
    ];
    for (wrapper, how) in [
        (&["unshare", "--net"][..], "set"),
        (
            &[
                "unshare",
                "--pid",
                "--fork",
                "--kill-child=SIGKILL",
                "--mount-proc",
            ][..],
            "unchanged",
        ),
    ] {
        let (_sb, _gh, mut env) = setup(|_| {}).await;
        env.insert("SUPERVISOR_NETWORK_SET_SYSCTLS".into(), "auto".into());
        // The machine's own values: even a wrong decision would write nothing new.
        env.insert(
            "SUPERVISOR_NETWORK_KEEPALIVE_IDLE".into(),
            format!("{}s", host[0]),
        );
        env.insert(
            "SUPERVISOR_NETWORK_KEEPALIVE_INTERVAL".into(),
            format!("{}s", host[1]),
        );
        env.insert(
            "SUPERVISOR_NETWORK_KEEPALIVE_PROBES".into(),
            host[2].clone(),
        );
        let mut d = Daemon::start_wrapped(&env, wrapper, &["run"]).await;
        let e = d.wait_event("sysctls", T).await;
        assert!(e.is("how", how), "{wrapper:?}: {e:?}");
        // unshare --fork forwards nothing: signal the supervisor, its child, directly.
        let pid = d.supervisor_pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
        assert_eq!(d.wait_exit(T).await.0, Some(0));
    }
}

/// A DNS server on `ip:53` answering A queries for `name` with 127.0.0.1 while `up`, and
/// SERVFAIL otherwise (AAAA: no answers).
async fn fake_dns(ip: &str, name: &'static str, up: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let sock = tokio::net::UdpSocket::bind((ip, 53))
        .await
        .expect("bind port 53 (root)");
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if n < 17 {
                continue;
            }
            // The question: labels, then type and class.
            let mut i = 12;
            let mut labels = vec![];
            while i < n && buf[i] != 0 {
                let len = buf[i] as usize;
                labels
                    .push(String::from_utf8_lossy(&buf[i + 1..(i + 1 + len).min(n)]).into_owned());
                i += 1 + len;
            }
            let qend = i + 5;
            if qend > n {
                continue;
            }
            let qtype = u16::from_be_bytes([buf[i + 1], buf[i + 2]]);
            let mut resp = buf[..qend].to_vec();
            resp[2] = 0x81; // QR, RD
            let ok = up.load(std::sync::atomic::Ordering::SeqCst);
            resp[3] = if ok { 0x80 } else { 0x82 }; // RA; NOERROR or SERVFAIL
            resp[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
            if ok && qtype == 1 && labels.join(".").eq_ignore_ascii_case(name) {
                resp[7] = 1; // one answer
                resp.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
            }
            let _ = sock.send_to(&resp, from).await;
        }
    });
}

#[tokio::test]
async fn the_api_host_is_resolved_periodically_and_a_failure_reported() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = std::sync::Arc::new(AtomicBool::new(false));
    fake_dns("127.0.0.79", "gh.test", up.clone()).await;
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let resolv = sb.dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.79\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let mut env = sb.env(&gh);
    env.insert(
        "SUPERVISOR_GITHUB_API_URL".into(),
        format!("http://gh.test:{}", gh.addr().port()),
    );
    env.insert("SUPERVISOR_NETWORK_DNS_INTERVAL".into(), "300ms".into());
    // Its own mount namespace, where /etc/resolv.conf is ours: no query leaves the machine.
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!(
            "mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"",
            resolv.display()
        ),
    ];
    let mut d = Daemon::start_wrapped(&env, &wrapper, &["run"]).await;
    d.wait_event("dns_failed", T).await;
    wait_health(&env, "dns: cannot resolve gh.test", Duration::from_secs(5)).await;
    // The resolver recovers: so does everything else, by itself.
    up.store(true, Ordering::SeqCst);
    d.wait_event("dns_recovered", T).await;
    d.wait_listening(1, T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
