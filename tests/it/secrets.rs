//! Secrets and unreachable brokers (issue 11): a password is never printed whatever it
//! contains, lists of URLs split only where a new URL begins, a password can stay off the
//! command line, and a broker that never answers is waited for without spinning.

use crate::proxy::Proxy;
use crate::support::{Output, TestQueue, data, mqdemo, s, wait, wait_until};
use std::borrow::BorrowMut;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Every secret below contains this; it must never appear in anything mqdemo prints.
const MARK: &str = "Qz";

/// Passwords as they are written in a URL: raw `,` `@` `:` are valid there; a raw `/` `?`
/// `#` is not (it would end the authority), and must be refused without being shown.
const WRITTEN: [&str; 7] =
    ["Qz1,Qz2", "Qz1@Qz2", "Qz1:Qz2", "Qz1/Qz2", "Qz1?Qz2", "Qz1#Qz2", "123#Qz"];

/// A port of 127.0.0.1 where nothing listens (connections are refused).
fn refused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The real binary with `AMQP_URL` (and `AMQP_URL_FILE`) taken out of its environment.
fn bare(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqdemo"));
    cmd.args(args)
        .env_remove("AMQP_URL")
        .env_remove("AMQP_URL_FILE")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run(mut cmd: impl BorrowMut<Command>) -> Output {
    wait(cmd.borrow_mut().spawn().expect("mqdemo starts"), crate::support::RUN_DEADLINE)
}

fn assert_no_secret(out: &Output, what: &str) {
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(!text.contains(MARK), "{what}: the password shows on {name}:\n{text}");
    }
}

#[test]
fn a_password_with_any_character_is_never_printed_when_the_broker_is_unreachable() {
    let port = refused_port();
    let csv = data("tabular_data.csv");
    for password in WRITTEN {
        let url = format!("amqp://guest:{password}@127.0.0.1:{port}/%2f");
        let commands: [&[&str]; 2] = [
            &["produce", "tabular", "--file", s(&csv), "--queue", "it-secrets-never"],
            &["consume", "tabular", "--queue", "it-secrets-never", "--count", "1"],
        ];
        for args in commands {
            let by_flag = run(bare(&[&["--url", &url][..], args].concat()));
            let by_env = run(bare(args).env("AMQP_URL", &url));
            for (how, out) in [("--url", by_flag), ("AMQP_URL", by_env)] {
                let what = format!("{how} with password {password:?}, {}", args[0]);
                assert_ne!(out.code(), Some(0), "{what}: {}", out.stderr);
                assert_no_secret(&out, &what);
                let first = out.first_error_line();
                if password.contains(['/', '?', '#']) {
                    assert!(first.contains("percent-encode"), "{what}: {first}");
                    assert_eq!(out.code(), Some(2), "{what}: {}", out.stderr);
                } else {
                    // Parsed as one URL (a comma in the password does not split it): the
                    // error is about the unreachable broker, naming it masked.
                    assert!(first.contains("connection refused"), "{what}: {first}");
                    assert!(
                        first.contains(&format!("amqp://****@127.0.0.1:{port}/")),
                        "{what}: {first}"
                    );
                }
            }
        }
    }
}

#[test]
fn url_lists_split_only_where_a_new_url_begins() {
    let (a, b) = (refused_port(), refused_port());
    let list =
        format!("amqp://guest:Qz1,Qz2@127.0.0.1:{a}/%2f,amqps://guest:Qz3,Qz4@127.0.0.1:{b}/%2f");
    let out = run(bare(&["consume", "tabular", "--count", "1"]).env("AMQP_URL", &list));
    assert_no_secret(&out, "AMQP_URL list");
    // Both URLs were tried (each failure moves to the next): the last one is reported.
    assert!(
        out.first_error_line().contains(&format!("amqps://****@127.0.0.1:{b}/")),
        "{}",
        out.stderr
    );
}

#[test]
fn help_shows_no_credentials() {
    let out = run(bare(&["--help"]).env("AMQP_URL", "amqp://guest:Qz9@h:5672/%2f"));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_no_secret(&out, "--help");
    assert!(!out.stdout.contains("guest:guest"), "{}", out.stdout);
    assert!(out.stdout.contains("--url-file"), "{}", out.stdout);
}

/// A RabbitMQ user of its own with a password made of every awkward character, deleted on
/// drop.
struct TestUser {
    name: String,
}

/// The password of [`TestUser`] and how it is written in a URL (`/ ? # %` percent-encoded,
/// `, @ :` raw).
const AWKWARD: &str = "Qz1/Qz2,Qz3?Qz4@Qz5#Qz6:Qz7%Qz8 Qz9";
const AWKWARD_IN_URL: &str = "Qz1%2FQz2,Qz3%3FQz4@Qz5%23Qz6:Qz7%25Qz8%20Qz9";

