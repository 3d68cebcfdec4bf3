//! Before a stream is read: short-lived consumers on a channel of their own check that the
//! place a run starts from is in the stream it names, and turn the moving points of a first
//! run (`--offset last`, `--until TIME`) into offsets, so that the run, its checkpoint and a
//! reconnect all mean the same messages.

use super::error::{explain, fatal, lost};
use super::session::Session;
use super::stream::{Anchor, Clock, Offset, StreamRead, Until, identity, now_ms, position};
use amiquip::{ConsumerMessage, ConsumerOptions};
use color_eyre::eyre::{Report, Result};
use crossbeam_channel::RecvTimeoutError;
use std::time::Duration;

/// How long a probe waits for its first delivery (a stream with a message there sends it at
/// once), and then for a gap that ends what it reads.
const PROBE_FIRST: Duration = Duration::from_secs(2);
const PROBE_GAP: Duration = Duration::from_millis(300);
/// Longest a probe reads: a stream written to steadily never leaves a gap, and a probe for
/// an offset far past its end would otherwise read for as long as the writer writes.
const PROBE_TOTAL: Duration = Duration::from_secs(5);
/// Bytes the broker must send during a wait that brings no delivery for the wait to count
/// as a body arriving (a heartbeat is 8 bytes): the probe then waits again, so a large
/// message over a slower link is not taken for nothing sent.
const ARRIVING_BYTES: u64 = 4096;
/// Longest a probe reads while a body keeps arriving: a 512 MiB message (RabbitMQ's largest
/// `max_message_size`) at 1.7 MiB/s.
const PROBE_ARRIVING_MAX: Duration = Duration::from_secs(300);
/// Deliveries a probe lets the broker send ahead: it acks each one as it reads it, so it
/// holds at most this many bodies (a stream of 4 MiB messages once took a probe at a
/// prefetch of 1000 to 205 MiB).
const PROBE_PREFETCH: u16 = 2;

/// Where a run reads a stream, once probed: where it starts and where it stops, and the
/// anchor its checkpoints keep (the checkpoint's, checked; None: the first message read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub start: Offset,
    pub until: Option<Until>,
    pub anchor: Option<Anchor>,
}

/// What a probe consumer saw: its first delivery (offset and identity), the highest offset,
/// whether PROBE_TOTAL cut it short (more was still coming), and whether that was while a
/// body was still arriving after PROBE_ARRIVING_MAX (then `received`: the bytes the
/// connection had brought meanwhile).
#[derive(Debug, Default)]
struct Seen {
    first: Option<(u64, String)>,
    highest: Option<u64>,
    cut: bool,
    arriving: Option<u64>,
}

/// How long a probe waits for its next delivery, from what it has seen: PROBE_FIRST for the
/// first, PROBE_GAP for each next one, reading for PROBE_TOTAL in all. A wait that brings no
/// delivery but at least ARRIVING_BYTES is a body on its way, not the end: the probe waits
/// again, and goes on past PROBE_TOTAL while it keeps arriving, up to PROBE_ARRIVING_MAX.
#[derive(Debug, Default)]
struct Patience {
    delivered: bool,
    arriving: bool,
}

/// What a probe does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Wait this long for a delivery.
    Wait(Duration),
    /// Stop: nothing more came.
    Done,
    /// Stop: it has read long enough (more may be coming).
    Cut,
}

impl Patience {
    /// Before a wait, `elapsed` into the probe.
    fn before_wait(&self, elapsed: Duration) -> Step {
        let limit = if self.arriving { PROBE_ARRIVING_MAX } else { PROBE_TOTAL };
        match (elapsed >= limit, self.delivered) {
            (true, _) => Step::Cut,
            (false, true) => Step::Wait(PROBE_GAP),
            (false, false) => Step::Wait(PROBE_FIRST),
        }
    }

    /// A delivery came.
    fn delivered(&mut self) {
        self.delivered = true;
        self.arriving = false;
    }

