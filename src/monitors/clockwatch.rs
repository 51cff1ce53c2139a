//! The clock monitor: measure the local clock's signed offset (SNTP, RFC 4330, against the
//! configured servers; GitHub's `Date` header as a fallback), watch chronyd through
//! `chronyc -c tracking` (read-only, loopback), and turn large offsets into a clock fault
//! that pauses registrations until the clock is fixed.
//!
//! Invariant: the supervisor never sets the clock. The only corrective action is asking
//! chronyd to step (`chronyc makestep`), when configured, and only by the one supervisor
//! holding the host-wide lock (others stay monitor-only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::config::{ChronycMode, ClockConfig};
use crate::github::GithubClient;
use crate::os::clocks::Clocks;
use crate::status::host::Host;
use crate::status::{Board, Condition, Health};

/// Seconds from 1900 (NTP era 0) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One SNTP measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Local clock minus server clock, seconds (positive: local is ahead).
    pub offset: f64,
    /// Round-trip delay, seconds.
    pub delay: f64,
}

fn to_ntp(d: Duration) -> [u8; 8] {
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(secs as u32).to_be_bytes());
    b[4..].copy_from_slice(&(frac as u32).to_be_bytes());
    b
}

fn from_ntp(b: &[u8]) -> f64 {
    let secs = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64;
    let frac = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as f64 / 4_294_967_296.0;
    secs - NTP_UNIX_OFFSET as f64 + frac
}

/// Compute the sample from the four timestamps (seconds since the Unix epoch).
pub fn compute(t1: f64, t2: f64, t3: f64, t4: f64) -> Sample {
    // RFC 4330 §5: θ = ((T2 − T1) + (T3 − T4)) / 2 is the server's lead over us.
    let theta = ((t2 - t1) + (t3 - t4)) / 2.0;
    Sample {
        offset: -theta,
        delay: (t4 - t1) - (t3 - t2),
    }
}

/// Query one SNTP server (`host` or `host:port`, default port 123).
pub async fn sntp(server: &str, clocks: &dyn Clocks, timeout: Duration) -> Result<Sample, String> {
    let target = if server
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !server.ends_with(']')
    {
        server.to_string()
    } else {
        format!("{server}:123")
    };
    let addr: SocketAddr = tokio::time::timeout(timeout, tokio::net::lookup_host(&target))
        .await
        .map_err(|_| format!("resolving {target} timed out"))?
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target} has no address"))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(addr).await.map_err(|e| e.to_string())?;
    let mut req = [0u8; 48];
    req[0] = 0b00_100_011; // LI 0, version 4, mode 3 (client)
    let t1 = clocks.realtime();
    req[40..48].copy_from_slice(&to_ntp(t1));
    sock.send(&req).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 68];
    let n = tokio::time::timeout(timeout, sock.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer from {addr}"))?
        .map_err(|e| e.to_string())?;
    let t4 = clocks.realtime();
    if n < 48 {
        return Err(format!("short answer from {addr}"));
    }
    let (li, mode, stratum) = (buf[0] >> 6, buf[0] & 7, buf[1]);
    if mode != 4 && mode != 5 {
        return Err(format!("{addr} is not an NTP server (mode {mode})"));
    }
    if stratum == 0 || li == 3 {
        return Err(format!(
            "{addr} is not synchronised (stratum {stratum}, leap {li})"
        ));
    }
    if buf[24..32] != req[40..48] {
        return Err(format!("{addr} answered another request"));
    }
    let secs = |d: Duration| d.as_secs_f64();
    Ok(compute(
        secs(t1),
        from_ntp(&buf[32..40]),
        from_ntp(&buf[40..48]),
        secs(t4),
    ))
}

/// What `chronyc -c tracking` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracking {
    pub reference: String,
    pub stratum: u32,
    /// chronyd's last measured offset, seconds.
    pub last_offset: f64,
    pub leap: String,
}

impl Tracking {
    /// Synchronised to a source.
    pub fn synchronised(&self) -> bool {
        self.leap != "Not synchronised" && self.stratum < 16 && self.reference != "00000000"
    }
}

