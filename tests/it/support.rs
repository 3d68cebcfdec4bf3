//! Test support: the broker under test, unique queues cleaned up on drop, a runner for the
//! real binary with a deadline, and a raw AMQP client playing "another producer".

use amiquip::{AmqpProperties, Connection, Publish};
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Default broker for tests, like lapin's AMQP_ADDR convention.
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long one run of the binary may take before the test fails.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// The broker URL under test; fails at once, with how to start one, if nothing answers.
pub fn url() -> String {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let url = std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        let parsed = url::Url::parse(&url).map_err(|e| format!("AMQP_URL {url:?}: {e}"))?;
        let host = parsed.host_str().unwrap_or("localhost").to_string();
        let port = parsed.port().unwrap_or(5672);
        let reachable =
            (host.as_str(), port).to_socket_addrs().ok().and_then(|mut a| a.next()).is_some_and(
                |addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
            );
        if reachable {
            Ok(url)
        } else {
            Err(format!(
                "no RabbitMQ at {host}:{port}: start one with `rabbitmq-server -detached` \
                 (or `docker compose up -d rabbitmq`), or set AMQP_URL"
            ))
        }
    });
    match checked {
        Ok(u) => u.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A queue with a name no other test uses, deleted (with any policy set on it) on drop.
pub struct TestQueue {
    pub name: String,
    policy: Option<String>,
}

impl TestQueue {
    pub fn new(test: &str) -> TestQueue {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let _ = url();
        TestQueue { name: format!("it-{test}-{}-{n}", std::process::id()), policy: None }
    }

    /// A queue named by mqdemo (e.g. `NAME.failed`), deleted on drop like the others.
    pub fn named(name: String) -> TestQueue {
        TestQueue { name, policy: None }
    }

    /// Ready messages in the queue (0 while it does not exist; never declares it).
    pub fn depth(&self) -> u32 {
        let mut conn = connect();
        let ch = conn.open_channel(None).expect("channel");
        let n = ch
            .queue_declare_passive(self.name.clone())
            .ok()
            .and_then(|q| q.declared_message_count());
        let _ = conn.close();
        n.unwrap_or(0)
    }

    /// Apply a RabbitMQ policy to this queue only (removed on drop).
    pub fn set_policy(&mut self, definition: &str) {
        let name = format!("{}-policy", self.name);
        let status = Command::new("rabbitmqctl")
            .args([
                "-q",
                "set_policy",
                &name,
                &format!("^{}$", self.name),
                definition,
                "--apply-to",
                "queues",
            ])
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl set_policy failed");
        self.policy = Some(name);
    }

    /// Publish a raw message as another producer (pika, amqp-publish) would.
    pub fn publish_raw(&self, body: &[u8], props: AmqpProperties) {
        let mut conn = connect();
        let ch = conn.open_channel(None).expect("channel");
        ch.queue_declare(
            self.name.clone(),
            amiquip::QueueDeclareOptions { durable: true, ..Default::default() },
        )
        .expect("declare");
        ch.basic_publish("", Publish::with_properties(body, self.name.clone(), props))
            .expect("publish");
        let _ = ch.close();
        let _ = conn.close();
    }

    /// Take one message off the queue (acked), if there is one.
    pub fn get(&self) -> Option<amiquip::Delivery> {
        let mut conn = connect();
        let ch = conn.open_channel(None).expect("channel");
        let got = ch.basic_get(self.name.clone(), true).expect("basic_get");
        let delivery = got.map(|g| g.delivery);
        let _ = ch.close();
        let _ = conn.close();
        delivery
    }

    /// Delete the queue now, and the failed queue a consumer of it declares (`NAME.failed`).
    pub fn delete(&self) {
        if let Ok(mut conn) = Connection::insecure_open(&url()) {
            if let Ok(ch) = conn.open_channel(None) {
                let _ = ch.queue_delete(self.name.clone(), Default::default());
                let _ = ch.queue_delete(format!("{}.failed", self.name), Default::default());
            }
            let _ = conn.close();
        }
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        self.delete();
        if let Some(p) = &self.policy {
            let _ = Command::new("rabbitmqctl").args(["-q", "clear_policy", p]).status();
        }
    }
}

/// A raw connection to the broker under test.
pub fn connect() -> Connection {
    Connection::insecure_open(&url()).expect("test broker connection")
}

/// The real binary, with the broker under test and no backtraces.
pub struct Mqdemo {
    cmd: Command,
}

/// What a finished run printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Assert the exit code, showing everything on failure.
    pub fn expect_code(self, code: i32) -> Output {
        assert_eq!(
            self.code(),
            Some(code),
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Assert stderr contains `needle`.
    pub fn stderr_has(self, needle: &str) -> Output {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        self
    }

    /// The first line of stderr.
    pub fn first_error_line(&self) -> &str {
        self.stderr.lines().next().unwrap_or("")
    }
}

/// The binary under test: this build's, or MQDEMO_TEST_BIN (e.g. an older build, to see a
/// new test fail before its fix).
pub fn bin_path() -> PathBuf {
    std::env::var_os("MQDEMO_TEST_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mqdemo")), PathBuf::from)
}

