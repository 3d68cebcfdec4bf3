//! One connection to the broker: opening it with deadlines (and TLS with a private CA),
//! declaring and deleting queues, and opening channels.

use super::counted::CountedStream;
use super::endpoint::{DEFAULT_HEARTBEAT_SECS, Endpoint};
use super::error::{connect_failed, explain, fatal, is_retryable};
use super::topology::{QueueSpec, declare};
use amiquip::{
    Auth, Channel, Connection, ConnectionBlockedNotification, ConnectionOptions, ConnectionTuning,
    QueueDeleteOptions,
};
use color_eyre::eyre::{Report, Result};
use crossbeam_channel::Receiver;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use url::Url;

/// An open connection to the broker.
pub struct Session {
    conn: Connection,
    endpoint: Endpoint,
    blocked: Receiver<ConnectionBlockedNotification>,
    /// Bytes read from the broker on this connection so far.
    received: Arc<AtomicU64>,
}

/// What the broker said about a queue when it was declared.
#[derive(Debug, Clone, Copy)]
pub struct QueueInfo {
    /// Ready messages.
    pub messages: u32,
    /// Consumers attached.
    pub consumers: u32,
}

impl Session {
    /// Connect, within the endpoint's timeout. amiquip may buffer up to `write_buffer` bytes
    /// of writes before a channel's next write waits (see `tuning`).
    pub fn open(endpoint: &Endpoint, write_buffer: usize) -> Result<Session> {
        let received = Arc::new(AtomicU64::new(0));
        let mut conn = open_stream(endpoint, tls_for(endpoint)?, write_buffer, &received)?;
        let blocked =
            conn.listen_for_connection_blocked().map_err(|e| explain(e, endpoint, "connecting"))?;
        Ok(Session { conn, endpoint: endpoint.clone(), blocked, received })
    }

    /// Connect to the first endpoint that answers, trying each once (the start of a run:
    /// nothing answering is a bad input, reported at once), for a connection that publishes
    /// no confirm window (see `UNWINDOWED_WRITE_BUFFER`).
    pub fn open_first(endpoints: &[Endpoint]) -> Result<(Session, usize)> {
        Session::open_first_buffered(endpoints, UNWINDOWED_WRITE_BUFFER)
    }

    /// Like [`Session::open_first`], with amiquip's write buffer sized to `write_buffer`
    /// bytes (see [`Session::open`]).
    pub fn open_first_buffered(
        endpoints: &[Endpoint],
        write_buffer: usize,
    ) -> Result<(Session, usize)> {
        let mut last = None;
        for (i, ep) in endpoints.iter().enumerate() {
            match Session::open(ep, write_buffer) {
                Ok(s) => return Ok((s, i)),
                Err(e) if endpoints.len() > 1 && is_retryable(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| fatal("no --url given".into())))
    }

    /// The endpoint this session is connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Bytes the broker has sent on this connection so far (frames whole or in part): a
    /// delivery is handed over only once its body is complete, so this is how a wait for one
    /// sees a large body arriving.
    pub(super) fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The broker's connection.blocked / unblocked notices.
    pub(super) fn blocked_notices(&self) -> Receiver<ConnectionBlockedNotification> {
        self.blocked.clone()
    }

    /// Declare the queue as `spec` says.
    pub fn declare_queue(&mut self, spec: &QueueSpec) -> Result<QueueInfo> {
        let channel = self.channel()?;
        let (messages, consumers) = declare(&channel, spec, &self.endpoint)?;
        let _ = channel.close();
        Ok(QueueInfo { messages, consumers })
    }

    /// Delete `queue` (used by `demo` for its own queues).
    pub fn delete_queue(&mut self, queue: &str) -> Result<()> {
        let channel = self.channel()?;
        channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .map_err(|e| explain(e, &self.endpoint, "deleting the queue"))?;
        let _ = channel.close();
        Ok(())
    }

    /// Close the connection, reporting a failure to close (amiquip's Drop would hide it).
    pub fn close(self) -> Result<()> {
        let ep = self.endpoint;
        self.conn.close().map_err(|e| explain(e, &ep, "closing the connection"))
    }

    pub(super) fn channel(&mut self) -> Result<Channel> {
        self.conn.open_channel(None).map_err(|e| explain(e, &self.endpoint, "opening a channel"))
    }
}

/// amiquip's write buffer for a connection that publishes no confirm window: a consumer's
/// acks, a client's requests, declares. The 64 MiB every connection had when the size came
/// from the default publisher window (twice 32 MiB); such connections never come near it.
pub(super) const UNWINDOWED_WRITE_BUFFER: usize = 64 * 1024 * 1024;

/// amiquip stops taking writes from channels while more than `write_buffer` bytes wait for
/// the socket. A publisher asks for twice its in-flight byte window
/// ([`super::PublisherOptions::write_buffer`]), so `publish` never stalls inside amiquip
/// (where no signal or deadline could reach it), even while a broker alarm stops the socket
/// from draining.
fn tuning(write_buffer: usize) -> ConnectionTuning {
    ConnectionTuning::default().buffered_writes_high_water(write_buffer)
}

/// The TLS set-up an endpoint needs: none for amqp://; for amqps://, the system's roots
/// (plus `--ca-cert`'s when given). Either way the connection runs over our own TCP stream
/// (see [`open_stream`]).
fn tls_for(ep: &Endpoint) -> Result<Option<native_tls::TlsConnector>> {
    if ep.url.starts_with("amqps:") { tls_connector(ep).map(Some) } else { Ok(None) }
}

/// The TLS set-up for amqps://: the system's roots, plus the CA certificate(s) of
/// `--ca-cert` when given.
fn tls_connector(ep: &Endpoint) -> Result<native_tls::TlsConnector> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(ca) = &ep.ca_cert {
        let pem = std::fs::read(ca).map_err(|e| {
            fatal(format!("cannot read --ca-cert {}: {e}; check the path", ca.display()))
        })?;
        let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| {
            fatal(format!("--ca-cert {} is not a PEM certificate: {e}", ca.display()))
        })?;
        builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| fatal(format!("cannot set up TLS for {}: {e}", ep.masked())))
}

