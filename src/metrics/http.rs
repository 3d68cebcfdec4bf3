//! The HTTP server of `--metrics-addr`: one thread, our own accept loop and a `poll` over at
//! most `MAX_CONNECTIONS` non-blocking connections; one request per connection, its head
//! capped and parsed by httparse, every connection under a deadline.
//!
//! Nothing a client does can hold the others up: no read or write blocks, a full table
//! closes its oldest connection (a scrape takes milliseconds, so the oldest is the one
//! that dawdles), and an accept error (EMFILE: no file descriptor left) closes the oldest
//! too, or with none open pauses accepting briefly, instead of stopping the server.

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Connections served at once; a new one beyond this closes the oldest.
pub(super) const MAX_CONNECTIONS: usize = 16;
/// The longest request head (request line and headers) read: past it, 431.
pub(super) const MAX_HEAD: usize = 8 * 1024;
/// Time to send the whole request head, from the connection's accept.
pub(super) const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Time to take the whole response, from when it is ready.
pub(super) const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// The pause after an accept error, with no connection to close, before the next accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Headers parsed at most (more: 431).
const MAX_HEADERS: usize = 64;

/// (status, content type, body) of a request: `get` for GET or HEAD, and the request target.
pub(super) type Route<'a> = dyn Fn(bool, &str) -> (u16, &'static str, String) + 'a;

/// Where a connection is.
enum Phase {
    /// Reading the request head; what came so far.
    Head(Vec<u8>),
    /// Writing the response; what is left starts at `sent`.
    Answer { bytes: Vec<u8>, sent: usize },
}

/// One client's connection.
struct Conn {
    stream: TcpStream,
    /// When it was accepted: the oldest is closed first.
    accepted: Instant,
    /// When it is closed, whatever its phase.
    deadline: Instant,
    phase: Phase,
}

/// Serve `listener` (non-blocking: see `start`) until the process ends. Never returns and
/// never panics on what a client or the system does.
pub(super) fn serve(listener: &TcpListener, route: &Route<'_>) {
    let mut conns: Vec<Conn> = Vec::with_capacity(MAX_CONNECTIONS);
    let mut paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        conns.retain(|c| c.deadline > now);
        let accepting = paused_until.is_none_or(|t| now >= t);
        if accepting {
            paused_until = None;
        }
        let wake = conns.iter().map(|c| c.deadline).chain(paused_until).min();
        let (listener_ready, ready) = wait(listener, accepting, &conns, wake);
        let mut i = 0;
        conns.retain_mut(|c| {
            let keep = !ready.get(i).copied().unwrap_or(false) || step(c, route);
            i += 1;
            keep
        });
        if listener_ready && let Err(pause) = accept(listener, &mut conns) {
            paused_until = Some(Instant::now() + pause);
        }
    }
}

/// Poll the listener (while `accepting`) and the connections until one is ready or `wake`:
/// (the listener is ready, which connections are).
fn wait(
    listener: &TcpListener,
    accepting: bool,
    conns: &[Conn],
    wake: Option<Instant>,
) -> (bool, Vec<bool>) {
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(conns.len() + 1);
    fds.push(PollFd::new(listener, if accepting { PollFlags::IN } else { PollFlags::empty() }));
    for c in conns {
        let flags = match c.phase {
            Phase::Head(_) => PollFlags::IN,
            Phase::Answer { .. } => PollFlags::OUT,
        };
        fds.push(PollFd::new(&c.stream, flags));
    }
    let timeout = wake.map(|t| {
        let left = t.saturating_duration_since(Instant::now());
        Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        }
    });
    if let Err(e) = poll(&mut fds, timeout.as_ref()) {
        if e != rustix::io::Errno::INTR {
            // Cannot happen with valid descriptors; never spin on it.
            std::thread::sleep(ACCEPT_BACKOFF);
        }
        return (false, vec![false; conns.len()]);
    }
    let listener_ready = accepting && !fds[0].revents().is_empty();
    let ready = fds[1..].iter().map(|f| !f.revents().is_empty()).collect();
    (listener_ready, ready)
}

/// Accept the connections waiting (as many as the table holds, so that a flood of them
/// cannot keep the open ones from being served); a table already full closes its oldest
/// connection first. An accept error other than a lost race (EMFILE, ENFILE: no
/// descriptor left; ENOBUFS, ENOMEM) closes the oldest connection, a descriptor back, and
/// tries again; with none left to close, it returns how long to pause accepting.
fn accept(listener: &TcpListener, conns: &mut Vec<Conn>) -> Result<(), Duration> {
    for _ in 0..MAX_CONNECTIONS {
        match listener.accept() {
            Ok((stream, _)) => admit(stream, conns),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {
            }
            Err(_) if !conns.is_empty() => close_oldest(conns),
            // The rest of the process holds every descriptor: wait a little rather than
            // spin on a listener that stays readable.
            Err(_) => return Err(ACCEPT_BACKOFF),
        }
    }
    Ok(())
}