    /// A wait ended without a delivery, `bytes` having come from the broker meanwhile.
    fn timed_out(&mut self, bytes: u64) -> Step {
        self.arriving = bytes >= ARRIVING_BYTES;
        if self.arriving { Step::Wait(Duration::ZERO) } else { Step::Done }
    }
}

/// Probe stream `queue` for `read`. Err: a refusal (fatal, for the user), or trouble with the
/// connection (retryable: probe again after a reconnect; it is never taken as a pass).
pub(super) fn plan(session: &mut Session, queue: &str, read: &StreamRead) -> Result<Plan> {
    let mut plan = Plan { start: read.start, until: read.until, anchor: None };
    match read.start {
        Offset::At(from) if from > 0 => plan.anchor = check_place(session, queue, from, read)?,
        // `last` is the last chunk now: its first offset, so that the start record, a
        // reconnect and the run all include it (an empty stream: `last` is `next`).
        Offset::Last => {
            if let Some((first, _)) = consume_from(session, queue, Offset::Last, |_| true)?.first {
                plan.start = Offset::At(first);
            }
        }
        _ => {}
    }
    // An end already past on the broker's clock is placed now; one ahead of it (a window
    // read live), or one the stream cannot place yet, by the consumer once the clock has
    // passed it (see `ConsumeState::place_until`).
    if let Some(Until::Time(ms)) = read.until
        && Clock::at(now_ms(), ms) == Clock::Past
        && let Some(n) = place_until(session, queue, ms, None)?
    {
        plan.until = Some(Until::Offset(n));
    }
    Ok(plan)
}

/// `--until TIME` (Unix ms), past on the broker's clock, as `--offset TIME` starts: the
/// offset of the first chunk stored at or after TIME's second. `known`: the offset of a
/// message the consumer received (so the stream holds it). None: it cannot be placed (the
/// broker sent nothing, from TIME nor from the stream's last chunk).
///
/// When nothing is stored at or after TIME, the broker attaches a consumer at TIME to the
/// stream's end and sends only what is written later. The end is then read from the last
/// chunk (to a gap of PROBE_GAP, not cut short by PROBE_TOTAL), and TIME looked up once
/// more: since TIME is past, whatever is written after the last chunk was read is stored
/// after TIME, so if the second look finds nothing either, the stream ended at the highest
/// offset read, and TIME falls right after it.
pub(super) fn place_until(
    session: &mut Session,
    queue: &str,
    ms: u64,
    known: Option<u64>,
) -> Result<Option<u64>> {
    let at = Offset::Time(ms / 1000);
    if let Some((o, _)) = consume_from(session, queue, at, |_| true)?.first {
        return Ok(Some(o));
    }
    let last = consume_from(session, queue, Offset::Last, |_| false)?;
    if let Some((o, _)) = consume_from(session, queue, at, |_| true)?.first {
        return Ok(Some(o));
    }
    Ok(match (last.highest, last.cut) {
        (Some(h), false) if known.is_none_or(|k| k <= h) => Some(h + 1),
        _ => None,
    })
}

/// Reading from `from` > 0 follows offset `from - 1`: check that the stream holds it (and,
/// when the checkpoint names the message there, that it is that message). A stream deleted
/// and declared again (offsets from 0 again), another broker's checkpoint or a wrong
/// --offset would otherwise make the run wait past every message, or read another stream
/// from its middle. Ok: the anchor the run's checkpoints keep (see [`check_message`]).
fn check_place(
    session: &mut Session,
    queue: &str,
    from: u64,
    read: &StreamRead,
) -> Result<Option<Anchor>> {
    let needed = from - 1;
    if let Some(want) = &read.checked_id {
        return check_message(session, queue, from, read, want);
    }
    let last = consume_from(session, queue, Offset::Last, |o| o >= needed)?;
    if last.arriving.is_some() {
        // Still bringing a body after PROBE_ARRIVING_MAX: where the stream ends is not
        // known, as when nothing came (below).
        return Ok(None);
    }
    match last.highest {
        Some(h) if h < needed => {
            Err(fatal(refusal(queue, read, from, &format!("it ends at offset {h}"))))
        }
        // Nothing within the wait: an empty stream, or one whose last chunk the broker does
        // not hand out at once (seen while retention truncates small segments). Not enough
        // to stop a run on: it reads on from `from`.
        _ => Ok(None),
    }
}