impl TestUser {
    fn new() -> TestUser {
        // One user per test: two tests running at once must not add (or delete) the same.
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("it-secrets-{}-{n}", std::process::id());
        let ctl = |args: &[&str]| {
            let status = Command::new("rabbitmqctl").arg("-q").args(args).status();
            assert!(status.is_ok_and(|s| s.success()), "rabbitmqctl {args:?} failed");
        };
        ctl(&["add_user", &name, AWKWARD]);
        let user = TestUser { name };
        ctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        user
    }

    fn url(&self) -> String {
        let base = url::Url::parse(&crate::support::url()).expect("AMQP_URL");
        let host = base.host_str().unwrap_or("localhost");
        let port = base.port().unwrap_or(5672);
        format!("amqp://{}:{AWKWARD_IN_URL}@{host}:{port}/%2f", self.name)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["-q", "delete_user", &self.name]).status();
    }
}

#[test]
fn a_password_with_any_character_logs_in_and_is_never_printed() {
    let user = TestUser::new();
    let url = user.url();
    let q = TestQueue::new("secrets-login");
    let csv = data("tabular_data.csv");
    let produce =
        ["produce", "tabular", "--file", s(&csv), "--queue", &q.name, "--num-records", "3"];
    let out = run(bare(&[&["--url", &url][..], &produce].concat()));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_no_secret(&out, "produce with --url");
    let consume = ["consume", "tabular", "--queue", &q.name, "--count", "3"];
    let out = run(bare(&consume).env("AMQP_URL", &url));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    assert_no_secret(&out, "consume with AMQP_URL");
    // A wrong password for the same user: refused, and still not printed.
    let wrong = url.replace("Qz9", "Qz0");
    let out = run(bare(&[&["--url", &wrong][..], &consume].concat()));
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.first_error_line().contains("refused the login"), "{}", out.stderr);
    assert_no_secret(&out, "wrong password");
}

#[test]
fn url_file_keeps_the_password_off_the_command_line() {
    let user = TestUser::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("amqp_url");
    // As docker-compose secrets and `echo URL > file` write it: with a trailing newline.
    std::fs::write(&file, format!("{}\n", user.url())).expect("write url file");
    let q = TestQueue::new("secrets-url-file");
    let csv = data("tabular_data.csv");
    let produce =
        ["produce", "tabular", "--file", s(&csv), "--queue", &q.name, "--num-records", "2"];
    let out = run(bare(&[&["--url-file", s(&file)][..], &produce].concat()));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_no_secret(&out, "--url-file");
    let out = run(bare(&produce).env("AMQP_URL_FILE", &file));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_no_secret(&out, "AMQP_URL_FILE");
    wait_until(Duration::from_secs(10), "4 rows in the queue", || q.depth() == 4);

    // Both a URL and a URL file: which one was meant is not guessed.
    let out = run(bare(&[&["--url-file", s(&file)][..], &produce].concat())
        .env("AMQP_URL", "amqp://localhost"));
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.first_error_line().contains("--url-file"), "{}", out.stderr);
    // A missing file is named, and nothing is read from elsewhere.
    let missing = dir.path().join("nope");
    let out = run(bare(&[&["--url-file", s(&missing)][..], &produce].concat()));
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.first_error_line().contains(s(&missing)), "{}", out.stderr);
}

// ---- a broker that never answers ----

/// Clock ticks per second for /proc/PID/stat.
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// (state, user + system CPU ticks of every thread) of a process, from /proc/PID/stat.
fn proc_stat(pid: u32) -> (char, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let state = fields.first().and_then(|f| f.chars().next()).unwrap_or('?');
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (state, tick(11) + tick(12)) // utime, stime (fields 14 and 15 of proc(5))
}

/// CPU used by `pid` over `window`, as a share of that wall time; the process must still be
/// running at the end (else the window measured nothing).
fn cpu_share(pid: u32, window: Duration) -> f64 {
    let (_, before) = proc_stat(pid);
    let started = Instant::now();
    std::thread::sleep(window); // a measuring interval, not a synchronisation
    let (state, after) = proc_stat(pid);
    assert!(state != 'Z' && state != 'X', "mqdemo ended inside the measuring window");
    (after - before) as f64 / clock_ticks() as f64 / started.elapsed().as_secs_f64()
}

/// A TCP server that accepts every connection and reads what comes, never writing a byte:
/// a port that is open but never speaks AMQP.
struct SilentServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut open = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        acc.fetch_add(1, Ordering::SeqCst);
                        let _ = sock.set_nonblocking(true);
                        open.push(sock);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
                let mut buf = [0u8; 4096];
                for sock in &mut open {
                    while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
        });
        SilentServer { port, accepted, stop, thread: Some(thread) }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listener whose accept queue is full, so the kernel drops new SYNs: to a client it is an
/// address whose packets vanish (no answer, not a refusal).
struct DroppingListener {
    port: u16,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl DroppingListener {
    fn start() -> DroppingListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let mut queued = Vec::new();
        // Never accepted: fill the backlog until a connection attempt gets no answer.
        for _ in 0..10_000 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => queued.push(s),
                Err(_) => {
                    return DroppingListener {
                        port: addr.port(),
                        _listener: listener,
                        _queued: queued,
                    };
                }
            }
        }
        panic!("the accept queue of {addr} never filled");
    }
}

