//! The HTTP/1.1 front door: tally's own accept loop over hyper, with the
//! connection limits a public server needs (see [`HttpLimits`]).
//!
//! * **Connection cap.** At most [`HttpLimits::max_connections`] connections
//!   are open at once; one more is answered at once with a `503`
//!   `too_many_connections` problem and closed, so the cap is visible
//!   rather than a hang in the kernel's backlog.
//! * **Header-read timeout.** A connection that has not delivered a
//!   complete request head within [`HttpLimits::header_read_timeout`] —
//!   counted from the accept, or from the first byte of the next request on
//!   a kept-alive connection — is closed (a slow-header flood holds nothing
//!   for longer than that).
//! * **Idle timeout.** A kept-alive connection without traffic for
//!   [`HttpLimits::idle_timeout`] between requests is closed.
//! * **Request timeout and body limit** are applied by the router (the
//!   handler's time, including reading the body: 503 `request_timeout`;
//!   bodies over the limit: 413 `payload_too_large`).
//! * **Head checks before the router:** a request without exactly one
//!   `Host` header is refused (400 `invalid_host`); a URI longer than
//!   [`MAX_URI_BYTES`] is refused (414 `uri_too_long`); an `X-Request-Id`
//!   that is longer than [`MAX_REQUEST_ID_CHARS`], given twice, or not
//!   printable ASCII is dropped, so a fresh id is generated and echoed
//!   instead of the client's text.
//! * **Problems from hyper itself.** hyper answers an unparsable head
//!   (`400`), a head larger than [`MAX_HEAD_BYTES`] (`431`) and an overlong
//!   URI (`414`) on its own, with an empty body; the connection wrapper
//!   rewrites exactly those responses into `application/problem+json`
//!   ones (`malformed_request`, `headers_too_large`, `uri_too_long`).
//!
//! # Decisions
//!
//! * **Own accept loop instead of `axum::serve`.** `axum::serve` has no
//!   header-read or idle timeout and no connection cap; hyper's http1
//!   builder is used directly with tally's own timers, because hyper's
//!   header-read timer also runs while a kept-alive connection is idle and
//!   cannot express two different limits.
//! * **Refuse excess connections instead of not accepting them.** Leaving
//!   them in the backlog would make a flood look like an outage to every
//!   well-behaved client; a 503 with `Retry-After` says what happened.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::error::{problem_response, ApiError};
use crate::limits::HttpLimits;
use crate::metrics::ApiMetrics;

/// Longest accepted request target (path and query), in bytes.
pub const MAX_URI_BYTES: usize = 16 * 1024;
/// Largest accepted request head (request line and headers), in bytes.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 100;
/// Longest `X-Request-Id` echoed back, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (for at most the request timeout) and returns.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: ApiMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning; per-connection errors are ignored.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                metrics.connections_open.inc();
                let app = app.clone();
                let metrics = metrics.clone();
                let closing = closing.clone();
                tokio::spawn(async move {
                    serve_connection(stream, app, limits, closing).await;
                    metrics.connections_open.dec();
                    drop(permit);
                });
            }
            Err(_) => {
                metrics.connections_refused.inc();
                refuse(stream);
            }
        }
    }
    let _ = closing_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let grace = limits.request_timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

/// Answers a connection over the cap with a 503 problem (if the socket
/// takes it at once) and closes it.
fn refuse(stream: TcpStream) {
    let body = serde_json::to_vec(
        &ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "the server has as many open connections as it allows; retry shortly",
        )
        .problem(),
    )
    .unwrap_or_default();
    let mut resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    resp.extend_from_slice(&body);
    let _ = stream.try_write(&resp);
}