/// Connect our own TCP stream and run the AMQP handshake over it (with TLS when `tls` is
/// given), all within the endpoint's timeout.
///
/// The TCP connect is ours, blocking in the kernel with a deadline
/// (`TcpStream::connect_timeout`): an address that never answers costs no CPU and is reported
/// as "could not connect within --connect-timeout", not as a lost connection. The stream has
/// TCP_NODELAY (see [`tcp_connect`]).
fn open_stream(
    ep: &Endpoint,
    tls: Option<native_tls::TlsConnector>,
    write_buffer: usize,
    received: &Arc<AtomicU64>,
) -> Result<Connection> {
    let deadline = Instant::now() + ep.timeout;
    let url = Url::parse(&ep.url).map_err(|e| fatal(format!("--url {}: {e}", ep.masked())))?;
    let host = url.host_str().unwrap_or("localhost").to_string();
    let port = url.port().unwrap_or(if tls.is_some() { 5671 } else { 5672 });
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| {
            fatal(format!("cannot resolve the host of {}: {e}; check --url", ep.masked()))
        })?
        .collect();
    if addrs.is_empty() {
        return Err(fatal(format!("the host of {} resolves to no address", ep.masked())));
    }
    let mut last: Option<Report> = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let stream = match tcp_connect(&addr, left) {
            Ok(stream) => stream,
            Err(e) => {
                last = Some(connect_failed(&e, ep));
                continue;
            }
        };
        let left = deadline.saturating_duration_since(Instant::now()).max(MIN_HANDSHAKE);
        let options = options_from_url(&url, left);
        let attempt = mio::net::TcpStream::from_stream(stream)
            .map_err(|e| connect_failed(&e, ep))
            .and_then(|stream| {
                let stream = CountedStream::new(stream, received.clone());
                match &tls {
                    Some(connector) => Connection::open_tls_stream(
                        connector.clone(),
                        &host,
                        stream,
                        options,
                        tuning(write_buffer),
                    ),
                    None => Connection::insecure_open_stream(stream, options, tuning(write_buffer)),
                }
                .map_err(|e| explain(e, ep, "connecting"))
            });
        match attempt {
            Ok(conn) => return Ok(conn),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| connect_failed(&std::io::Error::from(std::io::ErrorKind::TimedOut), ep)))
}

/// Connect a TCP stream to `addr` within `timeout`, with TCP_NODELAY: amiquip leaves Nagle's
/// algorithm on, which holds a lone small frame back until the peer's delayed ACK (~40 ms
/// per request/reply round trip). Every connection gets it: amqp://, and amqps:// with or
/// without --ca-cert.
fn tcp_connect(addr: &SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(addr, timeout)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The least time the AMQP handshake gets after a slow TCP connect.
const MIN_HANDSHAKE: Duration = Duration::from_millis(100);

/// The subset of the URL amiquip itself understands, as connection options.
fn options_from_url(url: &Url, timeout: Duration) -> ConnectionOptions<Auth> {
    let decode = |s: &str| percent_decode(s);
    let mut options = ConnectionOptions::default().connection_timeout(Some(timeout));
    let vhost = url.path().trim_start_matches('/');
    if !vhost.is_empty() {
        options = options.virtual_host(decode(vhost));
    }
    if !url.username().is_empty() || url.password().is_some() {
        let username = match url.username() {
            "" => "guest".to_string(),
            u => decode(u),
        };
        let password = url.password().map_or_else(|| "guest".to_string(), decode);
        options = options.auth(Auth::Plain { username, password });
    }
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "heartbeat" => options = options.heartbeat(v.parse().unwrap_or(DEFAULT_HEARTBEAT_SECS)),
            "channel_max" => {
                if let Ok(n) = v.parse() {
                    options = options.channel_max(n);
                }
            }
            _ => {}
        }
    }
    options
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map_or_else(|| s.to_string(), |(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::PublisherOptions;

    fn ep(url: &str) -> Endpoint {
        Endpoint::parse(url, None, Duration::from_secs(1)).expect("valid url")
    }

    #[test]
    fn every_scheme_goes_over_our_own_stream_with_tls_only_for_amqps() {
        assert!(tls_for(&ep("amqp://localhost/%2f")).expect("no TLS").is_none());
        // Without --ca-cert: the system's roots, over our stream (TCP_NODELAY, our deadline).
        assert!(tls_for(&ep("amqps://localhost/%2f")).expect("system roots").is_some());
    }

    #[test]
    fn our_tcp_streams_have_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let stream = tcp_connect(&addr, Duration::from_secs(5)).expect("connect");
        assert!(stream.nodelay().expect("nodelay"));
    }

    #[test]
    fn the_write_buffer_is_twice_the_publisher_window_and_unchanged_without_one() {
        let options = PublisherOptions {
            window: 1,
            window_bytes: 32 * 1024 * 1024,
            confirm_timeout: Duration::from_secs(1),
        };
        assert_eq!(options.write_buffer(), 64 * 1024 * 1024);
        assert_eq!(UNWINDOWED_WRITE_BUFFER, 64 * 1024 * 1024);
    }
}
