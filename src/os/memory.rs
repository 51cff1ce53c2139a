//! Giving back what only start-up (or the last busy period) needed, once the host is
//! quiet: the heap's free memory (`malloc_trim`) and this binary's own code and
//! read-only pages (`madvise(MADV_PAGEOUT)` on its file mappings). An idle supervisor's
//! resident memory is then its idle working set: the pages an idle loop touches come
//! back at their next use (a page fault), the rest stay out until a job needs them.
//!
//! Only this process's own mappings of its own binary are touched; the kernel skips
//! pages another process maps too (a shared library, a second supervisor of the same
//! binary), so nothing of anyone else's is reclaimed. A kernel without `MADV_PAGEOUT`
//! (before 5.4) refuses it, which is said and changes nothing else.

/// What a settling did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Resident memory before and after, kB (`VmRSS`).
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    /// The binary's mappings paged out, and those the kernel refused.
    pub paged_out: usize,
    pub refused: usize,
}

/// `VmRSS` of this process, kB.
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The read-only mappings of this process's own binary: (start, length).
fn own_read_only_mappings() -> Vec<(usize, usize)> {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return vec![];
    };
    let exe = exe.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // `start-end perms offset dev inode path`: its own file, not writable.
            if f.len() < 6 || f[5..].join(" ") != exe || f[1].contains('w') {
                return None;
            }
            let (a, b) = f[0].split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            Some((a, b.checked_sub(a)?))
        })
        .collect()
}

/// Trim the heap and page out the binary's own read-only pages.
pub fn settle() -> Settled {
    let rss_before_kb = rss_kb();
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let (mut paged_out, mut refused) = (0, 0);
    for (start, len) in own_read_only_mappings() {
        // SAFETY: advice on a mapping of this process's own binary, read-only: its pages
        // are reclaimed as under memory pressure and fault back in from the file when
        // used; no content changes.
        let r = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if r == 0 {
            paged_out += 1;
        } else {
            refused += 1;
        }
    }
    Settled {
        rss_before_kb,
        rss_after_kb: rss_kb(),
        paged_out,
        refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binarys_own_read_only_pages_are_found_and_paged_out() {
        let maps = own_read_only_mappings();
        assert!(!maps.is_empty(), "the test binary's text is mapped");
        let s = settle();
        assert!(s.paged_out + s.refused == maps.len(), "{s:?}");
        assert!(s.rss_before_kb > 0 && s.rss_after_kb > 0, "{s:?}");
    }
}