/// The checkpoint names the message at offset `from - 1`: check that the stream holds it
/// there. Its oldest message first: an empty stream has none (a checkpoint > 0 of another
/// stream), and one past `from - 1` means retention dropped it (the run goes on; the gap is
/// counted as skipped). Then the checkpoint's anchor (an earlier message of the replay),
/// while the stream still keeps it, and the message at `from - 1` itself: a stream deleted
/// and refilled passes only if it holds the same messages at both (so one id-less repeat
/// at `from - 1` is not enough). Ok: the anchor to keep, the checkpoint's when it is still
/// kept, else the stream's oldest message.
fn check_message(
    session: &mut Session,
    queue: &str,
    from: u64,
    read: &StreamRead,
    want: &str,
) -> Result<Option<Anchor>> {
    let needed = from - 1;
    let waited = PROBE_FIRST.as_secs();
    let first = consume_from(session, queue, Offset::First, |_| true)?;
    let Some((oldest, oldest_id)) = delivered(first, queue, read)? else {
        let why = format!(
            "it sent no message within {waited} s from its first offset (it is empty, or the \
             broker is not serving it yet: then run again)"
        );
        return Err(fatal(match &read.resumed_from {
            // Not proof that the checkpoint is wrong: RabbitMQ 3.10 may serve nothing for
            // seconds while retention drops segments. Deleting it would lose the place.
            Some(place) => format!(
                "cannot check stream '{queue}' against the checkpoint in {place} (offset \
                 {needed}): {why}; the checkpoint is kept. If the stream stays empty, it was \
                 deleted and declared again: then delete the checkpoint and give --offset"
            ),
            None => refusal(queue, read, from, &why),
        }));
    };
    let oldest = Anchor { offset: oldest, id: oldest_id };
    if oldest.offset > needed {
        return Ok(Some(oldest));
    }
    let kept = read.anchor.as_ref().filter(|a| a.offset >= oldest.offset && a.offset < needed);
    if let Some(anchor) = kept {
        let at = if anchor.offset == oldest.offset {
            Some((oldest.offset, oldest.id.clone()))
        } else {
            delivered(
                consume_from(session, queue, Offset::At(anchor.offset), |_| true)?,
                queue,
                read,
            )?
        };
        if let Some(why) =
            differs(at, anchor.offset, &anchor.id, "the first message the replay read")
        {
            return Err(fatal(refusal(queue, read, from, &why)));
        }
    }
    let at = delivered(consume_from(session, queue, Offset::At(needed), |_| true)?, queue, read)?;
    if let Some(why) = differs(at, needed, want, "the one the checkpoint names") {
        return Err(fatal(refusal(queue, read, from, &why)));
    }
    Ok(Some(kept.cloned().unwrap_or(oldest)))
}

/// The first delivery a probe saw; an error when none came because a body was still
/// arriving after PROBE_ARRIVING_MAX: a link too slow for the check, which says nothing
/// about the checkpoint (it is kept; the fix is not to delete it).
fn delivered(seen: Seen, queue: &str, read: &StreamRead) -> Result<Option<(u64, String)>> {
    match (seen.first, seen.arriving) {
        (None, Some(bytes)) => Err(fatal(still_arriving(queue, read, bytes))),
        (first, _) => Ok(first),
    }
}

/// Why a check of stream `queue` could not finish: a message was still arriving after
/// PROBE_ARRIVING_MAX, `bytes` having come.
fn still_arriving(queue: &str, read: &StreamRead, bytes: u64) -> String {
    let kept = match &read.resumed_from {
        Some(place) => format!("; the checkpoint in {place} is kept as it is"),
        None => String::new(),
    };
    format!(
        "cannot check stream '{queue}' before reading it: a message was still arriving after \
         {} s ({:.1} MiB received), the link to the broker is too slow for the check{kept}; \
         run again over a faster link",
        PROBE_ARRIVING_MAX.as_secs(),
        bytes as f64 / f64::from(1u32 << 20)
    )
}

