//! The service's error bodies: the VSS `WrappedException` envelope (`$id`, `innerException`,
//! `message`, `typeName`, `typeKey`, `errorCode`, `eventId`; reference 2.11), or only
//! `typeName` and `message` when [`super::ScaleSets::bare_errors`] is set; and the broker's
//! router-level `404 page not found` (text/plain).
//!
//! Type names seen live: [`SESSION_CONFLICT`], [`SCALE_SET_NOT_FOUND`], [`RUNNER_ADMIN`]
//! (un-namespaced). Guessed (the reference gives a substring or nothing): the namespaces of
//! [`INVALID_TOKEN`], [`AGENT_EXISTS`], [`AGENT_NOT_FOUND`], [`JOB_STILL_RUNNING`], and
//! [`SCALE_SET_EXISTS`], [`VERSION_NOT_SPECIFIED`], [`ARGUMENT`] altogether.

use super::*;

/// 409 on a second session (ARC#4285).
pub const SESSION_CONFLICT: &str = "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi";
/// 404 for a scale set that is gone (ARC#4370, #3942).
pub const SCALE_SET_NOT_FOUND: &str =
    "GitHub.Actions.Runtime.WebApi.RunnerScaleSetNotFoundException, GitHub.Actions.Runtime.WebApi";
/// 404 on refreshing or deleting a session that is gone (actions/scaleset PR #123).
pub const RUNNER_ADMIN: &str = "RunnerAdminException";
/// The text of [`RUNNER_ADMIN`] (actions/scaleset PR #123).
pub const RUNNER_ADMIN_MESSAGE: &str = "runner referenced a session ID that doesn't exist in redis";
/// 401 for an expired admin JWT (S6 §2b-7 names `InvalidTokenException`; the namespace is
/// a guess).
pub const INVALID_TOKEN: &str =
    "GitHub.Services.WebApi.InvalidTokenException, GitHub.Services.WebApi";
/// 409 from `generatejitconfig` for a name taken (the clients match `AgentExistsException`).
pub const AGENT_EXISTS: &str =
    "GitHub.DistributedTask.WebApi.TaskAgentExistsException, GitHub.DistributedTask.WebApi";
/// 404 for a runner that is gone (the clients match `AgentNotFoundException`).
pub const AGENT_NOT_FOUND: &str =
    "GitHub.DistributedTask.WebApi.TaskAgentNotFoundException, GitHub.DistributedTask.WebApi";
/// 400 on removing a busy runner, or a scale set with one (the clients match
/// `JobStillRunningException`; the status for a scale set is a guess).
pub const JOB_STILL_RUNNING: &str = "GitHub.DistributedTask.WebApi.TaskAgentJobStillRunningException, GitHub.DistributedTask.WebApi";
/// 409 for a scale-set name taken in its group (a guess, as the `scaleset` crate's emulator).
pub const SCALE_SET_EXISTS: &str =
    "GitHub.Actions.Runtime.WebApi.RunnerScaleSetExistsException, GitHub.Actions.Runtime.WebApi";
/// 400 for a call without `api-version` (Azure DevOps' name; a guess).
pub const VERSION_NOT_SPECIFIED: &str =
    "GitHub.Services.WebApi.VssVersionNotSpecifiedException, GitHub.Services.WebApi";
/// 400 for a body the service cannot use (a guess).
pub const ARGUMENT: &str = "System.ArgumentException, System.Private.CoreLib";

/// An exception body.
pub fn exception(bare: bool, status: StatusCode, type_name: &str, message: &str) -> Resp {
    let key = type_name
        .split(',')
        .next()
        .unwrap_or(type_name)
        .rsplit('.')
        .next()
        .unwrap_or(type_name);
    let body = if bare {
        json!({"typeName": type_name, "message": message})
    } else {
        json!({
            "$id": "1", "innerException": null, "message": message, "typeName": type_name,
            "typeKey": key, "errorCode": 0, "eventId": 3000,
        })
    };
    json_resp(status, &body)
}

/// The broker's router-level miss (Go's `http.NotFound`).
pub fn page_not_found() -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(b"404 page not found\n")));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(super) fn scale_set_not_found(bare: bool, id: &str) -> Resp {
    exception(
        bare,
        StatusCode::NOT_FOUND,
        SCALE_SET_NOT_FOUND,
        &format!("No runner scale set found with identifier {id}."),
    )
}

pub(super) fn runner_admin(bare: bool) -> Resp {
    exception(
        bare,
        StatusCode::NOT_FOUND,
        RUNNER_ADMIN,
        RUNNER_ADMIN_MESSAGE,
    )
}

pub(super) fn invalid_token(bare: bool) -> Resp {
    exception(
        bare,
        StatusCode::UNAUTHORIZED,
        INVALID_TOKEN,
        "The access token is expired or invalid.",
    )
}

pub(super) fn argument(bare: bool, message: &str) -> Resp {
    exception(bare, StatusCode::BAD_REQUEST, ARGUMENT, message)
}

pub(super) fn version_missing(bare: bool, ctx: &Ctx) -> Resp {
    exception(
        bare,
        StatusCode::BAD_REQUEST,
        VERSION_NOT_SPECIFIED,
        &format!("No api-version was supplied for the {} request. The version must be supplied either as part of the Accept header (e.g. \"application/json; api-version=1.0\") or as a query parameter (e.g. \"?api-version=1.0\").", ctx.method),
    )
}

/// A queue call with a token that is expired, unknown, or names a session that is gone:
/// 401, no body (the clients ignore it).
pub(super) fn queue_unauthorized() -> Resp {
    empty(StatusCode::UNAUTHORIZED)
}
