//! The network around the supervisor: TCP keepalive sysctls (`sysctls.rs`: set in a
//! container's own network namespace, reported always), periodic resolution of the API
//! host (`api_dns.rs`), the resolver fallback in container mode (`resolvers.rs`: fallback
//! nameservers put first in `resolv.conf` while the primary ones fail, the original
//! restored once they answer), and dependency probes (`dependencies.rs`).
//!
//! It must not: touch `resolv.conf` unless fallback resolvers are configured, or change a
//! sysctl outside a network namespace of its own unless told to (`set_sysctls = on`); the
//! namespace is told apart by its inode, never by a marker file.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::status::Board;

mod api_dns;
mod dependencies;
mod resolvers;
mod sysctls;

pub use resolvers::{ask, dns_answer_ok, dns_query, nameservers, with_fallback};
pub use sysctls::{apply_sysctls, netns_inode, own_network_namespace, read_sysctls, sysctls};

/// Watch resolution, resolvers and dependencies every `dns_interval` until cancelled.
pub async fn run(cfg: Arc<Config>, board: Arc<Board>, cancel: CancellationToken) {
    let net = &cfg.network;
    sysctls(net, &board);
    let mut api_dns = api_dns::ApiDns::new(&cfg.github.api_url);
    let probe_name = api_dns.probe_name();
    let mut fallback = resolvers::Fallback::default();
    let mut dependencies = dependencies::Dependencies::default();
    loop {
        api_dns.check(&board).await;
        if !net.fallback_resolvers.is_empty() {
            fallback.check(net, &probe_name, &board).await;
        }
        dependencies.probe(&cfg.health.dependencies, &board).await;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = crate::os::clocks::tick(net.dns_interval) => {}
        }
    }
    fallback.restore(net);
}
