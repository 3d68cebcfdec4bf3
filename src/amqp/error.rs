//! Broker errors, translated into what the user should do ([`explain`]) and what to do with
//! the connection they happened on ([`LinkFate`], [`discard`]).

use super::endpoint::Endpoint;
use super::session::Session;
use color_eyre::eyre::Report;

/// How to start a broker, for errors that mean "nothing answers".
pub const START_BROKER_HINT: &str = "start one with `docker compose up -d rabbitmq` or the \
     distribution's `rabbitmq-server -detached`, or point --url / AMQP_URL at yours";

/// What to do with the connection a [`LinkError`] happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFate {
    /// The user must change something: do not reconnect. The connection is closed when the
    /// failure was not the link's (see `discard`), else let go.
    Fatal,
    /// Lost, refused or stuck: reconnect. The old connection may be frozen or blocked, so it
    /// is let go without a close (which could hang).
    Abandon,
    /// Reconnect after closing the old connection, which returns at once: amiquip's I/O
    /// thread has ended (the close then tells the real cause), or the link itself is fine.
    CloseAndRetry,
}

impl LinkFate {
    /// A reconnect may help.
    pub fn retryable(self) -> bool {
        !matches!(self, LinkFate::Fatal)
    }
}

/// A broker error, translated, with what to do with its connection: the retryable fates mean
/// the connection was lost or could not be made (a reconnect may help); [`LinkFate::Fatal`]
/// needs the user to change something.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LinkError {
    /// What to do with the connection.
    pub fate: LinkFate,
    message: String,
}

fn link_error(fate: LinkFate, message: String) -> Report {
    Report::new(LinkError { fate, message })
}

/// The connection was lost or could not be made: reconnect, letting the old one go.
pub(super) fn lost(message: String) -> Report {
    link_error(LinkFate::Abandon, message)
}

/// The user must change something.
pub(super) fn fatal(message: String) -> Report {
    link_error(LinkFate::Fatal, message)
}

/// Reconnect after closing the old connection (its I/O thread has ended, or it is healthy:
/// the close is quick either way).
pub(super) fn close_and_retry(message: String) -> Report {
    link_error(LinkFate::CloseAndRetry, message)
}

/// True when some error in `err`'s chain has this `fate`.
fn has_fate(err: &Report, wanted: impl Fn(LinkFate) -> bool) -> bool {
    err.chain().any(|e| e.downcast_ref::<LinkError>().is_some_and(|l| wanted(l.fate)))
}

/// Let a failed connection go, as its error's fate says. [`LinkFate::CloseAndRetry`]: closing
/// is safe and yields the real cause (e.g. missed heartbeats), which replaces a vague
/// "connection lost". When the failure was not the link's (`healthy_if_fatal` and a
/// [`LinkFate::Fatal`] error, e.g. a sink error), it is closed normally so the broker requeues
/// what it holds. Otherwise (frozen or blocked) closing could hang, so it is leaked instead.
pub(super) fn discard(session: Session, err: Report, healthy_if_fatal: bool) -> Report {
    if has_fate(&err, |f| f == LinkFate::CloseAndRetry) {
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
    has_fate(err, LinkFate::retryable)
}

/// Translate a failed TCP connect (made by us, within `--connect-timeout`).
pub(super) fn connect_failed(err: &std::io::Error, ep: &Endpoint) -> Report {
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
pub(super) fn explain(err: amiquip::Error, ep: &Endpoint, doing: &str) -> Report {
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
            close_and_retry(format!(
                "lost the connection to {at} while {doing} (broker stopped or network cut)"
            ))
        }
        other => {
            fatal(format!("RabbitMQ error at {at} while {doing}: {}", ep.scrub(&other.to_string())))
        }
    }
}
