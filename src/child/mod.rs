//! The user's model as a long-running child process (`--exec CMD`, run by `sh -c`).
//!
//! Protocol, one request and one answer at a time, in order:
//! - `lines`: mqdemo writes the body and `\n`; the child writes one line back. An empty line
//!   means "no output for this message".
//! - `frames`: a 4-byte big-endian length, then that many bytes, both ways. Length 0 means
//!   "no output".
//!
//! The child is code mqdemo did not write. Output it wrote before it was asked, or more
//! than one answer per request, fails it (an answer is never taken for the wrong input);
//! every write and read has the `--exec-timeout` deadline, cut short by a stop signal; an
//! answer over `--max-answer-bytes` fails it; its stderr is shown lossily, each line cut to
//! `--max-stderr-line`. It runs in a process group of its own that is killed on every way
//! out, and without the broker's credentials in its environment.

mod group;
mod pipes;
mod settle;
#[cfg(test)]
mod tests;
mod types;
mod waiting;

pub(crate) use group::kill_all;
use group::{SECRET_ENV, exited_within, kill_group, register};
pub(crate) use types::{Answer, Blame, ChildOptions, Failure, Framing};

use color_eyre::eyre::{Result, WrapErr, bail};
use crossbeam_channel::{Receiver, RecvTimeoutError, bounded};
use pipes::{Clock, Event, Expired, Turns, WriteError};
use std::collections::VecDeque;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) use pipes::STOP_GRACE;

/// Longest wait, after an answer, for the model to be back waiting for its next input
/// before the answer is taken as final anyway.
pub(crate) const SETTLE_CAP: Duration = Duration::from_secs(1);

struct Running {
    process: Child,
    /// Non-blocking; None once closed. Shared (weakly) with the stdout reader, which looks
    /// at how much of a request is still unread.
    stdin: Option<Arc<ChildStdin>>,
    /// A second handle on the read end of its stdout, to see what the reader has not read
    /// yet (it does not keep the pipe open for the child: only write ends do).
    stdout_probe: Option<rustix::fd::OwnedFd>,
    events: Receiver<Event>,
    turns: Arc<Turns>,
    /// Disconnected once the child's stderr reached its end (every line is in the tail).
    stderr_done: Receiver<()>,
}

impl Running {
    /// Whether everything the child wrote to stdout so far has been read and handled.
    fn drained(&self) -> bool {
        let unread = self
            .stdout_probe
            .as_ref()
            .is_some_and(|fd| rustix::io::ioctl_fionread(fd).is_ok_and(|n| n > 0));
        !unread && self.turns.idle.load(Ordering::SeqCst) && self.events.is_empty()
    }
}

/// A model child, started on first use and after each failure.
pub(crate) struct ModelChild {
    command: String,
    options: ChildOptions,
    stop: Arc<AtomicBool>,
    running: Option<Running>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// Started processes so far (1 = never restarted).
    pub starts: u64,
    /// Answers received since the last start.
    answered: u64,
    /// Whether any child of this run has answered: until then, one that exits by itself
    /// cannot start (an import error, a missing file), whatever its exit status.
    ever_answered: bool,
    /// Settles in a row that ran out at the cap (the model never went quiet); past
    /// [`SETTLE_GIVE_UP`] the wait is skipped for this child.
    settle_timeouts: u32,
    /// The request handed over whose answer is not taken yet.
    asked: Option<Asked>,
    /// How long the last answer took to come.
    last_call: Duration,
}

/// A request with the child.
#[derive(Debug, Clone, Copy)]
struct Asked {
    sent: Instant,
    /// Its `--exec-timeout` deadline.
    until: Instant,
}

impl ModelChild {
    /// A child for `command` (nothing runs until the first [`ModelChild::call`]); `stop`
    /// turns true on a stop signal.
    pub(crate) fn new(command: &str, options: ChildOptions, stop: Arc<AtomicBool>) -> ModelChild {
        ModelChild {
            command: command.to_string(),
            options,
            stop,
            running: None,
            stderr_tail: Arc::new(Mutex::new(VecDeque::new())),
            starts: 0,
            answered: 0,
            ever_answered: false,
            settle_timeouts: 0,
            asked: None,
            last_call: Duration::ZERO,
        }
    }

    /// Start the child now, so a command that cannot start fails the run before any message.
    pub(crate) fn start(&mut self) -> Result<()> {
        if self.running.is_none() {
            self.running = Some(self.spawn()?);
        }
        Ok(())
    }

    /// Whether the model sits waiting for input (every task of its tree blocked on a
    /// read, a pipe or a child) while mqdemo waits for its answer.
    fn waits_for_input(&self) -> bool {
        self.running.as_ref().and_then(|r| waiting::quiescent(r.process.id())) == Some(true)
    }

