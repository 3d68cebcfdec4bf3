//! `pipe` and `serve`: consume a queue, hand each message to the user's model child, and
//! publish its answer with confirms — to the next queue (`pipe`), or to the request's
//! `reply_to` with its `correlation_id` and to a results queue (`serve`). An input is acked
//! only after its answers are confirmed (the consume loop flushes the publisher before each
//! ack), so a crash anywhere loses nothing: unacked inputs are redelivered, and answers
//! carry message ids derived from the input's so a consumer downstream drops the
//! duplicates. An input without a message id gets a fresh one instead: repeats from other
//! producers are data, so its answers never merge with another input's.

mod glob;

use crate::amqp::{Disposition, Handler, Producer, QueueSpec, delivery_meta};
use crate::child::{Answer, Blame, Failure, Framing, ModelChild, SETTLE_CAP};
use crate::codec::batch::{self, BatchAnswer};
use crate::codec::{
    self, DEADLINE_HEADER, Deadline, Delivery, Message, envelope, failed_copy, header_text,
    unique_id,
};
use crate::config::{Global, StageConfig, StageOutput};
use crate::output::{Progress, Reporter, Summary, link_events};
use crate::workers::{SeenIds, Workload, drive};
use color_eyre::eyre::{Result, eyre};
use glob::glob_match;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Failures in a row (no success between) after which the model is taken to be broken and
/// the run stops, leaving the message in the queue.
const MAX_FAILURES_IN_A_ROW: u32 = 3;
/// Label prefix of replies: a reply nobody waits for any more (client gone) is not an error.
const REPLY_LABEL: &str = "reply to ";
/// Reply queues `serve` always answers to: direct reply-to and server-named queues.
const REPLY_QUEUE_PREFIXES: [&str; 2] = ["amq.rabbitmq.reply-to", "amq.gen-"];
/// The reason a request past its deadline carries to `--failed-queue`.
const DEADLINE_PASSED: &str = "deadline passed";

pub(crate) use crate::output::Outcome;

/// What one worker did.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    messages: u64,
    bytes: u64,
    answered: u64,
    silent: u64,
    failed: u64,
    duplicates: u64,
    /// Requests past their deadline (`serve`): not answered.
    expired: u64,
    /// Summed over workers only.
    restarts: u64,
}

impl Counts {
    /// What `self` added since `before` (the fields a batch adds to).
    fn since(&self, before: &Counts) -> Counts {
        Counts {
            answered: self.answered - before.answered,
            silent: self.silent - before.silent,
            failed: self.failed - before.failed,
            expired: self.expired - before.expired,
            ..Counts::default()
        }
    }

    /// Take back what a batch added (`delta`).
    fn take_back(&mut self, delta: &Counts) {
        self.messages -= delta.messages;
        self.duplicates -= delta.duplicates;
        self.bytes -= delta.bytes;
        self.answered -= delta.answered;
        self.silent -= delta.silent;
        self.failed -= delta.failed;
        self.expired -= delta.expired;
    }
}

/// Run `pipe` or `serve` until --count, --idle-timeout or a signal.
pub(crate) fn run(global: &Global, cfg: &StageConfig, stop: &Arc<AtomicBool>) -> Result<Outcome> {
    let arrow = match &cfg.output {
        StageOutput::Queue(q) => format!("{} → {}", cfg.input.name, q.name),
        StageOutput::Replies { .. } => format!("serving {}", cfg.input.name),
    };
    let reporter = Reporter::new(!global.quiet, Progress::Open, &arrow);
    let mut stages = (0..cfg.workers.max(1))
        .map(|_| Stage::open(global, cfg, stop, reporter.clone()))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let stream = cfg
        .stream
        .as_ref()
        .map(|s| crate::checkpoint::reading(s, &cfg.input.name, None, &reporter))
        .transpose()?;
    let work = Workload {
        queue: &cfg.input,
        prefetch: cfg.prefetch,
        count: cfg.count,
        idle: cfg.idle_timeout,
        stream: stream.as_ref(),
    };
    let mut handlers: Vec<&mut (dyn Handler + Send)> =
        stages.iter_mut().map(|s| s as &mut (dyn Handler + Send)).collect();
    let (consumed, mut error) = drive(global, &work, stop, &mut handlers, &reporter)?;
    let mut total = Counts::default();
    let mut not_delivered = 0;
    for stage in stages {
        let c = stage.counts;
        // Held in a batch the run stopped before (a signal, a failure): they stay queued.
        let flying = stage.in_flight.iter().flat_map(|f| &f.held);
        let unhandled: Vec<&Delivery> = stage.batch.iter().chain(flying).map(|h| &h.d).collect();
        total.messages += c.messages - unhandled.len() as u64;
        total.bytes += c.bytes - unhandled.iter().map(|d| d.body.len() as u64).sum::<u64>();
        total.answered += c.answered;
        total.silent += c.silent;
        total.failed += c.failed;
        // Repeats held with those (unacked, so they come again) are not counted either.
        let riders = stage.riders + stage.in_flight.as_ref().map_or(0, |f| f.riders);
        let riders =
            riders + stage.confirming.iter().map(|c| c.counts.duplicates as usize).sum::<usize>();
        total.duplicates += c.duplicates - riders as u64;
        total.expired += c.expired;
        total.restarts += stage.child.starts.saturating_sub(1);
        let (report, closed) = stage.close();
        not_delivered += report.unconfirmed.len() as u64;
        // Refused at the close (earlier refusals stopped the run already): not delivered.
        if let Some((label, why)) =
            report.refused.iter().find(|(label, _)| !label.starts_with(REPLY_LABEL))
        {
            error.get_or_insert(eyre!("{label} was refused by the broker ({why})"));
        }
        if let Err(e) = closed {
            error.get_or_insert(e);
        }
    }
    if not_delivered > 0 {
        error.get_or_insert(eyre!(
            "{not_delivered} answers were not confirmed by the broker; their inputs stay in {}",
            cfg.input.name
        ));
    }
    let summary = Summary {
        verb: match cfg.output {
            StageOutput::Queue(_) => "piped",
            StageOutput::Replies { .. } => "served",
        },
        messages: total.messages,
        bytes: total.bytes,
        elapsed: started.elapsed(),
        skipped: consumed.dropped,
        failed: total.failed,
        failed_to: Some(format!("sent to {}", cfg.failed.name)),
        counts: vec![
            ("answered", total.answered),
            ("no answer", total.silent),
            ("expired", total.expired),
            ("duplicates", total.duplicates),
            ("model restarts", total.restarts),
            ("answers unconfirmed", not_delivered),
        ],
        note: crate::checkpoint::stream_note(&consumed),
    };
    Ok(Outcome { summary, error })
}