/// Parse one line of `chronyc -c tracking`.
pub fn parse_tracking(line: &str) -> Option<Tracking> {
    let f: Vec<&str> = line.trim().split(',').collect();
    if f.len() < 14 {
        return None;
    }
    Some(Tracking {
        reference: f[0].to_string(),
        stratum: f[2].parse().ok()?,
        last_offset: f[5].parse().ok()?,
        leap: f[13].to_string(),
    })
}

/// Run chronyc against `address` (`host:port`) with `args`; stdout on success.
async fn chronyc(address: &str, args: &[&str]) -> Result<String, String> {
    let (hostname, port) = address.rsplit_once(':').ok_or("bad chronyc address")?;
    let mut cmd = tokio::process::Command::new("chronyc");
    cmd.args(["-n", "-h", hostname, "-p", port])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child =
        crate::os::procs::spawn(&mut cmd).map_err(|e| format!("cannot run chronyc: {e}"))?;
    let pid = child.id().unwrap_or(0) as i32;
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await;
    crate::os::procs::untrack(pid);
    let out = out
        .map_err(|_| "chronyc timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && !text.trim().is_empty() && !text.contains("Cannot talk to daemon") {
        Ok(text)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("{} {}", text.trim(), err.trim()).trim().to_string())
    }
}

/// `chronyc -c tracking`: read-only, works for an unprivileged user over loopback.
pub async fn tracking(address: &str) -> Result<Tracking, String> {
    let out = chronyc(address, &["-c", "tracking"]).await?;
    parse_tracking(out.lines().next().unwrap_or(""))
        .ok_or_else(|| format!("cannot parse chronyc output: {out:?}"))
}

/// Whether chronyd is watched: `required`, or `auto` when chronyc is installed.
pub fn watches_chronyd(mode: ChronycMode) -> bool {
    match mode {
        ChronycMode::Off => false,
        ChronycMode::Required => true,
        ChronycMode::Auto => chronyc_installed(),
    }
}

/// Whether chronyc is installed.
pub fn chronyc_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("chronyc").is_file()))
}

/// The clock monitor: measure every `interval` and whenever asked (resume, a runner's
/// clock-skew line), update the host's clock status, and report chronyd's condition.
pub struct Monitor {
    cfg: ClockConfig,
    gh: GithubClient,
    host: Arc<Host>,
    board: Arc<Board>,
    watch_chronyd: bool,
    /// The host-wide lock, held for the process's life when this supervisor may step.
    leader: Option<std::fs::File>,
    chrony_failures: u32,
    chrony_seen: bool,
    first: bool,
    last_level: u8,
}

impl Monitor {
    /// A monitor; takes the clock lock when `makestep` is configured.
    pub fn new(cfg: ClockConfig, gh: GithubClient, host: Arc<Host>, board: Arc<Board>) -> Monitor {
        let watch_chronyd = watches_chronyd(cfg.chronyc);
        // One disciplinarian per kernel clock.
        let leader = if cfg.makestep {
            match crate::os::layout::take_lock(&cfg.lock_file) {
                Ok(f) => {
                    tracing::info!(event = "clock_lock_held", lock = %cfg.lock_file.display(), "this supervisor may ask chronyd to step the clock on a clock fault");
                    Some(f)
                }
                Err(e) => {
                    tracing::warn!(event = "clock_monitor_only", reason = %e, "another supervisor disciplines the clock; this one stays monitor-only");
                    None
                }
            }
        } else {
            None
        };
        Monitor {
            cfg,
            gh,
            host,
            board,
            watch_chronyd,
            leader,
            chrony_failures: 0,
            chrony_seen: false,
            first: true,
            last_level: 0,
        }
    }

