//! The scale-set service's errors (`scaleset-protocol.md` §2.11), told apart by status
//! and by the exception's `typeName` (a substring match, as GitHub's Go clients do), and
//! what each means to a host that keeps one session: wait out a conflict, re-create a
//! lost session or scale set, refresh a token.

/// An error answer of the service, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceError {
    /// 409 `RunnerScaleSetSessionConflictException`: another session is active (a dead
    /// one lasts about 50 s after a crash; a live one, another host with this name, for ever).
    SessionConflict { message: String },
    /// 404 `RunnerScaleSetNotFoundException`: the scale set is gone (deleted after about
    /// 7 idle days): create it again.
    ScaleSetNotFound { message: String },
    /// 404 on a session call (`RunnerAdminException`, "session ID that doesn't exist in
    /// redis", or a bare 404): the session was evicted; open a new one.
    SessionGone { message: String },
    /// 401 on the queue: the queue token expired; refresh the session.
    QueueTokenExpired,
    /// 401 on an admin call (`InvalidTokenException`): mint a new admin token, once.
    AdminTokenInvalid { message: String },
    /// 400 `JobStillRunningException`: the runner holds a job; remove it later.
    JobStillRunning { message: String },
    /// 409 `AgentExistsException`: the JIT name is taken.
    RunnerExists { message: String },
    /// 404 `AgentNotFoundException`: the runner is gone (counts as removed).
    RunnerNotFound { message: String },
    /// Anything else: its status, exception type (if any) and message.
    Other {
        status: u16,
        type_name: String,
        message: String,
    },
}

/// Which kind of call failed: the same status means different things on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A call with the admin token (scale sets, groups, JIT configs, runners).
    Admin,
    /// A session call (create, refresh, delete) with the admin token.
    Session,
    /// The queue (poll, acknowledge, acquire) with the queue token.
    Queue,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Body {
    #[serde(default)]
    type_name: String,
    #[serde(default)]
    message: String,
}

/// Classify an error answer: `status`, and its body (a VSS exception envelope, a bare
/// `{"typeName","message"}`, or plain text such as a router's `404 page not found`).
pub fn classify(call: Call, status: u16, body: &str) -> ServiceError {
    let body = body.trim_start_matches('\u{feff}');
    let b: Body = serde_json::from_str(body).unwrap_or_else(|_| Body {
        type_name: String::new(),
        message: body.trim().chars().take(300).collect(),
    });
    let has = |t: &str| b.type_name.contains(t);
    let message = b.message.clone();
    match (status, call) {
        (409, _) if has("AgentExistsException") => ServiceError::RunnerExists { message },
        (409, _) if has("SessionConflict") || message.contains("already has an active session") => {
            ServiceError::SessionConflict { message }
        }
        (404, _) if has("RunnerScaleSetNotFoundException") => {
            ServiceError::ScaleSetNotFound { message }
        }
        (404, _) if has("AgentNotFoundException") => ServiceError::RunnerNotFound { message },
        (404, Call::Session | Call::Queue) => ServiceError::SessionGone { message },
        (401, Call::Queue) => ServiceError::QueueTokenExpired,
        (401, _) => ServiceError::AdminTokenInvalid { message },
        (400, _) if has("JobStillRunningException") => ServiceError::JobStillRunning { message },
        _ => ServiceError::Other {
            status,
            type_name: b.type_name,
            message,
        },
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceError::SessionConflict { message } => {
                write!(f, "session conflict (409): {message}")
            }
            ServiceError::ScaleSetNotFound { message } => {
                write!(f, "scale set not found (404): {message}")
            }
            ServiceError::SessionGone { message } => write!(f, "session gone (404): {message}"),
            ServiceError::QueueTokenExpired => f.write_str("the message-queue token expired (401)"),
            ServiceError::AdminTokenInvalid { message } => {
                write!(f, "the admin token was refused (401): {message}")
            }
            ServiceError::JobStillRunning { message } => {
                write!(f, "the runner still runs a job (400): {message}")
            }
            ServiceError::RunnerExists { message } => {
                write!(f, "the runner name is taken (409): {message}")
            }
            ServiceError::RunnerNotFound { message } => {
                write!(f, "the runner is gone (404): {message}")
            }
            ServiceError::Other {
                status,
                type_name,
                message,
            } if type_name.is_empty() => write!(f, "status {status}: {message}"),
            ServiceError::Other {
                status,
                type_name,
                message,
            } => write!(f, "status {status}, {type_name}: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vss(type_name: &str, message: &str) -> String {
        serde_json::json!({"$id":"1","innerException":null,"message":message,"typeName":type_name,
            "typeKey":type_name.split(", ").next().unwrap().rsplit('.').next().unwrap(),"errorCode":0,"eventId":3000})
        .to_string()
    }

    #[test]
    fn the_exceptions_seen_live_are_told_apart_by_status_type_and_call() {
        let conflict = vss(
            "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi",
            "The actions runner scaleset ci-host already has an active session.",
        );
        assert!(matches!(
            classify(Call::Session, 409, &conflict),
            ServiceError::SessionConflict { .. }
        ));
        // The 2024 wording, bare, without a type.
        let old = r#"{"message":"The runner scale set gha-rs already has an active session for owner x"}"#;
        assert!(matches!(
            classify(Call::Session, 409, old),
            ServiceError::SessionConflict { .. }
        ));
        let gone = vss(
            "GitHub.Actions.Runtime.WebApi.RunnerScaleSetNotFoundException, GitHub.Actions.Runtime.WebApi",
            "No runner scale set found with identifier 6.",
        );
        assert_eq!(
            classify(Call::Session, 404, &gone),
            ServiceError::ScaleSetNotFound {
                message: "No runner scale set found with identifier 6.".into()
            }
        );
        let evicted = r#"{"typeName":"RunnerAdminException","message":"runner referenced a session ID that doesn't exist in redis"}"#;
        assert!(matches!(
            classify(Call::Session, 404, evicted),
            ServiceError::SessionGone { .. }
        ));
        assert_eq!(
            classify(Call::Queue, 401, ""),
            ServiceError::QueueTokenExpired
        );
        assert!(matches!(
            classify(
                Call::Admin,
                401,
                r#"{"typeName":"InvalidTokenException","message":"expired"}"#
            ),
            ServiceError::AdminTokenInvalid { .. }
        ));
        let busy = vss(
            "GitHub.DistributedTask.WebApi.JobStillRunningException, GitHub.DistributedTask.WebApi",
            "busy",
        );
        assert!(matches!(
            classify(Call::Admin, 400, &busy),
            ServiceError::JobStillRunning { .. }
        ));
        let taken = vss(
            "GitHub.DistributedTask.WebApi.AgentExistsException, GitHub.DistributedTask.WebApi",
            "taken",
        );
        assert!(matches!(
            classify(Call::Admin, 409, &taken),
            ServiceError::RunnerExists { .. }
        ));
        // A router's plain-text miss on an admin call is just a 404.
        assert_eq!(
            classify(Call::Admin, 404, "404 page not found"),
            ServiceError::Other {
                status: 404,
                type_name: String::new(),
                message: "404 page not found".into()
            }
        );
    }
}