/// One worker: a model child and a confirming publisher.
struct Stage<'a> {
    cfg: &'a StageConfig,
    child: ModelChild,
    producer: Producer,
    reporter: Reporter,
    seen: SeenIds,
    counts: Counts,
    failures_in_a_row: u32,
    /// Why the model cannot be trusted with more input (it wrote to stdout out of turn):
    /// the run stops at the next message, which stays queued.
    broken: Option<String>,
    /// The micro-batch filling up (`--batch-size`), oldest first.
    batch: Vec<Held>,
    /// When the oldest message of `batch` came.
    batch_started: Option<Instant>,
    /// Messages of a batch that stopped the run: never handled, so never acked (they count
    /// as held, and come back with the nack or the channel's close).
    stuck: usize,
    /// Repeats (ids seen before) that came while a batch filled: done with, but held with
    /// the batch, since the consumer acks up to the newest delivery the stage no longer
    /// holds, and the batch's own messages are older.
    riders: usize,
    /// The batch at the model (`--batch-size`), if any.
    in_flight: Option<Flight>,
    /// Set by a stop signal: no further batch goes to the model.
    stop: Arc<AtomicBool>,
    /// Batches answered whose answers are not all confirmed yet, oldest first: how many
    /// deliveries each holds back from the ack (riders included), and the producer's ticket
    /// after its last message. Held until then, so an ack never waits for a confirm.
    confirming: std::collections::VecDeque<Confirming>,
    /// The ticket after the last message of the batches let go so far: what an ack needs
    /// confirmed.
    released: u64,
    /// An answer was refused for good (the run stops): the batches still held stay so.
    refused: bool,
}

/// Why a message of a batch is not handed to the model.
enum Alone {
    /// Past its deadline (`serve`).
    Expired,
    /// To the failed queue for this reason; and (true) an error reply to its client.
    Failed(String, bool),
}

/// An answered batch waiting for its answers' confirms before its inputs are acked.
struct Confirming {
    /// The deliveries it holds back from the ack (riders included).
    held: usize,
    /// Their message ids, and what they added to the counts: a lost channel lets go of
    /// them unacked, so they are handled afresh when they come again.
    ids: Vec<String>,
    counts: Counts,
    /// The producer's ticket after its last message.
    end: u64,
    /// When its answers were published.
    since: Instant,
}

/// How long an answered batch waits for its confirms to come in by themselves; past this
/// (or at the first nack or failure) the stage flushes the publisher, as a batch did before
/// every ack: nacks are retried or refused, a lost connection is recovered.
const CONFIRM_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// How often a run with a batch at the model and no delivery coming looks for its answer.
const FLIGHT_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// A batch at the model whose answers are not taken yet: the model works on it while the
/// batch before it is published and confirmed, and the next one fills.
struct Flight {
    held: Vec<Held>,
    /// Repeats held with it (see `Stage::riders`).
    riders: usize,
    /// Which of `held` the model is handed, in order.
    asked: Vec<usize>,
    /// With `--framing json-batch`, what it is handed for each of `asked`.
    items: Vec<Vec<u8>>,
    /// The others (which of `held`), and why.
    alone: Vec<(usize, Alone)>,
}

/// A message taken into a micro-batch, not yet handed to the model.
struct Held {
    d: Delivery,
    input_id: String,
}

