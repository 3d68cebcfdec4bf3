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
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: String,
    masked: String,
    password: Option<String>,
    timeout: Duration,
    /// PEM file of a private CA to trust for amqps:// (`--ca-cert`).
    ca_cert: Option<PathBuf>,
}

/// The URL given is not usable (bad usage, exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(pub String);

impl Endpoint {
    /// Parse `url`, replace its host with `host` when given, and add a connection timeout and
    /// heartbeat unless the URL sets them.
    pub fn parse(url: &str, host: Option<&str>, timeout: Duration) -> Result<Endpoint, BadUrl> {
        let mut parsed = Url::parse(url).map_err(|e| {
            BadUrl(format!(
                "--url {}: {e}; expected amqp://USER:PASS@HOST:PORT/VHOST",
                mask_text(url, None)
            ))
        })?;
        let password = parsed.password().map(str::to_string);
        let masked_input = mask_url(&parsed);
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

    /// The URL with the password replaced by `****`, without the query.
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

fn mask_url(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("****"));
    }
    u.to_string()
}

/// Replace the password (raw or percent-encoded) and any `user:pass@` in free text.
fn mask_text(text: &str, password: Option<&str>) -> String {
    let mut out = text.to_string();
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        out = out.replace(p, "****");
        let decoded = url::form_urlencoded::parse(format!("x={p}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned());
        if let Some(d) = decoded.filter(|d| !d.is_empty()) {
            out = out.replace(&d, "****");
        }
    }
    // Belt and braces for URLs we did not parse: amqp://user:secret@host -> amqp://user:****@host
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        result.push_str(head);
        let end = tail.find(['/', ' ', '?', '\n', ')']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                result.push_str(&authority[..colon]);
                result.push_str(":****");
                result.push_str(&authority[at..]);
            }
            _ => result.push_str(authority),
        }
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
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
    fn masks_the_password() {
        let e = ep("amqp://user:s3cret@host:5672/%2f");
        assert_eq!(e.masked(), "amqp://user:****@host:5672/%2f");
        assert!(!e.scrub("failed amqp://user:s3cret@host/ s3cret").contains("s3cret"));
        assert_eq!(mask_text("x amqp://a:b@h:1/v y", None), "x amqp://a:****@h:1/v y");
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
        assert_eq!(e.masked(), "amqp://u:****@rabbit:5672/%2f");
    }

    #[test]
    fn rejects_bad_urls_without_echoing_the_password() {
        for bad in ["http://u:pw@h/", "amqp://u:pw@h/?foo=1", "not a url"] {
            let err = Endpoint::parse(bad, None, Duration::from_secs(1)).expect_err(bad);
            assert!(!err.0.contains(":pw@"), "{}", err.0);
        }
    }
}