/// True while `pid` has a socket to 127.0.0.1:`port` still waiting for the SYN's answer.
fn syn_sent_to(port: u16) -> bool {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let remote = format!("0100007F:{port:04X}");
    tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(2) == Some(&remote.as_str()) && f.get(3) == Some(&"02")
    })
}

const CPU_LIMIT: f64 = 0.2;

/// A consumer of a queue that is never reached, given 4 s to connect to `url`.
fn consume_within_4s(url: &str) -> crate::support::Watched {
    let args = ["--url", url, "--connect-timeout", "4", "consume", "tabular"];
    let mut args = args.to_vec();
    args.extend(["--queue", "it-secrets-never", "--count", "1"]);
    mqdemo(&args).watch()
}

#[test]
fn dropped_packets_fail_within_the_connect_timeout_without_spinning() {
    let black = DroppingListener::start();
    let url = format!("amqp://guest:Qz1@127.0.0.1:{}/%2f", black.port);
    let started = Instant::now();
    let run = consume_within_4s(&url);
    wait_until(Duration::from_secs(3), "mqdemo's SYN waiting for an answer", || {
        syn_sent_to(black.port)
    });
    let share = cpu_share(run.id(), Duration::from_secs(2));
    let out = run.finish(Duration::from_secs(30));
    assert!(
        share < CPU_LIMIT,
        "mqdemo used {:.0}% of a CPU while waiting:\n{}",
        share * 100.0,
        out.stderr
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let first = out.first_error_line();
    assert!(
        first.contains("could not connect")
            && first.contains(&format!("amqp://****@127.0.0.1:{}/", black.port))
            && first.contains("within 4.0 s")
            && first.contains("--connect-timeout"),
        "{first}"
    );
    assert_no_secret(&out, "dropped packets");
}

#[test]
fn silent_server_fails_within_the_connect_timeout_without_spinning() {
    let silent = SilentServer::start();
    let url = format!("amqps://guest:Qz1@127.0.0.1:{}/%2f", silent.port);
    for url in [url.replace("amqps", "amqp"), url] {
        let run = consume_within_4s(&url);
        let before = silent.accepted.load(Ordering::SeqCst);
        wait_until(Duration::from_secs(3), "mqdemo's connection", || {
            silent.accepted.load(Ordering::SeqCst) > before
        });
        let share = cpu_share(run.id(), Duration::from_secs(2));
        let out = run.finish(Duration::from_secs(30));
        assert!(
            share < CPU_LIMIT,
            "{url}: {:.0}% of a CPU while waiting:\n{}",
            share * 100.0,
            out.stderr
        );
        assert_eq!(out.code(), Some(1), "{}", out.stderr);
        let first = out.first_error_line();
        assert!(first.contains("within 4.0 s") && first.contains("--connect-timeout"), "{first}");
        assert!(first.contains(&format!("://****@127.0.0.1:{}/", silent.port)), "{first}");
        assert_no_secret(&out, "silent server");
    }
}

#[test]
fn reconnecting_to_an_address_that_never_answers_backs_off_without_spinning() {
    let q = TestQueue::new("secrets-retry");
    let proxy =
        Proxy::start(url::Url::parse(&crate::support::url()).expect("url").port().unwrap_or(5672));
    let black = DroppingListener::start();
    let dead = format!("amqp://guest:Qz1@127.0.0.1:{}/%2f", black.port);
    let run = mqdemo(&[
        "--url",
        &proxy.url(),
        "--url",
        &dead,
        "--connect-timeout",
        "2",
        "--retry-for",
        "30",
        "consume",
        "tabular",
        "--queue",
        &q.name,
    ])
    .watch();
    wait_until(Duration::from_secs(20), "the consumer on the queue", || consumers(&q) == 1);
    proxy.cut();
    // Attempt 1 goes to the address that never answers (2 s), attempt 2 back to the proxy.
    run.wait_for("reconnecting in", Duration::from_secs(10));
    let share = cpu_share(run.id(), Duration::from_secs(2));
    run.wait_for("reconnected to", Duration::from_secs(20));
    let text = run.stderr();
    assert!(share < CPU_LIMIT, "{:.0}% of a CPU while reconnecting:\n{text}", share * 100.0);
    assert!(text.contains("could not connect"), "{text}");
    run.signal("TERM");
    let out = run.finish(Duration::from_secs(20));
    assert_no_secret(&out, "reconnect");
}

/// Consumers on `q` (0 when it does not exist).
fn consumers(q: &TestQueue) -> u32 {
    let mut conn = crate::support::connect();
    let n = conn.open_channel(None).ok().and_then(|ch| {
        ch.queue_declare_passive(q.name.clone()).ok().and_then(|d| d.declared_consumer_count())
    });
    let _ = conn.close();
    n.unwrap_or(0)
}
