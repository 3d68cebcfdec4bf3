//! Reading a stream queue: where a consumer starts (`x-stream-offset`), where a replay
//! stops (`--until`), and where a consumer that lost its channel picks up again.

use amiquip::{AmqpValue, FieldTable};

use crate::codec::STREAM_OFFSET as OFFSET_HEADER;

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The oldest message the stream still holds.
    First,
    /// The last chunk written.
    Last,
    /// Only messages written from now on.
    Next,
    /// This offset (or the oldest one kept, when retention dropped it).
    At(u64),
    /// The first chunk the broker stored at or after this Unix time, in seconds.
    Time(u64),
}

impl Offset {
    /// The consumer argument.
    fn value(self) -> AmqpValue {
        let long = |n: u64| AmqpValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        match self {
            Offset::First => AmqpValue::LongString("first".into()),
            Offset::Last => AmqpValue::LongString("last".into()),
            Offset::Next => AmqpValue::LongString("next".into()),
            Offset::At(n) => long(n),
            Offset::Time(secs) => AmqpValue::Timestamp(secs),
        }
    }

    /// `basic.consume` arguments that start reading here.
    pub(super) fn arguments(self) -> FieldTable {
        let mut args = FieldTable::new();
        args.insert(OFFSET_HEADER.to_string(), self.value());
        args
    }
}

/// Where a replay stops: before the first message at or past this point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// A stream offset.
    Offset(u64),
    /// A Unix time in milliseconds on the broker's clock (fractions of a second are dropped,
    /// as for [`Offset::Time`]), not placed in the stream yet: a delivery received while our
    /// clock is before it was stored before it; once the clock has passed it, the consumer
    /// makes it an [`Until::Offset`] (see [`Clock`]).
    Time(u64),
}

/// How far the broker's clock may be from ours: a time counts as not reached on the broker
/// while ours is this much before it, and as past only once ours is this much after it.
pub(super) const CLOCK_SKEW_MS: u64 = 1000;

/// Our clock against an `--until` time not placed in the stream yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Clock {
    /// Not reached on the broker's clock either: what is received now was stored before it.
    Before,
    /// Within [`CLOCK_SKEW_MS`] of it: wait.
    Near,
    /// Past on the broker's clock too: what is stored from now on is at or after it.
    Past,
}

impl Clock {
    /// Where `now_ms` (ours) is against `--until` `ms` (its whole second, as the broker
    /// places times).
    pub(super) fn at(now_ms: u64, ms: u64) -> Clock {
        let second = ms / 1000 * 1000;
        if now_ms.saturating_add(CLOCK_SKEW_MS) < second {
            Clock::Before
        } else if now_ms < second.saturating_add(CLOCK_SKEW_MS) {
            Clock::Near
        } else {
            Clock::Past
        }
    }
}

/// Our clock now, in Unix milliseconds.
pub(super) fn now_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A message a replay read from a stream before its checkpoint (the first it read, kept
/// while retention keeps it): a resumed run checks that the stream still holds it there,
/// besides the message at the checkpoint itself, so that a stream deleted and refilled is
/// not taken for the old one because one message (an id-less repeat) is alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Its stream offset.
    pub offset: u64,
    /// Its identity (see [`identity`]).
    pub id: String,
}

/// What a checkpoint keeps of the stream besides its offset, for a resumed run to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The identity of the message at the checkpoint's offset (see [`identity`]).
    pub id: String,
    /// An earlier message of the same replay, when one was read.
    pub anchor: Option<Anchor>,
}

/// Keeps a stream reader's place: told the offset of the newest acked message after each
/// ack (a checkpoint file).
pub trait Checkpointer: Send + Sync {
    /// Every message up to `offset` is handled durably and acked; `mark` identifies the
    /// message at `offset` (and the replay's anchor), for a resumed run to check them.
    fn save(&self, offset: u64, mark: &Identity) -> color_eyre::eyre::Result<()>;
    /// A first run starts at `start` (`last` resolved to the offset of the last chunk when
    /// the stream has one), checked against the stream, before it reads anything: keep it so
    /// that a run that acks nothing does not make the next one skip anything.
    fn save_start(&self, _start: Offset) -> color_eyre::eyre::Result<()> {
        Ok(())
    }
}

/// How a stream is read: where to start, where to stop, and where to keep the place.
pub struct StreamRead {
    /// Where the first consumer starts.
    pub start: Offset,
    /// Stop before the first message at or past this point.
    pub until: Option<Until>,
    /// Saved after each ack.
    pub checkpoint: Option<Box<dyn Checkpointer>>,
    /// `start` comes from the checkpoint in this place (shown in errors); None: from
    /// --offset (or `next`), a first run, whose start is saved once the stream is checked.
    pub resumed_from: Option<String>,
    /// The identity of the message right before `start` (the checkpoint's), when known: a
    /// resumed run checks that the stream still holds it there.
    pub checked_id: Option<String>,
    /// The checkpoint's anchor (with `checked_id`): checked too, while retention keeps it.
    pub anchor: Option<Anchor>,
}

