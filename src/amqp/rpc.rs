//! The client side of request/reply: requests published to the server's queue with
//! `reply_to` naming an exclusive, server-named reply queue of this connection, and replies
//! read from it (no ack needed: the queue dies with the connection).

use super::endpoint::Endpoint;
use super::error::{explain, lost};
use super::props::properties;
use super::session::Session;
use super::topology::QueueSpec;
use crate::codec::Message;
use amiquip::{Channel, ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions, Return};
use color_eyre::eyre::Result;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// The header of an error reply: why the server could not answer.
use crate::codec::ERROR_HEADER;

/// A reply: its correlation id and body.
pub struct Reply {
    /// `correlation_id` of the request it answers (None if the server did not copy it).
    pub correlation_id: Option<String>,
    /// The answer.
    pub body: Vec<u8>,
    /// The server's reason, when it could not answer (header `x-mqdemo-error`).
    pub error: Option<String>,
}

/// What [`RpcClient::recv`] saw.
pub enum Received {
    /// A reply arrived.
    Reply(Reply),
    /// A request came back unroutable (its queue is gone): its correlation id.
    Returned(Option<String>),
    /// Nothing within the wait.
    Nothing,
}

/// The request side of one connection with a private reply queue.
pub struct RpcClient<'a> {
    channel: &'a Channel,
    replies: Receiver<ConsumerMessage>,
    returns: Receiver<Return>,
    reply_queue: String,
    queue: String,
    endpoint: Endpoint,
}

/// Connect, declare the request queue as `spec` says, make the reply queue, run `f` with the
/// client, then close everything.
pub fn with_client<T>(
    endpoints: &[Endpoint],
    spec: &QueueSpec,
    f: impl FnOnce(&mut RpcClient<'_>) -> Result<T>,
) -> Result<T> {
    let (mut session, _) = Session::open_first(endpoints)?;
    session.declare_queue(spec)?;
    let endpoint = session.endpoint().clone();
    let channel = session.channel()?;
    let ep = &endpoint;
    let returns = channel.listen_for_returns().map_err(|e| explain(e, ep, "requesting"))?;
    let opts = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    let queue = channel.queue_declare("", opts).map_err(|e| explain(e, ep, "requesting"))?;
    let reply_queue = queue.name().to_string();
    let consumer = queue
        .consume(ConsumerOptions { no_ack: true, ..ConsumerOptions::default() })
        .map_err(|e| explain(e, ep, "requesting"))?;
    // Kept alive until after the cancel (amiquip's cancel race: see ARCHITECTURE.md).
    let replies = consumer.receiver().clone();
    let mut client = RpcClient {
        channel: &channel,
        replies: replies.clone(),
        returns,
        reply_queue,
        queue: spec.name.clone(),
        endpoint: endpoint.clone(),
    };
    let result = f(&mut client);
    let _ = consumer.cancel();
    drop(consumer);
    let _ = channel.close();
    drop(replies);
    let closed = session.close();
    let value = result?;
    closed?;
    Ok(value)
}

impl RpcClient<'_> {
    /// Publish `msg` as a request (its route's correlation id set by the caller) that
    /// expires (AMQP `expiration`) after `ttl`: the client stops waiting for it then.
    pub fn send(&mut self, mut msg: Message, ttl: Duration) -> Result<()> {
        msg.route.reply_to = Some(self.reply_queue.clone());
        let ms = ttl.as_millis().max(1);
        let publish = Publish {
            body: &msg.body,
            routing_key: self.queue.clone(),
            mandatory: true,
            immediate: false,
            properties: properties(&msg).with_expiration(ms.to_string()),
        };
        self.channel
            .basic_publish("", publish)
            .map_err(|e| explain(e, &self.endpoint, "requesting"))
    }

    /// Wait up to `wait` for a reply (or a returned request).
    pub fn recv(&mut self, wait: Duration) -> Result<Received> {
        if let Ok(ret) = self.returns.try_recv() {
            return Ok(Received::Returned(ret.properties.correlation_id().clone()));
        }
        match self.replies.recv_timeout(wait) {
            Ok(ConsumerMessage::Delivery(d)) => {
                let error = match d.properties.headers().as_ref().and_then(|h| h.get(ERROR_HEADER))
                {
                    Some(amiquip::AmqpValue::LongString(why)) => Some(why.clone()),
                    _ => None,
                };
                Ok(Received::Reply(Reply {
                    correlation_id: d.properties.correlation_id().clone(),
                    body: d.body,
                    error,
                }))
            }
            Ok(_) | Err(RecvTimeoutError::Disconnected) => Err(lost(format!(
                "lost the connection to {} while waiting for replies",
                self.endpoint.masked()
            ))),
            Err(RecvTimeoutError::Timeout) => Ok(Received::Nothing),
        }
    }
}
