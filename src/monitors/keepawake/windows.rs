//! Windows kept awake while busy, on WSL2 with Windows interop: logind's lock holds the
//! Linux side only, and Windows sleeps on idle whatever WSL runs. A `powershell.exe`
//! started through interop calls `SetThreadExecutionState(ES_CONTINUOUS |
//! ES_SYSTEM_REQUIRED)` and then reads its standard input to the end: it holds the state
//! until we close that input (no slot busy) or die (the pipe closes with us); one that
//! lingers is killed by its PID. systemd/README.md says what this holds and what it
//! does not.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use super::Unavailable;

/// Where Windows PowerShell lives, seen from WSL with C: at its default mount point.
pub const POWERSHELL_AT: &str = "/mnt/c/Windows/System32/WindowsPowerShell/v1.0/powershell.exe";

/// ES_CONTINUOUS | ES_SYSTEM_REQUIRED (0x80000001), and ES_CONTINUOUS alone (clears it).
pub const ES_HOLD: u32 = 0x8000_0001;
pub const ES_CLEAR: u32 = 0x8000_0000;

/// The helper's script: hold, say `held`, wait for the end of standard input, clear.
pub fn script() -> String {
    format!(
        "$ErrorActionPreference = 'Stop'\n\
         Add-Type -Namespace RunnerSupervisor -Name Power -MemberDefinition '[DllImport(\"kernel32.dll\")] public static extern uint SetThreadExecutionState(uint esFlags);'\n\
         # ES_CONTINUOUS | ES_SYSTEM_REQUIRED: no sleep on idle while this thread lives.\n\
         if ([RunnerSupervisor.Power]::SetThreadExecutionState([uint32]{ES_HOLD}) -eq 0) {{ exit 3 }}\n\
         [Console]::Out.WriteLine('held')\n\
         [Console]::Out.Flush()\n\
         # Until runner-supervisor closes our standard input (no slot busy) or dies.\n\
         [void][Console]::In.ReadToEnd()\n\
         [void][RunnerSupervisor.Power]::SetThreadExecutionState([uint32]{ES_CLEAR})\n"
    )
}

/// `-EncodedCommand`'s form: base64 of the UTF-16LE text (no quoting through interop).
pub fn encoded(script: &str) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = script
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether this kernel is WSL's.
pub fn on_wsl() -> bool {
    on_wsl_at(Path::new("/"))
}

fn on_wsl_at(root: &Path) -> bool {
    std::fs::read_to_string(root.join("proc/sys/kernel/osrelease"))
        .map(|r| {
            let r = r.to_ascii_lowercase();
            r.contains("microsoft") || r.contains("wsl")
        })
        .unwrap_or(false)
}

/// What this host offers for keeping Windows awake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interop {
    /// Not WSL: there is no Windows to keep awake.
    NotWsl,
    /// WSL2, but interop or `powershell.exe` is missing.
    Unavailable(Unavailable),
    /// `powershell.exe`, reachable through interop.
    Ready(PathBuf),
}

/// This host, from `/` and PATH (debug builds: [`super::WSL_INTEROP_ENV`] decides
/// whether interop is there).
pub fn detect() -> Interop {
    #[allow(unused_mut)]
    let mut forced = None;
    #[cfg(debug_assertions)]
    if let Some(v) = std::env::var_os(super::WSL_INTEROP_ENV) {
        forced = Some(v == "1");
    }
    detect_at(Path::new("/"), std::env::var_os("PATH").as_deref(), forced)
}

/// The host under `root`, with `path` as PATH; `forced` stands for WSL2 with interop
/// (`Some(true)`) or without it (`Some(false)`).
pub fn detect_at(root: &Path, path: Option<&OsStr>, forced: Option<bool>) -> Interop {
    if forced.is_none() && !on_wsl_at(root) {
        return Interop::NotWsl;
    }
    if !forced.unwrap_or_else(|| interop_enabled(root)) {
        return Interop::Unavailable(Unavailable {
            reason: "WSL2's Windows interop is off (no enabled WSLInterop in /proc/sys/fs/binfmt_misc)".into(),
            fix: "set `[interop]` `enabled=true` in /etc/wsl.conf and run `wsl --shutdown` from Windows; or set [host] windows_keep_awake = \"off\"".into(),
        });
    }
    let on_path = path
        .map(std::env::split_paths)
        .into_iter()
        .flatten()
        .map(|d| d.join("powershell.exe"))
        .find(|p| p.is_file());
    let fixed = root.join(POWERSHELL_AT.trim_start_matches('/'));
    match on_path.or_else(|| fixed.is_file().then_some(fixed)) {
        Some(p) => Interop::Ready(p),
        None => Interop::Unavailable(Unavailable {
            reason: format!("no powershell.exe on PATH or at {POWERSHELL_AT}"),
            fix: "mount C: at /mnt/c (`[automount]` in /etc/wsl.conf) or put powershell.exe's directory on the supervisor's PATH; or set [host] windows_keep_awake = \"off\"".into(),
        }),
    }
}

/// Whether WSL registered its interop handler, enabled.
fn interop_enabled(root: &Path) -> bool {
    ["WSLInterop", "WSLInterop-late"].iter().any(|n| {
        std::fs::read_to_string(root.join("proc/sys/fs/binfmt_misc").join(n))
            .is_ok_and(|t| t.lines().next() == Some("enabled"))
    })
}

