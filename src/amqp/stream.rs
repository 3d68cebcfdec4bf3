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
    /// A Unix time in milliseconds, compared with each message's `timestamp` property
    /// (seconds: a message stamped in the second that holds this time is past it only from
    /// that second on, see [`Until::reached`]).
    Time(u64),
}

impl Until {
    /// Whether a message at `offset` with `timestamp` (seconds) is at or past this point;
    /// Err: it cannot tell (a message without a timestamp, against a time).
    pub fn reached(self, offset: Option<u64>, timestamp: Option<u64>) -> Result<bool, String> {
        match self {
            Until::Offset(n) => match offset {
                Some(o) => Ok(o >= n),
                None => Err("a message came without an x-stream-offset header".into()),
            },
            // Stamped in whole seconds: at or past the time only when its whole second is
            // (a message stamped 10:59:59 may have been sent at 10:59:59.9, before 11:00:00;
            // one stamped 11:00:00 was sent at or after it).
            Until::Time(ms) => match timestamp {
                Some(secs) => Ok(secs.saturating_mul(1000) >= ms.div_ceil(1000) * 1000),
                None => Err(format!(
                    "the message at offset {} has no timestamp property, so --until cannot \
                     place it in time; its producer should set one (mqdemo's producers do), \
                     or stop at an offset with --until offset:N",
                    offset.map_or_else(|| "?".to_string(), |o| o.to_string())
                )),
            },
        }
    }
}

/// Keeps a stream reader's place: told the offset of the newest acked message after each
/// ack (a checkpoint file).
pub trait Checkpointer: Send + Sync {
    /// Every message up to `offset` is handled durably and acked; `id` is the identity of
    /// the message at `offset` (see [`identity`]), for a resumed run to check it.
    fn save(&self, offset: u64, id: &str) -> color_eyre::eyre::Result<()>;
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

/// A delivery's stream offset and `timestamp` property (seconds).
pub(super) fn position(d: &amiquip::Delivery) -> (Option<u64>, Option<u64>) {
    let offset = d.properties.headers().as_ref().and_then(|h| match h.get(OFFSET_HEADER) {
        Some(AmqpValue::LongLongInt(n)) => u64::try_from(*n).ok(),
        Some(AmqpValue::LongInt(n)) => u64::try_from(*n).ok(),
        Some(AmqpValue::LongUInt(n)) => Some(u64::from(*n)),
        _ => None,
    });
    (offset, *d.properties.timestamp())
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
    fn until_an_offset_is_exclusive() {
        let u = Until::Offset(10);
        assert_eq!(u.reached(Some(9), None), Ok(false));
        assert_eq!(u.reached(Some(10), None), Ok(true));
        assert!(u.reached(None, Some(1)).is_err());
    }

    #[test]
    fn until_a_time_counts_whole_seconds() {
        let u = Until::Time(1_700_000_000_000);
        assert_eq!(u.reached(Some(1), Some(1_699_999_999)), Ok(false));
        assert_eq!(u.reached(Some(1), Some(1_700_000_000)), Ok(true));
        // 11:00:00.5: a message stamped 11:00:00 may be from 11:00:00.2, before it.
        let half = Until::Time(1_700_000_000_500);
        assert_eq!(half.reached(Some(1), Some(1_700_000_000)), Ok(false));
        assert_eq!(half.reached(Some(1), Some(1_700_000_001)), Ok(true));
        let err = u.reached(Some(7), None).expect_err("no timestamp");
        assert!(err.contains("offset 7") && err.contains("offset:N"), "{err}");
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
