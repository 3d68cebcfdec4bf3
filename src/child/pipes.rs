//! The three pipes to a model child: answers read off its stdout (bounded, and stamped so
//! that output the child wrote before it was asked is told apart from an answer), its
//! stderr shown line by line (bytes, lossily decoded, capped), and requests written to its
//! stdin under a deadline that a stop signal shortens.

use super::Framing;
use crate::codec::batch::FramesSplit;
use crossbeam_channel::Sender;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStderr, ChildStdin, ChildStdout};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

/// What the stdout reader saw.
#[derive(Debug)]
pub(super) enum Event {
    /// One whole answer.
    Answer {
        bytes: Vec<u8>,
        /// Its first byte was read before the request it would answer was written, or it
        /// ended while that request was still unread in the pipe: the child spoke out of
        /// turn (a log line on stdout, a banner, a second answer).
        early: bool,
        /// More bytes followed it at once, though nothing more had been asked.
        trailing: bool,
        /// When it was read.
        at: Instant,
    },
    /// The output cannot be an answer (too long, cut off, unreadable); the reader stopped.
    Broken(String),
}

/// Shared between the reader thread and the caller.
#[derive(Debug, Default)]
pub(super) struct Turns {
    /// Requests the caller has started to write (incremented before the write).
    pub asked: AtomicU64,
    /// Bytes read that are not yet a whole answer.
    pub partial: AtomicUsize,
    /// The reader is between reads with everything it read handled (answers sent).
    pub idle: AtomicBool,
}

impl Turns {
    /// Whether bytes of the request last asked are still unread in the pipe: the child has
    /// not taken it yet. (Not "still being written": the child may answer before our write
    /// call returns. A child that answers a request it read only in part is caught by the
    /// count instead: its real answer comes as one too many.) Weak: the reader must not keep
    /// the child's stdin open once the caller closed it.
    fn untaken(stdin: &Weak<ChildStdin>) -> bool {
        stdin.upgrade().is_some_and(|s| rustix::io::ioctl_fionread(&*s).is_ok_and(|n| n > 0))
    }
}

/// How much stdout is read at a time.
const CHUNK: usize = 64 * 1024;

/// Read answers off `out` until it ends, the receiver goes away, or an answer breaks the
/// framing or the size limit (`max` bytes).
pub(super) fn read_answers(
    mut out: ChildStdout,
    stdin: &Weak<ChildStdin>,
    framing: Framing,
    max: usize,
    turns: &Turns,
    tx: &Sender<Event>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    // Answers taken so far, and `asked` when the first byte of the one at the head of
    // `buf` was read.
    let mut answers: u64 = 0;
    let mut head_asked: u64 = 0;
    // Bytes of `buf` already searched for a line break.
    let mut scanned = 0;
    loop {
        turns.idle.store(true, Ordering::SeqCst);
        let got = out.read(&mut chunk);
        turns.idle.store(false, Ordering::SeqCst);
        let n = match got {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Event::Broken(format!("its stdout could not be read ({e})")));
                return;
            }
        };
        // Read after the bytes arrived: a byte that came in while `asked` was below an
        // answer's number was surely written before that request was.
        let asked = turns.asked.load(Ordering::SeqCst);
        // An answer that ends while its request is still unread in the pipe cannot be its
        // answer (one that only starts early may be: `cat` echoes as it reads).
        let untaken = Turns::untaken(stdin);
        if buf.is_empty() {
            head_asked = asked;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (body, used) = match split(&buf, framing, max, &mut scanned) {
                Split::Need => break,
                Split::TooLong(why) => {
                    turns.partial.store(buf.len(), Ordering::SeqCst);
                    let _ = tx.send(Event::Broken(why));
                    return;
                }
                Split::Answer { body, used } => (body, used),
            };
            answers += 1;
            let bytes = buf[body].to_vec();
            buf.drain(..used);
            scanned = 0;
            let early = head_asked < answers || untaken;
            let trailing = !buf.is_empty() || rustix::io::ioctl_fionread(&out).is_ok_and(|n| n > 0);
            // What is left came in the read just made.
            head_asked = asked;
            turns.partial.store(buf.len(), Ordering::SeqCst);
            if tx.send(Event::Answer { bytes, early, trailing, at: Instant::now() }).is_err() {
                return;
            }
        }
        turns.partial.store(buf.len(), Ordering::SeqCst);
    }
    if !buf.is_empty() {
        let _ = tx.send(Event::Broken(format!(
            "its output ended inside an answer ({} bytes with no {})",
            buf.len(),
            match framing {
                Framing::Lines | Framing::LineBatch => "line break",
                Framing::Frames => "complete frame",
                Framing::FrameBatch(_) => "complete batch of frames",
            }
        )));
    }
}

enum Split {
    Need,
    TooLong(String),
    Answer { body: std::ops::Range<usize>, used: usize },
}