/// Why the first delivery from offset `offset` (`got`) is not the message `want` (`what`);
/// None when it is.
fn differs(got: Option<(u64, String)>, offset: u64, want: &str, what: &str) -> Option<String> {
    let waited = PROBE_FIRST.as_secs();
    match got {
        Some((o, id)) if o == offset && id == want => None,
        Some((o, _)) if o == offset => Some(format!("its message at offset {o} is not {what}")),
        Some((o, _)) => Some(format!("it sent offset {o} for offset {offset}")),
        None => Some(format!("it ends before offset {offset} (nothing came within {waited} s)")),
    }
}

/// Why a run cannot read stream `queue` from `from`, naming where `from` came from (the
/// checkpoint, or --offset) and the fix.
pub(super) fn refusal(queue: &str, read: &StreamRead, from: u64, why: &str) -> String {
    match &read.resumed_from {
        Some(place) => format!(
            "stream '{queue}' does not hold the message the checkpoint in {place} follows \
             (offset {}): {why}; it was deleted and declared again, or the checkpoint is \
             another broker's or another stream's; delete the checkpoint and give --offset to \
             read it from where you choose",
            from - 1
        ),
        None => format!(
            "stream '{queue}' has no offset {}: {why}, so --offset {from} is past its end; give \
             a lower --offset, or first, last, next or a time",
            from - 1
        ),
    }
}

