//! Faults a test injects: matched against non-admin requests, by method, path and body.

use serde::{Deserialize, Serialize};

/// An injected fault, matched against non-admin requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    /// Only requests with this method (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Only requests whose path contains this (any when absent).
    #[serde(default)]
    pub path: Option<String>,
    /// Only requests whose body contains this, e.g. one runner's name prefix (any when absent).
    #[serde(default)]
    pub body: Option<String>,
    pub kind: FaultKind,
    /// How many matching requests it hits; 0 means for ever.
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

/// What a fault does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// Delay the answer.
    Latency { ms: u64 },
    /// Answer with this status (5xx) and a basic-error body.
    Status { status: u16 },
    /// A rate limit: primary (`x-ratelimit-remaining: 0` + reset) or secondary.
    RateLimit {
        status: u16,
        #[serde(default)]
        retry_after: Option<u64>,
        #[serde(default)]
        primary: bool,
    },
    /// Reset the TCP connection (RST) without answering.
    Reset,
    /// Send the response headers (200, with a body length) and then nothing, holding the
    /// connection open: a peer or middlebox gone silent after the headers.
    Silent,
}
