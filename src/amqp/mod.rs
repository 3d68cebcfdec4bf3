//! The only module tree that talks to RabbitMQ (and the only one that imports amiquip).
//!
//! It turns URLs into connections with deadlines ([`session`]), declares queues
//! ([`topology`]), publishes with publisher confirms over a bounded window and resumes after
//! a lost connection ([`publisher`]), runs the consumer loop with reconnects ([`consumer`]),
//! and translates broker errors into what the user should do ([`explain`]). It knows
//! nothing of CSV, images or files.

mod consumer;
mod props;
mod publisher;
mod retry;
mod rpc;
mod session;
mod topology;

pub use consumer::{ConsumeLimits, ConsumeOutcome, Disposition, Handler, consume};
pub use props::properties as wire_properties;
pub use publisher::{Producer, PublishReport, PublisherOptions};
pub use retry::{LinkEvent, Retry};
pub use rpc::{Received, Reply, RpcClient, with_client};
pub use session::{QueueInfo, Session};
pub use topology::{QueueSpec, QueueType};

use color_eyre::eyre::Report;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// Heartbeat asked for when the URL names none: a dead or frozen peer is noticed after two
/// missed heartbeats, i.e. in about 10 s (amiquip's own default would take 2 minutes).
const DEFAULT_HEARTBEAT_SECS: u16 = 5;

/// How often blocking waits wake up to look at signals, deadlines and broker notices.
const TICK: Duration = Duration::from_millis(100);

/// How to start a broker, for errors that mean "nothing answers".
pub const START_BROKER_HINT: &str = "start one with `docker compose up -d rabbitmq` or the \
     distribution's `rabbitmq-server -detached`, or point --url / AMQP_URL at yours";

/// A broker address: the URL amiquip gets and the masked one people see.
#[derive(Clone)]
pub struct Endpoint {
    url: String,
    masked: String,
    password: Option<String>,
    timeout: Duration,
    /// PEM file of a private CA to trust for amqps:// (`--ca-cert`).
    ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Endpoint {
    /// Only the masked URL: a `{:?}` of a config must not print the password either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.masked)
            .field("timeout", &self.timeout)
            .field("ca_cert", &self.ca_cert)
            .finish_non_exhaustive()
    }
}

/// The URL given is not usable (bad usage, exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(pub String);

impl Endpoint {
    /// Parse `url`, replace its host with `host` when given, and add a connection timeout and
    /// heartbeat unless the URL sets them.
    pub fn parse(url: &str, host: Option<&str>, timeout: Duration) -> Result<Endpoint, BadUrl> {
        let masked_input = mask_input(url);
        if let Some(c) = credentials(url).and_then(|c| c.chars().find(|c| "/?#".contains(*c))) {
            // A raw `/`, `?` or `#` ends the authority: the URL parser would take part of the
            // password for the host, port or path, and show it in its errors.
            return Err(BadUrl(format!(
                "--url {masked_input}: the user or password holds a raw `{c}`; percent-encode \
                 it (`/` as %2F, `?` as %3F, `#` as %23, `%` as %25); an `@` in the vhost is \
                 written %40"
            )));
        }
        let mut parsed = Url::parse(url).map_err(|e| {
            BadUrl(format!(
                "--url {masked_input}: {e}; expected amqp://USER:PASS@HOST:PORT/VHOST \
                 (percent-encode `/ ? # %` in the password)"
            ))
        })?;
        let password = parsed.password().map(str::to_string);
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(BadUrl(format!(
                "--url {masked_input}: scheme must be amqp:// or amqps://"
            )));
        }
        if let Some(host) = host {
            parsed.set_host(Some(host)).map_err(|e| {
                BadUrl(format!("--rabbitmq-server {host}: not a valid host name ({e})"))
            })?;
        }
        let masked_input = mask_url(&parsed);
        let known = ["heartbeat", "channel_max", "connection_timeout", "auth_mechanism"];
        let keys: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
        if let Some(bad) = keys.iter().find(|k| !known.contains(&k.as_str())) {
            return Err(BadUrl(format!(
                "--url {masked_input}: query parameter `{bad}` is not supported; use heartbeat, \
                 channel_max, connection_timeout or auth_mechanism"
            )));
        }
        let mut timeout = timeout;
        {
            let mut q = parsed.query_pairs_mut();
            if !keys.iter().any(|k| k == "connection_timeout") {
                q.append_pair("connection_timeout", &timeout.as_millis().to_string());
            }
            if !keys.iter().any(|k| k == "heartbeat") {
                q.append_pair("heartbeat", &DEFAULT_HEARTBEAT_SECS.to_string());
            }
        }
        if let Some(ms) = parsed
            .query_pairs()
            .find(|(k, _)| k == "connection_timeout")
            .and_then(|(_, v)| v.parse::<u64>().ok())
        {
            timeout = Duration::from_millis(ms);
        }
        let masked = mask_url(&strip_query(&parsed));
        Ok(Endpoint { url: parsed.into(), masked, password, timeout, ca_cert: None })
    }

    /// Trust the CA certificate(s) in this PEM file for amqps:// connections.
    pub fn with_ca_cert(mut self, path: Option<PathBuf>) -> Endpoint {
        self.ca_cert = path;
        self
    }

    /// The URL with everything between `://` and the `@` (user and password) replaced by
    /// `****`, without the query.
    pub fn masked(&self) -> &str {
        &self.masked
    }

    fn scrub(&self, text: &str) -> String {
        mask_text(text, self.password.as_deref())
    }
}