pub fn mqdemo(args: &[&str]) -> Mqdemo {
    let mut cmd = Command::new(bin_path());
    cmd.args(args)
        .env("AMQP_URL", url())
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    Mqdemo { cmd }
}

/// The binary run by `wrapper` (e.g. `["prlimit", "--nofile=64:64", "--"]`: a program
/// that execs its arguments, so the child's pid is mqdemo's).
pub fn mqdemo_under(wrapper: &[&str], args: &[&str]) -> Mqdemo {
    let (program, wrapper_args) = wrapper.split_first().expect("a wrapper program");
    let mut cmd = Command::new(program);
    cmd.args(wrapper_args)
        .arg(bin_path())
        .args(args)
        .env("AMQP_URL", url())
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    Mqdemo { cmd }
}

impl Mqdemo {
    /// Start without waiting.
    pub fn spawn(mut self) -> Child {
        self.cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cmd.spawn().expect("mqdemo binary starts")
    }

    /// Start with stderr going to `stderr` (a pseudo-terminal), stdout piped, no stdin.
    pub fn spawn_with_stderr(mut self, stderr: Stdio) -> Child {
        self.cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
        self.cmd.spawn().expect("mqdemo binary starts")
    }

    /// Run to completion within RUN_DEADLINE.
    pub fn run(self) -> Output {
        wait(self.spawn(), RUN_DEADLINE)
    }

    /// Run to completion within `deadline`, with its peak resident memory in bytes.
    pub fn run_peak(self, deadline: Duration) -> (Output, u64) {
        let child = self.spawn();
        let peak = Peak::watch(child.id());
        let out = wait(child, deadline);
        (out, peak.total())
    }
}

/// Wait for a child with a deadline, collecting its output; kill it and fail on timeout.
pub fn wait(mut child: Child, deadline: Duration) -> Output {
    // Stdout may have been taken already (a test reading it as it comes).
    let out = child.stdout.take();
    let mut err = child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut out) = out {
            let _ = out.read_to_end(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "mqdemo still running after {deadline:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Output { status, stdout, stderr }
}

/// Poll `cond` until it holds or `deadline` passes.
pub fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The repository's examples/data directory.
pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data").join(rel)
}

/// Every file under `root` as (relative path, bytes), sorted.
pub fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel =
                e.path().strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            (rel, std::fs::read(e.path()).expect("read"))
        })
        .collect();
    files.sort();
    files
}

