//! Whether the supervisor may reach a listener's descriptors and, when the kernel says
//! no, why: measured on the process at hand (its state, owner and dumpability, our own
//! capabilities, a seccomp filter tried on our own descriptors, Yama), never guessed from
//! the host's settings alone.
//!
//! A listener that is exiting has released its memory before it becomes a zombie, and is
//! a zombie until its parent reaps it: from the first moment its `/proc/<pid>/fd` is
//! root's with mode 0500, and an unprivileged supervisor is refused there although
//! nothing forbids it anything. Such a listener (`PF_EXITING`, no address space, or a
//! zombie, read from `/proc/<pid>/stat`) is never judged.
//!
//! It must not: judge a process that is not live, or keep a descriptor it took.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;

use super::{pidfd_getfd, pidfd_open};

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Listing `/proc/<pid>/fd`.
    List,
    /// Taking a duplicate with `pidfd_getfd`.
    Take,
}

/// What `/proc/<pid>/status` says of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcStatus {
    /// `R`, `S`, `D`, `T`, `Z`, `X`...
    state: char,
    ppid: i32,
    /// Real, effective, saved and file-system uid.
    uids: [u32; 4],
    gids: [u32; 4],
    /// Effective capabilities.
    cap_eff: u64,
    /// 0 none, 1 strict, 2 filter.
    seccomp: u8,
}

impl ProcStatus {
    fn read(pid: i32) -> Option<ProcStatus> {
        parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }

    /// Running or sleeping: not a zombie, not dead.
    fn live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

fn parse_status(text: &str) -> Option<ProcStatus> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let ids = |name: &str| -> Option<[u32; 4]> {
        let v: Vec<u32> = field(name)?
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        v.try_into().ok()
    };
    Some(ProcStatus {
        state: field("State:")?.chars().next()?,
        ppid: field("PPid:")?.parse().ok()?,
        uids: ids("Uid:")?,
        gids: ids("Gid:")?,
        cap_eff: field("CapEff:").and_then(|v| u64::from_str_radix(v, 16).ok())?,
        seccomp: field("Seccomp:").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// `PF_EXITING` in `/proc/<pid>/stat`'s flags: set first thing in `do_exit`.
const PF_EXITING: u64 = 0x4;

/// Whether `pid` is a live process: not exiting (`PF_EXITING`), with an address space
/// (an exiting task drops it before it is a zombie, and its `/proc` entries turn root's
/// then), not a zombie, not gone.
pub fn is_live(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .is_some_and(|s| stat_is_live(&s))
}

fn stat_is_live(stat: &str) -> bool {
    // The fields after the command name, which may itself hold spaces and parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first().and_then(|s| s.chars().next());
    let flags = f.get(6).and_then(|v| v.parse::<u64>().ok());
    let vsize = f.get(20).and_then(|v| v.parse::<u64>().ok());
    match (state, flags, vsize) {
        (Some(st), Some(flags), Some(vsize)) => {
            !matches!(st, 'Z' | 'X') && flags & PF_EXITING == 0 && vsize > 0
        }
        _ => false,
    }
}

const CAP_SYS_PTRACE: u64 = 1 << 19;

/// Why the kernel refused the supervisor `reach` of listener `pid` with `err`: (reason,
/// fix), measured. `None` when `pid` is not live (a zombie's `/proc` entries are root's:
/// that says nothing of the next listener), before or after the measurement.
pub fn refusal_of(pid: i32, reach: Reach, err: &io::Error) -> Option<(String, String)> {
    if !is_live(pid) {
        return None;
    }
    let target = ProcStatus::read(pid).filter(ProcStatus::live)?;
    let me = ProcStatus::read(std::process::id() as i32)?;
    let verdict = measure(pid, &target, &me, reach, err);
    // It may have begun to exit while we looked (PF_EXITING comes before its entries turn
    // root's): then they misled us.
    is_live(pid).then_some(verdict)
}

fn measure(
    pid: i32,
    target: &ProcStatus,
    me: &ProcStatus,
    reach: Reach,
    err: &io::Error,
) -> (String, String) {
    let cap_ptrace = me.cap_eff & CAP_SYS_PTRACE != 0;
    if reach == Reach::Take {
        if err.raw_os_error() == Some(libc::ENOSYS) && kernel_before(5, 6) {
            return (
                "the kernel has no pidfd_getfd (Linux 5.6 or later is needed)".into(),
                "upgrade the kernel (WSL2: `wsl --update`)".into(),
            );
        }
        // Taking our own descriptor passes every ptrace check: only a filter refuses it.
        if let Err(own) = take_own() {
            return (
                format!(
                    "a seccomp filter refuses pidfd_getfd even on the supervisor's own descriptors ({own}{}; Docker's default profile allows it only with CAP_SYS_PTRACE, and a systemd SystemCallFilter= may leave it out)",
                    if me.seccomp == 2 { ", seccomp mode 2" } else { "" }
                ),
                "compose: add `cap_add: [SYS_PTRACE]` to the runner service (see compose/README.md for the trade-off) or use a seccomp profile that allows pidfd_getfd; systemd: add pidfd_getfd to SystemCallFilter=".into(),
            );
        }
    }
    let fd_owner = std::fs::metadata(format!("/proc/{pid}/fd"))
        .map(|m| m.uid())
        .ok();
    if !cap_ptrace && fd_owner == Some(0) && target.uids[1] != 0 {
        return (
            "the listener is not dumpable (it set PR_SET_DUMPABLE to 0, or runs a setuid or file-capability program; its /proc/<pid>/fd is root's) and the supervisor lacks CAP_SYS_PTRACE".into(),
            "grant the supervisor CAP_SYS_PTRACE (systemd: AmbientCapabilities=CAP_SYS_PTRACE; compose: cap_add: [SYS_PTRACE]), or keep the listener dumpable".into(),
        );
    }
    let same_user = target.uids[..3].iter().all(|u| *u == me.uids[0])
        && target.gids[..3].iter().all(|g| *g == me.gids[0]);
    if !cap_ptrace && !same_user {
        return (
            format!(
                "the listener runs as uid {} gid {} and the supervisor as uid {} gid {}, without CAP_SYS_PTRACE",
                target.uids[1], target.gids[1], me.uids[0], me.gids[0]
            ),
            "run the supervisor as the listener's user, or grant it CAP_SYS_PTRACE".into(),
        );
    }
    if reach == Reach::Take {
        let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok());
        match yama {
            Some(3) => {
                return (
                    "Yama ptrace_scope is 3: no process may take another's descriptors".into(),
                    "set kernel.yama.ptrace_scope to 1 (or 2 with CAP_SYS_PTRACE); 3 cannot be lowered without a reboot".into(),
                )
            }
            Some(2) if !cap_ptrace => {
                return (
                    "Yama ptrace_scope is 2 and the supervisor lacks CAP_SYS_PTRACE".into(),
                    "grant CAP_SYS_PTRACE (systemd: AmbientCapabilities=CAP_SYS_PTRACE; compose: cap_add: [SYS_PTRACE])".into(),
                )
            }
            Some(1) if !cap_ptrace && !descends_from_me(target) => {
                return (
                    "Yama ptrace_scope is 1 and the listener is not the supervisor's descendant (re-parented)".into(),
                    "restart the listener under this supervisor (it is replaced at its next exit)".into(),
                )
            }
            _ => {}
        }
    }
    (
        format!(
            "the kernel refused ({err}) although the listener is live, dumpable and of the same user, and Yama allows it: another security module (AppArmor, SELinux) may deny ptrace access"
        ),
        "see `supervisor doctor`, and the security module's log (dmesg)".into(),
    )
}

/// `pidfd_getfd` on a descriptor of our own.
fn take_own() -> io::Result<()> {
    let me = pidfd_open(std::process::id() as i32)?;
    pidfd_getfd(me.as_fd(), me.as_raw_fd()).map(drop)
}

/// Whether the running kernel is older than `major.minor`.
fn kernel_before(major: u32, minor: u32) -> bool {
    let Ok(u) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = u.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

/// Whether `target`'s ancestry reaches this process.
fn descends_from_me(target: &ProcStatus) -> bool {
    let me = std::process::id() as i32;
    let mut ppid = target.ppid;
    for _ in 0..64 {
        if ppid == me {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        match ProcStatus::read(ppid) {
            Some(p) => ppid = p.ppid,
            None => return false,
        }
    }
    false
}

/// Whether this process may take descriptors of a child of its own: tried on a forked
/// child that only waits. `Ok(())` or the refusal (reason, fix), measured on that child.
pub fn probe_getfd() -> Result<(), (String, String)> {
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, ForkResult};
    // SAFETY: the child calls only async-signal-safe functions (pause, _exit).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => loop {
            // SAFETY: async-signal-safe.
            unsafe { libc::pause() };
        },
        Ok(ForkResult::Parent { child }) => {
            let r = pidfd_open(child.as_raw()).and_then(|p| pidfd_getfd(p.as_fd(), 0).map(drop));
            let verdict = r.map_err(|e| {
                refusal_of(child.as_raw(), Reach::Take, &e)
                    .unwrap_or_else(|| (format!("pidfd_getfd failed: {e}"), String::new()))
            });
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(child, None);
            verdict
        }
        Err(e) => Err((format!("cannot fork a probe: {e}"), String::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_file_is_read_for_state_owner_capabilities_and_seccomp() {
        let text = "Name:\tRunner.Listener\nState:\tZ (zombie)\nPPid:\t41\nUid:\t997\t997\t997\t997\nGid:\t996\t996\t996\t996\nCapEff:\t0000000000080000\nSeccomp:\t2\n";
        let s = parse_status(text).unwrap();
        assert_eq!(s.state, 'Z');
        assert!(!s.live());
        assert_eq!((s.ppid, s.uids[1], s.gids[0]), (41, 997, 996));
        assert_eq!(s.cap_eff, CAP_SYS_PTRACE);
        assert_eq!(s.seccomp, 2);
        assert!(
            parse_status("State:\tS (sleeping)\n").is_none(),
            "fields missing"
        );
    }

    #[test]
    fn a_zombie_is_never_judged_and_a_live_child_is_reachable() {
        // This machine lets a process take its own child's descriptors.
        assert_eq!(probe_getfd(), Ok(()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Wait until it has exited, without reaping it (WNOWAIT): a zombie.
        // SAFETY: a plain waitid(2) on our own child into a zeroed siginfo.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(r, 0);
        assert_eq!(ProcStatus::read(pid).map(|s| s.state), Some('Z'));
        assert!(!is_live(pid));
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(refusal_of(pid, Reach::List, &eacces), None);
        assert_eq!(refusal_of(pid, Reach::Take, &eacces), None);
        child.wait().unwrap();
        assert_eq!(refusal_of(pid, Reach::List, &eacces), None, "gone");
        assert!(is_live(std::process::id() as i32));
    }

    #[test]
    fn an_exiting_task_or_one_without_memory_is_not_live() {
        let stat = |state: &str, flags: u64, vsize: u64| {
            format!("42 (Runner.Listener (x)) {state} 1 42 42 0 -1 {flags} 0 0 0 0 5 3 0 0 20 0 9 0 100 {vsize} 2000 18446744073709551615")
        };
        assert!(stat_is_live(&stat("S", 0x400000, 1 << 30)));
        assert!(!stat_is_live(&stat("R", 0x400004, 1 << 30)), "PF_EXITING");
        assert!(!stat_is_live(&stat("R", 0x400000, 0)), "its memory is gone");
        assert!(!stat_is_live(&stat("Z", 0x40040c, 0)));
        assert!(!stat_is_live("garbage"));
        assert!(is_live(std::process::id() as i32));
    }

    #[test]
    fn a_kernel_version_is_compared_by_its_numbers() {
        assert!(
            !kernel_before(5, 6),
            "this machine's kernel has pidfd_getfd"
        );
        assert!(kernel_before(99, 0));
    }
}