/// Consume `queue` from `at` on a channel of its own until `enough` holds for a delivery's
/// offset, or nothing more comes (PROBE_FIRST before the first delivery, PROBE_GAP after),
/// or PROBE_TOTAL has passed (PROBE_ARRIVING_MAX while a body is still arriving: see
/// [`Patience`]).
fn consume_from(
    session: &mut Session,
    queue: &str,
    at: Offset,
    enough: impl Fn(u64) -> bool,
) -> Result<Seen> {
    let ep = session.endpoint().clone();
    let doing = "checking the stream before reading it";
    let channel = session.channel()?;
    let options = ConsumerOptions { arguments: at.arguments(), ..Default::default() };
    let consumer = channel
        .qos(0, PROBE_PREFETCH, false)
        .and_then(|()| channel.basic_consume(queue, options))
        .map_err(|e| explain(e, &ep, doing))?;
    let mut seen = Seen::default();
    let mut patience = Patience::default();
    let started = std::time::Instant::now();
    let at_start = session.bytes_received();
    let ended: Option<Report> = loop {
        let wait = match patience.before_wait(started.elapsed()) {
            Step::Wait(wait) => wait,
            Step::Done => break None,
            Step::Cut => {
                seen.cut = true;
                let received = session.bytes_received().saturating_sub(at_start);
                seen.arriving = patience.arriving.then_some(received);
                break None;
            }
        };
        let before = session.bytes_received();
        match consumer.receiver().recv_timeout(wait) {
            Ok(ConsumerMessage::Delivery(d)) => {
                patience.delivered();
                if let Some(o) = position(&d) {
                    seen.first.get_or_insert_with(|| (o, identity(&d)));
                    seen.highest = seen.highest.max(Some(o));
                    if enough(o) {
                        break None;
                    }
                }
                // The next one is sent only once this is acked (PROBE_PREFETCH); a failed
                // ack shows as the channel closing.
                let _ = consumer.ack(d);
            }
            Err(RecvTimeoutError::Timeout) => {
                let bytes = session.bytes_received().saturating_sub(before);
                if patience.timed_out(bytes) == Step::Done {
                    break None;
                }
            }
            Ok(
                ConsumerMessage::ServerClosedChannel(e)
                | ConsumerMessage::ServerClosedConnection(e),
            ) => {
                break Some(explain(e, &ep, doing));
            }
            Ok(_) | Err(RecvTimeoutError::Disconnected) => {
                break Some(lost(format!(
                    "lost the connection to {} while checking stream '{queue}' before reading it",
                    ep.masked()
                )));
            }
        }
    };
    if let Some(e) = ended {
        // Nothing more is sent on this channel (see ConsumeState::consume).
        std::mem::forget(consumer);
        std::mem::forget(channel);
        return Err(e);
    }
    // The receiver outlives the channel's close (see `ConsumeState::consume`).
    let keep = consumer.receiver().clone();
    let _ = consumer.cancel();
    drop(consumer);
    let closed = channel.close().map_err(|e| explain(e, &ep, doing));
    drop(keep);
    closed.map(|()| seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(resumed_from: Option<&str>) -> StreamRead {
        StreamRead {
            start: Offset::At(5000),
            until: None,
            checkpoint: None,
            resumed_from: resumed_from.map(str::to_string),
            checked_id: None,
            anchor: None,
        }
    }

    #[test]
    fn a_probe_waits_for_the_first_delivery_then_for_gaps_and_is_cut_at_its_total() {
        let mut p = Patience::default();
        assert_eq!(p.before_wait(Duration::ZERO), Step::Wait(PROBE_FIRST));
        p.delivered();
        assert_eq!(p.before_wait(Duration::from_secs(1)), Step::Wait(PROBE_GAP));
        assert_eq!(p.before_wait(PROBE_TOTAL), Step::Cut);
        // A heartbeat is no body: the wait ends the probe.
        assert_eq!(p.timed_out(8), Step::Done);
        assert_eq!(Patience::default().timed_out(0), Step::Done);
    }

    #[test]
    fn a_body_still_arriving_is_waited_for_past_the_total_but_not_forever() {
        let mut p = Patience::default();
        assert_eq!(p.timed_out(ARRIVING_BYTES), Step::Wait(Duration::ZERO));
        assert_eq!(p.before_wait(PROBE_FIRST), Step::Wait(PROBE_FIRST));
        assert_eq!(p.before_wait(PROBE_TOTAL * 2), Step::Wait(PROBE_FIRST));
        assert_eq!(p.before_wait(PROBE_ARRIVING_MAX), Step::Cut);
        // Once it has come, the probe is back to its usual total: a steady writer of large
        // messages does not keep it reading.
        p.delivered();
        assert_eq!(p.before_wait(PROBE_TOTAL), Step::Cut);
        assert_eq!(p.timed_out(ARRIVING_BYTES - 1), Step::Done);
    }

    #[test]
    fn a_check_cut_while_a_body_arrives_keeps_the_checkpoint() {
        let seen = Seen { arriving: Some(150 << 20), cut: true, ..Seen::default() };
        let err =
            format!("{}", delivered(seen, "events", &read(Some("run.ckpt"))).expect_err("cut"));
        assert!(err.contains("still arriving") && err.contains("150.0 MiB"), "{err}");
        assert!(err.contains("is kept") && !err.contains("delete"), "{err}");
        let seen = Seen { first: Some((4, "id:x".into())), ..Seen::default() };
        assert_eq!(delivered(seen, "events", &read(None)).expect("came"), Some((4, "id:x".into())));
        assert_eq!(delivered(Seen::default(), "events", &read(None)).expect("none"), None);
    }

    #[test]
    fn a_refusal_names_where_the_offset_came_from() {
        let given = refusal("events", &read(None), 5000, "it ends at offset 9");
        assert!(given.contains("--offset 5000 is past its end"), "{given}");
        assert!(!given.contains("checkpoint"), "{given}");
        let resumed = refusal("events", &read(Some("run.ckpt")), 5000, "it ends at offset 9");
        assert!(resumed.contains("the checkpoint in run.ckpt"), "{resumed}");
        assert!(resumed.contains("delete the checkpoint"), "{resumed}");
    }
}
