//! The JIT config's hand-over: a tar of the runner's root (1777) and the config's file,
//! the container user's alone where its uid is known, copied in before the start.

use super::{JIT_DIR, JIT_FILE};

/// `uid[:gid]` when numeric, else root's (the file is then readable by the container's
/// user, whoever it is: no one else has it).
pub(super) fn numeric_user(user: Option<&str>) -> (Option<u32>, Option<u32>) {
    let Some(u) = user else {
        return (Some(0), Some(0));
    };
    let (a, b) = u.split_once(':').unwrap_or((u, ""));
    let uid = a.parse().ok();
    let gid = b.parse().ok().or(uid);
    (uid, gid)
}

/// A tar of `/runner/` (the runner's root, writable by the container's user whoever it is:
/// 1777, as /tmp; the install is mounted inside it at start) and, with a JIT config,
/// `/.runner-supervisor/jitconfig`, the container user's alone where its uid is known.
pub(super) fn jit_tar(jit: Option<&str>, uid: Option<u32>, gid: Option<u32>) -> Vec<u8> {
    let known = uid.is_some();
    let (u, g) = (uid.unwrap_or(0), gid.unwrap_or(0));
    let mut out = Vec::with_capacity(4096);
    out.extend(tar_header("runner/", 0o1777, 0, 0, 0, b'5'));
    let Some(jit) = jit else {
        out.extend([0u8; 1024]);
        return out;
    };
    let dir_mode = if known { 0o700 } else { 0o777 };
    let file_mode = if known { 0o400 } else { 0o444 };
    out.extend(tar_header(&format!("{JIT_DIR}/"), dir_mode, u, g, 0, b'5'));
    let body = format!("{jit}\n");
    out.extend(tar_header(
        JIT_FILE.trim_start_matches('/'),
        file_mode,
        u,
        g,
        body.len(),
        b'0',
    ));
    out.extend(body.as_bytes());
    let pad = (512 - body.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
    out.extend([0u8; 1024]);
    out
}

/// One ustar header.
pub(super) fn tar_header(
    name: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: usize,
    kind: u8,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
        h[at..at + v.len().min(len)].copy_from_slice(&v[..v.len().min(len)]);
    };
    put(&mut h, 0, 100, name.as_bytes());
    put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, 8, format!("{uid:07o}\0").as_bytes());
    put(&mut h, 116, 8, format!("{gid:07o}\0").as_bytes());
    put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
    let now = crate::os::clocks::wall_now().timestamp().max(0);
    put(&mut h, 136, 12, format!("{now:011o}\0").as_bytes());
    h[156] = kind;
    put(&mut h, 257, 6, b"ustar\0");
    put(&mut h, 263, 2, b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jit_tar_is_one_private_file_that_tar_reads_back() {
        let t = jit_tar(Some("c2VjcmV0"), Some(1001), Some(1001));
        assert_eq!(t.len() % 512, 0);
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("x.tar");
        std::fs::write(&tar, &t).unwrap();
        let list = std::process::Command::new("tar")
            .args(["-tvf"])
            .arg(&tar)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&list.stdout);
        assert!(list.status.success(), "{text}");
        assert!(text.contains("-r-------- 1001/1001"), "{text}");
        assert!(text.contains(".runner-supervisor/jitconfig"), "{text}");
        assert!(
            text.contains("drwxrwxrwt 0/0") && text.contains("runner/"),
            "{text}"
        );
        let x = std::process::Command::new("tar")
            .args(["-xOf"])
            .arg(&tar)
            .arg(".runner-supervisor/jitconfig")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&x.stdout), "c2VjcmV0\n");
    }

    #[test]
    fn users_are_numeric_or_unknown() {
        assert_eq!(numeric_user(None), (Some(0), Some(0)));
        assert_eq!(numeric_user(Some("1001")), (Some(1001), Some(1001)));
        assert_eq!(numeric_user(Some("1001:27")), (Some(1001), Some(27)));
        assert_eq!(numeric_user(Some("runner")), (None, None));
    }
}