fn strip_query(url: &Url) -> Url {
    let mut u = url.clone();
    u.set_query(None);
    u
}

/// What `****` replaces in a URL shown to people: user and password.
const MASK: &str = "****";

/// A parsed URL as people may see it: `amqp://****@host:port/vhost`.
fn mask_url(url: &Url) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_password(None);
        let _ = u.set_username(MASK);
    }
    u.to_string()
}

/// Where the user and password of one URL as typed sit: from `://` (or the start, when the
/// scheme is missing) to its LAST `@`, wherever the URL parser would end the authority.
fn credentials_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let at = url[start..].rfind('@')?;
    Some((start, start + at))
}

fn credentials(url: &str) -> Option<&str> {
    credentials_span(url).map(|(from, to)| &url[from..to])
}

/// One URL as typed (parsed or not), masked from `://` to its last `@`.
fn mask_input(url: &str) -> String {
    match credentials_span(url) {
        Some((from, to)) => format!("{}{MASK}{}", &url[..from], &url[to..]),
        None => url.to_string(),
    }
}

/// Replace the password (raw or percent-encoded) and the credentials of every URL in free
/// text. A URL there runs from its scheme to the next whitespace or the next `amqp://` /
/// `amqps://`; its credentials are everything between `://` and its last `@`.
pub(crate) fn mask_text(text: &str, password: Option<&str>) -> String {
    let mut out = text.to_string();
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        out = out.replace(p, MASK);
        let decoded =
            url::form_urlencoded::parse(format!("x={}", p.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned());
        if let Some(d) = decoded.filter(|d| !d.is_empty()) {
            out = out.replace(&d, MASK);
        }
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        result.push_str(head);
        let mut end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        if let Some(next) = next_amqp_url(&tail[..end]) {
            end = next;
        }
        let token = &tail[..end];
        match token.rfind('@') {
            Some(at) => {
                result.push_str(MASK);
                result.push_str(&token[at..]);
            }
            None => result.push_str(token),
        }
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
}

/// Where the next `amqp://` or `amqps://` begins in `s` (ASCII case-insensitive).
pub(crate) fn next_amqp_url(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    [lower.find("amqp://"), lower.find("amqps://")].into_iter().flatten().min()
}

/// A broker error, translated. `retryable` errors mean the connection was lost or could not
/// be made (a reconnect may help); the others need the user to change something.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LinkError {
    /// A reconnect may help.
    pub retryable: bool,
    /// amiquip's I/O thread has ended: closing the connection is safe and tells why.
    pub io_loop_ended: bool,
    message: String,
}

fn lost(message: String) -> Report {
    Report::new(LinkError { retryable: true, io_loop_ended: false, message })
}

fn fatal(message: String) -> Report {
    Report::new(LinkError { retryable: false, io_loop_ended: false, message })
}

/// True when amiquip's I/O thread for the connection has ended (so `close` returns at once,
/// with the real cause).
fn io_loop_ended(err: &Report) -> bool {
    err.chain().any(|e| e.downcast_ref::<LinkError>().is_some_and(|l| l.io_loop_ended))
}

/// Let a failed connection go. When its I/O thread has ended, closing it is safe and yields
/// the real cause (e.g. missed heartbeats), which replaces a vague "connection lost". When the
/// failure was not the link's (`healthy_if_fatal` and a non-retryable error, e.g. a sink
/// error), it is closed normally so the broker requeues what it holds. Otherwise (frozen or
/// blocked) closing could hang, so it is leaked instead.
fn discard(session: Session, err: Report, healthy_if_fatal: bool) -> Report {
    if io_loop_ended(&err) {
        return match session.close() {
            Err(cause) => cause,
            Ok(()) => err,
        };
    }
    if healthy_if_fatal && !is_retryable(&err) {
        let _ = session.close();
        return err;
    }
    std::mem::forget(session);
    err
}