    fn spawn(&mut self) -> Result<Running> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&self.command)
            // Its own process group, so a kill reaches whatever `sh -c` started too.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in SECRET_ENV {
            command.env_remove(name);
        }
        // A Python model's print() reaches the pipe at once (unless the user set otherwise).
        if std::env::var_os("PYTHONUNBUFFERED").is_none() {
            command.env("PYTHONUNBUFFERED", "1");
        }
        let mut process = command
            .spawn()
            .wrap_err_with(|| format!("cannot start --exec {:?} (is sh on PATH?)", self.command))?;
        let group = i32::try_from(process.id()).unwrap_or(0);
        register(group, true);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (process.stdin.take(), process.stdout.take(), process.stderr.take())
        else {
            let _ = process.kill();
            let _ = process.wait();
            register(group, false);
            bail!("internal: the --exec child has no pipes");
        };
        rustix::io::ioctl_fionbio(&stdin, true)
            .wrap_err("cannot make the --exec child's stdin non-blocking")?;
        let stdout_probe = rustix::io::dup(&stdout).ok();
        let stdin = Arc::new(stdin);
        let weak = Arc::downgrade(&stdin);
        let turns = Arc::new(Turns::default());
        let (tx, events) = bounded(1);
        let (framing, max) = (self.options.framing, self.options.max_answer);
        let reader_turns = Arc::clone(&turns);
        std::thread::spawn(move || {
            pipes::read_answers(stdout, &weak, framing, max, &reader_turns, &tx);
        });
        let tail = Arc::clone(&self.stderr_tail);
        let max_line = self.options.max_stderr_line;
        let (done, stderr_done) = bounded::<()>(0);
        std::thread::spawn(move || {
            let _done = done; // dropped at the end of stderr
            pipes::pump_stderr(stderr, max_line, &tail);
        });
        self.starts += 1;
        self.answered = 0;
        self.settle_timeouts = 0;
        Ok(Running { process, stdin: Some(stdin), stdout_probe, events, turns, stderr_done })
    }

    /// Hand `body` to the child and wait for its answer.
    pub(crate) fn call(&mut self, body: &[u8]) -> Result<Answer, Failure> {
        self.send(body)?;
        self.receive()
    }

    /// Hand `body` to the child; [`ModelChild::receive`] waits for its answer, which the
    /// child works on meanwhile. One request at a time: `receive` comes before the next.
    pub(crate) fn send(&mut self, body: &[u8]) -> Result<(), Failure> {
        if self.asked.is_some() {
            return Err(Failure::new(
                "internal: a request is already with the child",
                Blame::Model,
            ));
        }
        let line;
        let len;
        let parts: [&[u8]; 2] = match self.options.framing {
            Framing::Frames => {
                len = u32::try_from(body.len())
                    .map_err(|_| {
                        Failure::new(
                            "the body is over 4 GiB, more than a frame can carry",
                            Blame::Message,
                        )
                    })?
                    .to_be_bytes();
                [&len, body]
            }
            // Made whole by the caller (`codec::batch::frames_request`).
            Framing::FrameBatch(_) => [body, b""],
            Framing::Lines | Framing::LineBatch => {
                line = one_line(body).ok_or_else(|| {
                    Failure::new(
                        "the body has a line break and is not JSON; use --framing frames",
                        Blame::Message,
                    )
                })?;
                [&line[..], b"\n"]
            }
        };
        self.ensure_running()?;
        self.quiet()?;
        let Some(run) = self.running.as_mut() else {
            return Err(Failure::new("internal: no child", Blame::Model));
        };
        let sent = Instant::now();
        let mut clock = Clock::new(self.options.timeout, &self.stop);
        run.turns.asked.fetch_add(1, Ordering::SeqCst);
        let written = match run.stdin.as_deref() {
            Some(stdin) => pipes::write_parts(stdin, &parts, &mut clock),
            None => Err(WriteError::Io(std::io::ErrorKind::BrokenPipe.into())),
        };
        match written {
            Ok(()) => {
                self.asked = Some(Asked { sent, until: clock.deadline() });
                Ok(())
            }
            Err(WriteError::Expired(e)) => Err(self.expired(e, "taking the message")),
            Err(WriteError::Io(e)) => {
                Err(self.failed(&format!("could not write to it ({e})"), false))
            }
        }
    }

    /// Whether the answer to the request sent is there to take, or waiting for it is over
    /// (the child exited, the deadline passed, a stop signal): `receive` returns at once.
    pub(crate) fn answer_ready(&self) -> bool {
        let (Some(run), Some(asked)) = (self.running.as_ref(), self.asked.as_ref()) else {
            return true;
        };
        !run.events.is_empty()
            || Instant::now() >= asked.until
            || self.stop.load(Ordering::SeqCst)
            || exited_within(&run.process, Duration::ZERO)
    }

    /// How long the child took over the last answer it gave (from its request to the
    /// answer's arrival, not to when it was taken).
    pub(crate) fn last_call(&self) -> Duration {
        self.last_call
    }

    /// Wait for the answer to the request [`ModelChild::send`] handed over.
    pub(crate) fn receive(&mut self) -> Result<Answer, Failure> {
        let Some(asked) = self.asked.take() else {
            return Err(Failure::new("internal: no request is with the child", Blame::Model));
        };
        let answer = self.wait_answer(asked);
        if answer.is_err() {
            self.last_call = asked.sent.elapsed();
        }
        answer
    }

    fn wait_answer(&mut self, asked: Asked) -> Result<Answer, Failure> {
        let Some(run) = self.running.as_mut() else {
            return Err(Failure::new("internal: no child", Blame::Model));
        };
        let mut clock = Clock::until(asked.until, &self.stop);
        let mut exited_at: Option<Instant> = None;
        let event = loop {
            // An answer that came within the deadline counts, however late it is taken (the
            // stage may have been publishing the batch before, held up by the broker).
            match run.events.try_recv() {
                Ok(event @ Event::Answer { at, .. }) if at <= asked.until => break event,
                Ok(event @ Event::Broken(_)) => break event,
                Ok(_) => return Err(self.expired(Expired::Timeout, "answering")),
                Err(_) => {}
            }
            let wait = match clock.slice() {
                Ok(wait) => wait,
                Err(e) => return Err(self.expired(e, "answering")),
            };
            match run.events.recv_timeout(wait) {
                Ok(event) => break event,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.failed("it closed its stdout", false));
                }
            }
            // Exited without answering, while something it started still holds its stdout
            // open: said now, not at the timeout (after a moment for a last answer).
            if exited_at.is_none() && exited_within(&run.process, Duration::ZERO) {
                exited_at = Some(Instant::now());
            }
            if exited_at.is_some_and(|at| at.elapsed() > EXITED_ANSWER_GRACE) {
                return Err(self.failed("it exited without answering", false));
            }
        };
        match event {
            Event::Answer { early: true, .. } if self.answered == 0 => Err(self.spoke_first()),
            Event::Answer { early: true, .. } => Err(self.out_of_turn(
                "it wrote to stdout before it had taken this input (a line more than one per \
                 input): print logs to stderr",
            )),
            Event::Answer { trailing: true, .. } => Err(self
                .out_of_turn("it wrote more than one answer for this input: print logs to stderr")),
            Event::Answer { bytes, at, .. } => {
                self.last_call = at.saturating_duration_since(asked.sent);
                self.answered += 1;
                self.ever_answered = true;
                Ok(if bytes.is_empty() { Answer::Nothing } else { Answer::Output(bytes) })
            }
            Event::Broken(why) => Err(self.out_of_turn(&why)),
        }
    }

    /// The child broke the one-answer-per-input rule: it is stopped.
    fn out_of_turn(&mut self, what: &str) -> Failure {
        let mut f = self.failed(what, true);
        f.out_of_turn = true;
        f
    }

    /// A child that exited between messages is restarted (this message is not to blame),
    /// unless it never answered anything: then the model cannot start at all.
    fn ensure_running(&mut self) -> Result<(), Failure> {
        if let Some(run) = self.running.as_ref()
            && exited_within(&run.process, Duration::ZERO)
        {
            if self.answered == 0 {
                let mut f = self.failed("it exited before its first message", false);
                f.blame = Blame::Model;
                return Err(f);
            }
            self.end_running(Some(Duration::ZERO));
        }
        if self.running.is_none() {
            self.running =
                Some(self.spawn().map_err(|e| Failure::new(format!("{e:#}"), Blame::Model))?);
        }
        Ok(())
    }

    fn expired(&mut self, e: Expired, doing: &str) -> Failure {
        match e {
            Expired::Timeout => {
                let hint = if doing == "answering" && self.waits_for_input() {
                    BUFFERING_HINT
                } else {
                    ""
                };
                self.failed(
                    &format!(
                        "no answer within {} s (--exec-timeout; it was {doing}){hint}",
                        self.options.timeout.as_secs_f64()
                    ),
                    true,
                )
            }
            Expired::Stopped => {
                let mut f = self.failed(
                    &format!(
                        "stopped by a signal; it did not finish within {} s",
                        STOP_GRACE.as_secs()
                    ),
                    true,
                );
                f.blame = Blame::Stopped;
                f
            }
        }
    }

    /// The child failed on the message in hand: stop it (at once if `kill`, else once it has
    /// exited, killing it only past [`EXIT_GRACE`]) and say why, with its exit status and
    /// last stderr line. The next call starts a new one.
    fn failed(&mut self, what: &str, kill: bool) -> Failure {
        if self.running.is_none() {
            return Failure::new(format!("the --exec child failed: {what}"), Blame::Message);
        }
        let status = self.end_running(if kill { None } else { Some(EXIT_GRACE) });
        let last = self.stderr_tail.lock().map(|t| t.back().cloned()).unwrap_or(None);
        let code = status.and_then(|s| s.code());
        let mut reason = match status {
            Some(s) => format!("the --exec child failed: {what}; it exited with {s}"),
            None => format!("the --exec child failed: {what}; it was killed"),
        };
        if let Some(l) = last {
            reason.push_str(&format!(": {l}"));
        }
        // sh's "command not found" / "not executable", or a model that ended by itself
        // before it ever answered (an import error, a missing script): no message can
        // succeed, and none is to blame.
        let cannot_start =
            matches!(code, Some(126 | 127)) || (status.is_some() && !self.ever_answered);
        Failure::new(reason, if cannot_start { Blame::Model } else { Blame::Message })
    }

    /// End the running child: close its stdin, give it `grace` to exit (None: kill at
    /// once), then kill its whole process group (what it started may outlive it) and reap
    /// it. Its exit status if it exited by itself.
    fn end_running(&mut self, grace: Option<Duration>) -> Option<std::process::ExitStatus> {
        // A request with it goes unanswered: the next one starts afresh.
        self.asked = None;
        let mut run = self.running.take()?;
        drop(run.stdin.take());
        let exited = grace.is_some_and(|g| exited_within(&run.process, g));
        // The leader is not reaped yet, so its group id cannot have been reused.
        kill_group(&mut run.process);
        let status = run.process.wait().ok();
        register(i32::try_from(run.process.id()).unwrap_or(0), false);
        // Its last words: the stderr pump ends when the pipe closes (bounded, in case
        // something outside the group still holds it open).
        let _ = run.stderr_done.recv_timeout(STDERR_GRACE);
        if exited { status } else { None }
    }

    /// Between messages: a model that ended by itself before it ever answered cannot start
    /// (the run stops now rather than wait for a message to fail on); one that ended after
    /// answering is started again when the next message comes.
    pub(crate) fn check_alive(&mut self) -> Result<(), Failure> {
        let exited =
            self.running.as_ref().is_some_and(|r| exited_within(&r.process, Duration::ZERO));
        if exited && !self.ever_answered {
            let mut f = self.failed("it exited before its first message", false);
            f.blame = Blame::Model;
            return Err(f);
        }
        Ok(())
    }

    /// Close the child's stdin and wait for it to end (killed past [`EXIT_GRACE`]).
    pub(crate) fn stop(&mut self) {
        self.end_running(Some(EXIT_GRACE));
    }

    /// Whether the running child has exited by now (for tests).
    #[cfg(test)]
    fn has_exited(&mut self) -> bool {
        // Without reaping it: the child's own checks look with waitid(WNOWAIT).
        self.running.as_ref().is_some_and(|r| exited_within(&r.process, Duration::ZERO))
    }
}

