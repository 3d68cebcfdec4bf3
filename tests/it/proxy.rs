//! A TCP proxy inside the test process, for network faults between a client and a broker:
//! [`Proxy::cut`] closes every current connection, [`Proxy::freeze`] makes them go silent.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often idle loops (accept, frozen pumps, blocked reads) look at their flags.
const TICK: Duration = Duration::from_millis(50);
/// How long Drop waits for the proxy's threads.
const JOIN_DEADLINE: Duration = Duration::from_secs(5);

/// One proxied connection: both sockets (clones, for shutdown) and a flag ending its pumps.
struct Link {
    client: TcpStream,
    upstream: TcpStream,
    closed: Arc<AtomicBool>,
}

impl Link {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    frozen: AtomicBool,
    accepted: AtomicUsize,
    /// Bytes that, seen going to the broker, close that connection (a message the broker
    /// would kill the connection for).
    poison: Mutex<Option<Vec<u8>>>,
    links: Mutex<Vec<Link>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A TCP proxy from 127.0.0.1:`port()` to 127.0.0.1:`upstream_port`, two threads per
/// connection; everything is closed and joined on drop.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listen on a free port of 127.0.0.1 and forward each accepted connection to
    /// 127.0.0.1:`upstream_port` (a client whose upstream refuses is closed at once).
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{port}-accept"))
                .spawn(move || accept_loop(&listener, upstream_port, &shared))
                .expect("spawn acceptor")
        };
        Proxy { port, shared, acceptor: Some(acceptor) }
    }

    /// The port clients connect to.
    #[allow(dead_code)]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:PROXYPORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Abruptly close every current connection (shutdown of both sockets, so both the client
    /// and the broker see the connection end); new connections are still accepted.
    pub fn cut(&self) {
        for link in lock(&self.shared.links).drain(..) {
            link.close();
        }
    }

    /// Stop forwarding bytes on all current and new connections; sockets stay open, so
    /// both peers just see silence (what they send waits in kernel buffers).
    pub fn freeze(&self) {
        self.shared.frozen.store(true, Ordering::SeqCst);
    }

    /// Resume forwarding on every connection that is still open: bytes held back while
    /// frozen are delivered then (nothing is dropped); a peer that gave up meanwhile has
    /// closed its socket, and that close is forwarded like any other.
    pub fn thaw(&self) {
        self.shared.frozen.store(false, Ordering::SeqCst);
    }

    /// From now on, close any connection on which the client sends `pattern` (within one
    /// read) before it reaches the broker.
    pub fn poison(&self, pattern: &[u8]) {
        *lock(&self.shared.poison) = Some(pattern.to_vec());
    }

    /// Connections accepted so far (including cut ones), e.g. to wait for a reconnect.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join(); // polls `stop` every TICK
        }
        self.cut();
        let pumps: Vec<JoinHandle<()>> = lock(&self.shared.pumps).drain(..).collect();
        let started = Instant::now();
        while started.elapsed() < JOIN_DEADLINE && !pumps.iter().all(|p| p.is_finished()) {
            std::thread::sleep(TICK);
        }
        for p in pumps {
            if p.is_finished() {
                let _ = p.join();
            } else {
                eprintln!("warning: proxy {} left a pump thread running", self.port);
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream_port: u16, shared: &Arc<Shared>) {
    let upstream_addr = SocketAddr::from(([127, 0, 0, 1], upstream_port));
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(TICK);
                continue;
            }
            Err(_) => {
                std::thread::sleep(TICK);
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let upstream = TcpStream::connect_timeout(&upstream_addr, Duration::from_secs(5)).ok();
        let closed = Arc::new(AtomicBool::new(false));
        let (Some(upstream), Ok(client_clone)) = (upstream, client.try_clone()) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = upstream.set_nodelay(true);
        let clones = (client.try_clone(), upstream.try_clone(), upstream.try_clone());
        let (Ok(client_w), Ok(upstream_r), Ok(upstream_keep)) = clones else {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
            continue;
        };
        let mut links = lock(&shared.links);
        // Forget links whose pumps have both ended.
        links.retain(|l| !l.closed.load(Ordering::SeqCst));
        links.push(Link { client: client_clone, upstream: upstream_keep, closed: closed.clone() });
        drop(links);
        let mut pumps = lock(&shared.pumps);
        pumps.retain(|p| !p.is_finished());
        for (from, to, to_broker) in [(client, upstream, true), (upstream_r, client_w, false)] {
            let shared = shared.clone();
            let closed = closed.clone();
            let spawned = std::thread::Builder::new()
                .name("proxy-pump".into())
                .spawn(move || pump(from, to, to_broker, &shared, &closed));
            if let Ok(handle) = spawned {
                pumps.push(handle);
            }
        }
    }
}

