//! Scaling on one node and on a three-node cluster: messages/s of `consume tabular` with
//! `--workers 1/2/4` (one process) and with 1/2/4 consumer processes (each given the `--url`
//! list rotated, so on a cluster they connect to different nodes), for classic and quorum
//! queues. Prints a table; every case checks that each row arrived exactly once.
//!
//! It boots its own private RabbitMQ nodes (own names, ports and data directories; the
//! broker on 5672 is not touched), measures on the first one alone, then joins the other two
//! to it and measures again; the nodes are stopped and deleted at the end. Needs root (the
//! nodes run as the `rabbitmq` user, sharing its Erlang cookie) and `rabbitmq-server`:
//!
//! ```sh
//! cargo build --release && cargo run --release --example cluster_bench
//! ```
//!
//! Defaults: 50,000 rows (one per message) per case, median of 3 runs: about 6 minutes on
//! 2 cores. `-- --rows 20000 --runs 1` takes about 1.5 minutes.
//!
//! A consumer case is timed from spawning the consumers to the last write into their output
//! files (file mtimes), so neither polling nor the consumers' `--idle-timeout` skews it.

#[path = "common/sample_csv.rs"]
mod sample_csv;

use amiquip::{Connection, QueueDeleteOptions};
use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// How long a node may take to boot or to start its app after joining.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A private RabbitMQ node, stopped and deleted on drop.
struct Node {
    name: String,
    dir: tempfile::TempDir,
    port: u16,
    dist_port: u16,
}

/// `n` distinct free ports, never the ones RabbitMQ's shared node or CLI tools use.
fn free_ports(n: usize) -> Res<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n && held.len() < 1000 {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if !matches!(port, 4369 | 5671 | 5672 | 15672 | 25672 | 35672..=35682) {
            ports.push(port);
        }
        held.push(l);
    }
    if ports.len() < n {
        return Err("no free ports".into());
    }
    Ok(ports)
}

