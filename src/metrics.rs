//! Prometheus metrics and health checks for long-running commands (`--metrics-addr`): the
//! registry, the HTTP server thread (`/metrics`, `/ready`, `/live`), and the functions the
//! rest of the code calls to count.
//!
//! Off (the default), every call is one load of an empty `OnceLock` and nothing else. On,
//! counting is an atomic add on a handle resolved once (the input queue's at the start, a
//! publisher's queues when it opens): no lookup and no label per message.

use color_eyre::eyre::{Result, eyre};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Everything, once `--metrics-addr` started it.
static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The label of every per-queue series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

/// The `queue` label of answers published to a client's own reply queue (`serve`): one
/// series for all of them, never one per client.
pub(crate) const REPLY_TO_LABEL: &str = "(reply_to)";

type HistogramFamily = Family<QueueLabel, Histogram, fn() -> Histogram>;

struct Metrics {
    registry: Registry,
    published: Family<QueueLabel, Counter>,
    confirmed: Family<QueueLabel, Counter>,
    nacked: Family<QueueLabel, Counter>,
    confirm_seconds: HistogramFamily,
    reconnects: Counter,
    connected: Gauge,
    model_call_seconds: Histogram,
    batch_size: Histogram,
    /// The consumed queue's handles.
    input: Input,
    health: Health,
}

/// Handles of the queue the command consumes.
struct Input {
    received: Counter,
    acked: Counter,
    duplicate: Counter,
    failed: Counter,
    expired: Counter,
    in_flight: Gauge,
}

/// Consumer workers: how many there are, how many have a connection, how many consume.
#[derive(Default)]
struct Health {
    workers: AtomicUsize,
    connected: AtomicUsize,
    consuming: AtomicUsize,
}

impl Health {
    /// Every worker connected (and at least one worker).
    fn connected(&self) -> bool {
        let workers = self.workers.load(Ordering::SeqCst);
        workers > 0 && self.connected.load(Ordering::SeqCst) >= workers
    }

    /// Every worker's consumer running: (ready, why not).
    fn ready(&self) -> (bool, String) {
        let workers = self.workers.load(Ordering::SeqCst);
        let consuming = self.consuming.load(Ordering::SeqCst);
        if workers > 0 && consuming >= workers {
            return (true, format!("ready: {consuming} of {workers} consumer(s) consuming\n"));
        }
        let connected = self.connected.load(Ordering::SeqCst);
        (
            false,
            format!(
                "not ready: {consuming} of {workers} consumer(s) consuming, {connected} \
                 connected (starting, reconnecting or finished)\n"
            ),
        )
    }
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    fn new(input_queue: &str) -> Metrics {
        let mut registry = Registry::with_prefix("mqdemo");
        let counters = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<QueueLabel, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let label = QueueLabel { queue: input_queue.to_string() };
        let input_counter = |registry: &mut Registry, name: &str, help: &str| {
            counters(registry, name, help).get_or_create_owned(&label)
        };
        let received = input_counter(
            &mut registry,
            "messages_received",
            "Deliveries received from the consumed queue (redeliveries included)",
        );
        let acked = input_counter(
            &mut registry,
            "messages_acked",
            "Deliveries acked after they were stored or answered",
        );
        let duplicate = input_counter(
            &mut registry,
            "messages_duplicate",
            "Deliveries dropped as repeats of a message already handled (by message id)",
        );
        let failed = input_counter(
            &mut registry,
            "messages_failed",
            "Messages that could not be used, sent to the failed queue (or rejected)",
        );
        let expired = input_counter(
            &mut registry,
            "requests_expired",
            "Requests whose deadline passed before the model was called",
        );
        let in_flight_family = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "in_flight",
            "Deliveries received and not yet acked or rejected",
            in_flight_family.clone(),
        );
        let in_flight = in_flight_family.get_or_create_owned(&label);
        let published = counters(
            &mut registry,
            "messages_published",
            "Messages published (answers, failed copies), re-publishes included",
        );
        let confirmed = counters(
            &mut registry,
            "messages_confirmed",
            "Published messages the broker acked (publisher confirms)",
        );
        let nacked =
            counters(&mut registry, "messages_nacked", "Published messages the broker nacked");
        let confirm_seconds: HistogramFamily = Family::new_with_constructor(seconds_histogram);
        registry.register_with_unit(
            "confirm",
            "Time from publishing a message to the broker's ack or nack",
            Unit::Seconds,
            confirm_seconds.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "reconnects",
            "Connections to the broker re-established after a loss",
            reconnects.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "connected",
            "1 while every consumer worker has a connection to the broker, else 0",
            connected.clone(),
        );
        let model_call_seconds = seconds_histogram();
        registry.register_with_unit(
            "model_call",
            "Time of one call of the model (one batch)",
            Unit::Seconds,
            model_call_seconds.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register("batch_size", "Messages per model call", batch_size.clone());
        Metrics {
            registry,
            published,
            confirmed,
            nacked,
            confirm_seconds,
            reconnects,
            connected,
            model_call_seconds,
            batch_size,
            input: Input { received, acked, duplicate, failed, expired, in_flight },
            health: Health::default(),
        }
    }

