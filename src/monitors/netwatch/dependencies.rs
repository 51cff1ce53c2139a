//! Dependency probes (e.g. the shared MongoDB): each `host:port` connected to, the result
//! reported, never acted on.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::status::{Board, Condition, Health};

/// The dependencies found down, to log only changes.
#[derive(Default)]
pub(super) struct Dependencies {
    down: BTreeSet<String>,
}

impl Dependencies {
    /// Connect to each dependency once; log a change, and report each one.
    pub(super) async fn probe(&mut self, dependencies: &[String], board: &Board) {
        for dep in dependencies {
            let up = matches!(
                tokio::time::timeout(
                    Duration::from_secs(3),
                    tokio::net::TcpStream::connect(dep.as_str())
                )
                .await,
                Ok(Ok(_))
            );
            let changed = if up {
                self.down.remove(dep)
            } else {
                self.down.insert(dep.clone())
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
    }
}
