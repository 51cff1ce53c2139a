//! The private wire protocol between `fake-github` and `fake-runner`.
//!
//! The real runner talks to the Actions service (broker), which no test can reach.
//! Our fake runner talks to these `/_sim/...` endpoints on fake-github instead.
//! Only the GitHub REST side is a contract (`runners-openapi.json`); this side is ours.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The runner version the fake runner claims to be (the release `src/runner/protocol.md` describes).
pub const RUNNER_VERSION: &str = "2.338.0";

/// The lowest runner version GitHub lets register (reference A8).
pub const REGISTRATION_FLOOR: &str = "2.329.0";

/// The first runner version whose "deprecated" line comes only from the broker's typed
/// error; before it any bare 403 from the broker read "deprecated" (actions/runner #4613).
pub const TYPED_DEPRECATION_FROM: &str = "2.337.0";

/// The broker's typed error for a runner past its runtime deadline.
pub const VERSION_TOO_OLD: &str = "RunnerVersionTooOld";

/// `major.minor.patch` as numbers, for ordering versions.
pub fn version_key(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.trim().trim_start_matches('v').split('.');
    let mut n = || it.next()?.parse::<u64>().ok();
    Some((n()?, n()?, n()?))
}

/// Whether version `a` is older than `b` (an unparsable one is not).
pub fn older(a: &str, b: &str) -> bool {
    matches!((version_key(a), version_key(b)), (Some(x), Some(y)) if x < y)
}

/// The `.runner` settings file, camelCase like the real one, plus `sim*` extras.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSettings {
    pub agent_id: u64,
    pub agent_name: String,
    pub pool_id: u64,
    pub pool_name: String,
    /// Base URL of fake-github, where the `/_sim` endpoints live.
    pub server_url: String,
    pub git_hub_url: String,
    pub work_folder: String,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub disable_update: bool,
    #[serde(default)]
    pub use_v2_flow: bool,
    /// Multiplier for the runner's own fixed waits (30 s retries, 240 s give-up...).
    #[serde(default = "one")]
    pub sim_time_scale: f64,
    /// The fake runner's start-up delay before it connects, in milliseconds.
    #[serde(default)]
    pub sim_startup_ms: u64,
    /// The listener's request timeout (connect, send, response headers), in milliseconds:
    /// 60 s for the message queue, as the real one.
    #[serde(default = "sixty_seconds")]
    pub sim_http_timeout_ms: u64,
}

fn one() -> f64 {
    1.0
}

fn sixty_seconds() -> u64 {
    60_000
}

/// The `.credentials` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub scheme: String,
    pub data: CredentialData,
}

/// The data part of `.credentials`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialData {
    pub client_id: String,
    pub authorization_url: String,
    #[serde(default)]
    pub require_fips_cryptography: String,
}

/// Encode a JIT config the way GitHub does: base64 of a JSON map of file name to base64 content.
pub fn encode_jit_config(files: &BTreeMap<String, Vec<u8>>) -> String {
    let map: BTreeMap<&str, String> = files
        .iter()
        .map(|(k, v)| (k.as_str(), B64.encode(v)))
        .collect();
    B64.encode(serde_json::to_vec(&map).expect("a string map always serialises"))
}

/// Decode a JIT config; the error text mimics a .NET exception message.
pub fn decode_jit_config(blob: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let json = B64
        .decode(blob.trim())
        .map_err(|_| "The input is not a valid Base-64 string as it contains a non-base 64 character, more than two padding characters, or an illegal character among the padding characters.".to_string())?;
    let map: BTreeMap<String, String> = serde_json::from_slice(&json)
        .map_err(|e| format!("Unexpected character encountered while parsing value: {e}"))?;
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let bytes = B64
            .decode(v)
            .map_err(|_| format!("The input is not a valid Base-64 string ({k})."))?;
        out.insert(k, bytes);
    }
    Ok(out)
}

/// A fault the fake runner acts out; handed over when its session is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Script {
    /// Behave normally.
    Normal,
    /// After `after_ms` idle (or at once during a job), lose the connection.
    /// `recover_after_ms: None` means it never comes back; `give_up` models the broker
    /// flow, which exits 2 after 10 failed polls.
    ConnectionLoss {
        after_ms: u64,
        recover_after_ms: Option<u64>,
        #[serde(default)]
        give_up: bool,
        #[serde(default)]
        during_job: bool,
    },
    /// Print the clock-skew line, retry for 1800 s (scaled), then exit 1.
    ClockSkew,
    /// Self-update: print the update lines, arrange `update.finished`, exit 4 (ephemeral).
    SelfUpdate { exit_code: i32 },
    /// An unexpected exception: `An error occurred: ...`, exit 2; while idle, or
    /// `after_ms` into the next job.
    Crash {
        after_ms: u64,
        #[serde(default)]
        during_job: bool,
    },
    /// Stop responding: ignore SIGINT and SIGTERM, print nothing more.
    Hang { after_ms: u64 },
    /// Print huge lines, invalid UTF-8 and escape sequences, then behave normally.
    HostileOutput,
    /// The service refuses this runner version.
    VersionDeprecated,
    /// `after_ms` into a job, its lease renewals stop (a starved listener); with `fail`,
    /// one fails first, with the runner's `Catch exception during renew runner job` line.
    LeaseTrouble {
        after_ms: u64,
        #[serde(default)]
        fail: bool,
    },
}

/// `POST /_sim/sessions` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRequest {
    pub client_id: String,
    /// The runner's wall clock, in Unix milliseconds (faketime shifts it).
    pub local_time_ms: i64,
    pub version: String,
}

/// `POST /_sim/sessions` success.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionResponse {
    pub session_id: String,
    pub script: Script,
}

/// A job handed to a runner by `GET /_sim/sessions/{id}/message`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobMessage {
    pub job_id: u64,
    pub display_name: String,
    pub duration_ms: u64,
    pub result: String,
    /// The job's run and attempt, and its workflow's name (the job's `GITHUB_*`).
    #[serde(default)]
    pub run_id: u64,
    #[serde(default)]
    pub run_attempt: u32,
    #[serde(default)]
    pub workflow: String,
    /// Actions to set up, `owner/repo@ref`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// A step to run (`sh -c`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// The commit an action's ref resolves to (the fake's stand-in for the service's
/// "Getting action download info"): 40 hex digits, the same for the fake GitHub and the
/// fake runner.
pub fn action_sha(repository: &str, rf: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{repository}@{rf}").as_bytes());
    d.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// `POST /_sim/jobs/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobCompletion {
    pub result: String,
}

/// `POST /_sim/register`: what `config.sh` sends after the token exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub name: String,
    pub labels: Vec<String>,
    pub replace: bool,
    pub ephemeral: bool,
    pub disable_update: bool,
    pub work_folder: String,
}

/// The answer to `POST /_sim/register`: the files config.sh writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub replaced: bool,
    pub settings: RunnerSettings,
    pub credentials: Credentials,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jit_config_round_trips() {
        let mut files = BTreeMap::new();
        files.insert(".runner".to_string(), b"{\"agentId\":1}".to_vec());
        files.insert(".credentials".to_string(), vec![0, 1, 2, 255]);
        let blob = encode_jit_config(&files);
        assert_eq!(decode_jit_config(&blob).unwrap(), files);
    }

    #[test]
    fn jit_config_rejects_garbage() {
        assert!(decode_jit_config("%%%").is_err());
        assert!(decode_jit_config(&B64.encode("not json")).is_err());
    }
}
