//! The user's model as a long-running child process (`--exec CMD`, run by `sh -c`).
//!
//! Protocol, one request and one answer at a time, in order:
//! - `lines`: mqdemo writes the body and `\n`; the child writes one line back. An empty line
//!   means "no output for this message".
//! - `frames`: a 4-byte big-endian length, then that many bytes, both ways. Length 0 means
//!   "no output".
//!
//! The child's stderr passes through to ours (its last lines also explain a crash). A child
//! that exits, or does not answer within the timeout, fails the message in hand and is
//! started again for the next one.

use color_eyre::eyre::{Result, WrapErr, bail};
use crossbeam_channel::{Receiver, RecvTimeoutError, bounded};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Why a message failed in the child.
#[derive(Debug)]
pub struct Failure {
    /// For people and the `x-mqdemo-error` header.
    pub reason: String,
    /// The command cannot run at all (not found, not executable): retrying is pointless.
    pub fatal: bool,
}

/// Largest answer frame accepted from a child (the broker's own message size limit).
const MAX_FRAME: u32 = 128 << 20;
/// Lines of the child's stderr kept to explain a crash.
const STDERR_TAIL: usize = 5;

struct Running {
    process: Child,
    stdin: BufWriter<ChildStdin>,
    answers: Receiver<std::io::Result<Vec<u8>>>,
    /// Disconnected once the child's stderr reached its end (every line is in the tail).
    stderr_done: Receiver<()>,
}

/// A model child, started on first use and after each failure.
pub struct ModelChild {
    command: String,
    framing: Framing,
    timeout: Duration,
    running: Option<Running>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// Started processes so far (1 = never restarted).
    pub starts: u64,
    /// Answers received since the last start.
    answered: u64,
}