impl<'a> Stage<'a> {
    fn open(
        global: &Global,
        cfg: &'a StageConfig,
        stop: &Arc<AtomicBool>,
        reporter: Reporter,
    ) -> Result<Stage<'a>> {
        let mut specs: Vec<QueueSpec> = match &cfg.output {
            StageOutput::Queue(q) => vec![q.clone()],
            StageOutput::Replies { results } => results.iter().cloned().collect(),
        };
        specs.push(cfg.failed.clone());
        let producer = Producer::open_many(
            &global.endpoints,
            &specs,
            cfg.publisher,
            global.retry,
            Arc::clone(stop),
            Box::new(link_events(reporter.clone())),
        )?;
        let mut child = ModelChild::new(&cfg.exec, cfg.child, Arc::clone(stop));
        child.start()?;
        Ok(Stage {
            cfg,
            child,
            producer,
            reporter,
            seen: SeenIds::default(),
            counts: Counts::default(),
            failures_in_a_row: 0,
            broken: None,
            batch: Vec::new(),
            batch_started: None,
            stuck: 0,
            riders: 0,
            in_flight: None,
            stop: Arc::clone(stop),
            confirming: std::collections::VecDeque::new(),
            released: 0,
            refused: false,
        })
    }

    /// What the model is handed for `d`: its body, or (--framing envelope) its envelope.
    fn model_input<'d>(&self, d: &'d Delivery) -> Cow<'d, [u8]> {
        if self.cfg.envelope {
            Cow::Owned(envelope::encode(&delivery_meta(d), &d.body))
        } else {
            Cow::Borrowed(&d.body)
        }
    }

    /// The messages one answer becomes; their ids derive from `input_id`.
    fn answers(&self, d: &Delivery, input_id: &str, body: Vec<u8>) -> Vec<Message> {
        let binary = matches!(self.cfg.child.framing, Framing::Frames | Framing::FrameBatch(_));
        let answer = |to: &str, label| codec::answer(d, input_id, body.clone(), binary, to, label);
        match &self.cfg.output {
            StageOutput::Queue(q) => vec![answer(&q.name, format!("answer to {input_id}"))],
            StageOutput::Replies { results } => {
                let mut out = Vec::new();
                if let Some(to) = d.reply_to.as_deref().filter(|t| !t.is_empty()) {
                    let corr = d.correlation_id.as_deref().unwrap_or("-");
                    out.push(answer(to, format!("{REPLY_LABEL}{corr} ({to})")));
                }
                if let Some(r) = results {
                    out.push(answer(&r.name, format!("result of {input_id}")));
                }
                out
            }
        }
    }

    /// Where a request's answer may go: its `reply_to` if that is a reply queue (or allowed
    /// by --allow-reply-to); an error saying why not.
    fn reply_queue<'d>(&self, d: &'d Delivery) -> Result<Option<&'d str>, String> {
        let StageOutput::Replies { results } = &self.cfg.output else { return Ok(None) };
        let Some(to) = d.reply_to.as_deref().filter(|t| !t.is_empty()) else {
            return match results {
                Some(_) => Ok(None),
                None => Err("the request has no reply_to and serve has no --results-queue: \
                     its answer would go nowhere"
                    .into()),
            };
        };
        let allowed = REPLY_QUEUE_PREFIXES.iter().any(|p| to.starts_with(p))
            || self.cfg.allow_reply_to.iter().any(|p| glob_match(p, to));
        if allowed {
            Ok(Some(to))
        } else {
            Err(format!(
                "reply_to {to:?} is not a reply queue (amq.rabbitmq.reply-to or a server-named \
                 amq.gen-* queue); serve does not publish into other queues unless \
                 --allow-reply-to names them"
            ))
        }
    }

    /// An answer is published only once the child has shown it said all it had to say for
    /// that input: it has gone quiet (`ModelChild::settled`). A model that reads ahead (a
    /// pipeline, an event loop, a reader thread) takes the next input at once, so only its
    /// quiet shows it is done. If it wrote more meanwhile, the answer cannot be trusted: the
    /// input fails, and the run stops at the next message.
    fn settle_and_publish(&mut self, d: &Delivery, input_id: &str, body: Vec<u8>) -> Result<()> {
        match self.child.settled(SETTLE_CAP) {
            Ok(()) => self.publish_answers(d, input_id, body),
            Err(f) => {
                self.counts.answered -= 1;
                self.broken = Some(f.reason.clone());
                self.send_to_failed(d, input_id, &f.reason)?;
                self.reply_error(d, input_id, &f.reason)
            }
        }
    }

    /// Publish the answers to one input; answers that cannot be sent (headers too large for
    /// the broker) fail the input instead.
    fn publish_answers(&mut self, d: &Delivery, input_id: &str, body: Vec<u8>) -> Result<()> {
        let msgs = self.answers(d, input_id, body);
        if let Some(n) = msgs.iter().find_map(Message::oversized_properties) {
            self.counts.answered -= 1;
            let reason = format!(
                "its answer's properties and headers (inherited from the input) take {n} \
                 bytes, more than fit in one AMQP frame ({} bytes)",
                crate::codec::MAX_PROPERTY_BYTES
            );
            self.send_to_failed(d, input_id, &reason)?;
            return self.reply_error(d, input_id, &reason);
        }
        for msg in msgs {
            self.producer.publish(msg)?;
        }
        Ok(())
    }

    /// The input to the failed queue with the reason. Its id is forgotten: requeued once the
    /// model is fixed (`failed requeue`), it must be answered, not dropped as a repeat.
    fn send_to_failed(&mut self, d: &Delivery, input_id: &str, reason: &str) -> Result<()> {
        self.seen.forget(d);
        self.reporter.warn(&format!(
            "message {input_id} sent to {}: {}",
            self.cfg.failed.name,
            header_text(reason)
        ));
        self.producer.publish(failed_copy(
            d,
            d.body.clone(),
            input_id,
            reason,
            &self.cfg.failed.name,
        ))?;
        self.counts.failed += 1;
        crate::metrics::failed();
        Ok(())
    }

    /// `serve`: tell the client at once that its request failed (an empty reply with the
    /// reason in `x-mqdemo-error`), when its reply queue is one serve answers to.
    fn reply_error(&mut self, d: &Delivery, input_id: &str, reason: &str) -> Result<()> {
        let Ok(Some(to)) = self.reply_queue(d) else { return Ok(()) };
        let corr = d.correlation_id.as_deref().unwrap_or("-");
        let label = format!("{REPLY_LABEL}{corr} ({to}, an error)");
        let msg = codec::error_reply(d, input_id, reason, to, label);
        self.producer.publish(msg)
    }

    /// The child failed on `inputs` (one message, or a batch): stop the run (a broken model
    /// or a signal: the inputs stay queued) or send them to the failed queue.
    fn child_failed(
        &mut self,
        inputs: &[(&Delivery, &str)],
        f: Failure,
        size: usize,
    ) -> Result<()> {
        self.failures_in_a_row += 1;
        let stays = match inputs {
            [(_, id)] if size == 1 => format!("message {id} stays in {}", self.cfg.input.name),
            _ => format!("the batch's {size} messages stay in {}", self.cfg.input.name),
        };
        match f.blame {
            Blame::Model => {
                return Err(eyre!(
                    "--exec {:?} cannot run: {}; fix the command ({stays})",
                    self.cfg.exec,
                    f.reason,
                ));
            }
            Blame::Stopped => {
                return Err(eyre!(
                    "--exec {:?} was {}; {stays}",
                    self.cfg.exec,
                    f.reason.trim_start_matches("the --exec child failed: "),
                ));
            }
            Blame::Message => {}
        }
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
            return Err(eyre!(
                "--exec {:?} failed on {} {} in a row, the last time: {}; stopping ({stays}); \
                 fix the model and run again",
                self.cfg.exec,
                self.failures_in_a_row,
                if self.cfg.batch > 1 || self.cfg.json_batch { "calls" } else { "messages" },
                f.reason,
            ));
        }
        for (d, input_id) in inputs {
            self.send_to_failed(d, input_id, &f.reason)?;
            self.reply_error(d, input_id, &f.reason)?;
        }
        Ok(())
    }

    /// `serve`: whether request `d` is past the deadline its client set
    /// (`x-mqdemo-deadline`, Unix milliseconds; `request --timeout` sets it).
    fn past_deadline(&self, d: &Delivery) -> bool {
        if !matches!(self.cfg.output, StageOutput::Replies { .. }) {
            return false;
        }
        match codec::deadline(&d.headers) {
            Deadline::At(due) => codec::now_millis() > due,
            Deadline::None => false,
            Deadline::Bad(value) => {
                let id = d.assigned_id().unwrap_or("without an id");
                self.reporter.warn(&format!(
                    "request {}: {DEADLINE_HEADER} {value} is not a Unix time in milliseconds \
                     (request --timeout sets it); served as if it had no deadline",
                    header_text(id)
                ));
                false
            }
        }
    }

    /// `serve`: whether the answer to `d` would come after its deadline (checked again
    /// after the model call; a bad deadline was warned about before it).
    fn late(&self, d: &Delivery) -> bool {
        matches!(self.cfg.output, StageOutput::Replies { .. })
            && matches!(codec::deadline(&d.headers), Deadline::At(due) if codec::now_millis() > due)
    }

    /// A request past its deadline: acked unanswered (its client has given up), counted, and
    /// copied to `--failed-queue` when one was given.
    fn expire(&mut self, d: &Delivery, input_id: &str) -> Result<()> {
        self.counts.expired += 1;
        crate::metrics::expired();
        if self.cfg.failed_given {
            self.seen.forget(d);
            self.producer.publish(failed_copy(
                d,
                d.body.clone(),
                input_id,
                DEADLINE_PASSED,
                &self.cfg.failed.name,
            ))?;
        }
        Ok(())
    }

    /// Whether the stage hands the model micro-batches.
    fn batching(&self) -> bool {
        self.cfg.batch > 1 || self.cfg.json_batch
    }

    /// Hand the filled batch to the model, once the answers of the one before are taken.
    fn run_batch(&mut self) -> Result<()> {
        let held = std::mem::take(&mut self.batch);
        let riders = std::mem::take(&mut self.riders);
        self.batch_started = None;
        let next = self.sort(held, riders);
        let result = self.advance(Some(next));
        let c = self.counts;
        self.reporter.status(|| status_text(&c));
        result
    }

    /// What of a batch goes to the model: the requests it may answer, each in the
    /// framing's shape. The others are settled with the batch's answers, once the call did
    /// not stop the run: a batch that stops it goes back to the queue whole, so none of it
    /// may be in the failed queue already.
    fn sort(&self, held: Vec<Held>, riders: usize) -> Flight {
        let mut flight = Flight {
            held: Vec::new(),
            riders,
            asked: Vec::new(),
            items: Vec::new(),
            alone: Vec::new(),
        };
        for (i, h) in held.iter().enumerate() {
            if self.past_deadline(&h.d) {
                flight.alone.push((i, Alone::Expired));
            } else if let Err(why) = self.reply_queue(&h.d) {
                flight.alone.push((i, Alone::Failed(why, false)));
            } else if !self.cfg.json_batch {
                flight.asked.push(i);
            } else {
                match batch::json_item(&h.d.body, h.d.content_type.as_deref()) {
                    Ok(item) => {
                        flight.asked.push(i);
                        flight.items.push(item);
                    }
                    Err(why) => flight.alone.push((i, Alone::Failed(why, true))),
                }
            }
        }
        flight.held = held;
        flight
    }

    /// Take the answers to the batch with the model (if any), hand the model `next` (if
    /// any), then publish those answers: the model works on `next` while they are confirmed
    /// and acked and the batch after it fills. Batches an error leaves unsettled stay
    /// unacked (`stuck`) and come back.
    fn advance(&mut self, next: Option<Flight>) -> Result<()> {
        let before = self.counts;
        let result = self.advance_from(next, &before);
        if result.is_err() {
            // What stranded batches added goes back with them (`strand` took back what
            // they and their repeats were counted as when they came).
            let (messages, bytes) = (self.counts.messages, self.counts.bytes);
            let duplicates = self.counts.duplicates;
            self.counts = Counts { messages, bytes, duplicates, ..before };
        }
        result
    }

    fn advance_from(&mut self, next: Option<Flight>, before: &Counts) -> Result<()> {
        let landed = self.in_flight.take();
        let answers = match &landed {
            Some(f) => match self.collect(f) {
                Ok(answers) => answers,
                Err(e) => {
                    self.strand(landed.iter().chain(next.iter()));
                    return Err(e);
                }
            },
            None => None,
        };
        let mut launched = None;
        let mut settle_next = None;
        if let Some(n) = next {
            if self.broken.is_some() {
                // The model cannot be trusted with more: the batch that showed it is settled
                // (in the failed queue), the next stays queued.
                if let Some(f) = &landed
                    && let Err(e) = self.publish_flight(f, answers)
                {
                    self.strand(landed.iter().chain(Some(&n)));
                    return Err(e);
                }
                self.strand(std::iter::once(&n));
                if let Some(f) = &landed {
                    let delta = self.counts.since(before);
                    self.confirm_later(&[f], delta);
                }
                return Err(self.broken_error());
            }
            let mut n = n;
            // Expired while the batch before was at the model: not handed over now either.
            self.expire_waiting(&mut n);
            if self.stop.load(Ordering::SeqCst) {
                // A signal came while the model worked: the next batch stays queued, unseen.
                self.strand(std::iter::once(&n));
            } else {
                match self.launch(&n) {
                    Ok(true) => launched = Some(n),
                    Ok(false) => settle_next = Some(n),
                    Err(e) => {
                        self.strand(landed.iter().chain(Some(&n)));
                        return Err(e);
                    }
                }
            }
        }
        let settling = landed.iter().zip([answers]).chain(settle_next.iter().zip([None]));
        let mut result = Ok(());
        for (f, answers) in settling {
            result = self.publish_flight(f, answers);
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = result {
            self.strand(landed.iter().chain(settle_next.iter()).chain(launched.iter()));
            return Err(e);
        }
        let settled: Vec<&Flight> = landed.iter().chain(&settle_next).collect();
        if !settled.is_empty() {
            let delta = self.counts.since(before);
            self.confirm_later(&settled, delta);
        }
        self.in_flight = launched;
        self.release();
        Ok(())
    }

    /// Hold `held` deliveries back from the ack until everything published so far is
    /// settled.
    fn confirm_later(&mut self, flights: &[&Flight], mut counts: Counts) {
        let end = self.producer.ticket();
        let held = flights.iter().map(|f| f.held.len() + f.riders).sum();
        let inputs = || flights.iter().flat_map(|f| &f.held);
        let ids = inputs().filter_map(|h| h.d.assigned_id().map(str::to_string)).collect();
        counts.messages = inputs().count() as u64;
        counts.bytes = inputs().map(|h| h.d.body.len() as u64).sum();
        counts.duplicates = flights.iter().map(|f| f.riders as u64).sum();
        self.confirming.push_back(Confirming { held, ids, counts, end, since: Instant::now() });
    }

    /// Let go of the answered batches whose answers are all confirmed by now (oldest first:
    /// the consumer acks up to the newest delivery the stage no longer holds). Not while a
    /// refusal waits to be handed out: its batch must stay held (see `drive`).
    fn release(&mut self) {
        if self.confirming.is_empty() {
            return;
        }
        let below = self.producer.settled_below();
        if self.producer.has_refusals() {
            return;
        }
        while let Some(c) = self.confirming.front() {
            if c.end > below {
                break;
            }
            self.released = self.released.max(c.end);
            self.confirming.pop_front();
        }
    }

    /// Release what is confirmed; and when the oldest answered batch has waited long, or the
    /// publisher has nacks, refusals or a failed channel, flush up to it (retrying nacks,
    /// recovering the connection): a refused answer stops the run, its inputs unacked.
    fn drive(&mut self) -> Result<()> {
        self.release();
        let Some(front) = self.confirming.front() else { return Ok(()) };
        let troubled = self.producer.needs_flush() || self.producer.has_refusals();
        if !troubled && front.since.elapsed() < CONFIRM_PATIENCE {
            return Ok(());
        }
        let end = front.end;
        let refused = self.producer.flush_through(end)?;
        self.settle_refusals(refused)?;
        self.release();
        Ok(())
    }

    /// `serve`: requests of the batch whose deadline passed since it was sorted (while the
    /// batch before was at the model) go with the others not handed to the model.
    fn expire_waiting(&self, f: &mut Flight) {
        let mut kept = 0;
        for k in 0..f.asked.len() {
            let i = f.asked[k];
            if self.late(&f.held[i].d) {
                f.alone.push((i, Alone::Expired));
            } else {
                f.asked[kept] = i;
                if self.cfg.json_batch {
                    f.items.swap(kept, k);
                }
                kept += 1;
            }
        }
        f.asked.truncate(kept);
        f.items.truncate(if self.cfg.json_batch { kept } else { 0 });
    }

    /// Hand the model the batch's requests, without waiting for its answer; false: nothing
    /// went to it (none to ask, or the requests failed and went to the failed queue).
    fn launch(&mut self, f: &Flight) -> Result<bool> {
        if f.asked.is_empty() {
            return Ok(false);
        }
        let request = if self.cfg.json_batch {
            let items: Vec<&[u8]> = f.items.iter().map(Vec::as_slice).collect();
            Ok(batch::json_request(&items))
        } else {
            let bodies: Vec<&[u8]> = f.asked.iter().map(|&i| f.held[i].d.body.as_slice()).collect();
            batch::frames_request(&bodies)
        };
        let sent = request
            .map_err(|why| Failure::new(why, Blame::Message))
            .and_then(|req| self.child.send(&req));
        match sent {
            Ok(()) => Ok(true),
            Err(failure) => {
                self.call_failed(f, failure)?;
                Ok(false)
            }
        }
    }

    /// The model's answers to the batch it was handed, checked but not yet published; None:
    /// its requests failed and went to the failed queue. An error stops the run.
    fn collect(&mut self, f: &Flight) -> Result<Option<Vec<BatchAnswer>>> {
        if f.asked.is_empty() {
            return Ok(None);
        }
        let answer = self.child.receive();
        crate::metrics::model_call(self.child.last_call(), f.asked.len());
        let answered = answer.and_then(|answer| {
            let bytes = match answer {
                Answer::Output(bytes) => bytes,
                Answer::Nothing => Vec::new(),
            };
            let parsed = if self.cfg.json_batch {
                batch::json_answers(&bytes, f.asked.len())
            } else {
                batch::frames_answers(&bytes, f.asked.len())
            };
            parsed.map_err(|why| {
                Failure::new(format!("the --exec child failed: {why}"), Blame::Message)
            })
        });
        let answers = match answered {
            Ok(answers) => answers,
            Err(failure) => {
                self.call_failed(f, failure)?;
                return Ok(None);
            }
        };
        self.failures_in_a_row = 0;
        // One settle for the batch: its answers came as one.
        if let Err(failure) = self.child.settled(SETTLE_CAP) {
            self.broken = Some(failure.reason.clone());
            for &i in &f.asked {
                let h = &f.held[i];
                self.send_to_failed(&h.d, &h.input_id, &failure.reason)?;
                self.reply_error(&h.d, &h.input_id, &failure.reason)?;
            }
            return Ok(None);
        }
        Ok(Some(answers))
    }

    /// A model call for the batch failed: its requests go to the failed queue, or the run
    /// stops.
    fn call_failed(&mut self, f: &Flight, failure: Failure) -> Result<()> {
        if failure.out_of_turn {
            self.broken = Some(failure.reason.clone());
        }
        let inputs: Vec<(&Delivery, &str)> =
            f.asked.iter().map(|&i| (&f.held[i].d, f.held[i].input_id.as_str())).collect();
        self.child_failed(&inputs, failure, f.held.len())
    }

    /// Publish the answers to a batch (if any) and settle the inputs not handed to the model.
    fn publish_flight(&mut self, f: &Flight, answers: Option<Vec<BatchAnswer>>) -> Result<()> {
        for (&i, answer) in f.asked.iter().zip(answers.into_iter().flatten()) {
            let (d, input_id) = (&f.held[i].d, f.held[i].input_id.as_str());
            match answer {
                BatchAnswer::Nothing => self.counts.silent += 1,
                BatchAnswer::Output(_) if self.late(d) => self.expire(d, input_id)?,
                BatchAnswer::Output(body) => {
                    self.counts.answered += 1;
                    self.publish_answers(d, input_id, body)?;
                }
            }
        }
        for (i, why) in &f.alone {
            let h = &f.held[*i];
            match why {
                Alone::Expired => self.expire(&h.d, &h.input_id)?,
                Alone::Failed(why, reply) => {
                    self.send_to_failed(&h.d, &h.input_id, why)?;
                    if *reply {
                        self.reply_error(&h.d, &h.input_id, why)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Batches a stopped run leaves unsettled: back to the queue, unhandled, so not counted
    /// as taken, and held (unacked) until the channel closes.
    fn strand<'f>(&mut self, flights: impl Iterator<Item = &'f Flight>) {
        for f in flights {
            self.stuck += f.held.len() + f.riders;
            self.counts.messages -= f.held.len() as u64;
            // Repeats held with it are not acked either: they come again.
            self.counts.duplicates -= f.riders as u64;
            self.counts.bytes -= f.held.iter().map(|h| h.d.body.len() as u64).sum::<u64>();
        }
    }

    /// The error that stops a run whose model wrote to stdout out of turn.
    fn broken_error(&self) -> color_eyre::Report {
        let why = self.broken.as_deref().unwrap_or("");
        if why.contains("--max-answer-bytes") {
            return eyre!(
                "--exec {:?}: {why}; stopping with the rest of the messages in {}",
                self.cfg.exec,
                self.cfg.input.name
            );
        }
        // A model that writes to stdout besides its answers would do it again: every
        // further answer would be at risk of going to the wrong input.
        eyre!(
            "--exec {:?} writes to stdout besides its answers ({why}); stopping with the \
             rest of the messages in {}: print logs to stderr and run again",
            self.cfg.exec,
            self.cfg.input.name
        )
    }

    fn close(mut self) -> (crate::amqp::PublishReport, Result<()>) {
        self.child.stop();
        self.producer.finish()
    }
}

impl Handler for Stage<'_> {
    fn handle(&mut self, d: &mut Delivery) -> Result<Disposition> {
        self.drive()?;
        if self.seen.contains(d) {
            self.counts.duplicates += 1;
            crate::metrics::duplicate();
            if !self.batch.is_empty() {
                self.riders += 1;
            } else if let Some(f) = self.in_flight.as_mut() {
                f.riders += 1;
            } else if let Some(c) = self.confirming.back_mut() {
                // Newer than the answered batches waiting for confirms: acked with them.
                c.held += 1;
                c.counts.duplicates += 1;
            }
            return Ok(Disposition::Ack);
        }
        if self.broken.is_some() {
            return Err(self.broken_error());
        }
        // Without a message id the delivery is data of its own: a fresh id, so that neither
        // its answers nor its failed copy merge with another's downstream.
        let input_id = d.assigned_id().map_or_else(unique_id, str::to_string);
        self.seen.insert(d);
        self.counts.messages += 1;
        self.counts.bytes += d.body.len() as u64;
        if self.batching() {
            // Acked with the rest once the batch is answered (`held` keeps the ack back).
            self.batch.push(Held { d: std::mem::take(d), input_id });
            self.batch_started.get_or_insert_with(Instant::now);
            // A partial batch goes when it is due (`idle`): the consumer wakes it then, once
            // no delivery it has already received is waiting, so what came is taken along.
            if self.batch.len() >= self.cfg.batch
                && let Err(e) = self.run_batch()
            {
                // This delivery stays with its batch, but the consumer counts it apart: it
                // gives back the delivery in hand itself (`held` covers only those before).
                self.stuck = self.stuck.saturating_sub(1);
                return Err(e);
            }
            return Ok(Disposition::Ack);
        }
        if self.past_deadline(d) {
            // Its client has given up: no reply (it would come late), no model call.
            self.expire(d, &input_id)?;
        } else if let Err(why) = self.reply_queue(d) {
            self.send_to_failed(d, &input_id, &why)?;
        } else {
            let called = Instant::now();
            let answer = self.child.call(&self.model_input(d));
            crate::metrics::model_call(called.elapsed(), 1);
            match answer {
                Ok(Answer::Output(_)) if self.late(d) => {
                    self.failures_in_a_row = 0;
                    self.expire(d, &input_id)?;
                }
                Ok(Answer::Output(body)) => {
                    self.failures_in_a_row = 0;
                    self.counts.answered += 1;
                    self.settle_and_publish(d, &input_id, body)?;
                }
                Ok(Answer::Nothing) => {
                    self.failures_in_a_row = 0;
                    self.counts.silent += 1;
                }
                Err(f) => {
                    if f.out_of_turn {
                        self.broken = Some(f.reason.clone());
                    }
                    self.child_failed(&[(d, &input_id)], f, 1)?;
                }
            }
        }
        let c = self.counts;
        self.reporter.status(|| status_text(&c));
        Ok(Disposition::Ack)
    }

    fn held(&self) -> usize {
        let flying = self.in_flight.as_ref().map_or(0, |f| f.held.len() + f.riders);
        let confirming: usize = self.confirming.iter().map(|c| c.held).sum();
        self.batch.len() + self.riders + self.stuck + flying + confirming
    }

    fn complete(&mut self) -> Result<()> {
        if !self.batch.is_empty() {
            self.run_batch()?;
        }
        if self.in_flight.is_some() {
            self.advance(None)?;
        }
        Ok(())
    }

    fn confirm(&mut self) -> Result<()> {
        if self.refused && !self.confirming.is_empty() {
            // The refused answers' batch is among them: none of them is acked.
            return Err(eyre!("answers were refused by the broker; their inputs stay queued"));
        }
        if let Some(end) = self.confirming.back().map(|c| c.end) {
            let refused = self.producer.flush_through(end)?;
            self.settle_refusals(refused)?;
            self.released = self.released.max(end);
            self.confirming.clear();
        }
        Ok(())
    }

    fn due(&self) -> Option<Instant> {
        let filled = self.batch_started.map(|t| t + self.cfg.batch_wait);
        // A batch at the model, or answers not yet confirmed: look again in a little while.
        let waiting = self.in_flight.is_some() || !self.confirming.is_empty();
        let answered = waiting.then(|| Instant::now() + FLIGHT_POLL);
        filled.into_iter().chain(answered).min()
    }

    fn dropped(&mut self) {
        self.stuck = 0;
        // Repeats held unacked come again, and are counted then.
        let riders = self.riders + self.in_flight.as_ref().map_or(0, |f| f.riders);
        self.counts.duplicates -= riders as u64;
        self.riders = 0;
        // Answered but not acked: when they come again they are handled afresh (their
        // answers' ids are the same, so downstream keeps one), and counted then. The next
        // ack still waits for these answers' confirms.
        if let Some(end) = self.confirming.back().map(|c| c.end) {
            self.released = self.released.max(end);
        }
        for c in std::mem::take(&mut self.confirming) {
            for id in &c.ids {
                self.seen.forget_id(id);
            }
            self.counts.take_back(&c.counts);
        }
        let mut gone = std::mem::take(&mut self.batch);
        if let Some(f) = self.in_flight.take() {
            // Its inputs come again: the model's answer to them is taken and dropped, so
            // the next request gets its own.
            if !f.asked.is_empty() {
                let _ = self.child.receive();
            }
            gone.extend(f.held);
        }
        for h in gone {
            self.seen.forget(&h.d);
            self.counts.messages -= 1;
            self.counts.bytes -= h.d.body.len() as u64;
        }
        self.batch_started = None;
    }

    fn idle(&mut self) -> Result<()> {
        self.drive()?;
        let filled = self.batch_started.map(|t| t + self.cfg.batch_wait);
        if filled.is_some_and(|due| Instant::now() >= due) {
            self.run_batch()?;
        } else if self.in_flight.is_some() && self.child.answer_ready() {
            self.advance(None)?;
            let c = self.counts;
            self.reporter.status(|| status_text(&c));
        }
        let c = self.counts;
        self.reporter.catch_up(|| status_text(&c));
        if self.in_flight.is_some() {
            // Its answer (or the failure to give one) says more.
            return Ok(());
        }
        match self.child.check_alive() {
            Ok(()) => Ok(()),
            Err(f) => Err(eyre!(
                "--exec {:?} cannot run: {}; fix the command (every message stays in {})",
                self.cfg.exec,
                f.reason,
                self.cfg.input.name
            )),
        }
    }

    fn flush(&mut self) -> Result<()> {
        // Batches are acked once their answers are confirmed (`release`): nothing to wait for.
        let refused = if self.batching() {
            self.producer.flush_through(self.released)?
        } else {
            self.producer.flush()?
        };
        self.settle_refusals(refused)
    }
}

impl Stage<'_> {
    /// Answers the broker refused for good: a reply nobody waits for any more is let go; any
    /// other stops the run before the inputs are acked.
    fn settle_refusals(&mut self, refused: Vec<(String, String)>) -> Result<()> {
        for (label, why) in refused {
            if label.starts_with(REPLY_LABEL) {
                // The client went away (its reply queue is gone): nothing to deliver to.
                self.reporter.warn(&format!("{label} not delivered: {why}"));
            } else {
                self.refused = true;
                return Err(eyre!(
                    "{label} was refused by the broker ({why}); stopping without acking the input"
                ));
            }
        }
        Ok(())
    }
}

/// The progress bar's text for a stage.
fn status_text(c: &Counts) -> String {
    let mut text = format!("{} msgs, answered {}", c.messages, c.answered);
    if c.failed > 0 {
        text.push_str(&format!(", failed {}", c.failed));
    }
    text
}
