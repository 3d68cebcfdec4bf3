//! Private RabbitMQ nodes for fault-injection tests: each [`PrivateBroker`] is its own
//! Erlang node (own name, ports, data and log directory) that a test may stop, restart or
//! push into a memory alarm without disturbing the shared broker on port 5672.
//!
//! Nodes are started through the Debian wrapper (`rabbitmq-server -detached`), which drops
//! to the `rabbitmq` user with `su` (keeping the `RABBITMQ_*` environment) and therefore
//! shares that user's Erlang cookie with `rabbitmqctl`. The test process must run as root
//! (or as `rabbitmq`).
//!
//! `RABBITMQ_CONFIG_FILE` is always set to a file of our own: without it the node reads
//! `/etc/rabbitmq/rabbitmq.conf`, whose `listeners.tcp.local = 127.0.0.1:5672` wins over
//! `RABBITMQ_NODE_PORT`, and the private node dies with `eaddrinuse` on 5672.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a node may take to become ready (start or restart).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a node may take to stop.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How long Drop lets `rabbitmqctl stop` try before killing the node.
const DROP_STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How long one `rabbitmqctl` / `rabbitmq-diagnostics` / `openssl` run may take.
const TOOL_DEADLINE: Duration = Duration::from_secs(30);
/// How often every wait re-checks its condition.
const POLL: Duration = Duration::from_millis(100);

/// Ports used by the Erlang CLI tools' own distribution listeners (`rabbitmqctl` picks one
/// of 35672..=35682) and the shared node: never hand these to a private node.
fn reserved(port: u16) -> bool {
    matches!(port, 4369 | 5671 | 5672 | 15672 | 25672 | 35672..=35682)
}

/// The first port of the kernel's ephemeral range (the source ports of outgoing
/// connections), 32768 when it cannot be read.
fn ephemeral_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// `n` distinct free ports on 127.0.0.1, never handed out before by this process, all
/// below the ephemeral range: a node's port is free while it restarts, and one taken from
/// the ephemeral range was once taken meanwhile as the source port of one of the
/// thousands of short connections the tests make (the restart then failed, eaddrinuse).
fn free_ports(n: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let (low, high) = (20_000u16, ephemeral_start().clamp(20_001, 32768));
    // Hold every listener until all ports are chosen so they are distinct.
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            break;
        }
        // A random start (another test process may be choosing too), then any free one.
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = low + (random % u64::from(high - low)) as u16;
        if reserved(port) || given.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            given.insert(port);
            ports.push(port);
            held.push(l);
        }
    }
    assert_eq!(ports.len(), n, "could not find {n} free ports below {high}");
    ports
}

/// The output of a command run by [`run_bounded`]; `timed_out` if it was killed.
struct Bounded {
    output: Output,
    timed_out: bool,
}

/// Run `cmd` with its output captured, killing it (its process group: TERM, then KILL) if it
/// has not finished within `deadline`.
fn run_bounded(cmd: &mut Command, deadline: Duration) -> Bounded {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    };
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    if let Some(mut out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            let _ = tx.send((true, buf));
        });
    }
    if let Some(mut err) = child.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            let _ = tx.send((false, buf));
        });
    }
    drop(tx);
    let started = Instant::now();
    let mut timed_out = false;
    let status: ExitStatus = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < deadline => std::thread::sleep(POLL),
            Ok(None) => {
                timed_out = true;
                let group = format!("-{}", child.id());
                // `su` forwards TERM to the command it runs in its own session.
                let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
                let grace = Instant::now();
                while grace.elapsed() < Duration::from_secs(3) {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(POLL);
                }
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                break child.wait().expect("wait for killed child");
            }
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    // Output pipes may be held open by a stray grandchild; never wait for them for long.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let drained = Instant::now() + Duration::from_secs(5);
    for _ in 0..2 {
        let left = drained.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, b)) => stdout = b,
            Ok((false, b)) => stderr = b,
            Err(_) => break,
        }
    }
    Bounded { output: Output { status, stdout, stderr }, timed_out }
}

