//! The supervisor's typed log events: its `[log] format = "json"` lines parsed, so that
//! tests wait on an `event` name and its fields (the log interface the README documents),
//! never on the wording of a message.

use std::time::Duration;

use serde_json::{Map, Value};

use super::Daemon;

/// One JSON log line.
#[derive(Debug, Clone)]
pub struct Event {
    /// The `event` field: `watchdog_fire`, `runner_listening`, `job_completed`...
    pub name: String,
    /// `INFO`, `WARN`, `ERROR`...
    pub level: String,
    /// When it was logged.
    pub at: chrono::DateTime<chrono::FixedOffset>,
    /// Every field, `message` included.
    pub fields: Map<String, Value>,
}

impl Event {
    /// A field as a string (strings as they are, anything else as JSON).
    pub fn str(&self, key: &str) -> Option<String> {
        self.fields.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// A numeric field.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
    }

    /// Whether field `key` contains `part` (for values that are free text, such as an
    /// error GitHub returned).
    pub fn has(&self, key: &str, part: &str) -> bool {
        self.str(key).is_some_and(|v| v.contains(part))
    }

    /// Whether field `key` is `value`.
    pub fn is(&self, key: &str, value: &str) -> bool {
        self.str(key).as_deref() == Some(value)
    }
}

/// A JSON log line as an event (`None` for a line without an `event` field).
pub fn parse(line: &str) -> Option<Event> {
    let v: Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?.as_object()?.clone();
    Some(Event {
        name: fields.get("event")?.as_str()?.to_string(),
        level: v.get("level")?.as_str()?.to_string(),
        at: chrono::DateTime::parse_from_rfc3339(v.get("timestamp")?.as_str()?).ok()?,
        fields,
    })
}

impl Daemon {
    /// Every event so far (the daemon must log JSON: `SUPERVISOR_LOG_FORMAT=json`).
    pub fn events(&self) -> Vec<Event> {
        self.log().iter().filter_map(|l| parse(l)).collect()
    }

    /// How many `name` events match `pred`.
    pub fn count_events(&self, name: &str, pred: impl Fn(&Event) -> bool) -> usize {
        self.events()
            .iter()
            .filter(|e| e.name == name && pred(e))
            .count()
    }

    /// Wait for the `n`-th `name` event that matches `pred`; panic with the log on
    /// timeout or exit.
    pub async fn wait_events(
        &self,
        name: &str,
        pred: impl Fn(&Event) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Event {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.grew.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let matching: Vec<Event> = self
                .events()
                .into_iter()
                .filter(|e| e.name == name && pred(e))
                .collect();
            if matching.len() >= n {
                return matching[n - 1].clone();
            }
            if self.log().last().is_some_and(|l| l == "<eof>") {
                panic!(
                    "the supervisor exited before {n} {name} event(s); log:\n{}",
                    self.log().join("\n")
                );
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {n} {name} event(s); log:\n{}",
                    self.log().join("\n")
                );
            }
        }
    }

    /// Wait for one `name` event.
    pub async fn wait_event(&self, name: &str, timeout: Duration) -> Event {
        self.wait_events(name, |_| true, 1, timeout).await
    }
}

impl Daemon {
    /// Wait for the `n`-th `name` event.
    pub async fn wait_nth(&self, name: &str, n: usize, timeout: Duration) -> Event {
        self.wait_events(name, |_| true, n, timeout).await
    }

    /// Wait until listeners have said `Listening for Jobs` `n` times in all.
    pub async fn wait_listening(&self, n: usize, timeout: Duration) -> Event {
        self.wait_nth("runner_listening", n, timeout).await
    }
}