/// Where a stream consumer is: what a new consumer (after a change of prefetch, or a
/// reconnect) must start from so that nothing is skipped and little is read twice.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cursor {
    /// The first offset received on this connection (nothing acked yet: start there again).
    pub first: Option<u64>,
    /// The newest offset received.
    pub received: Option<u64>,
    /// The newest offset acked (its message, and all before it, are handled durably).
    pub acked: Option<u64>,
    /// When (Unix seconds) the first consumer started at `next` or `last`: a consumer that
    /// must start again before it received anything starts at that time, so what was written
    /// while it was away is read (a message or two of that second may come twice).
    pub since: Option<u64>,
}

impl Cursor {
    /// A new consumer on the same channel, every delivery of the old one handled: right
    /// after the newest received.
    pub(super) fn same_channel(&self, start: Offset) -> Offset {
        match (self.received, self.since) {
            (Some(o), _) => Offset::At(o + 1),
            (None, Some(t)) => Offset::Time(t),
            (None, None) => start,
        }
    }

    /// A consumer starts at `start`: remember when, if `start` moves with the clock.
    pub(super) fn starting(&mut self, start: Offset) {
        if matches!(start, Offset::Next | Offset::Last) && self.since.is_none() {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            self.since = now.ok().map(|d| d.as_secs());
        }
    }

    /// A consumer on a new connection: right after the newest acked message (what was
    /// received but not acked comes again and is dropped by message id, or handled then).
    pub(super) fn new_connection(&self, start: Offset) -> Offset {
        match (self.acked, self.first, self.since) {
            (Some(o), _, _) => Offset::At(o + 1),
            (None, Some(o), _) => Offset::At(o),
            (None, None, Some(t)) => Offset::Time(t),
            (None, None, None) => start,
        }
    }
}

/// A delivery's stream offset.
pub(super) fn position(d: &amiquip::Delivery) -> Option<u64> {
    d.properties.headers().as_ref().and_then(|h| match h.get(OFFSET_HEADER) {
        Some(AmqpValue::LongLongInt(n)) => u64::try_from(*n).ok(),
        Some(AmqpValue::LongInt(n)) => u64::try_from(*n).ok(),
        Some(AmqpValue::LongUInt(n)) => Some(u64::from(*n)),
        _ => None,
    })
}

/// What identifies a delivery in a checkpoint: its `message_id`, else a hash of its body.
pub(super) fn identity(d: &amiquip::Delivery) -> String {
    match d.properties.message_id() {
        Some(id) => format!("id:{id}"),
        None => format!("sha256:{}", &crate::codec::sha256_hex(&d.body)[..32]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_until_time_is_placed_only_once_it_is_past_on_the_brokers_clock_too() {
        let t = 1_700_000_000_000;
        assert_eq!(Clock::at(t - 1001, t), Clock::Before);
        assert_eq!(Clock::at(t - 1000, t), Clock::Near);
        assert_eq!(Clock::at(t + 999, t), Clock::Near);
        assert_eq!(Clock::at(t + 1000, t), Clock::Past);
        // 11:00:00.5 is placed as 11:00:00 (fractions dropped, as for --offset).
        assert_eq!(Clock::at(t + 1000, t + 500), Clock::Past);
        assert_eq!(Clock::at(t - 1001, t + 999), Clock::Before);
        assert_eq!(Clock::at(0, u64::MAX), Clock::Before);
        assert_eq!(Clock::at(u64::MAX, 0), Clock::Past);
    }

    #[test]
    fn a_cursor_resumes_after_what_was_handled() {
        let fresh = Cursor::default();
        assert_eq!(fresh.same_channel(Offset::First), Offset::First);
        assert_eq!(fresh.new_connection(Offset::Next), Offset::Next);
        let got = Cursor { first: Some(5), received: Some(9), acked: None, since: None };
        assert_eq!(got.same_channel(Offset::First), Offset::At(10));
        assert_eq!(got.new_connection(Offset::First), Offset::At(5));
        let acked = Cursor { acked: Some(7), ..got };
        assert_eq!(acked.new_connection(Offset::First), Offset::At(8));
        let mut waiting = Cursor::default();
        waiting.starting(Offset::First);
        assert_eq!(waiting.since, None, "first does not move with the clock");
        waiting.starting(Offset::Next);
        let t = waiting.since.expect("the time it started at next");
        assert_eq!(waiting.new_connection(Offset::Next), Offset::Time(t));
        assert_eq!(waiting.same_channel(Offset::Next), Offset::Time(t));
    }
}