    /// Measure until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = crate::os::clocks::tick(self.cfg.interval) => {}
                _ = self.host.measure_clock.notified() => {}
            }
            self.round().await;
        }
    }

    /// One round: measure, classify, watch chronyd.
    pub async fn round(&mut self) {
        // The runner's own clock-skew line may have set the fault since the last round.
        let runner_fault = self.host.clock.borrow().fault;
        match measure(&self.cfg, &self.gh, &*self.host.clocks).await {
            Some((s, source)) => self.judge(s, &source, runner_fault).await,
            None if runner_fault => {
                // Nothing to measure with: do not pause for ever; the breaker catches repeats.
                tracing::warn!(event = "clock_unmeasured", "cannot measure the clock (no NTP server or GitHub answered); lifting the runner's clock fault after one interval");
                self.host.clock.send_modify(|c| c.fault = false);
            }
            None => tracing::debug!("cannot measure the clock: no source answered"),
        }
        if self.watch_chronyd {
            self.check_chronyd().await;
        }
    }

    /// A measured offset: publish it, log a change of level, and set or lift the fault.
    async fn judge(&mut self, s: Sample, source: &str, runner_fault: bool) {
        let (cfg, host, board) = (&self.cfg, &self.host, &self.board);
        board.system(|x| x.clock_offset_s = Some(s.offset));
        // A GitHub App signs its JWTs on true time.
        self.gh.set_clock_offset(s.offset);
        board.system(|x| x.clock_source = Some(source.to_string()));
        let level = level_of(cfg, s.offset);
        if self.first || level != self.last_level {
            log_level(cfg, level, s.offset, source);
        } else {
            tracing::debug!(offset_s = format!("{:+.3}", s.offset), source = %source, "clock offset measured");
        }
        self.first = false;
        self.last_level = level;
        if level == 2 {
            let reason = format!("local clock is {:+.1}s off ({source})", s.offset);
            host.clock.send_modify(|c| {
                c.fault = true;
                c.reason = Some(reason.clone());
            });
            board.set_condition(Condition::Clock, Some((Health::Degraded, reason)));
            if self.leader.is_some() && self.watch_chronyd {
                self.makestep().await;
            }
        } else if level < 2 && (runner_fault || host.clock_fault()) {
            tracing::info!(
                event = "clock_fixed",
                offset_s = format!("{:+.3}", s.offset),
                "clock fixed"
            );
            host.clock.send_modify(|c| {
                c.fault = false;
                c.reason = None;
            });
            board.set_condition(Condition::Clock, None);
        } else if level == 1 {
            board.set_condition(
                Condition::Clock,
                Some((
                    Health::Ok,
                    format!("local clock is {:+.1}s off ({source})", s.offset),
                )),
            );
        } else {
            board.set_condition(Condition::Clock, None);
        }
        host.clock.send_modify(|c| {
            c.offset = Some(s.offset);
            c.source = Some(source.to_string());
        });
    }

    /// Ask chronyd to step the clock (the holder of the host-wide lock, on a clock fault).
    async fn makestep(&self) {
        match chronyc(&self.cfg.chronyc_address, &["makestep"]).await {
            Ok(_) => {
                tracing::warn!(
                    event = "clock_makestep",
                    "asked chronyd to step the clock (chronyc makestep)"
                )
            }
            Err(e) => {
                tracing::warn!(event = "clock_makestep_failed", error = %e, "chronyc makestep failed")
            }
        }
    }

    /// Read chronyd's tracking: report its state, and a daemon that is down.
    async fn check_chronyd(&mut self) {
        let (cfg, board) = (&self.cfg, &self.board);
        match tracking(&cfg.chronyc_address).await {
            Ok(t) => {
                if self.chrony_failures > 0 || !self.chrony_seen {
                    let state = if t.synchronised() {
                        "synchronised"
                    } else {
                        "running, not synchronised"
                    };
                    tracing::info!(event = "chronyd_state", reference = %t.reference, stratum = t.stratum, "time daemon {state}");
                }
                self.chrony_seen = true;
                self.chrony_failures = 0;
                board.system(|x| {
                    x.chronyd = Some(
                        if t.synchronised() {
                            "synchronised"
                        } else {
                            "not synchronised"
                        }
                        .into(),
                    );
                    x.chronyd_last_offset_s = Some(t.last_offset);
                });
                if t.synchronised() {
                    board.set_condition(Condition::Chronyd, None);
                } else {
                    board.set_condition(
                        Condition::Chronyd,
                        Some((
                            Health::Degraded,
                            format!("chronyd is not synchronised (leap status {})", t.leap),
                        )),
                    );
                }
            }
            Err(e) => {
                self.chrony_failures += 1;
                board.system(|x| x.chronyd = Some("down".into()));
                if self.chrony_failures == 1 {
                    tracing::error!(event = "chronyd_down", error = %e, address = %cfg.chronyc_address, "time daemon not running; the supervisor did not start it and cannot restart it: check `systemctl status chrony` or chronyd's configuration (`chronyd -p`)");
                }
                if self.chrony_failures >= 3 {
                    board.set_condition(
                        Condition::Chronyd,
                        Some((
                            Health::Degraded,
                            format!(
                                "time daemon not running ({} consecutive failed checks): {e}",
                                self.chrony_failures
                            ),
                        )),
                    );
                }
            }
        }
    }
}