/// Take a new connection in, closing the oldest if the table is full.
fn admit(stream: TcpStream, conns: &mut Vec<Conn>) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    // One small response per connection: no reason to wait for more to send.
    let _ = stream.set_nodelay(true);
    if conns.len() >= MAX_CONNECTIONS {
        close_oldest(conns);
    }
    let now = Instant::now();
    conns.push(Conn {
        stream,
        accepted: now,
        deadline: now + HEAD_DEADLINE,
        phase: Phase::Head(Vec::new()),
    });
}

fn close_oldest(conns: &mut Vec<Conn>) {
    if let Some((i, _)) = conns.iter().enumerate().min_by_key(|(_, c)| c.accepted) {
        conns.swap_remove(i);
    }
}

/// Read or write what the connection is ready for: false once it is done with.
fn step(c: &mut Conn, route: &Route<'_>) -> bool {
    match &mut c.phase {
        Phase::Head(head) => match read_head(&mut c.stream, head) {
            Got::More => true,
            Got::Closed => false,
            Got::Head(status) => {
                let bytes = match status {
                    Ok((get, target, is_head)) => {
                        let (status, content_type, body) = route(get, &target);
                        response(status, content_type, &body, is_head)
                    }
                    Err(status) => response(status, PLAIN, &format!("{}\n", reason(status)), false),
                };
                c.phase = Phase::Answer { bytes, sent: 0 };
                c.deadline = Instant::now() + WRITE_DEADLINE;
                write_answer(c)
            }
        },
        Phase::Answer { .. } => write_answer(c),
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// What reading a head gave.
enum Got {
    /// Not all of it yet.
    More,
    /// The client went away (or failed) before a whole head.
    Closed,
    /// A whole head: (GET or HEAD, the target, HEAD), or the error status to answer.
    Head(Result<(bool, String, bool), u16>),
}

/// Read what is there (non-blocking) onto `head`, at most `MAX_HEAD` bytes, and parse it.
fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) -> Got {
    let mut chunk = [0u8; 4096];
    loop {
        let room = (MAX_HEAD + 1).saturating_sub(head.len()).min(chunk.len());
        if room == 0 {
            break;
        }
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Got::Closed,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Got::Closed,
        }
    }
    match parse(head) {
        Some(parsed) => Got::Head(parsed),
        None if head.len() > MAX_HEAD => Got::Head(Err(431)),
        None => Got::More,
    }
}

/// A request head: None while incomplete; (GET or HEAD, target, HEAD) or the status of
/// its error (400 malformed, 431 too many headers).
pub(super) fn parse(head: &[u8]) -> Option<Result<(bool, String, bool), u16>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(_)) => {
            let method = request.method.unwrap_or("");
            let target = request.path.unwrap_or("").to_string();
            Some(Ok((matches!(method, "GET" | "HEAD"), target, method == "HEAD")))
        }
        Err(httparse::Error::TooManyHeaders) => Some(Err(431)),
        Err(_) => Some(Err(400)),
    }
}

/// Write what is left of the answer: false once it is all sent (or cannot be).
fn write_answer(c: &mut Conn) -> bool {
    let Phase::Answer { bytes, sent } = &mut c.phase else { return false };
    while *sent < bytes.len() {
        match c.stream.write(&bytes[*sent..]) {
            Ok(0) => return false,
            Ok(n) => *sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    false
}

/// A whole response; `head_only` (a HEAD request) leaves the body out.
pub(super) fn response(status: u16, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_once_whole() {
        let head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: h\r\n\r\n";
        for end in 0..head.len() {
            assert!(parse(&head[..end]).is_none(), "{end} bytes are not a head yet");
        }
        assert_eq!(parse(head), Some(Ok((true, "/metrics?x=1".into(), false))));
        let more = b"HEAD /live HTTP/1.0\r\n\r\nGET /other HTTP/1.1\r\n\r\n";
        assert_eq!(parse(more), Some(Ok((true, "/live".into(), true))));
        assert_eq!(parse(b"POST /live HTTP/1.1\r\n\r\n"), Some(Ok((false, "/live".into(), false))));
    }

    #[test]
    fn malformed_heads_and_too_many_headers_are_refused() {
        for bad in [&b"GET /live HTTP/9\r\n\r\n"[..], b"\x00\x01\r\n\r\n", b"GET /li ve x\r\n\r\n"]
        {
            assert_eq!(parse(bad), Some(Err(400)), "{}", String::from_utf8_lossy(bad));
        }
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(parse(many.as_bytes()), Some(Err(431)));
    }

    #[test]
    fn a_response_is_whole_and_head_leaves_the_body_out() {
        let get = String::from_utf8(response(200, PLAIN, "live\n", false)).expect("utf-8");
        assert_eq!(
            get,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\
             Connection: close\r\n\r\nlive\n"
        );
        let head = String::from_utf8(response(200, PLAIN, "live\n", true)).expect("utf-8");
        assert!(head.ends_with("Content-Length: 5\r\nConnection: close\r\n\r\n"), "{head}");
        let too_big = String::from_utf8(response(431, PLAIN, "x", false)).expect("utf-8");
        assert!(too_big.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    }
}
