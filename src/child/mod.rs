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

mod pipes;
mod waiting;

use color_eyre::eyre::{Result, WrapErr, bail};
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError, bounded};
use pipes::{Clock, Event, Expired, Turns, WriteError};
use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use pipes::STOP_GRACE;

/// Longest wait, after an answer, for the model to be back waiting for its next input
/// before the answer is taken as final anyway.
pub const SETTLE_CAP: Duration = Duration::from_secs(1);

/// How bodies and answers are delimited on the child's stdin/stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One line each way (JSON rows).
    Lines,
    /// Length-prefixed frames (any bytes: images).
    Frames,
}

/// What the child answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Publish these bytes.
    Output(Vec<u8>),
    /// An empty answer: nothing to publish for this message.
    Nothing,
}

/// Whom a failure is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The message in hand fails (to the failed queue); the next one gets a new child.
    Message,
    /// The model cannot work at all (not found, dead or talking before it was asked):
    /// retrying is pointless, the run stops and the message stays queued.
    Model,
    /// A stop signal came and the model did not finish in time: the message stays queued.
    Stopped,
}

/// Why a message failed in the child.
#[derive(Debug)]
pub struct Failure {
    /// For people and the `x-mqdemo-error` header.
    pub reason: String,
    /// What to do about it.
    pub blame: Blame,
    /// The child wrote to stdout out of turn: it would do it again, so the run stops.
    pub out_of_turn: bool,
}

impl Failure {
    fn new(reason: impl Into<String>, blame: Blame) -> Failure {
        Failure { reason: reason.into(), blame, out_of_turn: false }
    }
}

/// How a model child is run.
#[derive(Debug, Clone, Copy)]
pub struct ChildOptions {
    /// Framing on its pipes.
    pub framing: Framing,
    /// Deadline for writing one request and reading its answer.
    pub timeout: Duration,
    /// Largest answer (line or frame) accepted.
    pub max_answer: usize,
    /// Longest stderr line shown (the rest of the line is cut).
    pub max_stderr_line: usize,
}

/// Environment variables a model never sees: broker credentials.
const SECRET_ENV: [&str; 2] = ["AMQP_URL", "AMQP_URL_FILE"];

