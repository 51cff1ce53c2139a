//! The slots' circuit breakers kept across restarts in `<state>/breaker.json`, within one
//! boot (CLOCK_BOOTTIME values mean nothing in another): the persistence of what
//! `policy::watchdog` decides.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::policy::watchdog::Breaker;

/// The breakers of all slots as persisted in `<state>/breaker.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Persisted {
    /// `/proc/sys/kernel/random/boot_id`: CLOCK_BOOTTIME values only mean something within one boot.
    pub boot_id: String,
    pub slots: Vec<Breaker>,
}

/// This boot's id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Load the breakers for `n` slots; from another boot they start closed.
pub fn load(path: &Path, n: usize, boot: &str) -> Vec<Breaker> {
    let p: Persisted = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut slots = if p.boot_id == boot { p.slots } else { vec![] };
    slots.resize(n, Breaker::default());
    slots.truncate(n);
    slots
}

/// Save the breakers.
pub fn save(path: &Path, boot: &str, slots: &[Breaker]) -> std::io::Result<()> {
    let p = Persisted {
        boot_id: boot.to_string(),
        slots: slots.to_vec(),
    };
    crate::os::layout::write_atomic(path, &serde_json::to_vec_pretty(&p).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn persisted_only_within_one_boot() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("breaker.json");
        let b = Breaker {
            open_until: Some(Duration::from_secs(99)),
            ..Breaker::default()
        };
        save(&p, "boot-a", std::slice::from_ref(&b)).unwrap();
        assert_eq!(load(&p, 2, "boot-a")[0], b);
        assert_eq!(load(&p, 2, "boot-a").len(), 2);
        assert_eq!(load(&p, 1, "boot-b")[0], Breaker::default());
    }
}
