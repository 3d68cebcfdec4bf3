//! The only module tree that talks to RabbitMQ (and the only one that imports amiquip).
//!
//! It turns URLs into broker addresses with their secrets masked ([`endpoint`]) and into
//! connections with deadlines ([`session`]), declares queues ([`topology`]), publishes with
//! publisher confirms over a bounded window ([`publisher`]) and resumes after a lost
//! connection ([`producer`]), runs the consumer loop with reconnects ([`consumer`]), and
//! translates broker errors into what the user should do and what becomes of the connection
//! ([`error`]). It knows nothing of CSV, images or files.

mod browse;
mod consumer;
mod counted;
mod endpoint;
mod error;
mod meta;
mod prefetch;
mod probe;
mod producer;
mod props;
mod publisher;
mod retry;
mod rpc;
mod session;
mod stream;
mod target;
mod topology;

pub use browse::{Browsed, Browser, DELIVERY_COUNT, Mark};
pub use consumer::{ConsumeLimits, ConsumeOutcome, Disposition, Handler, consume};
pub(crate) use endpoint::next_amqp_url;
pub use endpoint::{BadUrl, Endpoint};
pub use error::{LinkError, LinkFate, START_BROKER_HINT, is_retryable};
pub use meta::meta as delivery_meta;
pub use producer::Producer;
pub use props::properties as wire_properties;
pub use publisher::{PublishReport, PublisherOptions};
pub(crate) use retry::sleep_unless_stopped;
pub use retry::{LinkEvent, Retry};
pub use rpc::{Received, Reply, RpcClient, with_client};
pub use session::{QueueInfo, Session};
pub use stream::{Anchor, Checkpointer, Identity, Offset, StreamRead, Until};
pub use target::{HeaderField, PropertyOverrides, Target};
pub use topology::{QueueSpec, QueueType};

use std::time::Duration;

/// How often blocking waits wake up to look at signals, deadlines and broker notices.
const TICK: Duration = Duration::from_millis(100);