/// Process groups of running model children, killed when a second signal ends mqdemo at
/// once.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// SIGKILL every running model's process group (for an immediate exit).
pub fn kill_all() {
    let groups = GROUPS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for &g in groups.iter() {
        if let Some(pid) = rustix::process::Pid::from_raw(g) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

fn register(group: i32, on: bool) {
    let mut groups = GROUPS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if on {
        groups.push(group);
    } else {
        groups.retain(|&g| g != group);
    }
}

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
pub struct ModelChild {
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
}

impl ModelChild {
    /// A child for `command` (nothing runs until the first [`ModelChild::call`]); `stop`
    /// turns true on a stop signal.
    pub fn new(command: &str, options: ChildOptions, stop: Arc<AtomicBool>) -> ModelChild {
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
        }
    }

    /// Start the child now, so a command that cannot start fails the run before any message.
    pub fn start(&mut self) -> Result<()> {
        if self.running.is_none() {
            self.running = Some(self.spawn()?);
        }
        Ok(())
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
    pub fn call(&mut self, body: &[u8]) -> Result<Answer, Failure> {
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
            Framing::Lines => {
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
        let mut clock = Clock::new(self.options.timeout, &self.stop);
        run.turns.asked.fetch_add(1, Ordering::SeqCst);
        let written = match run.stdin.as_deref() {
            Some(stdin) => pipes::write_parts(stdin, &parts, &mut clock),
            None => Err(WriteError::Io(std::io::ErrorKind::BrokenPipe.into())),
        };
        match written {
            Ok(()) => {}
            Err(WriteError::Expired(e)) => return Err(self.expired(e, "taking the message")),
            Err(WriteError::Io(e)) => {
                return Err(self.failed(&format!("could not write to it ({e})"), false));
            }
        }
        let mut exited_at: Option<Instant> = None;
        let event = loop {
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
            Event::Answer { bytes, .. } => {
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

    /// After an answer: wait until the child has gone quiet (up to `cap`): nothing in its
    /// process tree running or asleep on a timer, so nothing more can come for that input
    /// until it is given another; output meanwhile fails it (the answer was not the whole
    /// of it). Where /proc cannot tell, only the output already there is checked.
    pub fn settled(&mut self, cap: Duration) -> Result<(), Failure> {
        if self.settle_timeouts >= SETTLE_GIVE_UP {
            return self.quiet();
        }
        let until = Instant::now() + cap;
        let mut pause = Duration::from_micros(50);
        let mut spins = 0;
        loop {
            self.quiet()?;
            let Some(run) = self.running.as_ref() else { return Ok(()) };
            if exited_within(&run.process, Duration::ZERO) {
                // What it wrote before exiting is in the pipe: one more look.
                std::thread::sleep(Duration::from_millis(20));
                return self.quiet();
            }
            match waiting::quiescent(run.process.id()) {
                // Quiet, so all it wrote is in the pipe: done once the reader has read and
                // handled all of it (then `quiet` has seen it).
                Some(true) if !run.drained() => {}
                Some(true) => {
                    self.settle_timeouts = 0;
                    return self.quiet();
                }
                None => return self.quiet(),
                Some(false) => {}
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if Instant::now() >= until {
                self.settle_timeouts += 1;
                if self.settle_timeouts == SETTLE_GIVE_UP {
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "mqdemo: the --exec model never goes quiet between inputs (something in \
                         it runs or sleeps on a timer); its answers are no longer held back \
                         for it, so keep its stdout for answers only"
                    );
                }
                return Ok(());
            }
            // A fast model is quiet within microseconds of its answer (a sleep would cost
            // the timer slack, 50 us): yield first, then sleep longer and longer.
            if spins < SETTLE_SPINS {
                spins += 1;
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(2));
            }
        }
    }

    /// Check that the child has said nothing since its last answer; else it fails (the
    /// output belongs to no input) and is stopped. Called before each request, and before
    /// the last answer is published.
    pub fn quiet(&mut self) -> Result<(), Failure> {
        let Some(run) = self.running.as_mut() else { return Ok(()) };
        let extra = match run.events.try_recv() {
            Ok(_) => true,
            Err(TryRecvError::Empty) => run.turns.partial.load(Ordering::SeqCst) > 0,
            // It closed its stdout: the next call finds out whether it exited.
            Err(TryRecvError::Disconnected) => false,
        };
        if !extra {
            return Ok(());
        }
        if self.answered == 0 {
            return Err(self.spoke_first());
        }
        Err(self.out_of_turn("it wrote more than one answer for one input: print logs to stderr"))
    }

    fn spoke_first(&mut self) -> Failure {
        let mut f = self.failed(
            "the model wrote to stdout before it was asked: print logs to stderr, stdout is \
             only for answers",
            true,
        );
        f.blame = Blame::Model;
        f
    }

    /// A child that exited between messages is restarted (this message is not to blame),
    /// unless it never answered anything: then the model cannot start at all.
    fn ensure_running(&mut self) -> Result<(), Failure> {
        if let Some(run) = self.running.as_ref() {
            if exited_within(&run.process, Duration::ZERO) {
                if self.answered == 0 {
                    let mut f = self.failed("it exited before its first message", false);
                    f.blame = Blame::Model;
                    return Err(f);
                }
                self.end_running(Some(Duration::ZERO));
            }
        }
        if self.running.is_none() {
            self.running =
                Some(self.spawn().map_err(|e| Failure::new(format!("{e:#}"), Blame::Model))?);
        }
        Ok(())
    }

    fn expired(&mut self, e: Expired, doing: &str) -> Failure {
        match e {
            Expired::Timeout => self.failed(
                &format!(
                    "no answer within {:.0} s (--exec-timeout; it was {doing})",
                    self.options.timeout.as_secs_f64()
                ),
                true,
            ),
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
    pub fn check_alive(&mut self) -> Result<(), Failure> {
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
    pub fn stop(&mut self) {
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
/// Settles in a row that reach the cap after which a child's answers are no longer held.
const SETTLE_GIVE_UP: u32 = 3;
/// Checks for a quiet model made with a yield in between before sleeping between them.
const SETTLE_SPINS: u32 = 20;
/// How long an answer may take to arrive after the child exited.
const EXITED_ANSWER_GRACE: Duration = Duration::from_millis(200);
/// How long its stderr may stay open after it exited.
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// SIGKILL the child's process group (the shell and everything it started).
fn kill_group(process: &mut Child) {
    let group = i32::try_from(process.id()).ok().and_then(rustix::process::Pid::from_raw);
    match group {
        Some(pid) => {
            if rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).is_err() {
                let _ = process.kill();
            }
        }
        None => {
            let _ = process.kill();
        }
    }
}

/// Whether `process` exits within `deadline` (it stays unreaped).
fn exited_within(process: &Child, deadline: Duration) -> bool {
    use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
    let Some(pid) = i32::try_from(process.id()).ok().and_then(Pid::from_raw) else {
        return false;
    };
    let until = std::time::Instant::now() + deadline;
    loop {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        match waitid(WaitId::Pid(pid), options) {
            Ok(Some(_)) => return true,
            Ok(None) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return false,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn child(command: &str, framing: Framing, timeout: Duration) -> ModelChild {
        let options = ChildOptions { framing, timeout, max_answer: 1 << 20, max_stderr_line: 4096 };
        ModelChild::new(command, options, Arc::new(AtomicBool::new(false)))
    }

    #[test]
    fn lines_round_trip_and_empty_answers_mean_nothing() {
        // Upper-cases each line; answers an empty line for "skip".
        let mut c = child(
            r#"while IFS= read -r l; do if [ "$l" = skip ]; then echo; else echo "$l" | tr a-z A-Z; fi; done"#,
            Framing::Lines,
            T,
        );
        assert_eq!(
            c.call(b"{\"a\":\"x\"}").expect("answer"),
            Answer::Output(b"{\"A\":\"X\"}".to_vec())
        );
        assert_eq!(c.call(b"skip").expect("answer"), Answer::Nothing);
        // Pretty JSON is sent as one line.
        assert_eq!(
            c.call(b"{\n \"b\": 1\n}").expect("answer"),
            Answer::Output(b"{\"B\":1}".to_vec())
        );
        assert!(c.call(b"two\nlines").is_err());
        assert_eq!(c.starts, 1);
    }

    #[test]
    fn a_streaming_echo_of_a_long_line_is_one_answer() {
        // `cat` writes the start of its answer before it has read the end of the request:
        // that is not speaking out of turn.
        let mut c = child("cat", Framing::Lines, T);
        let body = vec![b'x'; 300_000];
        for _ in 0..3 {
            assert_eq!(c.call(&body).expect("answer"), Answer::Output(body.clone()));
        }
        c.settled(SETTLE_CAP).expect("cat is quiet after its answer");
        assert_eq!(c.starts, 1);
    }

    #[test]
    fn a_second_line_or_a_banner_is_out_of_turn() {
        // Written right after the answer: caught with it, or by the wait for quiet.
        let mut c = child("while read l; do echo \"$l\"; echo log; done", Framing::Lines, T);
        let f = match c.call(b"a") {
            Err(f) => f,
            Ok(_) => c.settled(SETTLE_CAP).expect_err("two lines at once"),
        };
        assert!(f.out_of_turn && f.reason.contains("print logs to stderr"), "{}", f.reason);
        // Written a while after the answer, before the child reads again: caught by waiting
        // for it to be back reading its input.
        // (A model that forks for its pause, `sleep 0.1` in sh, has an instant where /proc
        // may not list the new process yet: python's own sleep is seen every time.)
        let model = "python3 -u -c 'import sys, time\nfor l in sys.stdin:\n    \
                     print(l.strip()); time.sleep(0.1); print(\"log\")'";
        let mut c = child(model, Framing::Lines, T);
        assert_eq!(c.call(b"a").expect("first line taken"), Answer::Output(b"a".to_vec()));
        let f = c.settled(SETTLE_CAP).expect_err("the second line");
        assert!(f.out_of_turn && f.reason.contains("print logs to stderr"), "{}", f.reason);
        let mut c = child("echo loaded; sleep 0.2; cat", Framing::Lines, T);
        let f = c.call(b"a").expect_err("the banner");
        assert_eq!(f.blame, Blame::Model, "{}", f.reason);
    }

    #[test]
    fn a_model_that_never_goes_quiet_is_waited_for_only_a_few_times() {
        // A background process asleep on a timer: never quiet (killed with the group).
        let mut c = child("sleep 30 & cat", Framing::Lines, T);
        for i in 0..SETTLE_GIVE_UP + 2 {
            let started = std::time::Instant::now();
            assert_eq!(c.call(b"x").expect("answer"), Answer::Output(b"x".to_vec()));
            c.settled(Duration::from_millis(300)).expect("no stray output");
            let took = started.elapsed();
            if i < SETTLE_GIVE_UP {
                assert!(took >= Duration::from_millis(300), "answer {i} not held: {took:?}");
            } else {
                assert!(took < Duration::from_millis(200), "answer {i} held {took:?}");
            }
        }
    }

    #[test]
    fn frames_carry_any_bytes() {
        let mut c = child("cat", Framing::Frames, T);
        let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        assert_eq!(c.call(&body).expect("answer"), Answer::Output(body));
    }

    #[test]
    fn a_crash_fails_the_message_with_the_reason_and_the_next_call_restarts() {
        let mut c = child(
            r#"while IFS= read -r l; do if [ "$l" = boom ]; then echo "ValueError: boom" >&2; exit 3; fi; echo ok; done"#,
            Framing::Lines,
            T,
        );
        assert_eq!(c.call(b"1").expect("answer"), Answer::Output(b"ok".to_vec()));
        let f = c.call(b"boom").expect_err("crash");
        assert!(
            f.reason.contains("exit status: 3") && f.reason.contains("ValueError: boom"),
            "{}",
            f.reason
        );
        assert_eq!(f.blame, Blame::Message);
        assert_eq!(c.call(b"2").expect("answer after restart"), Answer::Output(b"ok".to_vec()));
        assert_eq!(c.starts, 2);
    }

    #[test]
    fn a_silent_child_times_out_and_a_missing_command_is_fatal() {
        // `sleep` runs under the shell (not exec'd): the kill must reach it too, or it would
        // hold stderr open (and linger) for 30 s.
        let started = std::time::Instant::now();
        let mut c = child("sleep 30; echo never", Framing::Lines, Duration::from_millis(200));
        let f = c.call(b"x").expect_err("timeout");
        assert!(f.reason.contains("no answer within"), "{}", f.reason);
        assert!(started.elapsed() < STDERR_GRACE, "took {:?}", started.elapsed());
        let mut c = child("no-such-model-command-xyz", Framing::Lines, T);
        let f = c.call(b"x").expect_err("not found");
        assert_eq!(f.blame, Blame::Model, "{}", f.reason);
        // A model that dies at start-up (before any message) is broken, not the message.
        let mut c = child("echo 'ImportError: no numpy' >&2; exit 1", Framing::Lines, T);
        c.start().expect("sh starts");
        let until = std::time::Instant::now() + T;
        while !c.has_exited() {
            assert!(std::time::Instant::now() < until, "the model never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        let f = c.call(b"x").expect_err("died at start");
        assert!(
            f.blame == Blame::Model && f.reason.contains("before its first message"),
            "{}",
            f.reason
        );
        assert!(f.reason.contains("ImportError"), "{}", f.reason);
    }
}
