//! The fake runner's message long-poll, shaped like the real listener's
//! (`SocketsHttpHandler` underneath `RawHttpMessageHandler`; facts A7):
//!
//! - one pooled HTTP/1.1 keep-alive connection, reused poll after poll;
//! - the request timeout covers the connect, the send and the wait for the response
//!   headers only; the body is read afterwards with no timeout of its own (so a peer that
//!   sends headers and then goes silent hangs the poll for ever, as actions/runner#4703);
//! - no TCP keepalive on the socket (the runner's `SetTcpKeepAlive` has no effect);
//! - after any error the connection is dropped and the next poll opens a new one.
//!
//! A pooled connection the server closed while idle is retried once on a new connection
//! without an error, as .NET does for a request that never reached the server.

use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a poll failed, with the listener's `{ex.Message}` text.
#[derive(Debug)]
pub struct PollError(pub String);

/// One keep-alive connection to the server, reused across polls.
pub struct PollConn {
    host: String,
    port: u16,
    stream: Option<TcpStream>,
    /// The request timeout (`SendTimeout`): connect, send and response headers.
    timeout: Duration,
    /// Connections opened so far (1 for a run with no errors).
    pub connects: u64,
}

fn timeout_text(d: Duration) -> String {
    let s = d.as_secs();
    format!(
        "The HTTP request timed out after {:02}:{:02}:{:02}.",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// .NET's texts for the socket errors a poll meets.
fn io_text(e: &std::io::Error, host: &str, port: u16, connecting: bool) -> String {
    let what = match e.raw_os_error() {
        Some(110) => "Connection timed out",
        Some(111) => "Connection refused",
        Some(104) => "Connection reset by peer",
        Some(113) => "No route to host",
        Some(101) => "Network is unreachable",
        _ => match e.kind() {
            ErrorKind::UnexpectedEof => "The response ended prematurely.",
            _ => "An error occurred while sending the request.",
        },
    };
    if connecting {
        format!("{what} ({host}:{port})")
    } else if e.kind() == ErrorKind::UnexpectedEof {
        what.to_string()
    } else {
        format!("Unable to read data from the transport connection: {what}.")
    }
}

impl PollConn {
    /// A connection to `base` (`http://host:port`), opened at the first poll.
    pub fn new(base: &str, timeout: Duration) -> PollConn {
        let rest = base.trim_start_matches("http://").trim_end_matches('/');
        let hostport = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(80)),
            None => (hostport.to_string(), 80),
        };
        PollConn {
            host,
            port,
            stream: None,
            timeout,
            connects: 0,
        }
    }

    /// Drop the connection (after an error: the listener rebuilds its client).
    pub fn reset(&mut self) {
        self.stream = None;
    }

    /// GET `path` on the pooled connection.
    pub async fn get(&mut self, path: &str) -> Result<Answer, PollError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let reused = self.stream.is_some();
        match self.try_get(path, deadline).await {
            Ok(a) => Ok(a),
            // The server closed the idle pooled connection before our request reached it.
            Err(Failure::StaleReuse) if reused => {
                self.stream = None;
                self.try_get(path, deadline).await.map_err(|f| self.fail(f))
            }
            Err(f) => Err(self.fail(f)),
        }
    }

    fn fail(&mut self, f: Failure) -> PollError {
        self.stream = None;
        PollError(match f {
            Failure::Timeout => timeout_text(self.timeout),
            Failure::Connect(e) => io_text(&e, &self.host, self.port, true),
            Failure::Io(e) => io_text(&e, &self.host, self.port, false),
            Failure::StaleReuse => "The response ended prematurely.".into(),
            Failure::Protocol(m) => m,
        })
    }

    async fn try_get(
        &mut self,
        path: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, Failure> {
        if self.stream.is_none() {
            let s = tokio::time::timeout_at(
                deadline,
                TcpStream::connect((self.host.as_str(), self.port)),
            )
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(Failure::Connect)?;
            let _ = s.set_nodelay(true);
            self.connects += 1;
            self.stream = Some(s);
        }
        let host = format!("{}:{}", self.host, self.port);
        let stream = self.stream.as_mut().expect("connected above");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: GitHubActionsRunner-linux-x64/{}\r\nAccept: application/json\r\n\r\n",
            crate::protocol::RUNNER_VERSION
        );
        tokio::time::timeout_at(deadline, stream.write_all(req.as_bytes()))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(Failure::Io)?;
        // The headers, within the request timeout.
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return Err(Failure::Protocol(
                    "The response headers are too long.".into(),
                ));
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .map_err(|_| Failure::Timeout)?
                .map_err(Failure::Io)?;
            if n == 0 {
                return Err(if buf.is_empty() {
                    Failure::StaleReuse
                } else {
                    Failure::Io(ErrorKind::UnexpectedEof.into())
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Failure::Protocol("The server returned an invalid response.".into()))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut close = false;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v == "close",
                _ => {}
            }
        }
        // The body: no timeout (`ResponseContentRead` after the handler returned).
        let mut body = buf[head_end..].to_vec();
        if chunked {
            body = read_chunked(stream, body).await.map_err(Failure::Io)?;
        } else {
            let want = length.unwrap_or(0);
            while body.len() < want {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.map_err(Failure::Io)?;
                if n == 0 {
                    return Err(Failure::Io(ErrorKind::UnexpectedEof.into()));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(want);
        }
        if close {
            self.stream = None;
        }
        Ok(Answer { status, body })
    }
}

enum Failure {
    Timeout,
    Connect(std::io::Error),
    Io(std::io::Error),
    /// EOF before any byte of an answer on a reused connection.
    StaleReuse,
    Protocol(String),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decode a chunked body, `have` being what was read after the headers.
async fn read_chunked(stream: &mut TcpStream, mut have: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut out = vec![];
    loop {
        let Some(i) = find(&have, b"\r\n") else {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            have.extend_from_slice(&chunk[..n]);
            continue;
        };
        let size_text = String::from_utf8_lossy(&have[..i]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::from(ErrorKind::InvalidData))?;
        while have.len() < i + 2 + size + 2 {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            have.extend_from_slice(&chunk[..n]);
        }
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&have[i + 2..i + 2 + size]);
        have.drain(..i + 2 + size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve(
        answers: Vec<&'static [u8]>,
        close_after_first: bool,
    ) -> (String, tokio::task::JoinHandle<u32>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let mut accepted = 0;
            let mut answers = answers.into_iter();
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    break;
                };
                accepted += 1;
                loop {
                    let mut buf = vec![0u8; 4096];
                    let mut got = vec![];
                    while find(&got, b"\r\n\r\n").is_none() {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    if got.is_empty() {
                        break;
                    }
                    let Some(a) = answers.next() else {
                        return accepted;
                    };
                    s.write_all(a).await.unwrap();
                    if answers.len() == 0 {
                        return accepted;
                    }
                    if close_after_first {
                        break;
                    }
                }
                if answers.len() == 0 {
                    return accepted;
                }
            }
            accepted
        });
        (url, h)
    }

    #[tokio::test]
    async fn polls_reuse_one_connection() {
        let empty: &[u8] = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
        let job: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let (url, srv) = serve(vec![empty, empty, job], false).await;
        let mut c = PollConn::new(&url, Duration::from_secs(5));
        assert_eq!(c.get("/m").await.unwrap().status, 202);
        assert_eq!(c.get("/m").await.unwrap().status, 202);
        let a = c.get("/m").await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"{}"[..]));
        assert_eq!(c.connects, 1);
        assert_eq!(srv.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_without_an_error() {
        let empty: &[u8] = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
        let (url, _srv) = serve(vec![empty, empty], true).await;
        let mut c = PollConn::new(&url, Duration::from_secs(5));
        assert_eq!(c.get("/m").await.unwrap().status, 202);
        assert_eq!(c.get("/m").await.unwrap().status, 202);
        assert_eq!(c.connects, 2);
    }

    #[tokio::test]
    async fn chunked_bodies_and_refused_connections() {
        let chunked: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{\"\r\n1\r\n}\r\n0\r\n\r\n";
        let (url, _srv) = serve(vec![chunked], false).await;
        let mut c = PollConn::new(&url, Duration::from_secs(5));
        assert_eq!(c.get("/m").await.unwrap().body, b"{\"}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = PollConn::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5));
        let e = c.get("/m").await.unwrap_err();
        assert_eq!(e.0, format!("Connection refused (127.0.0.1:{port})"));
    }

    #[tokio::test]
    async fn only_the_headers_are_under_the_timeout() {
        // Headers never come: the request times out with the runner's text.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let _keep = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let mut c = PollConn::new(&url, Duration::from_millis(300));
        let e = c.get("/m").await.unwrap_err();
        assert_eq!(e.0, "The HTTP request timed out after 00:00:00.");
        // Headers come but the body does not: the poll hangs past the timeout.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let _silent = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{")
                .await
                .unwrap();
            std::future::pending::<()>().await;
        });
        let mut c = PollConn::new(&url, Duration::from_millis(300));
        let r = tokio::time::timeout(Duration::from_secs(2), c.get("/m")).await;
        assert!(r.is_err(), "the body read has no timeout: {r:?}");
    }
}