/// Run a RabbitMQ CLI tool bounded by coreutils `timeout`; its stdout, or an error.
fn tool(program: &str, node: &str, args: &[&str]) -> Res<String> {
    let out = Command::new("timeout")
        .args(["60", program, "-n", node])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{program} -n {node} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn id_of_rabbitmq(flag: &str) -> Res<u32> {
    let out = Command::new("id").args([flag, "rabbitmq"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

impl Node {
    /// Boot a fresh standalone node and wait until it serves AMQP.
    fn start(tag: &str) -> Res<Node> {
        let name = format!("bench-{tag}-{}@localhost", std::process::id());
        let dir = tempfile::Builder::new().prefix("mqdemo-cluster-bench-").tempdir()?;
        let ports = free_ports(2)?;
        // Our own config file: the system one would put the listener on 5672.
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{}\nloopback_users.guest = true\n", ports[0]),
        )?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n")?;
        let (uid, gid) = (id_of_rabbitmq("-u")?, id_of_rabbitmq("-g")?);
        for entry in ["", "rabbitmq.conf", "enabled_plugins"] {
            std::os::unix::fs::chown(dir.path().join(entry), Some(uid), Some(gid))
                .map_err(|e| format!("chown to rabbitmq (run as root): {e}"))?;
        }
        let node = Node { name, dir, port: ports[0], dist_port: ports[1] };
        node.boot()?;
        Ok(node)
    }

    fn boot(&self) -> Res<()> {
        let d = self.dir.path();
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("rabbitmq-server -detached for {} failed", self.name).into());
        }
        self.wait_ready()
    }

    fn wait_ready(&self) -> Res<()> {
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while started.elapsed() < READY_DEADLINE {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
                && tool("rabbitmq-diagnostics", &self.name, &["-q", "check_running"]).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let logs = self.dir.path().join("log");
        Err(format!(
            "node {} not ready after {READY_DEADLINE:?} (logs: {})",
            self.name,
            logs.display()
        )
        .into())
    }

    /// Join `seed`'s cluster (this node must be fresh).
    fn join(&self, seed: &Node) -> Res<()> {
        for args in
            [vec!["stop_app"], vec!["reset"], vec!["join_cluster", &seed.name], vec!["start_app"]]
        {
            tool("rabbitmqctl", &self.name, &args)?;
        }
        self.wait_ready()
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let pid_file = self.dir.path().join("pid");
        let pid =
            std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<u32>().ok());
        let stopped = tool("rabbitmqctl", &self.name, &["stop", &pid_file.display().to_string()]);
        if stopped.is_err() {
            // Only this node's own beam process, by the pid it recorded.
            if let Some(pid) = pid {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}

/// One consumer set-up: `--workers N` in one process, or N processes.
#[derive(Clone, Copy)]
enum Shape {
    Workers(usize),
    Processes(usize),
}

struct Env {
    mqdemo: PathBuf,
    dir: PathBuf,
    csv: PathBuf,
    rows: usize,
    runs: usize,
    stop: Arc<AtomicBool>,
}

/// One line of the table.
struct Line {
    setup: String,
    queue: &'static str,
    produce: f64,
    consume: Vec<f64>,
}

const SHAPES: [Shape; 6] = [
    Shape::Workers(1),
    Shape::Workers(2),
    Shape::Workers(4),
    Shape::Processes(1),
    Shape::Processes(2),
    Shape::Processes(4),
];

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| -> Res<usize> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).ok_or(format!("{name} needs a number"))?.parse()?),
            None => Ok(default),
        }
    };
    let (rows, runs) = (flag("--rows", 50_000)?, flag("--runs", 3)?.max(1));
    let exe = std::env::current_exe()?;
    let release = exe.parent().and_then(Path::parent).ok_or("cannot locate the target dir")?;
    let mqdemo = release.join("mqdemo");
    if !mqdemo.exists() {
        return Err(
            format!("{} missing: run `cargo build --release` first", mqdemo.display()).into()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let dir = tempfile::Builder::new().prefix("mqdemo-cluster-bench.").tempdir()?;
    let csv = write_csv(dir.path(), rows)?;
    let env = Env { mqdemo, dir: dir.path().to_path_buf(), csv, rows, runs, stop };

    let started = Instant::now();
    let booted: Vec<Res<Node>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|i| s.spawn(move || Node::start(&i.to_string()).map_err(|e| e.to_string())))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("boot panicked".into())).map_err(Into::into))
            .collect()
    });
    let mut nodes = Vec::new();
    for b in booted {
        nodes.push(b?); // on error, the nodes already booted are dropped (stopped)
    }
    eprintln!(
        "cluster_bench: 3 private nodes booted in {:.1} s; {rows} rows per case, {runs} run(s)",
        started.elapsed().as_secs_f64()
    );

    let mut table = Vec::new();
    let one = [&nodes[0]];
    table.push(measure(&env, "1 node", &one, "classic")?);
    table.push(measure(&env, "1 node", &one, "quorum")?);
    nodes[1].join(&nodes[0])?;
    nodes[2].join(&nodes[0])?;
    let status =
        tool("rabbitmqctl", &nodes[0].name, &["-q", "cluster_status", "--formatter", "json"])?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let running = status["running_nodes"].as_array().map_or(0, Vec::len);
    if running != 3 {
        return Err(format!("cluster_status lists {running} running nodes, want 3").into());
    }
    let all: Vec<&Node> = nodes.iter().collect();
    table.push(measure(&env, "3-node cluster", &all, "quorum")?);
    table.push(measure(&env, "3-node cluster", &all, "classic")?);
    print_table(&table, &env);
    eprintln!("cluster_bench: took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Every shape on one set-up; each case produces `env.rows` rows into a fresh queue first.
fn measure(env: &Env, setup: &str, nodes: &[&Node], queue: &'static str) -> Res<Line> {
    let mut produce = Vec::new();
    let mut consume = Vec::new();
    for shape in SHAPES {
        let mut rates = Vec::new();
        for run in 0..env.runs {
            if env.stop.load(Ordering::SeqCst) {
                return Err("interrupted".into());
            }
            let name = format!("bench-{}-{queue}-{}-{run}", setup.replace(' ', "-"), label(shape));
            produce.push(produce_rows(env, nodes, &name, queue)?);
            let rate = consume_rows(env, nodes, &name, queue, shape)?;
            delete_queue(nodes[0], &name)?;
            eprintln!("  {setup:<15} {queue:<8} {:<12} {rate:>8.0} msg/s", label(shape));
            rates.push(rate);
        }
        consume.push(median(rates));
    }
    Ok(Line { setup: setup.to_string(), queue, produce: median(produce), consume })
}

fn label(shape: Shape) -> String {
    match shape {
        Shape::Workers(n) => format!("workers{n}"),
        Shape::Processes(n) => format!("processes{n}"),
    }
}

/// `--url` naming every node, starting with node `first`.
fn urls(nodes: &[&Node], first: usize) -> String {
    (0..nodes.len()).map(|i| nodes[(first + i) % nodes.len()].url()).collect::<Vec<_>>().join(",")
}

fn queue_args(queue: &str) -> Vec<&str> {
    if queue == "quorum" { vec!["--queue-type", "quorum"] } else { vec![] }
}

/// Produce every row into `name`; msg/s from the wall clock around the run.
fn produce_rows(env: &Env, nodes: &[&Node], name: &str, queue: &str) -> Res<f64> {
    let started = Instant::now();
    let out = Command::new(&env.mqdemo)
        .args(["--url", &urls(nodes, 0), "produce", "tabular", "--file"])
        .arg(&env.csv)
        .args(["--queue", name])
        .args(queue_args(queue))
        .stdin(Stdio::null())
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.contains(&format!("produced {} messages", env.rows)) {
        return Err(format!("produce into {name} failed: {stderr}").into());
    }
    Ok(env.rows as f64 / secs)
}

/// Drain `name` with `shape`; msg/s from spawning the consumers to their last write.
fn consume_rows(env: &Env, nodes: &[&Node], name: &str, queue: &str, shape: Shape) -> Res<f64> {
    let (processes, workers) = match shape {
        Shape::Workers(n) => (1, n),
        Shape::Processes(n) => (n, 1),
    };
    let outputs: Vec<PathBuf> =
        (0..processes).map(|p| env.dir.join(format!("{name}.{p}.jsonl"))).collect();
    let started = SystemTime::now();
    let children: Vec<Child> = outputs
        .iter()
        .enumerate()
        .map(|(p, output)| {
            Command::new(&env.mqdemo)
                .args(["--url", &urls(nodes, p), "consume", "tabular", "--queue", name])
                .args(queue_args(queue))
                .args(["--idle-timeout", "0.5", "--workers", &workers.to_string(), "--output"])
                .arg(output)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for child in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!(
                "consumer of {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
    }
    let mut last = started;
    let (mut lines, mut ids) = (0usize, HashSet::new());
    for output in &outputs {
        if let Ok(meta) = std::fs::metadata(output) {
            last = last.max(meta.modified()?);
        }
        let text = std::fs::read_to_string(output).unwrap_or_default();
        for line in text.lines() {
            lines += 1;
            let row: serde_json::Value = serde_json::from_str(line)?;
            ids.insert(row["ID"].as_i64().ok_or("row without ID")?);
        }
        std::fs::remove_file(output)?;
    }
    if lines != env.rows || ids.len() != env.rows {
        return Err(format!(
            "{name}: {lines} lines, {} distinct rows, want {}",
            ids.len(),
            env.rows
        )
        .into());
    }
    Ok(env.rows as f64 / last.duration_since(started)?.as_secs_f64())
}

fn delete_queue(node: &Node, name: &str) -> Res<()> {
    let mut conn = Connection::insecure_open(&format!("{}?connection_timeout=5000", node.url()))?;
    let ch = conn.open_channel(None)?;
    ch.queue_delete(name, QueueDeleteOptions::default())?;
    conn.close()?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn write_csv(dir: &Path, rows: usize) -> Res<PathBuf> {
    Ok(sample_csv::write(dir, "rows.csv", rows)?)
}

fn print_table(table: &[Line], env: &Env) {
    println!(
        "\n{} rows of 1 row/message, consumer msg/s (median of {}); workers share one process \
         and its first --url, processes each start at a different --url\n",
        env.rows, env.runs
    );
    println!(
        "| set-up | queue | produce | workers 1 | workers 2 | workers 4 | processes 1 | processes 2 | processes 4 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for l in table {
        let cells: Vec<String> = l.consume.iter().map(|r| thousands(*r)).collect();
        println!(
            "| {} | {} | {} | {} |",
            l.setup,
            l.queue,
            thousands(l.produce),
            cells.join(" | ")
        );
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