/// 0 within `warn_offset`, 1 beyond it, 2 beyond `fault_offset` (a clock fault).
fn level_of(cfg: &ClockConfig, offset: f64) -> u8 {
    let abs = offset.abs();
    if abs > cfg.fault_offset.as_secs_f64() {
        2
    } else if abs > cfg.warn_offset.as_secs_f64() {
        1
    } else {
        0
    }
}

/// Say a new level of the offset: measured, beyond the warning, or a clock fault.
fn log_level(cfg: &ClockConfig, level: u8, offset: f64, source: &str) {
    match level {
        0 => {
            tracing::info!(event = "clock_offset", offset_s = format!("{:+.3}", offset), source = %source, "clock offset measured")
        }
        1 => {
            tracing::warn!(event = "clock_offset_warn", offset_s = format!("{:+.3}", offset), source = %source, "clock offset beyond {}s", cfg.warn_offset.as_secs_f64())
        }
        _ => {
            tracing::error!(event = "clock_fault", offset_s = format!("{:+.3}", offset), source = %source, "clock fault: offset beyond {}s (the runner's OAuth fails): registrations pause", cfg.fault_offset.as_secs())
        }
    }
}

/// One measurement: the first SNTP server that answers, else GitHub's `Date` header.
async fn measure(
    cfg: &ClockConfig,
    gh: &GithubClient,
    clocks: &dyn Clocks,
) -> Option<(Sample, String)> {
    for server in &cfg.ntp_servers {
        match sntp(server, clocks, Duration::from_secs(3)).await {
            Ok(s) => return Some((s, format!("ntp {server}"))),
            Err(e) => tracing::debug!(server = %server, error = %e, "SNTP query failed"),
        }
    }
    let offset = gh.last_date()?.offset_secs();
    Some((
        Sample { offset, delay: 0.0 },
        "GitHub Date header (1 s resolution)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_timestamps_round_trip() {
        let d = Duration::new(1_700_000_000, 250_000_000);
        assert!((from_ntp(&to_ntp(d)) - 1_700_000_000.25).abs() < 1e-6);
    }

    #[test]
    fn offset_sign() {
        // Local 10 s ahead: the server's timestamps are 10 s behind ours.
        let s = compute(100.0, 90.001, 90.002, 100.003);
        assert!((s.offset - 10.0).abs() < 1e-3, "{s:?}");
        assert!((s.delay - 0.002).abs() < 1e-6);
        let s = compute(100.0, 190.0, 190.0, 100.0);
        assert!((s.offset + 90.0).abs() < 1e-9);
    }

    #[test]
    fn tracking_csv() {
        let t = parse_tracking("7F7F0101,,8,1795346100.372813502,0.000000000,-0.000012000,0.000000000,0.000,0.000,0.000,0.000000000,0.000000000,0.0,Normal").unwrap();
        assert_eq!(t.stratum, 8);
        assert!((t.last_offset + 0.000012).abs() < 1e-12);
        assert!(t.synchronised());
        let t =
            parse_tracking("00000000,,0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,Not synchronised")
                .unwrap();
        assert!(!t.synchronised());
        assert!(parse_tracking("506 Cannot talk to daemon").is_none());
    }

    #[test]
    fn the_clock_lock_is_exclusive() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("sub/clock.lock");
        let held = crate::os::layout::take_lock(&p).unwrap();
        // flock locks belong to the open file description: a second open conflicts.
        assert!(crate::os::layout::take_lock(&p).is_err());
        drop(held);
        assert!(crate::os::layout::take_lock(&p).is_ok());
    }
}