/// How long a child whose stdin closed (or that closed its stdout) may take to exit.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Said when a model times out while it waits for input: its answer is most likely
/// sitting in its own output buffer (stdout to a pipe is block-buffered by default).
const BUFFERING_HINT: &str = "; it is waiting for input, so its answer may be stuck in its \
     output buffer: make it flush each answer line (Python: print(..., flush=True) or \
     PYTHONUNBUFFERED=1, which mqdemo sets; awk: fflush(); jq: --unbuffered; sed: -u; \
     Node: process.stdout.write; others: stdbuf -oL CMD)";
/// Settles in a row that reach the cap after which a child's answers are no longer held.
const SETTLE_GIVE_UP: u32 = 3;
/// Checks for a quiet model made with a yield in between before sleeping between them.
const SETTLE_SPINS: u32 = 20;
/// How long an answer may take to arrive after the child exited.
const EXITED_ANSWER_GRACE: Duration = Duration::from_millis(200);
/// How long its stderr may stay open after it exited.
const STDERR_GRACE: Duration = Duration::from_secs(1);

impl Drop for ModelChild {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The body as one line: as is without line breaks; JSON with them is re-serialised
/// compactly; None for other multi-line bodies.
fn one_line(body: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if !body.contains(&b'\n') && !body.contains(&b'\r') {
        return Some(std::borrow::Cow::Borrowed(body));
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    serde_json::to_vec(&v).ok().map(std::borrow::Cow::Owned)
}