/// Copy `from` to `to` until EOF, an error, a cut or the proxy's drop; idle while frozen.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    to_broker: bool,
    shared: &Shared,
    closed: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; 64 * 1024];
    let ended = || shared.stop.load(Ordering::SeqCst) || closed.load(Ordering::SeqCst);
    while !ended() {
        if shared.frozen.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                // Orderly EOF: pass the half-close on, let the other direction finish.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                // Bytes that arrive after freeze() are held back until thaw().
                while shared.frozen.load(Ordering::SeqCst) && !ended() {
                    std::thread::sleep(TICK);
                }
                if ended() {
                    break;
                }
                let poisoned = to_broker
                    && lock(&shared.poison)
                        .as_deref()
                        .is_some_and(|p| buf[..n].windows(p.len()).any(|w| w == p));
                if poisoned {
                    break;
                }
                // A blocked write is released by the shutdown in cut()/drop.
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    closed.store(true, Ordering::SeqCst);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn proxy_forwards_then_cut_closes_the_client() {
    use amiquip::{Connection, QueueDeclareOptions};
    use std::sync::mpsc;

    let shared_url = url::Url::parse(&crate::support::url()).expect("broker url");
    let proxy = Proxy::start(shared_url.port().unwrap_or(5672));
    let queue = format!("it-proxy-{}", std::process::id());
    let declare = |ch: &amiquip::Channel| {
        ch.queue_declare(
            queue.as_str(),
            QueueDeclareOptions { exclusive: true, ..Default::default() },
        )
        .map(|_| ())
    };

    // Forwarding works both ways.
    let mut conn = Connection::insecure_open(&proxy.url()).expect("connect through proxy");
    let ch = conn.open_channel(None).expect("channel");
    declare(&ch).expect("declare through proxy");
    ch.queue_delete(queue.as_str(), Default::default()).expect("delete through proxy");
    assert_eq!(proxy.accepted(), 1);

    // A cut ends the connection: the next call fails quickly instead of hanging.
    proxy.cut();
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let call = conn.open_channel(None).map(|_| ());
        let _ = tx.send((call, conn.close()));
    });
    let (call, close) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a call after cut() did not return within 10 s");
    assert!(call.is_err(), "call after cut() succeeded");
    assert!(close.is_err(), "connection still fine after cut()");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // A freeze is noticed by the client's heartbeat check.
    let mut conn = Connection::insecure_open(&format!("{}?heartbeat=2", proxy.url()))
        .expect("reconnect through proxy");
    assert_eq!(proxy.accepted(), 2);
    let ch = conn.open_channel(None).expect("channel");
    proxy.freeze();
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let queue2 = format!("{queue}-frozen");
    std::thread::spawn(move || {
        let call = ch
            .queue_declare(queue2, QueueDeclareOptions { exclusive: true, ..Default::default() })
            .map(|_| ());
        let _ = tx.send((call, conn.close()));
    });
    let (call, close) = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("frozen connection not declared dead within 15 s");
    assert!(call.is_err(), "call through a frozen proxy succeeded");
    assert!(matches!(close, Err(amiquip::Error::MissedServerHeartbeats)), "{close:?}");
    assert!(started.elapsed() < Duration::from_secs(12), "{:?}", started.elapsed());
    proxy.thaw();
}