/// Poll `cond` every [`POLL`] until it holds; false if `deadline` passed first.
fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if started.elapsed() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// The last `n` lines of a text file (empty if unreadable).
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Uid and gid of the `rabbitmq` user.
fn rabbitmq_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "rabbitmq"]).output().expect("run id");
        assert!(out.status.success(), "no rabbitmq user on this machine");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// Private nodes that may run at once in one test process. Booting a node and every
/// `rabbitmqctl` call start an Erlang VM: with many test threads, a dozen nodes booting at
/// once on 2 cores push the tests' own deadlines; past this many, a test waits (before its
/// node boots, so before any of its deadlines start) while lighter tests run.
const NODE_SLOTS: usize = 5;

/// A claim on `n` of the [`NODE_SLOTS`], given back on drop.
pub struct NodeSlots {
    n: usize,
}

static SLOTS_USED: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

impl NodeSlots {
    /// Wait until `n` slots are free together, then hold them (all or none, so two
    /// multi-node claims never hold part each and wait for each other).
    pub fn take(n: usize) -> NodeSlots {
        let n = n.min(NODE_SLOTS);
        let (lock, freed) = &SLOTS_USED;
        let mut used = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *used + n > NODE_SLOTS {
            used = freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += n;
        slot_log("take", n, *used);
        NodeSlots { n }
    }
}

impl Drop for NodeSlots {
    fn drop(&mut self) {
        let (lock, freed) = &SLOTS_USED;
        let mut used = lock.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.n;
        slot_log("give", self.n, *used);
        freed.notify_all();
    }
}

/// With MQDEMO_SLOT_LOG=FILE, a line per claim taken or given back (seconds since the
/// first, the test, slots, slots in use): the timeline of the private nodes, which set
/// how long `cargo test` takes on 2 cores.
fn slot_log(event: &str, n: usize, used: usize) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let Some(path) = std::env::var_os("MQDEMO_SLOT_LOG") else {
        return;
    };
    let at = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("{at:7.1} {event} {n} in-use {used} {test}\n");
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = std::io::Write::write_all(&mut f, line.as_bytes());
    }
}

/// A RabbitMQ node of its own, stopped and deleted (data and logs) on drop.
pub struct PrivateBroker {
    /// Full Erlang node name, `NAME-PID-N@localhost`.
    node: String,
    /// Holds config, data (`mnesia/`), logs (`log/`) and the pid file.
    dir: tempfile::TempDir,
    amqp_port: u16,
    dist_port: u16,
    tls_port: Option<u16>,
    /// OS pid of the node's `beam.smp`, once it has been seen running.
    beam_pid: Mutex<Option<u32>>,
    /// This node's claim on [`NODE_SLOTS`] (None inside a claim held by its caller);
    /// dropped after the node has stopped.
    _slot: Option<NodeSlots>,
}

impl PrivateBroker {
    /// Start a fresh node named after `name` (plus pid and a counter); panics with the tail
    /// of the node's log if it is not ready within 60 s.
    /// Waits first while [`NODE_SLOTS`] nodes are running.
    pub fn start(name: &str) -> PrivateBroker {
        let slot = NodeSlots::take(1);
        PrivateBroker::launch(name, None, Some(slot))
    }

    /// Like [`PrivateBroker::start`], for a node counted in a [`NodeSlots`] claim its
    /// caller holds (e.g. one claim for the three nodes of a cluster).
    pub fn start_claimed(name: &str, _claim: &NodeSlots) -> PrivateBroker {
        PrivateBroker::launch(name, None, None)
    }

    /// Like [`PrivateBroker::start`], plus a TLS listener (on its own port) presenting
    /// `ca.server_cert`; clients are not asked for certificates.
    pub fn start_tls(name: &str, ca: &TestCa) -> PrivateBroker {
        let slot = NodeSlots::take(1);
        PrivateBroker::launch(name, Some(ca), Some(slot))
    }