/// True when `err` says the connection was lost or refused, so reconnecting may help.
pub fn is_retryable(err: &Report) -> bool {
    err.chain().any(|e| e.downcast_ref::<LinkError>().is_some_and(|l| l.retryable))
}

/// Translate a failed TCP connect (made by us, within `--connect-timeout`).
fn connect_failed(err: &std::io::Error, ep: &Endpoint) -> Report {
    use std::io::ErrorKind as K;
    let at = ep.masked();
    match err.kind() {
        K::ConnectionRefused => {
            lost(format!("no RabbitMQ answers at {at} (connection refused); {START_BROKER_HINT}"))
        }
        K::TimedOut | K::WouldBlock => lost(format!(
            "could not connect to RabbitMQ at {at} within {:.1} s (--connect-timeout): nothing \
             answered (host down, a firewall dropping packets, or a wrong host or port); check \
             the host and port in --url, or raise --connect-timeout",
            ep.timeout.as_secs_f64()
        )),
        _ => lost(format!(
            "could not connect to RabbitMQ at {at}: {err}; check the host and port in --url \
             (and the network)"
        )),
    }
}

/// Translate an amiquip error into what the user should do. Never echoes the password.
fn explain(err: amiquip::Error, ep: &Endpoint, doing: &str) -> Report {
    use amiquip::Error as E;
    let at = ep.masked();
    match err {
        E::FailedToConnect { source, .. }
        | E::IoErrorWritingSocket { source }
        | E::IoErrorReadingSocket { source }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            lost(format!("no RabbitMQ answers at {at} (connection refused); {START_BROKER_HINT}"))
        }
        E::FailedToConnect { source, .. } => {
            lost(format!("cannot connect to RabbitMQ at {at}: {source}; {START_BROKER_HINT}"))
        }
        E::IoErrorWritingSocket { source } | E::IoErrorReadingSocket { source } => lost(format!(
            "lost the connection to {at} while {doing}: {source} (broker stopped or network cut)"
        )),
        E::ResolveUrlToSocketAddr { source, .. } => fatal(format!(
            "cannot resolve the host of {at}: {source}; check the host in --url / --rabbitmq-server"
        )),
        E::UrlNoSocketAddrs { .. } => fatal(format!(
            "the host of {at} resolves to no address; check the host in --url / --rabbitmq-server"
        )),
        E::ConnectionTimeout => lost(format!(
            "RabbitMQ at {at} did not complete the AMQP handshake within {:.1} s; check that \
             --url names a RabbitMQ AMQP port (5672, or 5671 for amqps://), or raise --connect-timeout",
            ep.timeout.as_secs_f64()
        )),
        E::InvalidCredentials => fatal(format!(
            "RabbitMQ at {at} refused the login (ACCESS_REFUSED); check the user and password in \
             --url / AMQP_URL"
        )),
        E::ServerClosedConnection { code: 530, message } => fatal(format!(
            "RabbitMQ at {at} refused the vhost ({}); check the vhost at the end of --url \
             (`/%2f` is the default vhost `/`) and the user's permissions",
            ep.scrub(&message)
        )),
        E::ServerClosedConnection { code: 403, message } => fatal(format!(
            "RabbitMQ at {at} refused access ({}); check the user, password and permissions",
            ep.scrub(&message)
        )),
        E::ServerClosedConnection { code: 320, message } => lost(format!(
            "RabbitMQ at {at} closed the connection while {doing} ({}): the broker is shutting \
             down or an operator closed it",
            ep.scrub(&message)
        )),
        E::ServerClosedConnection { code, message } => lost(format!(
            "RabbitMQ at {at} closed the connection while {doing} ({code} {})",
            ep.scrub(&message)
        )),
        E::ServerClosedChannel { code: 406, message, .. } if message.contains("message size") => {
            fatal(format!(
                "the broker refused a message as too large while {doing} ({}); lower \
                 --max-message-size to skip such items, or raise max_message_size in rabbitmq.conf",
                ep.scrub(&message)
            ))
        }
        E::ServerClosedChannel { code, message, .. } => fatal(format!(
            "the broker closed the channel while {doing} ({code} {})",
            ep.scrub(&message)
        )),
        E::MissedServerHeartbeats => lost(format!(
            "lost the connection to {at}: missed heartbeats (network or broker stalled)"
        )),
        E::TlsHandshake { source } => fatal(format!(
            "TLS handshake with {at} failed: {}; check that the port speaks TLS (usually 5671) \
             and that the server certificate is trusted (pass its CA with --ca-cert)",
            ep.scrub(&source.to_string())
        )),
        E::UnexpectedSocketClose | E::EventLoopDropped | E::EventLoopClientDropped => {
            Report::new(LinkError {
                retryable: true,
                io_loop_ended: true,
                message: format!(
                    "lost the connection to {at} while {doing} (broker stopped or network cut)"
                ),
            })
        }
        other => {
            fatal(format!("RabbitMQ error at {at} while {doing}: {}", ep.scrub(&other.to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str) -> Endpoint {
        Endpoint::parse(url, None, Duration::from_secs(5)).expect("valid url")
    }

    #[test]
    fn masks_from_the_scheme_to_the_last_at() {
        let e = ep("amqp://user:s3cret@host:5672/%2f");
        assert_eq!(e.masked(), "amqp://****@host:5672/%2f");
        assert!(!e.scrub("failed amqp://user:s3cret@host/ s3cret").contains("s3cret"));
        assert_eq!(mask_text("x amqp://a:b@h:1/v y", None), "x amqp://****@h:1/v y");
        assert_eq!(ep("amqp://u:x@y,z:w@h/%2f").masked(), "amqp://****@h/%2f");
        assert_eq!(ep("amqps://u:p%2Fq@h/%2f").masked(), "amqps://****@h/%2f");
        assert_eq!(ep("amqp://h:1/v").masked(), "amqp://h:1/v");
        assert!(!format!("{:?}", ep("amqp://u:s3cret@h/")).contains("s3cret"));
    }

    #[test]
    fn masks_urls_in_free_text_whatever_the_password_holds() {
        for (text, secret) in [
            ("--url amqp://u:SEC/RET@h:1/%2f: invalid port", "SEC"),
            ("at amqp://u:p?q@h/ and amqps://v:a,b@h2/", "p?q"),
            ("amqp://u:x@y@h/, amqp://v:QQ@h2", "x@y"),
            ("(amqp://u:p#q@h/)", "p#q"),
        ] {
            let masked = mask_text(text, None);
            assert!(!masked.contains(secret), "{text} -> {masked}");
            assert!(masked.contains("://****@h"), "{text} -> {masked}");
        }
        assert!(!mask_text("two@h2", None).contains("****"));
        assert_eq!(mask_input("guest:pw@host:5672"), "****@host:5672");
        assert_eq!(mask_input("amqp://u:SEC/RET@h:1/%2f"), "amqp://****@h:1/%2f");
    }

    #[test]
    fn a_raw_slash_question_mark_or_hash_in_the_password_is_refused_unshown() {
        for bad in ["amqp://u:SEC/RET@h/%2f", "amqp://u:p?q@h/", "amqp://u:123#45@h/"] {
            let err = Endpoint::parse(bad, None, Duration::from_secs(1)).expect_err(bad);
            assert!(err.0.contains("percent-encode") && err.0.contains("%2F"), "{}", err.0);
            for secret in ["SEC", "RET", "p?q", "123", "45"] {
                assert!(!err.0.contains(secret), "{}", err.0);
            }
        }
    }

    #[test]
    fn adds_timeout_and_heartbeat_unless_given() {
        let e = ep("amqp://guest:guest@localhost:5672/%2f");
        assert!(e.url.contains("connection_timeout=5000"), "{}", e.url);
        assert!(e.url.contains("heartbeat=5"), "{}", e.url);
        let e = ep("amqp://localhost/%2f?heartbeat=3&connection_timeout=700");
        assert_eq!(e.timeout, Duration::from_millis(700));
        assert!(!e.url.contains("heartbeat=5&"), "{}", e.url);
    }

    #[test]
    fn rabbitmq_server_replaces_the_host() {
        let e = Endpoint::parse(
            "amqp://u:p@localhost:5672/%2f",
            Some("rabbit"),
            Duration::from_secs(1),
        )
        .expect("valid");
        assert_eq!(e.masked(), "amqp://****@rabbit:5672/%2f");
    }

    #[test]
    fn rejects_bad_urls_without_echoing_the_password() {
        for bad in ["http://u:pw@h/", "amqp://u:pw@h/?foo=1", "not a url"] {
            let err = Endpoint::parse(bad, None, Duration::from_secs(1)).expect_err(bad);
            assert!(!err.0.contains(":pw@"), "{}", err.0);
        }
    }
}
