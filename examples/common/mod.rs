//! Plumbing shared by the ML examples (anomaly_detection, image_classification,
//! model_serving, pipeline): find the mqdemo binary, run its commands with a deadline,
//! name and delete the example's queues, and the model child's side of the `pipe`/`serve`
//! protocol (lines or length-prefixed frames on stdin/stdout).
//!
//! Each example uses only part of it.
#![allow(dead_code)]

use amiquip::{AmqpValue, Connection, Delivery};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors carry their whole message; the first line names the input and the fix.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The broker when AMQP_URL is not set (the same default as mqdemo's tests).
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long one mqdemo command of an example may run before the example gives up.
pub const STEP_DEADLINE: Duration = Duration::from_secs(60);

/// Where an example runs: the mqdemo binary, this example's own binary (the model child),
/// the broker, and a queue-name prefix unique to this run.
pub struct Env {
    /// The mqdemo binary (env MQDEMO_BIN, else next to this example's directory).
    pub mqdemo: PathBuf,
    /// This example's binary: `<me> model ...` is the model child.
    pub me: PathBuf,
    /// The broker (env AMQP_URL, else [`DEFAULT_URL`]).
    pub url: String,
    prefix: String,
}

impl Env {
    /// Locate everything; `short` names the queues (`<short>-<pid>-<suffix>`).
    pub fn new(short: &str) -> Res<Env> {
        let me = std::env::current_exe()
            .map_err(|e| format!("cannot find this example's own binary: {e}"))?;
        let mqdemo = match std::env::var_os("MQDEMO_BIN") {
            Some(path) => PathBuf::from(path),
            // target/<profile>/examples/<name> -> target/<profile>/mqdemo
            None => me.parent().and_then(Path::parent).unwrap_or(Path::new(".")).join("mqdemo"),
        };
        if !mqdemo.is_file() {
            return Err(format!(
                "build mqdemo first: cargo build --release (no binary at {}; or set MQDEMO_BIN)",
                mqdemo.display()
            )
            .into());
        }
        let url = std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        let prefix = format!("{short}-{}", std::process::id());
        Ok(Env { mqdemo, me, url, prefix })
    }

    /// A queue name unique to this run.
    pub fn queue(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// The `--exec` command line (run by `sh -c`) that starts this example as the model
    /// child with `args`.
    pub fn model_command(&self, args: &[&str]) -> String {
        let mut cmd = vec![quote(&self.me.to_string_lossy()), "model".to_string()];
        cmd.extend(args.iter().map(|a| quote(a)));
        cmd.join(" ")
    }

    /// `mqdemo <args>` against this example's broker.
    pub fn mqdemo(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.mqdemo);
        cmd.args(args).env("AMQP_URL", &self.url);
        cmd
    }

    /// One connection to the broker (the first URL when several are given).
    pub fn connect(&self) -> Res<Connection> {
        let first = self.url.split(',').next().unwrap_or(&self.url);
        Connection::insecure_open(first).map_err(|e| {
            format!(
                "cannot connect to RabbitMQ at {}: {e}; start one (rabbitmq-server -detached) \
                 or set AMQP_URL",
                masked(first)
            )
            .into()
        })
    }

    /// Ready messages in `queue`, without declaring it.
    pub fn depth(&self, queue: &str) -> Res<u32> {
        let mut conn = self.connect()?;
        let ch = conn.open_channel(None)?;
        let n = ch.queue_declare_passive(queue)?.declared_message_count().unwrap_or(0);
        conn.close()?;
        Ok(n)
    }

    /// Wait until `queue` exists and has a consumer: `server` (e.g. `mqdemo serve`) is
    /// ready. An error, with its stderr, if it exits first.
    pub fn wait_for_consumer(
        &self,
        queue: &str,
        server: &mut Running,
        deadline: Duration,
    ) -> Res<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let stderr = join(server.stderr.take());
                return Err(format!(
                    "{} exited ({status}) before it consumed {queue}; its stderr:\n{stderr}",
                    server.what
                )
                .into());
            }
            let mut conn = self.connect()?;
            let ch = conn.open_channel(None)?;
            // A passive declare of a missing queue closes the channel: that is "not yet".
            let consumers =
                ch.queue_declare_passive(queue).ok().and_then(|q| q.declared_consumer_count());
            let _ = conn.close();
            if consumers.unwrap_or(0) > 0 {
                return Ok(());
            }
            if started.elapsed() > deadline {
                return Err(format!("no consumer on queue {queue} after {deadline:?}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Take `n` messages off `queue` (acked), waiting for each up to `deadline` in all.
    pub fn take(&self, queue: &str, n: usize, deadline: Duration) -> Res<Vec<Delivery>> {
        let started = Instant::now();
        let mut conn = self.connect()?;
        let ch = conn.open_channel(None)?;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match ch.basic_get(queue, true)? {
                Some(g) => got.push(g.delivery),
                None if started.elapsed() > deadline => {
                    return Err(format!(
                        "only {} of {n} messages arrived on queue {queue} within {deadline:?}",
                        got.len()
                    )
                    .into());
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        conn.close()?;
        Ok(got)
    }

    /// A guard that deletes these queues (and their `.failed` queues) when dropped, so
    /// they go away whether the example passes, fails or returns early with an error.
    pub fn cleanup(&self, queues: &[&str]) -> Cleanup {
        let mut names: Vec<String> = Vec::new();
        for q in queues {
            names.push(q.to_string());
            names.push(format!("{q}.failed"));
        }
        Cleanup { url: self.url.clone(), names }
    }
}

/// Deletes the example's queues on drop.
pub struct Cleanup {
    url: String,
    names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let first = self.url.split(',').next().unwrap_or(&self.url);
        let Ok(mut conn) = Connection::insecure_open(first) else {
            eprintln!("warning: could not connect to delete queues {}", self.names.join(", "));
            return;
        };
        for name in &self.names {
            // Deleting a queue that does not exist is fine for RabbitMQ; a fresh channel per
            // queue keeps one failure from hiding the rest.
            if let Ok(ch) = conn.open_channel(None) {
                let _ = ch.queue_delete(name.as_str(), Default::default());
                let _ = ch.close();
            }
        }
        let _ = conn.close();
    }
}

/// `s` as one `sh` word.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The URL with its password replaced by `****`.
pub fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// A finished command.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// mqdemo's one-line summary (the last stderr line starting with `mqdemo:`).
    pub fn summary(&self) -> &str {
        self.stderr.lines().rev().find(|l| l.starts_with("mqdemo:")).unwrap_or("(no summary)")
    }
}

/// A command running in the background; killed if dropped before [`Running::wait`].
pub struct Running {
    what: String,
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// Start `cmd` with stdout and stderr captured; `what` names it in errors.
pub fn spawn(mut cmd: Command, what: &str) -> Res<Running> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = child.stdout.take().map(collect);
    let stderr = child.stderr.take().map(collect);
    Ok(Running { what: what.to_string(), child: Some(child), stdout, stderr })
}

fn collect(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        buf
    })
}

/// Run `cmd` to completion within [`STEP_DEADLINE`]; an error unless it exits 0.
pub fn run(cmd: Command, what: &str) -> Res<Output> {
    spawn(cmd, what)?.wait(STEP_DEADLINE)
}

impl Running {
    /// The process id (e.g. to send it a signal).
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited (it can still be waited for).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Wait for this process like [`Running::wait`], but if `server` exits first, kill this
    /// one and fail with the server's stderr (a client need not wait for its timeout when
    /// the service it talks to is gone).
    pub fn wait_watching(mut self, server: &mut Running, deadline: Duration) -> Res<Output> {
        let started = Instant::now();
        while !self.exited() && started.elapsed() < deadline {
            if server.exited() {
                let stderr = join(server.stderr.take());
                self.kill();
                return Err(format!("{} exited early; its stderr:\n{stderr}", server.what).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait(Duration::ZERO)
    }

    /// Kill the process now; what it wrote on stderr.
    pub fn kill(mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        join(self.stderr.take())
    }

    /// Wait for the exit, killing the process after `deadline`; an error unless it exits 0.
    pub fn wait(mut self, deadline: Duration) -> Res<Output> {
        let started = Instant::now();
        let mut child = self.child.take().ok_or("already waited")?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = join(self.stderr.take());
                return Err(format!(
                    "{} did not finish within {deadline:?} (killed); its stderr:\n{stderr}",
                    self.what
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out =
            Output { status, stdout: join(self.stdout.take()), stderr: join(self.stderr.take()) };
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}); its stderr:\n{}",
                self.what, out.status, out.stderr
            )
            .into());
        }
        Ok(out)
    }
}

fn join(handle: Option<JoinHandle<Vec<u8>>>) -> String {
    let bytes = handle.and_then(|h| h.join().ok()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Send SIGTERM to a process (via kill(1): the crate forbids unsafe code).
pub fn terminate(pid: u32) -> Res<()> {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    if !status.success() {
        return Err(format!("kill -TERM {pid} failed ({status})").into());
    }
    Ok(())
}

/// A header of a received message as text (strings and integers).
pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.get(name)? {
        AmqpValue::LongString(s) => Some(s.clone()),
        AmqpValue::LongLongInt(n) => Some(n.to_string()),
        AmqpValue::LongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The model child's side of `--framing lines`: one input line in, one answer line out,
/// flushed at once (mqdemo waits for it). An empty answer means "nothing to publish".
pub fn answer_lines(mut answer: impl FnMut(&str) -> String) -> Res<()> {
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let reply = answer(&line?);
        // A newline inside the answer would desynchronise the protocol.
        debug_assert!(!reply.contains('\n'));
        stdout.write_all(reply.as_bytes())?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    Ok(())
}

/// The model child's side of `--framing frames`: a 4-byte big-endian length and that many
/// bytes, both ways; an answer of length 0 means "nothing to publish".
pub fn answer_frames(mut answer: impl FnMut(&[u8]) -> Res<Vec<u8>>) -> Res<()> {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    loop {
        let mut len = [0u8; 4];
        match stdin.read_exact(&mut len) {
            Ok(()) => {}
            // mqdemo closed our stdin between frames: a clean end.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        stdin.read_exact(&mut body)?;
        let reply = answer(&body)?;
        let reply_len = u32::try_from(reply.len()).map_err(|_| "answer over 4 GiB")?;
        stdout.write_all(&reply_len.to_be_bytes())?;
        stdout.write_all(&reply)?;
        stdout.flush()?;
    }
}

/// The example's exit: the error (if any) as one `<name>: error: ...` block, and exit 0
/// only when the example's check passed.
pub fn finish(name: &str, result: Res<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