    fn launch(name: &str, ca: Option<&TestCa>, slot: Option<NodeSlots>) -> PrivateBroker {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let clean: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let node = format!("{clean}-{}-{n}@localhost", std::process::id());
        let dir = tempfile::Builder::new().prefix("mqdemo-broker-").tempdir().expect("temp dir");
        let ports = free_ports(3);
        let (amqp_port, dist_port) = (ports[0], ports[1]);
        let tls_port = ca.map(|_| ports[2]);

        let mut conf = format!(
            "listeners.tcp.1 = 127.0.0.1:{amqp_port}\n\
             loopback_users.guest = true\n"
        );
        if let (Some(ca), Some(p)) = (ca, tls_port) {
            conf.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{p}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                ca.ca_cert.display(),
                ca.server_cert.display(),
                ca.server_key.display(),
            ));
        }
        fs::write(dir.path().join("rabbitmq.conf"), conf).expect("write rabbitmq.conf");
        fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        let (uid, gid) = rabbitmq_ids();
        for entry in ["", "rabbitmq.conf", "enabled_plugins"] {
            std::os::unix::fs::chown(dir.path().join(entry), Some(uid), Some(gid))
                .expect("chown to rabbitmq (are the tests running as root?)");
        }

        let broker = PrivateBroker {
            node,
            dir,
            amqp_port,
            dist_port,
            tls_port,
            beam_pid: Mutex::new(None),
            _slot: slot,
        };
        // From here on a panic drops `broker`, which stops whatever was started.
        broker.boot();
        broker
    }

    /// Path of a file in the node's directory.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log_file(&self) -> PathBuf {
        self.path("log").join(format!("{}.log", self.node))
    }

    /// Run `rabbitmq-server -detached` for this node and wait until it is ready.
    fn boot(&self) {
        let d = self.dir.path();
        // A pid file left by a killed node would read as "died while booting".
        if self.pid_from_file().is_some_and(|p| !self.is_our_beam(p)) {
            let _ = fs::remove_file(self.path("pid"));
        }
        let mut cmd = Command::new("rabbitmq-server");
        cmd.arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"));
        let started = Instant::now();
        let run = run_bounded(&mut cmd, TOOL_DEADLINE);
        if !run.output.status.success() || run.timed_out {
            panic!(
                "rabbitmq-server -detached for {} failed ({:?}):\n{}{}\nlog tail:\n{}",
                self.node,
                run.output.status,
                String::from_utf8_lossy(&run.output.stdout),
                String::from_utf8_lossy(&run.output.stderr),
                tail(&self.log_file(), 40)
            );
        }
        let mut dead = false;
        let ready = wait_until(START_DEADLINE.saturating_sub(started.elapsed()), || {
            let pid = self.pid_from_file();
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    dead = true;
                    return true;
                }
                *self.beam_pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
            }
            pid.is_some()
                && accepts(self.amqp_port)
                && self.tls_port.is_none_or(accepts)
                && self.diagnostics(&["check_running"]).is_some_and(|o| o.status.success())
        });
        if dead || !ready {
            panic!(
                "private node {} {} after {:?}; log tail:\n{}",
                self.node,
                if dead { "died while booting" } else { "not ready" },
                started.elapsed(),
                tail(&self.log_file(), 60)
            );
        }
    }

    /// The beam pid recorded in the node's pid file, if it is there.
    fn pid_from_file(&self) -> Option<u32> {
        fs::read_to_string(self.path("pid")).ok().and_then(|s| s.trim().parse().ok())
    }

    /// Whether `pid` is this node's beam process (guards against pid reuse and never
    /// matches the shared node).
    fn is_our_beam(&self, pid: u32) -> bool {
        let needle = format!("RABBITMQ_NODENAME={}", self.node);
        fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
    }

    /// `rabbitmq-diagnostics -n NODE ARGS`, None if it timed out.
    fn diagnostics(&self, args: &[&str]) -> Option<Output> {
        let mut cmd = Command::new("rabbitmq-diagnostics");
        cmd.arg("-n").arg(&self.node).args(args);
        let run = run_bounded(&mut cmd, TOOL_DEADLINE);
        (!run.timed_out).then_some(run.output)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` for this node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `amqps://guest:guest@localhost:TLSPORT/%2f`; panics unless started with
    /// [`PrivateBroker::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.tls_port())
    }

    /// The TLS listener's port; panics unless started with [`PrivateBroker::start_tls`].
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("node was not started with start_tls")
    }

    /// The plain AMQP port.
    pub fn port(&self) -> u16 {
        self.amqp_port
    }

    /// The Erlang node name (`NAME-PID-N@localhost`), for `rabbitmqctl -n`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Stop the whole node (its data is kept); returns once the beam process is gone and the
    /// AMQP port refuses connections. Panics if that takes longer than 30 s.
    pub fn stop(&self) {
        let started = Instant::now();
        assert!(
            self.stop_bounded(false),
            "private node {} did not stop within {:?}; log tail:\n{}",
            self.node,
            started.elapsed(),
            tail(&self.log_file(), 40)
        );
    }

    /// Kill the node's beam process (SIGKILL: no leadership hand-over, no goodbye to the
    /// cluster, connections cut at once); returns once it is gone. Its data is kept.
    pub fn kill(&self) {
        let pid = self.pid_from_file().or(*self.beam_pid.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(p) = pid.filter(|p| self.is_our_beam(*p)) {
            let _ = Command::new("kill").args(["-KILL", &p.to_string()]).status();
        }
        let down = || !pid.is_some_and(|p| self.is_our_beam(p)) && !accepts(self.amqp_port);
        assert!(wait_until(Duration::from_secs(30), down), "node {} did not die", self.node);
    }

    /// Stop via `rabbitmqctl stop`; if `force`, kill the beam process when that does not
    /// work in time. True once the node is down.
    fn stop_bounded(&self, force: bool) -> bool {
        let pid = self.pid_from_file().or(*self.beam_pid.lock().unwrap_or_else(|e| e.into_inner()));
        let beam_alive = || pid.is_some_and(|p| self.is_our_beam(p));
        let down = || !beam_alive() && !accepts(self.amqp_port);
        if down() {
            return true;
        }
        let pid_file = self.path("pid");
        let mut cmd = Command::new("rabbitmqctl");
        cmd.arg("-n").arg(&self.node).arg("stop");
        if pid_file.exists() {
            cmd.arg(&pid_file);
        }
        // In Drop, a node that does not answer is killed soon rather than waited for.
        let run = run_bounded(&mut cmd, if force { DROP_STOP_DEADLINE } else { STOP_DEADLINE });
        let answered = !run.timed_out && run.output.status.success();
        let patience = if answered || !force { STOP_DEADLINE } else { Duration::from_secs(2) };
        if wait_until(patience, down) {
            return true;
        }
        if !force {
            return false;
        }
        if let Some(p) = pid.filter(|p| self.is_our_beam(*p)) {
            let _ = Command::new("kill").args(["-KILL", &p.to_string()]).status();
        }
        wait_until(Duration::from_secs(10), down)
    }

    /// Start this node again after [`PrivateBroker::stop`]: same name, data and ports; returns
    /// when it is ready. Durable queues and persistent messages are still there.
    pub fn start_again(&self) {
        self.boot();
    }

    /// Raise (`true`) or clear (`false`) a memory alarm by moving the high watermark to
    /// 0.000001 / 0.4; returns once `check_local_alarms` agrees (publishers get blocked).
    pub fn set_memory_alarm(&self, on: bool) {
        let mark = if on { "0.000001" } else { "0.4" };
        let out = self.ctl(&["set_vm_memory_high_watermark", mark]);
        assert!(
            out.status.success(),
            "set_vm_memory_high_watermark {mark}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reached = wait_until(START_DEADLINE, || {
            self.diagnostics(&["-q", "check_local_alarms"])
                .is_some_and(|o| o.status.success() != on)
        });
        assert!(reached, "memory alarm on {} never became {on}", self.node);
    }

    /// Messages in `queue` (ready + unacknowledged), 0 if the queue does not exist.
    pub fn queue_depth(&self, queue: &str) -> u64 {
        let out = self.ctl(&["-q", "list_queues", "name", "messages"]);
        assert!(
            out.status.success(),
            "list_queues on {}: {}",
            self.node,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.rsplit_once('\t'))
            .find(|(name, _)| *name == queue)
            .and_then(|(_, n)| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Ready messages in `queue` by a passive declare over AMQP, 0 when the node or the
    /// queue is not there. For polling: a `rabbitmqctl` call boots an Erlang VM (about
    /// 0.65 s of CPU), so a loop of [`PrivateBroker::queue_depth`] kept a core busy.
    pub fn ready(&self, queue: &str) -> u64 {
        let url = format!("{}?connection_timeout=5000", self.url());
        let Ok(mut conn) = amiquip::Connection::insecure_open(&url) else {
            return 0;
        };
        let count = conn
            .open_channel(None)
            .ok()
            .and_then(|ch| ch.queue_declare_passive(queue).ok()?.declared_message_count());
        let _ = conn.close();
        count.map_or(0, u64::from)
    }

    /// Run `rabbitmqctl -n NODE ARGS` (killed after 30 s, then with a failed status).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("rabbitmqctl");
        cmd.arg("-n").arg(&self.node).args(args);
        run_bounded(&mut cmd, TOOL_DEADLINE).output
    }

    /// Run `rabbitmq-queues -n NODE ARGS` (killed after 30 s, then with a failed status).
    pub fn queues(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("rabbitmq-queues");
        cmd.arg("-n").arg(&self.node).args(args);
        run_bounded(&mut cmd, TOOL_DEADLINE).output
    }

    /// Make this (fresh, running) node a member of `other`'s cluster: `stop_app`, `reset`,
    /// `join_cluster`, `start_app`; returns once it serves AMQP again. Both nodes share the
    /// `rabbitmq` user's Erlang cookie, so they may talk to each other.
    pub fn join(&self, other: &PrivateBroker) {
        let started = Instant::now();
        for args in
            [vec!["stop_app"], vec!["reset"], vec!["join_cluster", other.node()], vec!["start_app"]]
        {
            let out = self.ctl(&args);
            assert!(
                out.status.success(),
                "rabbitmqctl -n {} {}: {}{}\nlog tail:\n{}",
                self.node,
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log_file(), 40)
            );
        }
        let ready = wait_until(START_DEADLINE, || {
            accepts(self.amqp_port)
                && self.diagnostics(&["check_running"]).is_some_and(|o| o.status.success())
        });
        assert!(
            ready,
            "{} not serving after joining {} ({:?}); log tail:\n{}",
            self.node,
            other.node(),
            started.elapsed(),
            tail(&self.log_file(), 40)
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // Best effort and bounded: `rabbitmqctl stop`, else kill our beam by pid.
        if !self.stop_bounded(true) {
            eprintln!("warning: private node {} may still be running", self.node);
        }
        // The temp dir (owned by rabbitmq; we are root) is removed by TempDir's drop.
    }
}