impl ModelChild {
    /// A child for `command` (nothing runs until the first [`ModelChild::call`]).
    pub fn new(command: &str, framing: Framing, timeout: Duration) -> ModelChild {
        ModelChild {
            command: command.to_string(),
            framing,
            timeout,
            running: None,
            stderr_tail: Arc::new(Mutex::new(VecDeque::new())),
            starts: 0,
            answered: 0,
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
        let mut process = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            // Its own process group, so a kill reaches whatever `sh -c` started too.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .wrap_err_with(|| format!("cannot start --exec {:?} (is sh on PATH?)", self.command))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (process.stdin.take(), process.stdout.take(), process.stderr.take())
        else {
            bail!("internal: the --exec child has no pipes");
        };
        let (tx, answers) = bounded(1);
        let framing = self.framing;
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(256 * 1024, stdout);
            loop {
                let answer = read_answer(&mut reader, framing);
                let end = !matches!(answer, Ok(Some(_)));
                let sent = match answer {
                    Ok(Some(bytes)) => tx.send(Ok(bytes)),
                    Ok(None) => break,
                    Err(e) => tx.send(Err(e)),
                };
                if end || sent.is_err() {
                    break;
                }
            }
        });
        let tail = Arc::clone(&self.stderr_tail);
        let (done, stderr_done) = bounded::<()>(0);
        std::thread::spawn(move || {
            let _done = done; // dropped at the end of stderr
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        self.starts += 1;
        self.answered = 0;
        let stdin = BufWriter::with_capacity(256 * 1024, stdin);
        Ok(Running { process, stdin, answers, stderr_done })
    }

    /// Hand `body` to the child and wait for its answer.
    pub fn call(&mut self, body: &[u8]) -> Result<Answer, Failure> {
        let line;
        let body = match self.framing {
            Framing::Frames => body,
            Framing::Lines => {
                line = one_line(body).ok_or_else(|| Failure {
                    reason: "the body has a line break and is not JSON; use --framing frames"
                        .into(),
                    fatal: false,
                })?;
                &line[..]
            }
        };
        // A child that exited between messages is restarted (this message is not to blame),
        // unless it never answered anything: then the model cannot start at all.
        if let Some(run) = self.running.as_mut() {
            if let Ok(Some(_)) = run.process.try_wait() {
                if self.answered == 0 {
                    let mut f = self.failed("it exited before its first message", false);
                    f.fatal = true;
                    return Err(f);
                }
                self.running = None;
            }
        }
        if self.running.is_none() {
            self.running =
                Some(self.spawn().map_err(|e| Failure { reason: format!("{e:#}"), fatal: true })?);
        }
        let Some(run) = self.running.as_mut() else {
            return Err(Failure { reason: "internal: no child".into(), fatal: true });
        };
        let written = match self.framing {
            Framing::Lines => run.stdin.write_all(body).and_then(|()| run.stdin.write_all(b"\n")),
            Framing::Frames => u32::try_from(body.len())
                .map_err(|_| std::io::Error::other("body over 4 GiB"))
                .and_then(|n| run.stdin.write_all(&n.to_be_bytes()))
                .and_then(|()| run.stdin.write_all(body)),
        }
        .and_then(|()| run.stdin.flush());
        if let Err(e) = written {
            return Err(self.failed(&format!("could not write to it ({e})"), false));
        }
        let answer = run.answers.recv_timeout(self.timeout);
        if matches!(answer, Ok(Ok(_))) {
            self.answered += 1;
        }
        match answer {
            Ok(Ok(bytes)) if bytes.is_empty() => Ok(Answer::Nothing),
            Ok(Ok(bytes)) => Ok(Answer::Output(bytes)),
            Ok(Err(e)) => Err(self.failed(&format!("unreadable answer ({e})"), true)),
            Err(RecvTimeoutError::Timeout) => Err(self.failed(
                &format!("no answer within {:.0} s (--exec-timeout)", self.timeout.as_secs_f64()),
                true,
            )),
            Err(RecvTimeoutError::Disconnected) => Err(self.failed("it closed its stdout", false)),
        }
    }

    /// The child failed on the message in hand: stop it (at once if `kill`, else once it has
    /// exited, killing it only past [`EXIT_GRACE`]) and say why, with its exit status and
    /// last stderr line. The next call starts a new one.
    fn failed(&mut self, what: &str, kill: bool) -> Failure {
        let Some(mut run) = self.running.take() else {
            return Failure { reason: format!("the --exec child failed: {what}"), fatal: false };
        };
        drop(run.stdin);
        let status = if kill { None } else { exit_within(&mut run.process, EXIT_GRACE) };
        if status.is_none() {
            kill_group(&mut run.process);
        }
        let _ = run.process.wait();
        // Its last words: the stderr pump ends when the pipe closes (bounded, in case a
        // grandchild still holds it open).
        let _ = run.stderr_done.recv_timeout(STDERR_GRACE);
        let last = self.stderr_tail.lock().map(|t| t.back().cloned()).unwrap_or(None);
        let code = status.and_then(|s| s.code());
        let mut reason = match status {
            Some(s) => format!("the --exec child failed: {what}; it exited with {s}"),
            None => format!("the --exec child failed: {what}; it was killed"),
        };
        if let Some(l) = last {
            reason.push_str(&format!(": {l}"));
        }
        // sh's "command not found" / "not executable": no message can ever succeed.
        Failure { reason, fatal: matches!(code, Some(126 | 127)) }
    }

    /// Close the child's stdin and wait for it to end (killed past [`EXIT_GRACE`]).
    pub fn stop(&mut self) {
        if let Some(mut run) = self.running.take() {
            drop(run.stdin);
            if exit_within(&mut run.process, EXIT_GRACE).is_none() {
                kill_group(&mut run.process);
            }
            let _ = run.process.wait();
        }
    }

    /// Whether the running child has exited by now (for tests).
    #[cfg(test)]
    fn has_exited(&mut self) -> bool {
        self.running.as_mut().is_some_and(|r| matches!(r.process.try_wait(), Ok(Some(_))))
    }
}

/// How long a child whose stdin closed (or that closed its stdout) may take to exit.
const EXIT_GRACE: Duration = Duration::from_secs(2);
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

/// The exit status once `process` has exited, polling until `deadline`; None if it has not.
fn exit_within(process: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let until = std::time::Instant::now() + deadline;
    loop {
        match process.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return None,
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

/// One answer off the child's stdout; None at a clean end of stream.
fn read_answer(r: &mut impl BufRead, framing: Framing) -> std::io::Result<Option<Vec<u8>>> {
    match framing {
        Framing::Lines => {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line)? == 0 {
                return Ok(None);
            }
            if line.last() != Some(&b'\n') {
                return Err(std::io::Error::other("the last line has no line break"));
            }
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            Ok(Some(line))
        }
        Framing::Frames => {
            let mut len = [0u8; 4];
            match r.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let n = u32::from_be_bytes(len);
            if n > MAX_FRAME {
                return Err(std::io::Error::other(format!("a frame of {n} bytes is too large")));
            }
            let mut bytes = vec![0u8; n as usize];
            r.read_exact(&mut bytes)?;
            Ok(Some(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn lines_round_trip_and_empty_answers_mean_nothing() {
        // Upper-cases each line; answers an empty line for "skip".
        let mut c = ModelChild::new(
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
    fn frames_carry_any_bytes() {
        let mut c = ModelChild::new("cat", Framing::Frames, T);
        let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        assert_eq!(c.call(&body).expect("answer"), Answer::Output(body));
    }

    #[test]
    fn a_crash_fails_the_message_with_the_reason_and_the_next_call_restarts() {
        let mut c = ModelChild::new(
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
        assert!(!f.fatal);
        assert_eq!(c.call(b"2").expect("answer after restart"), Answer::Output(b"ok".to_vec()));
        assert_eq!(c.starts, 2);
    }

    #[test]
    fn a_silent_child_times_out_and_a_missing_command_is_fatal() {
        // `sleep` runs under the shell (not exec'd): the kill must reach it too, or it would
        // hold stderr open (and linger) for 30 s.
        let started = std::time::Instant::now();
        let mut c =
            ModelChild::new("sleep 30; echo never", Framing::Lines, Duration::from_millis(200));
        let f = c.call(b"x").expect_err("timeout");
        assert!(f.reason.contains("no answer within"), "{}", f.reason);
        assert!(started.elapsed() < STDERR_GRACE, "took {:?}", started.elapsed());
        let mut c = ModelChild::new("no-such-model-command-xyz", Framing::Lines, T);
        let f = c.call(b"x").expect_err("not found");
        assert!(f.fatal, "{}", f.reason);
        // A model that dies at start-up (before any message) is broken, not the message.
        let mut c = ModelChild::new("echo 'ImportError: no numpy' >&2; exit 1", Framing::Lines, T);
        c.start().expect("sh starts");
        let until = std::time::Instant::now() + T;
        while !c.has_exited() {
            assert!(std::time::Instant::now() < until, "the model never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        let f = c.call(b"x").expect_err("died at start");
        assert!(f.fatal && f.reason.contains("before its first message"), "{}", f.reason);
        assert!(f.reason.contains("ImportError"), "{}", f.reason);
    }
}
