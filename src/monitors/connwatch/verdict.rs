//! A listener's keepalive verdict (what its slot's status shows), the host's one-line
//! summary over every listener, and a refusal said once with its fix.

use super::{Access, ConnWatch};
use crate::config::ListenerKeepalive;
use crate::os::sockets::Reach;
use crate::status::{KeepaliveState, SlotKeepalive};

/// One listener's keepalive: judged for it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// No connection taken yet.
    Pending,
    /// Keepalive set on this many of its connections.
    On(u64),
    /// `listener_keepalive = off`.
    Off,
    /// Refused, measured on this listener: reason and fix.
    Refused(String, String),
}

impl Verdict {
    pub(super) fn status(&self) -> SlotKeepalive {
        let (state, connections, why) = match self {
            Verdict::Pending => (KeepaliveState::Pending, 0, None),
            Verdict::On(n) => (KeepaliveState::On, *n, None),
            Verdict::Off => (KeepaliveState::Off, 0, None),
            Verdict::Refused(why, fix) => (KeepaliveState::Refused, 0, Some((why, fix))),
        };
        SlotKeepalive {
            state,
            connections,
            reason: why.map(|w| w.0.clone()),
            fix: why.map(|w| w.1.clone()),
        }
    }
}

impl ConnWatch {
    /// The host's one-line summary: every current listener's verdict, or the last one
    /// while none runs.
    pub(super) fn summary(&self) -> String {
        if self.mode == ListenerKeepalive::Off {
            return "off (listener_keepalive = off); watched read-only".into();
        }
        let on = format!(
            "on ({} connection{} so far)",
            self.tally.injected,
            if self.tally.injected == 1 { "" } else { "s" }
        );
        let refused: Vec<(usize, &str, &str)> = self
            .watched
            .iter()
            .filter(|(_, w)| !w.ended)
            .filter_map(|(slot, w)| match &w.verdict {
                Verdict::Refused(why, fix) => Some((*slot, why.as_str(), fix.as_str())),
                _ => None,
            })
            .collect();
        let Some((_, why, fix)) = refused.first() else {
            if self
                .watched
                .values()
                .all(|w| w.ended || w.verdict == Verdict::Pending)
                && !self.summary.is_empty()
            {
                return self.summary.clone();
            }
            return on;
        };
        let slots: Vec<String> = refused.iter().map(|r| r.0.to_string()).collect();
        let others = self
            .watched
            .values()
            .any(|w| !w.ended && matches!(w.verdict, Verdict::On(_)));
        format!(
            "refused for slot {}: {why}; watched read-only. Fix: {fix}{}",
            slots.join(", "),
            if others {
                format!("; {on} for the other slots")
            } else {
                String::new()
            }
        )
    }

    /// Listener `slot` was refused, for `why`: it is watched read-only.
    pub(super) fn refuse(&mut self, slot: usize, reach: Reach, why: String, fix: String) {
        let Some(w) = self.watched.get_mut(&slot) else {
            return;
        };
        let pid = w.pid;
        w.verdict = Verdict::Refused(why.clone(), fix.clone());
        self.tally.listeners_refused += 1;
        let first = self.said.insert(why.clone());
        let what = match (reach, w.access) {
            (Reach::List, Access::ByUid(uid)) => format!(
                "cannot list the listener's descriptors ({why}): watching every TCP connection of uid {uid} for silence instead"
            ),
            _ => format!(
                "cannot set keepalive on the listener's connections ({why}); watching them read-only (dead paths and silent hangs are still found)"
            ),
        };
        if first {
            tracing::warn!(event = "keepalive_refused", slot, pid, reason = %why, fix = %fix, "{what}. Fix: {fix}");
        } else {
            tracing::debug!(event = "keepalive_refused", slot, pid, reason = %why, "{what}");
        }
    }
}