/// A throwaway certificate authority made with the `openssl` CLI, all files readable by the
/// `rabbitmq` user.
pub struct TestCa {
    /// Holds every file below; deleted on drop.
    #[allow(dead_code)]
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM) that signed `server_cert`.
    pub ca_cert: PathBuf,
    /// Server certificate for CN `localhost`, SAN `DNS:localhost, IP:127.0.0.1`.
    pub server_cert: PathBuf,
    /// Unencrypted private key of `server_cert`.
    pub server_key: PathBuf,
    /// An unrelated CA certificate, for "wrong CA" tests.
    pub other_ca_cert: PathBuf,
}

impl TestCa {
    /// Make the CA, the server certificate signed by it, and the unrelated CA.
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new().prefix("mqdemo-ca-").tempdir().expect("temp dir");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(args).current_dir(d);
            let run = run_bounded(&mut cmd, TOOL_DEADLINE);
            assert!(
                run.output.status.success(),
                "openssl {args:?} failed:\n{}",
                String::from_utf8_lossy(&run.output.stderr)
            );
        };
        let make_ca = |name: &str, cn: &str| {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-sha256",
                "-days",
                "2",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-subj",
                &format!("/CN={cn}"),
            ]);
        };
        make_ca("ca", "mqdemo test CA");
        make_ca("other_ca", "mqdemo unrelated CA");
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        fs::write(
            d.join("server.ext"),
            "basicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = DNS:localhost, IP:127.0.0.1\n",
        )
        .expect("write server.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-sha256",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        // Test-only secrets: readable by the rabbitmq user.
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod dir");
        for entry in fs::read_dir(d).expect("read ca dir") {
            let path = entry.expect("dir entry").path();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod file");
        }
        TestCa {
            ca_cert: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            other_ca_cert: d.join("other_ca.pem"),
            dir,
        }
    }
}