/// What a connection is doing, shared by the I/O wrapper, the service and
/// the watchdog. Times are milliseconds since the connection was accepted.
struct Activity {
    start: Instant,
    /// Requests handed to the router and not yet answered.
    in_flight: AtomicUsize,
    /// When the connection began waiting for a request head, or `NONE`
    /// while a request is being served or the connection is idle.
    head_since: AtomicU64,
    /// Last byte read or written.
    last_io: AtomicU64,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(0),
            last_io: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            // The first byte of a new request head on an idle connection.
            let _ =
                self.head_since
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    /// Why the connection must be closed now, if it must.
    fn expired(&self, limits: &HttpLimits) -> Option<&'static str> {
        let now = self.now();
        let head_since = self.head_since.load(Ordering::Acquire);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NONE - 1);
        if head_since != NONE && now.saturating_sub(head_since) >= ms(limits.header_read_timeout) {
            return Some("header_read_timeout");
        }
        if head_since == NONE
            && self.in_flight.load(Ordering::Acquire) == 0
            && now.saturating_sub(self.last_io.load(Ordering::Relaxed)) >= ms(limits.idle_timeout)
        {
            return Some("idle_timeout");
        }
        None
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: HttpLimits,
    mut closing: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Guarded {
        inner: stream,
        activity: activity.clone(),
        pending: Vec::new(),
    });
    let svc_activity = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let activity = svc_activity.clone();
        activity.begin();
        async move {
            let resp = match check_head(req) {
                Ok(req) => match app.oneshot(req.map(Body::new)).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                },
                Err(problem) => problem,
            };
            activity.end();
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The watchdog below times heads and idleness itself.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = closing.changed(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ticker.tick() => {
                if let Some(why) = activity.expired(&limits) {
                    tracing::debug!(reason = why, "closing connection");
                    break; // dropping the connection closes the socket
                }
            }
        }
    }
}

/// The checks on a request head that hyper does not make (see the module
/// docs); `Err` is the problem response.
#[allow(clippy::result_large_err)]
fn check_head(mut req: Request<Incoming>) -> Result<Request<Incoming>, Response<Body>> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts != 1 {
        return Err(problem_response(&ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_host",
            if hosts == 0 {
                "the request has no Host header"
            } else {
                "the request has more than one Host header"
            },
        )));
    }
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Err(problem_response(&ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        )));
    }
    let ids: Vec<&HeaderValue> = req
        .headers()
        .get_all(crate::REQUEST_ID_HEADER)
        .iter()
        .collect();
    let acceptable = ids.len() == 1
        && ids[0].len() <= MAX_REQUEST_ID_CHARS
        && !ids[0].is_empty()
        && ids[0].as_bytes().iter().all(|b| (0x21..=0x7e).contains(b));
    if !ids.is_empty() && !acceptable {
        // A fresh id is generated by the router's request-id layer.
        req.headers_mut().remove(crate::REQUEST_ID_HEADER);
    }
    Ok(req)
}

/// The socket, with activity tracking for the watchdog and the rewrite of
/// hyper's own bodiless error responses into problems.
struct Guarded {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// Bytes accepted from hyper but not yet written (a rewritten response).
    pending: Vec<u8>,
}

impl Guarded {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.activity.wrote();
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(replacement) = rewrite_protocol_error(buf) {
            self.pending = replacement;
            // Written or not yet, the bytes are ours now; flush finishes.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if n > 0 {
            self.activity.wrote();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper then hands over whole responses in one buffer, which is
        // what `rewrite_protocol_error` inspects.
        false
    }
}

/// hyper's automatic answer to a request it could not parse is a status
/// line and `content-length: 0`; every response of the router to a client
/// error has a problem body. So a 400, 414 or 431 head with an empty body
/// is hyper's own, and is replaced by a problem response.
fn rewrite_protocol_error(buf: &[u8]) -> Option<Vec<u8>> {
    let (status, code, detail) = if buf.starts_with(b"HTTP/1.1 400 ") {
        (
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "the request line or a header could not be parsed",
        )
    } else if buf.starts_with(b"HTTP/1.1 431 ") {
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request head is too large or has too many headers",
        )
    } else if buf.starts_with(b"HTTP/1.1 414 ") {
        (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request target is too long",
        )
    } else {
        return None;
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if end != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..end]).ok()?.to_ascii_lowercase();
    if !head.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let body = serde_json::to_vec(&ApiError::new(status, code, detail).problem()).ok()?;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_protocol_errors_are_rewritten() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 20:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_protocol_error(hyper_431).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 "));
        assert!(out.contains("application/problem+json"));
        assert!(out.contains("\"code\":\"headers_too_large\""));
        let app_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(rewrite_protocol_error(app_400).is_none());
        assert!(rewrite_protocol_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