    /// The Prometheus text exposition of everything.
    fn render(&self) -> String {
        self.connected.set(i64::from(self.health.connected()));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Listen on `addr` and serve `/metrics`, `/ready` and `/live` from a thread of their own,
/// for a command consuming `input_queue` and publishing to `outputs` (their series show
/// zeros from the start). Called once, before anything is consumed, so an address in use
/// stops the run before it takes a message.
pub(crate) fn start(addr: SocketAddr, input_queue: &str, outputs: &[&str]) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            return eyre!(
                "--metrics-addr {addr}: cannot listen there ({e}): {} is not an address of \
                 this machine; give one of its own, e.g. --metrics-addr 127.0.0.1:{} (or \
                 0.0.0.0:{} for every interface)",
                addr.ip(),
                addr.port(),
                addr.port()
            );
        }
        eyre!(
            "--metrics-addr {addr}: cannot listen there ({e}); give a free port (another \
             process, perhaps another mqdemo, holds this one), e.g. --metrics-addr {}:{}",
            addr.ip(),
            addr.port().wrapping_add(1).max(1024)
        )
    })?;
    // The server polls: an accept must never block it.
    listener
        .set_nonblocking(true)
        .map_err(|e| eyre!("--metrics-addr {addr}: cannot serve HTTP there ({e})"))?;
    let metrics = METRICS.get_or_init(|| Metrics::new(input_queue));
    for queue in outputs {
        Out::new(metrics, queue);
    }
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || http::serve(&listener, &|get, target| route(get, target, metrics)))
        .map_err(|e| eyre!("--metrics-addr {addr}: cannot start the HTTP thread ({e})"))?;
    Ok(())
}

/// Content type of `/metrics`: the Prometheus text format, version 0.0.4.
const METRICS_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
const PLAIN: &str = "text/plain; charset=utf-8";

/// (status, content type, body) of a request for `url`.
fn route(get: bool, url: &str, metrics: &Metrics) -> (u16, &'static str, String) {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    match (get, path) {
        (true, "/metrics") => (200, METRICS_TYPE, metrics.render()),
        (true, "/ready") => match metrics.health.ready() {
            (true, why) => (200, PLAIN, why),
            (false, why) => (503, PLAIN, why),
        },
        (true, "/live") => (200, PLAIN, "live\n".into()),
        (false, "/metrics" | "/ready" | "/live") => (405, PLAIN, "only GET\n".into()),
        _ => (404, PLAIN, "not found: try /metrics, /ready or /live\n".into()),
    }
}

fn input() -> Option<&'static Input> {
    METRICS.get().map(|m| &m.input)
}

/// A delivery arrived from the consumed queue.
pub(crate) fn received() {
    if let Some(m) = input() {
        m.received.inc();
        m.in_flight.inc();
    }
}