/// The helper, running and holding the state.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

/// The fix when the helper does not start.
const HELPER_FIX: &str = "check that interop works for the supervisor's user (`powershell.exe -NoProfile -Command exit` from its shell; systemd/README.md, \"Keep Windows awake\"); or set [host] windows_keep_awake = \"off\"";

impl Helper {
    /// Start it and wait (at most `within`) until it says it holds the state.
    pub async fn start(powershell: &Path, within: Duration) -> Result<Helper, Unavailable> {
        let mut cmd = Command::new(powershell);
        cmd.args([
            "-NoLogo",
            "-NoProfile",
            "-NonInteractive",
            "-EncodedCommand",
        ])
        .arg(encoded(&script()))
        // Interop needs no more than these; nothing of ours (a token) goes along.
        .env_clear()
        .envs(
            ["PATH", "WSL_INTEROP", "WSL_DISTRO_NAME"]
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = crate::os::procs::spawn(&mut cmd).map_err(|e| Unavailable {
            reason: format!("cannot start {}: {e}", powershell.display()),
            fix: HELPER_FIX.into(),
        })?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take();
        let mut lines = child.stdout.take().map(|o| BufReader::new(o).lines());
        let mut stderr = child.stderr.take();
        let said = tokio::time::timeout(within, async {
            let Some(lines) = lines.as_mut() else {
                return false;
            };
            while let Ok(Some(l)) = lines.next_line().await {
                if l.trim() == "held" {
                    return true;
                }
            }
            false
        })
        .await;
        if said == Ok(true) {
            // Drained, so that nothing it prints can fill a pipe and block it.
            tokio::spawn(async move {
                if let Some(mut l) = lines {
                    while let Ok(Some(_)) = l.next_line().await {}
                }
            });
            tokio::spawn(async move {
                if let Some(mut e) = stderr {
                    let _ = tokio::io::copy(&mut e, &mut tokio::io::sink()).await;
                }
            });
            return Ok(Helper { child, stdin, pid });
        }
        let h = Helper { child, stdin, pid };
        let ended = h.end(Duration::from_secs(1)).await;
        let mut err = String::new();
        if let Some(e) = stderr.as_mut() {
            let mut buf = vec![];
            let _ =
                tokio::time::timeout(Duration::from_secs(1), e.take(4096).read_to_end(&mut buf))
                    .await;
            err = String::from_utf8_lossy(&buf)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string();
        }
        let what = match said {
            Err(_) => format!("did not say it holds the state within {within:?} ({ended})"),
            Ok(_) => format!("ended without holding the state ({ended})"),
        };
        Err(Unavailable {
            reason: if err.is_empty() {
                format!("powershell.exe {what}")
            } else {
                format!("powershell.exe {what}: {err}")
            },
            fix: HELPER_FIX.into(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Close its standard input and wait (at most `within`) for it to end; then kill its
    /// process group. Says how it ended: `exited` or `killed`.
    pub async fn end(mut self, within: Duration) -> &'static str {
        drop(self.stdin.take());
        let how = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(_) => "exited",
            Err(_) => {
                if let Ok(pid) = i32::try_from(self.pid) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = self.child.wait().await;
                "killed"
            }
        };
        if let Ok(pid) = i32::try_from(self.pid) {
            crate::os::procs::untrack(pid);
        }
        how
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_holds_es_continuous_and_system_required_until_its_input_ends() {
        let s = script();
        assert!(
            s.contains("SetThreadExecutionState([uint32]2147483649)"),
            "{s}"
        );
        assert!(s.contains("[Console]::In.ReadToEnd()"));
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded(&s))
            .unwrap();
        let units: Vec<u16> = raw
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16(&units).unwrap(), s);
    }

    #[test]
    fn interop_needs_wsl_an_enabled_handler_and_powershell() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let write = |p: &str, t: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        write("proc/sys/kernel/osrelease", "6.1.0-13-amd64\n");
        assert_eq!(detect_at(r, None, None), Interop::NotWsl);
        write(
            "proc/sys/kernel/osrelease",
            "5.15.153.1-microsoft-standard-WSL2\n",
        );
        let Interop::Unavailable(u) = detect_at(r, None, None) else {
            panic!("no interop handler")
        };
        assert!(u.reason.contains("interop is off"), "{u:?}");
        write(
            "proc/sys/fs/binfmt_misc/WSLInterop",
            "enabled\ninterpreter /init\n",
        );
        let Interop::Unavailable(u) = detect_at(r, None, None) else {
            panic!("no powershell.exe")
        };
        assert!(u.reason.contains("no powershell.exe"), "{u:?}");
        write(POWERSHELL_AT.trim_start_matches('/'), "");
        assert_eq!(
            detect_at(r, None, None),
            Interop::Ready(r.join(POWERSHELL_AT.trim_start_matches('/')))
        );
        // One on PATH comes first.
        write("bin/powershell.exe", "");
        let path = r.join("bin").into_os_string();
        assert_eq!(
            detect_at(r, Some(&path), None),
            Interop::Ready(r.join("bin/powershell.exe"))
        );
    }
}