#[test]
fn private_broker_keeps_durable_messages_across_restart() {
    use amiquip::{AmqpProperties, Connection, Publish, QueueDeclareOptions};
    let broker = PrivateBroker::start("durable");
    let queue = "durable-across-restart";
    {
        let mut conn = Connection::insecure_open(&broker.url()).expect("connect private node");
        let ch = conn.open_channel(None).expect("channel");
        ch.queue_declare(queue, QueueDeclareOptions { durable: true, ..Default::default() })
            .expect("declare");
        for i in 0..10 {
            let body = format!("message {i}");
            ch.basic_publish(
                "",
                Publish::with_properties(
                    body.as_bytes(),
                    queue,
                    AmqpProperties::default().with_delivery_mode(2),
                ),
            )
            .expect("publish");
        }
        // Closing the channel and connection cleanly means the broker has every publish.
        ch.close().expect("close channel");
        conn.close().expect("close connection");
    }
    assert_eq!(broker.queue_depth(queue), 10, "before the restart");
    broker.stop();
    assert!(!accepts(broker.port()), "port still open after stop");
    broker.start_again();
    assert_eq!(broker.queue_depth(queue), 10, "after the restart");
    assert_eq!(broker.queue_depth("no-such-queue"), 0);
    broker.set_memory_alarm(true);
    broker.set_memory_alarm(false);
}

#[test]
fn tls_node_accepts_the_right_ca() {
    let ca = TestCa::new();
    let broker = PrivateBroker::start_tls("tls", &ca);
    let s_client = |ca_file: &Path| {
        let mut cmd = Command::new("timeout");
        cmd.arg("10")
            .args(["openssl", "s_client", "-connect"])
            .arg(format!("localhost:{}", broker.tls_port()))
            .args(["-servername", "localhost", "-verify_return_error", "-CAfile"])
            .arg(ca_file);
        let run = run_bounded(&mut cmd, Duration::from_secs(15));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&run.output.stdout),
            String::from_utf8_lossy(&run.output.stderr)
        );
        (run.output.status.success(), text)
    };
    let (ok, text) = s_client(&ca.ca_cert);
    assert!(ok && text.contains("Verify return code: 0 (ok)"), "right CA rejected:\n{text}");
    let (ok, text) = s_client(&ca.other_ca_cert);
    assert!(
        !ok && !text.contains("Verify return code: 0 (ok)") && text.contains("verify error"),
        "wrong CA accepted:\n{text}"
    );
    assert!(broker.tls_url().starts_with("amqps://guest:guest@localhost:"));
}