/// `n` deliveries were acked.
pub(crate) fn acked(n: u64) {
    if let Some(m) = input() {
        m.acked.inc_by(n);
        m.in_flight.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// `n` deliveries left this process without an ack: rejected, or requeued (a lost
/// connection drops them, the broker delivers them again).
pub(crate) fn released(n: u64) {
    if let Some(m) = input() {
        m.in_flight.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// A delivery was dropped as a repeat of a message already handled.
pub(crate) fn duplicate() {
    if let Some(m) = input() {
        m.duplicate.inc();
    }
}

/// A message could not be used (it goes to the failed queue, or is rejected).
pub(crate) fn failed() {
    if let Some(m) = input() {
        m.failed.inc();
    }
}

/// A request's deadline passed before the model was called for it.
pub(crate) fn expired() {
    if let Some(m) = input() {
        m.expired.inc();
    }
}

/// One call of the model took `elapsed`, for a batch of `batch_len` messages.
pub(crate) fn model_call(elapsed: Duration, batch_len: usize) {
    if let Some(m) = METRICS.get() {
        m.model_call_seconds.observe(elapsed.as_secs_f64());
        m.batch_size.observe(batch_len as f64);
    }
}

/// A connection to the broker was re-established after a loss.
pub(crate) fn reconnected() {
    if let Some(m) = METRICS.get() {
        m.reconnects.inc();
    }
}

/// How many consumer workers the command runs: `/ready` waits for all of them.
pub(crate) fn expect_workers(n: usize) {
    if let Some(m) = METRICS.get() {
        m.health.workers.store(n, Ordering::SeqCst);
    }
}

/// One consumer worker's part of the health: while it is `up`, it counts as connected (or
/// consuming); dropped, it no longer does.
pub(crate) struct Up {
    counter: Option<&'static AtomicUsize>,
    up: bool,
}

impl Up {
    /// A worker's connection, up or not yet.
    pub(crate) fn connected(up: bool) -> Up {
        Up::new(METRICS.get().map(|m| &m.health.connected), up)
    }

    /// A worker's consumer, running or not yet.
    pub(crate) fn consuming(up: bool) -> Up {
        Up::new(METRICS.get().map(|m| &m.health.consuming), up)
    }

    fn new(counter: Option<&'static AtomicUsize>, up: bool) -> Up {
        let mut guard = Up { counter, up: false };
        guard.set(up);
        guard
    }

    /// Now up, or now down.
    pub(crate) fn set(&mut self, up: bool) {
        let Some(counter) = self.counter else { return };
        match (self.up, up) {
            (false, true) => counter.fetch_add(1, Ordering::SeqCst),
            (true, false) => counter.fetch_sub(1, Ordering::SeqCst),
            _ => return,
        };
        self.up = up;
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// A publisher's meter: what it published, what the broker confirmed or nacked, and how
/// long confirms took, per destination queue. None when metrics are off.
pub(crate) struct Meter {
    /// (routing key, handles): the publisher's declared queues, resolved once.
    queues: Vec<(String, Out)>,
    /// Messages routed to a queue the publisher did not declare (a client's reply queue).
    other: Out,
    /// Published, not yet settled: (delivery tag, (when, which queue)), in tag order.
    pub(crate) sent: VecDeque<(u64, Sent)>,
}

/// When a message was published, and the index of its queue's handles (`usize::MAX`: other).
pub(crate) type Sent = (Instant, usize);

struct Out {
    published: Counter,
    confirmed: Counter,
    nacked: Counter,
    confirm_seconds: Histogram,
}

impl Out {
    fn new(m: &Metrics, queue: &str) -> Out {
        let label = QueueLabel { queue: queue.to_string() };
        Out {
            published: m.published.get_or_create_owned(&label),
            confirmed: m.confirmed.get_or_create_owned(&label),
            nacked: m.nacked.get_or_create_owned(&label),
            confirm_seconds: m.confirm_seconds.get_or_create_owned(&label),
        }
    }
}

impl Meter {
    /// The meter of a publisher to `declared` queues, if metrics are on.
    pub(crate) fn new(declared: &[String]) -> Option<Meter> {
        METRICS.get().map(|m| Meter::with(m, declared))
    }

    fn with(m: &Metrics, declared: &[String]) -> Meter {
        Meter {
            queues: declared.iter().map(|q| (q.clone(), Out::new(m, q))).collect(),
            other: Out::new(m, REPLY_TO_LABEL),
            sent: VecDeque::new(),
        }
    }

    fn out(&self, index: usize) -> &Out {
        self.queues.get(index).map_or(&self.other, |(_, o)| o)
    }

    /// Message `tag` was published with `routing_key` (through the default exchange, or
    /// the target's key).
    pub(crate) fn published(&mut self, tag: u64, routing_key: &str) {
        let index = self.queues.iter().position(|(q, _)| q == routing_key).unwrap_or(usize::MAX);
        self.out(index).published.inc();
        self.sent.push_back((tag, (Instant::now(), index)));
    }

    /// The broker acked (or nacked) the messages `settled` (taken from `sent` by the
    /// publisher's own settling rule).
    pub(crate) fn settled(&self, settled: Vec<Sent>, acked: bool) {
        for (at, index) in settled {
            let out = self.out(index);
            out.confirm_seconds.observe(at.elapsed().as_secs_f64());
            if acked {
                out.confirmed.inc()
            } else {
                out.nacked.inc()
            };
        }
    }
}

mod http;
#[cfg(test)]
mod tests;
