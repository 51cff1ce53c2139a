//! Action repositories as the runner downloads them: `GET /repos/{o}/{r}/commits/{ref}`
//! (REST, authenticated: the ref resolved to its commit), `GET /repos/{o}/{r}/tarball/{ref}`
//! (302 to codeload, unauthenticated for a public repository) and the archive itself,
//! `/_codeload/{o}/{r}/legacy.tar.gz/{sha}`, served after [`super::Options::codeload_delay`]
//! (a slow uplink, or codeload's 429s people meet in "Set up job"). Downloads are
//! counted in [`super::State::codeload_downloads`].
//!
//! There is no shared contract for these three; the shapes follow GitHub's REST
//! reference (`commit` has `sha`; tarball answers 302 with `Location`).

use std::io::Write;

use hyper::{Method, StatusCode};
use serde_json::json;

use super::http::{basic_error, json_resp, Ctx, Resp};
use super::Shared;
use crate::protocol::action_sha;

/// `GET /repos/{o}/{r}/commits/{ref}`.
pub(super) fn commit(o: &str, r: &str, rf: &str) -> Resp {
    let sha = action_sha(&format!("{o}/{r}"), rf);
    json_resp(
        StatusCode::OK,
        &json!({"sha": sha, "node_id": "C_fake", "url": format!("https://api.github.com/repos/{o}/{r}/commits/{sha}"), "commit": {"message": format!("{rf}")}}),
    )
}

/// `GET /repos/{o}/{r}/tarball/{ref}` and `/_codeload/…`.
pub(super) async fn route(shared: &Shared, ctx: &Ctx, segs: &[&str]) -> Option<Resp> {
    if ctx.method != Method::GET {
        return None;
    }
    match segs {
        ["repos", o, r, "tarball", rf] => {
            let host = ctx.header("host").unwrap_or_else(|| "127.0.0.1".into());
            let sha = if rf.len() == 40 {
                rf.to_string()
            } else {
                action_sha(&format!("{o}/{r}"), rf)
            };
            let mut resp = super::http::empty(StatusCode::FOUND);
            let loc = format!("http://{host}/_codeload/{o}/{r}/legacy.tar.gz/{sha}");
            resp.headers_mut()
                .insert("location", loc.parse().expect("a URL"));
            Some(resp)
        }
        ["_codeload", o, r, "legacy.tar.gz", sha] => {
            let delay = shared.opts.codeload_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            shared
                .lock()
                .codeload_downloads
                .push(format!("{o}/{r}@{sha}"));
            match archive(o, r, sha) {
                Ok(bytes) => {
                    let mut resp =
                        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(bytes)));
                    resp.headers_mut()
                        .insert("content-type", "application/x-gzip".parse().unwrap());
                    Some(resp)
                }
                Err(e) => Some(basic_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &e.to_string(),
                )),
            }
        }
        _ => None,
    }
}

/// The archive codeload serves: one top folder `{o}-{r}-{sha7}/` with an `action.yml`.
pub fn archive(o: &str, r: &str, sha: &str) -> std::io::Result<Vec<u8>> {
    let top = format!("{o}-{r}-{}", &sha[..sha.len().min(7)]);
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut t = tar::Builder::new(gz);
    let body = format!("name: {o}/{r}\nruns:\n  using: node20\n  main: index.js\n");
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    t.append_data(&mut h, format!("{top}/action.yml"), body.as_bytes())?;
    let mut gz = t.into_inner()?;
    gz.flush()?;
    gz.finish()
}
