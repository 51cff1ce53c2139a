//! Runner names and ownership: `<prefix>-<host>-<slot>-<random>` (JIT) or
//! `<prefix>-<host>-<slot>` (the fixed-name registration-token fallback).
//!
//! Pure. Ownership is exact: another host whose name starts with ours never matches,
//! so the ghost reaper never deletes anyone else's runner.

use rand::Rng;

/// Length of the random suffix.
pub const SUFFIX_LEN: usize = 6;

/// The host part: the hostname, lower-cased, reduced to `[a-z0-9-]`, at most 24 characters.
pub fn host_part(hostname: &str) -> String {
    let mut s: String = hostname
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(24);
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "host".into()
    } else {
        s
    }
}

/// A fresh JIT runner name.
pub fn jit_name(prefix: &str, hostname: &str, slot: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}-{hostname}-{slot}-{suffix}")
}

/// The fixed name of a slot in registration-token mode.
pub fn fixed_name(prefix: &str, hostname: &str, slot: usize) -> String {
    format!("{prefix}-{hostname}-{slot}")
}

/// Whether `name` is one of ours (this prefix, this host, any slot).
pub fn is_ours(name: &str, prefix: &str, hostname: &str) -> bool {
    let Some(rest) = name.strip_prefix(&format!("{prefix}-{hostname}-")) else {
        return false;
    };
    let (slot, suffix) = match rest.split_once('-') {
        Some((s, x)) => (s, Some(x)),
        None => (rest, None),
    };
    let slot_ok = !slot.is_empty() && slot.len() <= 3 && slot.bytes().all(|b| b.is_ascii_digit());
    let suffix_ok = suffix.is_none_or(|x| {
        x.len() == SUFFIX_LEN
            && x.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    slot_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_exact() {
        let n = jit_name("ci", "box", 3);
        assert!(is_ours(&n, "ci", "box"), "{n}");
        assert!(is_ours("ci-box-0", "ci", "box"));
        assert!(is_ours("ci-box-12-abc123", "ci", "box"));
        // Another host whose name extends ours.
        assert!(!is_ours("ci-box-2-0-abc123", "ci", "box"));
        assert!(!is_ours("ci-boxer-0-abc123", "ci", "box"));
        assert!(!is_ours("ci-box-0-ABC123", "ci", "box"));
        assert!(!is_ours("ci-box-0-abc12", "ci", "box"));
        assert!(!is_ours("other-box-0-abc123", "ci", "box"));
        assert!(!is_ours("ci-box-", "ci", "box"));
    }

    #[test]
    fn host_part_is_clean() {
        assert_eq!(host_part("My_Laptop.local"), "my-laptop-local");
        assert_eq!(host_part("---"), "host");
        assert_eq!(host_part(&"x".repeat(40)).len(), 24);
    }
}