/// A path argument as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A running mqdemo whose stderr can be watched while it runs.
pub struct Watched {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    err_reader: Option<std::thread::JoinHandle<()>>,
    out_reader: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Mqdemo {
    /// Start, collecting stderr as it comes so tests can wait for a line.
    pub fn watch(self) -> Watched {
        Watched::of(self.spawn())
    }

    /// Like [`Mqdemo::watch`], with stdin a pipe the test writes to (dropping it ends the
    /// input): for a producer (`--file -`) that must still be running at some moment.
    pub fn watch_fed(mut self) -> (Watched, std::process::ChildStdin) {
        self.cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("mqdemo binary starts");
        let stdin = child.stdin.take().expect("stdin piped");
        (Watched::of(child), stdin)
    }
}

impl Watched {
    fn of(mut child: Child) -> Watched {
        let mut err = child.stderr.take().expect("stderr piped");
        let mut out = child.stdout.take().expect("stdout piped");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&stderr);
        let err_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let out_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            s
        });
        Watched { child, stderr, err_reader: Some(err_reader), out_reader: Some(out_reader) }
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Wait until stderr contains `needle`.
    pub fn wait_for(&self, needle: &str, deadline: Duration) {
        let started = Instant::now();
        while !self.stderr().contains(needle) {
            assert!(
                started.elapsed() < deadline,
                "no {needle:?} on stderr within {deadline:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (e.g. "TERM", "KILL").
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig}");
    }

    /// Wait for the exit within `deadline`; kill and fail after it.
    pub fn finish(mut self, deadline: Duration) -> Output {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("mqdemo still running after {deadline:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(h) = self.err_reader.take() {
            let _ = h.join();
        }
        let stdout = self.out_reader.take().and_then(|h| h.join().ok()).unwrap_or_default();
        Output {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Visible (non-hidden) files under `root`; safe to call while another process writes there.
pub fn count_files(root: &Path) -> usize {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

/// `mqdemo produce tabular` of the sample CSV into `q`, with `extra` arguments.
pub fn produce_sample(q: &TestQueue, extra: &[&str]) -> Mqdemo {
    let file = data("tabular_data.csv");
    let mut args = vec!["produce", "tabular", "--file", s(&file), "--queue", &q.name];
    args.extend_from_slice(extra);
    mqdemo(&args)
}

/// `mqdemo consume KIND --queue q --output-directory dir`, with `extra` arguments.
pub fn consume_files(q: &TestQueue, kind: &str, dir: &Path, extra: &[&str]) -> Mqdemo {
    let mut args = vec!["consume", kind, "--queue", &q.name, "--output-directory", s(dir)];
    args.extend_from_slice(extra);
    mqdemo(&args)
}

/// The number after the last `word ` in a summary line (0 if absent).
pub fn count_after(stderr: &str, word: &str) -> u64 {
    stderr
        .rsplit(&format!("{word} "))
        .next()
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A CSV shaped like the sample (`examples/data/tabular_data.csv`, its rows cycled) with the
/// given IDs in its first column, one row each.
pub fn csv_rows(dir: &Path, name: &str, ids: std::ops::RangeInclusive<usize>) -> PathBuf {
    let sample = std::fs::read_to_string(data("tabular_data.csv")).expect("sample");
    let mut lines = sample.lines();
    let header = lines.next().expect("header");
    let body: Vec<&str> = lines.collect();
    let mut out = String::with_capacity(ids.clone().count() * 100);
    out.push_str(header);
    out.push('\n');
    for id in ids {
        let rest = body[id % body.len()].split_once(',').map_or("", |(_, r)| r);
        out.push_str(&format!("{id},{rest}\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, out).expect("write csv");
    path
}

/// A field of /proc/PID/status in KiB (VmHWM, VmRSS); None once the process is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The peak resident memory of a running child, sampled every few milliseconds until it
/// exits (VmHWM only grows, so the last sample is the peak).
pub struct Peak {
    kib: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl Peak {
    pub fn watch(pid: u32) -> Peak {
        let kib = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = std::sync::Arc::clone(&kib);
        let sampler = std::thread::spawn(move || {
            while let Some(k) = status_kib(pid, "VmHWM:") {
                seen.fetch_max(k, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Peak { kib, sampler: Some(sampler) }
    }

    /// The peak so far, in bytes.
    pub fn now(&self) -> u64 {
        self.kib.load(std::sync::atomic::Ordering::SeqCst) * 1024
    }

    /// The peak over the whole run (call after the child has exited).
    pub fn total(mut self) -> u64 {
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        let peak = self.now();
        assert!(peak > 0, "no memory sample was read from /proc");
        peak
    }
}

/// A header of a delivery, if it has it.
pub fn header_of<'a>(d: &'a amiquip::Delivery, name: &str) -> Option<&'a amiquip::AmqpValue> {
    d.properties.headers().as_ref().and_then(|h| h.get(name))
}

/// A header the delivery must have.
pub fn header<'a>(d: &'a amiquip::Delivery, name: &str) -> &'a amiquip::AmqpValue {
    header_of(d, name).unwrap_or_else(|| panic!("header {name} missing"))
}

/// Whether queue `name` exists (a passive declare; never creates it).
pub fn queue_exists(name: &str) -> bool {
    let mut conn = connect();
    let ch = conn.open_channel(None).expect("channel");
    let found = ch.queue_declare_passive(name).is_ok();
    let _ = conn.close();
    found
}

/// Wait for `child` to exit within `deadline` (its output read elsewhere, or not piped);
/// kill it and fail past the deadline.
pub fn exit_within(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mqdemo still running after {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Messages in `queue`, ready and delivered-but-unacked (rabbitmqctl: a passive declare
/// counts only the ready ones, and a delivery on its way would be missed).
pub fn held(queue: &str) -> Option<u64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "messages"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.split('\t').next() == Some(queue));
    match line {
        Some(l) => l.split('\t').nth(1)?.trim().parse().ok(),
        None => Some(0),
    }
}