/// The answer at the head of `buf`, if whole.
fn split(buf: &[u8], framing: Framing, max: usize, scanned: &mut usize) -> Split {
    match framing {
        Framing::Lines | Framing::LineBatch => match memchr::memchr(b'\n', &buf[*scanned..]) {
            Some(i) => {
                let end = *scanned + i;
                if end > max {
                    return too_long(end, max, framing);
                }
                let body = if end > 0 && buf[end - 1] == b'\r' { end - 1 } else { end };
                Split::Answer { body: 0..body, used: end + 1 }
            }
            None if buf.len() > max => too_long(buf.len(), max, framing),
            None => {
                *scanned = buf.len();
                Split::Need
            }
        },
        Framing::Frames => {
            let Some(len) = buf.get(..4) else { return Split::Need };
            let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if n > max {
                return Split::TooLong(format!(
                    "it announced an answer frame of {n} bytes, over --max-answer-bytes {max}"
                ));
            }
            if buf.len() < 4 + n {
                return Split::Need;
            }
            Split::Answer { body: 4..4 + n, used: 4 + n }
        }
        Framing::FrameBatch(count) => match crate::codec::batch::frames_split(buf, count, max) {
            FramesSplit::Need => Split::Need,
            FramesSplit::TooLong(why) => Split::TooLong(why),
            FramesSplit::Whole(used) => Split::Answer { body: 0..used, used },
        },
    }
}

fn too_long(n: usize, max: usize, framing: Framing) -> Split {
    Split::TooLong(match framing {
        Framing::LineBatch => format!(
            "its answer line to a batch reached {n}+ bytes, over --max-answer-bytes {max}, which \
             bounds the whole line of a json-batch answer: raise --max-answer-bytes or lower \
             --batch-size"
        ),
        _ => format!(
            "it wrote {n}+ bytes without a line break, over --max-answer-bytes {max} (one answer \
             per line; print logs to stderr)"
        ),
    })
}

/// Show the child's stderr on ours, line by line, each cut to `max_line` bytes; keep the
/// last few lines in `tail` to explain a failure.
pub(super) fn pump_stderr(err: ChildStderr, max_line: usize, tail: &Mutex<VecDeque<String>>) {
    let mut r = BufReader::with_capacity(CHUNK, err);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = 0usize;
    loop {
        let buf = match r.fill_buf() {
            Ok([]) => break,
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (take, end) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        let room = max_line.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        cut += take.saturating_sub(room);
        r.consume(take + usize::from(end));
        if end {
            show(&mut line, &mut cut, tail);
        }
    }
    if !line.is_empty() || cut > 0 {
        show(&mut line, &mut cut, tail);
    }
}

/// Lines of the child's stderr kept to explain a failure.
const STDERR_TAIL: usize = 5;

fn show(line: &mut Vec<u8>, cut: &mut usize, tail: &Mutex<VecDeque<String>>) {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(line).into_owned();
    if *cut > 0 {
        text.push_str(&format!(" [{} more bytes cut]", *cut));
    }
    // Never panic on a closed stderr of our own.
    let _ = writeln!(std::io::stderr().lock(), "{text}");
    let mut t = tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if t.len() == STDERR_TAIL {
        t.pop_front();
    }
    t.push_back(text);
    line.clear();
    *cut = 0;
}

/// Why waiting on the child ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    /// --exec-timeout passed.
    Timeout,
    /// A stop signal came and the grace after it passed.
    Stopped,
}

/// How long a model may go on with the message in hand after a stop signal.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest single wait, so a stop signal is seen promptly.
const SLICE: Duration = Duration::from_millis(50);

/// One request's deadline: `--exec-timeout` from the start, cut to [`STOP_GRACE`] after a
/// stop signal.
pub(super) struct Clock<'a> {
    until: Instant,
    stop: &'a AtomicBool,
    stopped_until: Option<Instant>,
}

impl<'a> Clock<'a> {
    pub(super) fn new(timeout: Duration, stop: &'a AtomicBool) -> Clock<'a> {
        Clock::until(Instant::now() + timeout, stop)
    }

    /// A clock that runs out at `until` (a request's deadline set when it was written).
    pub(super) fn until(until: Instant, stop: &'a AtomicBool) -> Clock<'a> {
        Clock { until, stop, stopped_until: None }
    }

    /// When it runs out (without a stop signal).
    pub(super) fn deadline(&self) -> Instant {
        self.until
    }

    /// How long the next wait may be; an error once the deadline has passed.
    pub(super) fn slice(&mut self) -> Result<Duration, Expired> {
        let now = Instant::now();
        if self.stop.load(Ordering::SeqCst) {
            let until = *self.stopped_until.get_or_insert(now + STOP_GRACE);
            if now >= until {
                return Err(Expired::Stopped);
            }
        }
        if now >= self.until {
            return Err(Expired::Timeout);
        }
        let until = self.stopped_until.map_or(self.until, |s| s.min(self.until));
        Ok(until.saturating_duration_since(now).min(SLICE).max(Duration::from_millis(1)))
    }
}

/// Why a write to the child failed.
#[derive(Debug)]
pub(super) enum WriteError {
    Expired(Expired),
    Io(std::io::Error),
}

/// Write `parts` to the child's stdin (non-blocking), waiting for room with `poll` so the
/// deadline holds even when the child does not read.
pub(super) fn write_parts(
    stdin: &ChildStdin,
    parts: &[&[u8]],
    clock: &mut Clock<'_>,
) -> Result<(), WriteError> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut w = stdin;
    for part in parts {
        let mut rest: &[u8] = part;
        while !rest.is_empty() {
            match w.write(rest) {
                Ok(0) => return Err(WriteError::Io(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let wait = clock.slice().map_err(WriteError::Expired)?;
                    let ts = Timespec {
                        tv_sec: 0,
                        tv_nsec: i64::from(wait.subsec_nanos()).min(999_999_999),
                    };
                    let mut fds = [PollFd::new(stdin, PollFlags::OUT)];
                    match poll(&mut fds, Some(&ts)) {
                        Ok(_) | Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(WriteError::Io(e.into())),
                    }
                }
                Err(e) => return Err(WriteError::Io(e)),
            }
        }
    }
    Ok(())
}
