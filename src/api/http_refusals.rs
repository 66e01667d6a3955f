//! actix-http answers a request it cannot parse as HTTP (a broken request line or header, both
//! `Content-Length` and `Transfer-Encoding`, a header section over its limit, a head that does
//! not arrive in time) itself, before any route or middleware runs, with an empty body, and it
//! has no hook for one. So every connection's socket is wrapped in [`Conn`]: when what actix
//! writes ends with such a refusal, the refusal goes out with the same status and the error body
//! of the API the connection last spoke (see [`super::error`]).
//!
//! A refusal is recognised by its whole head: a 400, 408 or 431 status line, `content-length: 0`,
//! at most `connection: close`, and `date`. Every response a handler makes carries an
//! `x-request-id` (the trace middleware), so none of them can match.

use super::error::{Api, ApiError};
use actix_web::http::StatusCode;
use actix_web::rt::net::TcpStream;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A refusal head is short; only the last bytes of a write are searched for one.
const MAX_HEAD: usize = 256;

/// One client connection, as actix-http reads and writes it.
pub struct Conn {
    tcp: TcpStream,
    /// The API of the last request line seen: a refusal's body is in its shape.
    api: Api,
    /// A refusal being written in place of actix's.
    swap: Option<Swap>,
}

struct Swap {
    bytes: Vec<u8>,
    written: usize,
    /// The length of actix's head, reported as written once `bytes` are.
    replaces: usize,
}

impl Conn {
    pub fn new(tcp: TcpStream) -> Self {
        Conn {
            tcp,
            api: Api::OpenAi,
            swap: None,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Writes the replacement of a refusal; `Ok(n)` (actix's head length) once all of it is out.
    fn poll_swap(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(swap) = &mut self.swap else {
            return Poll::Ready(Ok(0));
        };
        while swap.written < swap.bytes.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &swap.bytes[swap.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            swap.written += n;
        }
        let replaces = swap.replaces;
        self.swap = None;
        Poll::Ready(Ok(replaces))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        if let Some(api) = request_line_api(&buf.filled()[before..]) {
            this.api = api;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // actix calls again with the same bytes until it is told they are written.
        if this.swap.is_some() {
            return this.poll_swap(cx);
        }
        match find_refusal(buf) {
            None => Pin::new(&mut this.tcp).poll_write(cx, buf),
            // What precedes the refusal goes out as it is, so the refusal starts a later write.
            Some((at, _)) if at > 0 => Pin::new(&mut this.tcp).poll_write(cx, &buf[..at]),
            Some((_, status)) => {
                tracing::info!(
                    "refused a request that is not valid HTTP/1.1 with {status} (actix-http)"
                );
                this.swap = Some(Swap {
                    bytes: refusal(status, buf, this.api),
                    written: 0,
                    replaces: buf.len(),
                });
                this.poll_swap(cx)
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The API a request line names (`METHOD /path ...`), if `bytes` start with one.
fn request_line_api(bytes: &[u8]) -> Option<Api> {
    let sp = bytes.iter().take(16).position(|&b| b == b' ')?;
    if sp == 0 || !bytes[..sp].iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    let rest = &bytes[sp + 1..];
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\r')
        .unwrap_or(rest.len());
    let path = std::str::from_utf8(&rest[..end]).ok()?;
    // The same rule as the routes' own errors.
    path.starts_with('/').then(|| super::api_of(path))
}

/// Where in `buf` an actix-http refusal head starts, and its status, if `buf` ends with one.
fn find_refusal(buf: &[u8]) -> Option<(usize, StatusCode)> {
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let tail_from = buf.len().saturating_sub(MAX_HEAD);
    let tail = &buf[tail_from..];
    let start = tail.windows(5).rposition(|w| w == b"HTTP/")?;
    let head = std::str::from_utf8(&tail[start..]).ok()?;
    let mut lines = head.strip_suffix("\r\n\r\n")?.split("\r\n");
    let status_line = lines.next()?;
    let code = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?;
    let status = match code {
        "400" => StatusCode::BAD_REQUEST,
        "408" => StatusCode::REQUEST_TIMEOUT,
        "431" => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let mut empty = false;
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower == "content-length: 0" {
            empty = true;
        } else if lower != "connection: close" && !lower.starts_with("date: ") {
            return None;
        }
    }
    empty.then_some((tail_from + start, status))
}

/// The refusal actix wrote (`head`), with the error body of `api` in place of none.
fn refusal(status: StatusCode, head: &[u8], api: Api) -> Vec<u8> {
    let message = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            "the request's header section is over the server's limit; the connection is closed"
        }
        StatusCode::REQUEST_TIMEOUT => {
            "the request's head did not arrive in time; the connection is closed"
        }
        _ => {
            "the request is not valid HTTP/1.1 (a malformed request line or header, or both \
             Content-Length and Transfer-Encoding); the connection is closed"
        }
    };
    let body = ApiError::new(status, message).body(api).to_string();
    let head = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(head.len() + body.len() + 64);
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        if line.eq_ignore_ascii_case("content-length: 0") {
            out.push_str("content-type: application/json\r\n");
            out.push_str(&format!("content-length: {}\r\n", body.len()));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\
        date: Fri, 04 Dec 2026 19:09:56 GMT\r\n\r\n";

    #[test]
    fn an_actix_refusal_is_found_after_the_responses_before_it() {
        assert_eq!(find_refusal(BAD), Some((0, StatusCode::BAD_REQUEST)));
        let mut pipelined = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        let at = pipelined.len();
        pipelined.extend_from_slice(BAD);
        assert_eq!(
            find_refusal(&pipelined),
            Some((at, StatusCode::BAD_REQUEST))
        );
        let too_large = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
            date: x\r\n\r\n";
        assert_eq!(
            find_refusal(too_large),
            Some((0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        );
    }

    #[test]
    fn responses_of_handlers_are_never_taken_for_refusals() {
        // A handler's 400 has a body and the request id; a body that ends like a head does not
        // make its response one.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: 1\r\n\
            date: x\r\n\r\n";
        assert_eq!(find_refusal(ours), None);
        let not_empty = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\ndate: x\r\n\r\n";
        assert_eq!(find_refusal(not_empty), None);
        let other = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(find_refusal(other), None);
        assert_eq!(find_refusal(b"data: {}\r\n\r\n"), None);
    }

    #[test]
    fn a_refusal_gets_the_body_of_the_api_last_spoken() {
        let out = String::from_utf8(refusal(StatusCode::BAD_REQUEST, BAD, Api::Ollama)).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("not valid HTTP"),
            "{v}"
        );
        let out = refusal(StatusCode::BAD_REQUEST, BAD, Api::OpenAi);
        let body = String::from_utf8(out).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(body.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }

    #[test]
    fn request_lines_name_their_api() {
        assert_eq!(
            request_line_api(b"POST /api/chat HTTP/1.1\r\n"),
            Some(Api::Ollama)
        );
        assert_eq!(
            request_line_api(b"GET /v1/models HTTP/1.1\r\n"),
            Some(Api::OpenAi)
        );
        assert_eq!(request_line_api(b"{\"model\": \"x\"}"), None);
        assert_eq!(request_line_api(b"GARBAGE\r\n\r\n"), None);
    }
}
