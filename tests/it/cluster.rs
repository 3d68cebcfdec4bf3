//! Scale-out on a three-node RabbitMQ cluster of private nodes ([`Cluster`]): quorum queues,
//! `--url` naming every node, nodes stopped mid-stream, competing consumers on different
//! nodes, a node rejoining. Every scenario ends by counting every message and prints
//! `cluster: <what>: ...` lines (`cargo test --test it cluster -- --nocapture`).
//!
//! One cluster serves every scenario, run one after the other in one test: booting and
//! joining three nodes costs ~15 s, and each scenario leaves all three nodes running with
//! its queue deleted, so the next starts from the same state.

use crate::broker::{NodeSlots, PrivateBroker};
use crate::support::{Output, count_after, count_files, csv_rows, mqdemo, s, tree, wait_until};
use amiquip::{Connection, QueueDeleteOptions};
use serde_json::Value;
use std::cell::Cell;
use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest a cluster-wide condition (membership, leader election, replica catch-up, an empty
/// queue on every node) may take to hold.
const SETTLE: Duration = Duration::from_secs(60);
/// Longest a producer may take after a node failure.
const FINISH: Duration = Duration::from_secs(180);

/// Poll `check` every 250 ms until it returns Ok; after `deadline`, panic with its last
/// complaint.
fn settle<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(t) => return t,
            Err(why) if started.elapsed() >= deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// A CLI tool's `--formatter json` output, or why there is none.
fn json(out: std::process::Output, what: &str) -> Result<Value, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{what} failed: {} {}", stdout.trim(), stderr.trim()));
    }
    serde_json::from_str(&stdout).map_err(|e| format!("{what}: {e} in {stdout:?}"))
}

/// One replica of a quorum queue, as `rabbitmq-queues quorum_status` reports it.
#[derive(Debug)]
struct Member {
    /// Index of the node in the cluster.
    node: usize,
    /// `leader`, `follower`, or what the tool says about an unreachable member.
    state: String,
    commit: Option<u64>,
}

/// Three private nodes joined into one cluster; every node is stopped and deleted on drop.
pub struct Cluster {
    nodes: Vec<PrivateBroker>,
    up: Cell<[bool; 3]>,
    /// The three nodes' claim on the private-node slots, given back after they stop.
    _slots: NodeSlots,
}

impl Cluster {
    /// Boot three fresh nodes (in parallel), join the second and third to the first, and
    /// wait until every node's `cluster_status` lists all three as running.
    pub fn start(name: &str) -> Cluster {
        let slots = NodeSlots::take(3);
        let started = Instant::now();
        let booted: Vec<std::thread::Result<PrivateBroker>> = std::thread::scope(|scope| {
            let slots = &slots;
            let handles: Vec<_> = (0..3)
                .map(|i| {
                    scope.spawn(move || PrivateBroker::start_claimed(&format!("{name}{i}"), slots))
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut nodes = Vec::new();
        let mut failed = None;
        for b in booted {
            match b {
                Ok(node) => nodes.push(node),
                Err(panic) => failed = Some(panic),
            }
        }
        if let Some(panic) = failed {
            drop(nodes); // stop the nodes that did boot
            std::panic::resume_unwind(panic);
        }
        let cluster = Cluster { nodes, up: Cell::new([true; 3]), _slots: slots };
        cluster.nodes[1].join(&cluster.nodes[0]);
        cluster.nodes[2].join(&cluster.nodes[0]);
        cluster.wait_formed();
        eprintln!(
            "cluster: 3 nodes booted and clustered in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            cluster.nodes.iter().map(PrivateBroker::node).collect::<Vec<_>>().join(", ")
        );
        cluster
    }

    fn is_up(&self, i: usize) -> bool {
        self.up.get()[i]
    }

    fn set_up(&self, i: usize, up: bool) {
        let mut all = self.up.get();
        all[i] = up;
        self.up.set(all);
    }

    /// Indexes of the running nodes.
    fn up_nodes(&self) -> Vec<usize> {
        (0..3).filter(|i| self.is_up(*i)).collect()
    }

    /// A running node to ask.
    fn any_up(&self) -> usize {
        self.up_nodes().first().copied().expect("at least one node is up")
    }

    /// `--url` value naming the nodes in this order (comma-separated).
    fn urls(&self, order: &[usize]) -> String {
        order.iter().map(|i| self.nodes[*i].url()).collect::<Vec<_>>().join(",")
    }

    fn index_of_node(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.node() == name)
    }

    fn index_of_port(&self, port: u64) -> Option<usize> {
        self.nodes.iter().position(|n| u64::from(n.port()) == port)
    }

    /// Wait until every running node sees exactly the running nodes as running.
    fn wait_formed(&self) {
        let want: HashSet<String> =
            self.up_nodes().iter().map(|i| self.nodes[*i].node().to_string()).collect();
        settle("cluster_status to list every running node", SETTLE, || {
            for i in self.up_nodes() {
                let status = json(
                    self.nodes[i].ctl(&["-q", "cluster_status", "--formatter", "json"]),
                    "cluster_status",
                )?;
                let running: HashSet<String> = status["running_nodes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                if running != want {
                    return Err(format!("node {i} sees {running:?}, want {want:?}"));
                }
            }
            Ok(())
        });
    }

    /// Stop node `i` (its data is kept).
    fn stop(&self, i: usize) {
        self.nodes[i].stop();
        self.set_up(i, false);
    }

    /// Kill node `i` with SIGKILL (its data is kept).
    fn kill(&self, i: usize) {
        self.nodes[i].kill();
        self.set_up(i, false);
    }

    /// Start node `i` again; returns once the cluster lists it as running everywhere.
    fn rejoin(&self, i: usize) {
        self.nodes[i].start_again();
        self.set_up(i, true);
        self.wait_formed();
    }

    /// The replicas of a quorum queue, asked of a running node.
    fn members(&self, queue: &str) -> Result<Vec<Member>, String> {
        let via = &self.nodes[self.any_up()];
        let status = json(
            via.queues(&["-q", "quorum_status", queue, "--formatter", "json"]),
            "quorum_status",
        )?;
        let list = status.as_array().ok_or_else(|| format!("not a list: {status}"))?;
        list.iter()
            .map(|m| {
                let name = m["Node Name"].as_str().unwrap_or_default();
                let node = self.index_of_node(name).ok_or_else(|| format!("unknown node {m}"))?;
                let state = match &m["Raft State"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Ok(Member { node, state, commit: m["Commit Index"].as_u64() })
            })
            .collect()
    }

    /// The node leading `queue`'s quorum, once a running node leads it (after a leader was
    /// stopped, this waits for the election).
    fn leader(&self, queue: &str) -> usize {
        settle(&format!("a running leader of {queue}"), SETTLE, || {
            let members = self.members(queue)?;
            members
                .iter()
                .find(|m| m.state == "leader" && self.is_up(m.node))
                .map(|m| m.node)
                .ok_or_else(|| format!("{members:?}"))
        })
    }

    /// Wait until all three replicas of `queue` are online with the same commit index (a
    /// rejoined node has caught up); returns that index.
    fn wait_in_sync(&self, queue: &str) -> u64 {
        settle(&format!("three replicas of {queue} in sync"), SETTLE, || {
            let members = self.members(queue)?;
            let healthy = members.len() == 3
                && members.iter().all(|m| matches!(m.state.as_str(), "leader" | "follower"));
            let commits: HashSet<Option<u64>> = members.iter().map(|m| m.commit).collect();
            match commits.into_iter().collect::<Vec<_>>()[..] {
                [Some(c)] if healthy => Ok(c),
                _ => Err(format!("{members:?}")),
            }
        })
    }

    /// The node of every AMQP connection in the cluster (`list_connections` lists them all).
    fn connections(&self) -> Vec<usize> {
        let via = &self.nodes[self.any_up()];
        let out = via.ctl(&["-q", "list_connections", "port", "--formatter", "json"]);
        let list = json(out, "list_connections").unwrap_or_else(|e| panic!("{e}"));
        let mut nodes: Vec<usize> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["port"].as_u64().and_then(|p| self.index_of_port(p)))
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// The node named in the last "reconnected to URL" line of `stderr`.
    fn reconnected_to(&self, stderr: &str) -> Option<usize> {
        let (_, rest) = stderr.rsplit_once("reconnected to ")?;
        let url = rest.split_whitespace().next()?;
        self.nodes.iter().position(|n| url.contains(&format!(":{}/", n.port())))
    }

    /// (ready messages, consumers) of `queue` by a passive declare on node `i`; None if the
    /// node or the queue is not there.
    fn declared(&self, queue: &str, i: usize) -> Option<(u32, u32)> {
        let url = format!("{}?connection_timeout=5000", self.nodes[i].url());
        let mut conn = Connection::insecure_open(&url).ok()?;
        let counts = conn.open_channel(None).ok().and_then(|ch| {
            let q = ch.queue_declare_passive(queue).ok()?;
            Some((q.declared_message_count()?, q.declared_consumer_count()?))
        });
        let _ = conn.close();
        counts
    }

    /// Ready messages in `queue`, asked of a running node (0 while it does not exist).
    fn ready(&self, queue: &str) -> u32 {
        self.declared(queue, self.any_up()).map_or(0, |(m, _)| m)
    }

    /// Wait until every node is up and reports `queue` empty, both in `list_queues` (ready
    /// plus unacknowledged; refreshed every few seconds) and in a passive declare.
    fn wait_drained(&self, queue: &str) {
        settle(&format!("{queue} empty on every node"), SETTLE, || {
            for i in 0..3 {
                if !self.is_up(i) {
                    return Err(format!("node {i} is down"));
                }
                let listed = self.nodes[i].queue_depth(queue);
                let ready = self.declared(queue, i).map(|(m, _)| m);
                if listed != 0 || ready != Some(0) {
                    return Err(format!(
                        "node {i}: list_queues {listed}, passive declare {ready:?}"
                    ));
                }
            }
            Ok(())
        });
    }

    /// Delete `queue` through a running node.
    fn delete_queue(&self, queue: &str) {
        let url = format!("{}?connection_timeout=5000", self.nodes[self.any_up()].url());
        if let Ok(mut conn) = Connection::insecure_open(&url) {
            if let Ok(ch) = conn.open_channel(None) {
                let _ = ch.queue_delete(queue, QueueDeleteOptions::default());
            }
            let _ = conn.close();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Each node's own Drop stops it (bounded) and deletes its data; in parallel, so a
        // teardown costs one node's stop, not three.
        std::thread::scope(|scope| {
            for node in self.nodes.drain(..) {
                scope.spawn(move || drop(node));
            }
        });
    }
}

/// IDs in a JSON-lines file: (distinct ids, total lines). Only complete lines count, so a
/// file another process is appending to can be read.
fn row_ids(jsonl: &Path) -> (HashSet<i64>, usize) {
    let text = std::fs::read_to_string(jsonl).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut seen = HashSet::new();
    let mut lines = 0;
    for line in complete.lines() {
        lines += 1;
        let v: Value = serde_json::from_str(line).expect("json line");
        seen.insert(v["ID"].as_i64().expect("ID"));
    }
    (seen, lines)
}

/// `mqdemo produce tabular` of `csv` into the quorum queue `queue`, with `extra` arguments.
fn produce_rows(urls: &str, csv: &Path, queue: &str, extra: &[&str]) -> crate::support::Mqdemo {
    let mut args = vec!["--url", urls, "produce", "tabular", "--file", s(csv)];
    args.extend_from_slice(&["--queue", queue, "--queue-type", "quorum"]);
    args.extend_from_slice(extra);
    mqdemo(&args)
}

/// Consume the quorum queue `queue` into `out` (JSON lines) until 3 s pass without a message.
fn consume_rows(urls: &str, queue: &str, out: &Path) -> Output {
    mqdemo(&[
        "--url",
        urls,
        "consume",
        "tabular",
        "--queue",
        queue,
        "--queue-type",
        "quorum",
        "--idle-timeout",
        "3",
        "--output",
        s(out),
        "--prefetch",
        "1000",
    ])
    .run()
    .expect_code(0)
}

/// Check that `out` holds each of `ids` exactly once, and print the counts.
fn count_rows(what: &str, out: &Path, ids: RangeInclusive<usize>, consumer: &Output) {
    let (seen, lines) = row_ids(out);
    let n = ids.clone().count();
    let lost = ids.filter(|i| !seen.contains(&(*i as i64))).count();
    let dropped = count_after(&consumer.stderr, "duplicates");
    eprintln!(
        "cluster: {what}: sent {n}, received {}, duplicates dropped {dropped}, written {lines}, lost {lost}",
        lines as u64 + dropped
    );
    assert_eq!(lost, 0, "{what}: rows lost");
    assert_eq!(lines, n, "{what}: duplicate rows written");
}

/// The producer's node (also the queue's leader: the queue was declared there) is stopped
/// mid-stream; the producer moves on to the next --url and re-publishes what was unconfirmed.
/// That node rejoins, then the new leader is stopped; everything is consumed, through the
/// rejoined node, and counted; the stopped leader rejoins and the queue is empty everywhere.
fn producer_fails_over_then_the_leader_is_stopped(cl: &Cluster, dir: &Path) {
    let (q, n) = ("cluster-failover", 15_000);
    let csv = std::fs::read_to_string(csv_rows(dir, "failover.csv", 1..=n)).expect("csv");
    // The rows go through stdin, about 2,000 a second, and the last 100 only once node 0
    // is down: the producer is mid-stream when its node stops however slow the stop is
    // (a paced file was once all sent while `rabbitmqctl stop` ran on a loaded machine).
    let (producer, mut feed) =
        produce_rows(&cl.urls(&[0, 1, 2]), Path::new("-"), q, &[]).watch_fed();
    let (stopped, node_down) = std::sync::mpsc::channel::<()>();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let lines: Vec<&str> = csv.lines().collect();
        let (head, tail) = lines.split_at(lines.len() - 100);
        for chunk in head.chunks(50) {
            let _ = feed.write_all(format!("{}\n", chunk.join("\n")).as_bytes());
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = node_down.recv_timeout(Duration::from_secs(300));
        let _ = feed.write_all(format!("{}\n", tail.join("\n")).as_bytes());
    });
    wait_until(SETTLE, "3,000 rows in the quorum queue", || cl.ready(q) >= 3_000);
    let conns = cl.connections();
    assert!(
        !conns.is_empty() && conns.iter().all(|c| *c == 0),
        "the producer is connected to the first --url: {conns:?}"
    );
    let first_leader = cl.leader(q);
    let before = cl.ready(q);
    assert!(before < n as u32, "the producer was still running");
    cl.stop(0);
    let _ = stopped.send(());
    let _ = feeder.join();
    producer.wait_for("reconnected to", SETTLE);
    let out = producer.finish(FINISH).expect_code(0).stderr_has(&format!("produced {n} messages"));
    let moved_to = cl.reconnected_to(&out.stderr).expect("reconnected to a node");
    let republished = count_after(&out.stderr, "re-published");
    eprintln!(
        "cluster: producer's node 0 (queue leader: node {first_leader}) stopped mid produce \
         at {before} confirmed rows: producer moved to node {moved_to}; sent {n}, confirmed {n}, \
         re-published {republished}"
    );
    assert_ne!(moved_to, 0);

    // With two of three nodes down a quorum queue has no majority: node 0 comes back first.
    cl.rejoin(0);
    let commit = cl.wait_in_sync(q);
    let leader = cl.leader(q);
    cl.stop(leader);
    let new_leader = cl.leader(q);
    eprintln!(
        "cluster: node 0 rejoined and caught up (commit index {commit}); leader node {leader} \
         stopped, node {new_leader} elected"
    );
    let rows = dir.join("failover.jsonl");
    let mut order: Vec<usize> = cl.up_nodes();
    order.sort_by_key(|i| *i != 0); // the rejoined node first, if it is up
    order.push(leader);
    let res = consume_rows(&cl.urls(&order), q, &rows);
    let via = format!("producer's node then leader stopped, consumed via node {}", order[0]);
    count_rows(&via, &rows, 1..=n, &res);
    cl.rejoin(leader);
    cl.wait_drained(q);
    eprintln!("cluster: node {leader} rejoined; {q} empty on all 3 nodes");
    cl.delete_queue(q);
}

/// Three consumers, each connected to a different node (the --url list rotated), share one
/// quorum queue and one output directory while a producer on a follower node streams text
/// files into it; the queue's leader node is stopped mid-stream. Every file must be stored
/// once: files are deduplicated on disk, so redeliveries to another consumer count as
/// duplicates.
fn competing_consumers_on_three_nodes_survive_a_node_failure(cl: &Cluster, dir: &Path) {
    let (q, n) = ("cluster-competing", 3_000);
    let src = dir.join("texts");
    for i in 0..n {
        let sub = src.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(sub.join(format!("t{i:05}.txt")), format!("text file {i}\n").repeat(50))
            .expect("write");
    }
    let out = dir.join("received");
    let consumer = |order: &[usize]| {
        mqdemo(&[
            "--url",
            &cl.urls(order),
            "consume",
            "text",
            "--queue",
            q,
            "--queue-type",
            "quorum",
            "--output-directory",
            s(&out),
            "--prefetch",
            "50",
        ])
        .watch()
    };
    // The first consumer declares the queue, so node 0 leads it; the producer is on node 1.
    let mut consumers = vec![consumer(&[0, 1, 2])];
    wait_until(SETTLE, "the queue is declared", || cl.declared(q, 0).is_some());
    consumers.push(consumer(&[1, 2, 0]));
    consumers.push(consumer(&[2, 0, 1]));
    wait_until(SETTLE, "three consumers attached", || {
        cl.declared(q, 0).is_some_and(|(_, c)| c == 3)
    });
    let producer = mqdemo(&[
        "--url",
        &cl.urls(&[1, 2, 0]),
        "produce",
        "text",
        "--directory",
        s(&src),
        "--queue",
        q,
        "--queue-type",
        "quorum",
        "--interval",
        "0.002",
    ])
    .watch();
    wait_until(SETTLE, "500 files stored", || count_files(&out) >= 500);
    let conns = cl.connections();
    assert!((0..3).all(|i| conns.contains(&i)), "a consumer on every node: {conns:?}");
    let victim = cl.leader(q);
    let stored_before = count_files(&out);
    cl.stop(victim);
    // Consumer i's first --url is node i.
    consumers[victim].wait_for("reconnected to", SETTLE);
    let produced =
        producer.finish(FINISH).expect_code(0).stderr_has(&format!("produced {n} messages"));
    let producer_moved = if produced.stderr.contains("reconnected to") { "yes" } else { "no" };
    settle("every file stored and the queue empty on the running nodes", SETTLE, || {
        let stored = count_files(&out);
        if stored < n {
            // Not there yet: no list_queues (an Erlang VM each) until it could be.
            return Err(format!("{stored} of {n} files"));
        }
        let depths: Vec<(usize, u64, Option<u32>)> = cl
            .up_nodes()
            .into_iter()
            .map(|i| (i, cl.nodes[i].queue_depth(q), cl.declared(q, i).map(|(m, _)| m)))
            .collect();
        if stored == n && depths.iter().all(|(_, listed, ready)| *listed == 0 && *ready == Some(0))
        {
            Ok(())
        } else {
            Err(format!("{stored} of {n} files; (node, list_queues, passive declare) {depths:?}"))
        }
    });
    let (mut received, mut written, mut dropped) = (Vec::new(), 0, 0);
    for (i, consumer) in consumers.into_iter().enumerate() {
        consumer.signal("TERM");
        let res = consumer.finish(Duration::from_secs(30)).expect_code(0);
        // A leader change is the queue's business: consumers on the other nodes go on.
        assert_eq!(
            res.stderr.contains("reconnected to"),
            i == victim,
            "only the consumer on node {victim} reconnects:\n{}",
            res.stderr
        );
        received.push(count_after(&res.stderr, "consumed"));
        written += count_after(&res.stderr, "written");
        dropped += count_after(&res.stderr, "duplicates");
    }
    let stored = tree(&out);
    let lost = n - stored.len().min(n);
    eprintln!(
        "cluster: competing consumers on nodes 0/1/2, leader node {victim} stopped mid stream \
         (at {stored_before} of {n} files): sent {n}, re-published {}, received {} ({}), \
         written {written}, duplicates dropped {dropped}, lost {lost}; only the consumer on \
         node {victim} reconnected; the producer on node 1 reconnected: {producer_moved}",
        count_after(&produced.stderr, "re-published"),
        received.iter().sum::<u64>(),
        received.iter().map(u64::to_string).collect::<Vec<_>>().join(" + "),
    );
    assert_eq!(stored, tree(&src), "byte-exact, each file once, nothing extra");
    assert_eq!(written, n as u64, "each file written by exactly one consumer");
    assert!(received.iter().all(|r| *r > 0), "every consumer took a share: {received:?}");
    cl.rejoin(victim);
    cl.wait_drained(q);
    eprintln!("cluster: node {victim} rejoined; {q} empty on all 3 nodes");
    cl.delete_queue(q);
}

/// A node is down while half the messages are published; it rejoins and catches up; then
/// another node is stopped, so every commit needs the rejoined node's vote, and everything
/// is consumed through the rejoined node alone.
fn a_node_that_missed_messages_rejoins_and_serves_them(cl: &Cluster, dir: &Path) {
    let (q, half) = ("cluster-rejoin", 4_000);
    let first = csv_rows(dir, "rejoin-1.csv", 1..=half);
    let second = csv_rows(dir, "rejoin-2.csv", half + 1..=2 * half);
    produce_rows(&cl.urls(&[0, 1, 2]), &first, q, &[])
        .run()
        .expect_code(0)
        .stderr_has(&format!("produced {half} messages"));
    let late = 2;
    cl.stop(late);
    // Node 2 refuses, so the producer's first connection goes to the next --url.
    produce_rows(&cl.urls(&[2, 0, 1]), &second, q, &[])
        .run()
        .expect_code(0)
        .stderr_has(&format!("produced {half} messages"));
    assert_eq!(cl.ready(q), 2 * half as u32);
    let ahead = cl.members(q).unwrap_or_else(|e| panic!("{e}"));
    let ahead = ahead.iter().filter_map(|m| m.commit).max().unwrap_or(0);
    cl.rejoin(late);
    let commit = cl.wait_in_sync(q);
    let leader = cl.leader(q);
    let other = if leader == late { 0 } else { leader };
    cl.stop(other);
    eprintln!(
        "cluster: node {late} was down while {half} rows were published (the others reached \
         commit index {ahead}), rejoined and caught up to {commit}; node {other} stopped, so \
         node {late} is needed for a majority"
    );
    let rows = dir.join("rejoin.jsonl");
    let res = consume_rows(&cl.urls(&[late]), q, &rows);
    count_rows(
        "node rejoined after missing messages, consumed via it alone",
        &rows,
        1..=2 * half,
        &res,
    );
    cl.rejoin(other);
    cl.wait_drained(q);
    eprintln!("cluster: node {other} rejoined; {q} empty on all 3 nodes");
    cl.delete_queue(q);
}

/// For contrast, a classic queue: it lives on the node that declared it, so while that node
/// is down the queue is unavailable from every node (nothing can be published to it or
/// consumed from it). Producer and consumer, connected elsewhere, say so and keep retrying
/// (--retry-for); when the node rejoins, both resume and every row arrives once.
fn a_classic_queue_waits_for_its_node(cl: &Cluster, dir: &Path) {
    let (q, n) = ("cluster-classic", 6_000);
    let csv = csv_rows(dir, "classic.csv", 1..=n);
    let home = 1;
    let producer = mqdemo(&[
        "--url",
        &cl.urls(&[home, 0, 2]),
        "produce",
        "tabular",
        "--file",
        s(&csv),
        "--queue",
        q,
        "--interval",
        "0.001",
    ])
    .watch();
    wait_until(SETTLE, "the queue is declared", || cl.declared(q, home).is_some());
    let rows = dir.join("classic.jsonl");
    let consumer = mqdemo(&[
        "--url",
        &cl.urls(&[2, 0, home]),
        "consume",
        "tabular",
        "--queue",
        q,
        "--output",
        s(&rows),
    ])
    .watch();
    wait_until(SETTLE, "1,000 rows consumed", || row_ids(&rows).1 >= 1_000);
    let at = row_ids(&rows).1;
    cl.stop(home);
    producer.wait_for("is unavailable", SETTLE);
    consumer.wait_for("is unavailable", SETTLE);
    let others: Vec<Option<(u32, u32)>> = [0, 2].iter().map(|i| cl.declared(q, *i)).collect();
    assert_eq!(others, [None, None], "the queue is unavailable through the other nodes");
    cl.rejoin(home);
    let out = producer.finish(FINISH).expect_code(0).stderr_has(&format!("produced {n} messages"));
    settle("every row consumed and the queue empty", SETTLE, || {
        let (seen, lines) = row_ids(&rows);
        let ready = cl.declared(q, home).map(|(m, _)| m);
        if seen.len() == n && ready == Some(0) {
            Ok(())
        } else {
            Err(format!("{} of {n} rows ({lines} lines), ready {ready:?}", seen.len()))
        }
    });
    consumer.signal("TERM");
    let res = consumer.finish(Duration::from_secs(30)).expect_code(0);
    eprintln!(
        "cluster: classic queue's node {home} stopped at {at} of {n} rows: unavailable through \
         nodes 0 and 2; producer and consumer retried until it rejoined (re-published {})",
        count_after(&out.stderr, "re-published")
    );
    count_rows("classic queue, its node stopped and rejoined", &rows, 1..=n, &res);
    cl.wait_drained(q);
    cl.delete_queue(q);
}

#[test]
fn quorum_queues_on_a_three_node_cluster_lose_nothing_when_nodes_fail() {
    let started = Instant::now();
    let cluster = Cluster::start("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let step = |name: &str, f: &dyn Fn(&Cluster, &Path)| {
        let t = Instant::now();
        f(&cluster, dir.path());
        eprintln!("cluster: {name} took {:.1} s", t.elapsed().as_secs_f64());
    };
    step("producer failover, then leader stop", &producer_fails_over_then_the_leader_is_stopped);
    step("competing consumers", &competing_consumers_on_three_nodes_survive_a_node_failure);
    step("rejoin", &a_node_that_missed_messages_rejoins_and_serves_them);
    step("classic queue", &a_classic_queue_waits_for_its_node);
    drop(cluster);
    eprintln!("cluster: whole suite, boot to teardown, {:.1} s", started.elapsed().as_secs_f64());
}

/// One run of the failover loop: a producer of `n` rows on node `first` (all three --urls),
/// that node stopped once `stop_at` rows are in the queue, then everything counted. Ok is a
/// summary line; Err says what went wrong (the producer's stderr is kept in `dir`).
fn failover_once(cl: &Cluster, dir: &Path, csv: &Path, run: usize) -> Result<String, String> {
    let (q, n) = (format!("failover-loop-{run}"), 50_000);
    let first = run % 3;
    let order = [first, (first + 1) % 3, (first + 2) % 3];
    let stop_at = (n * (20 + (run * 13) % 60) / 100) as u32;
    let extra = ["--retry-for", "120", "--interval", "0.0002"];
    let producer = produce_rows(&cl.urls(&order), csv, &q, &extra).watch();
    wait_until(SETTLE, "rows in the quorum queue", || cl.ready(&q) >= stop_at);
    let conns = cl.connections();
    let node = *conns.first().ok_or("the producer has no connection")?;
    let at = cl.ready(&q);
    let kill = std::env::var_os("MQDEMO_FAILOVER_KILL").is_some();
    if kill {
        cl.kill(node)
    } else {
        cl.stop(node)
    }
    let out = producer.finish(FINISH);
    let (produced, failed) =
        (count_after(&out.stderr, "produced"), count_after(&out.stderr, "failed"));
    let republished = count_after(&out.stderr, "re-published");
    let stderr_file = dir.join(format!("failover-loop-{run}.stderr"));
    let _ = std::fs::write(&stderr_file, &out.stderr);
    cl.rejoin(node);
    let rows = dir.join(format!("failover-loop-{run}.jsonl"));
    let consumer = consume_rows(&cl.urls(&cl.up_nodes()), &q, &rows);
    let (seen, lines) = row_ids(&rows);
    let lost = (1..=n).filter(|i| !seen.contains(&(*i as i64))).count();
    cl.delete_queue(&q);
    let line = format!(
        "run {run}: node {node} {} at {at} rows ({conns:?}); exit {:?}, produced {produced}, \
         failed {failed}, re-published {republished}, received {lines} (+{} duplicates dropped), \
         lost {lost}{}",
        if kill { "killed" } else { "stopped" },
        out.code(),
        count_after(&consumer.stderr, "duplicates"),
        if out.stderr.contains("nacked every message") {
            "; a nack-only connection replaced"
        } else {
            ""
        }
    );
    if out.code() != Some(0) || lost != 0 || produced != n as u64 {
        return Err(format!("{line}; producer stderr in {}", stderr_file.display()));
    }
    Ok(line)
}

/// The failover of a running producer, again and again (issue: 1 run in 5 once ended with
/// every re-publish nacked for the whole --retry-for). Not part of the default run (about
/// 90 s a run): `MQDEMO_FAILOVER_RUNS=10 cargo test --test it failover_loop -- --ignored
/// --nocapture`; with MQDEMO_FAILOVER_KILL set the node is killed (SIGKILL) instead of
/// stopped, and MQDEMO_FAILOVER_LOGS=DIR keeps each producer's stderr.
#[test]
#[ignore = "a long loop: run it by name with --ignored"]
fn failover_loop_every_run_loses_nothing() {
    let runs: usize =
        std::env::var("MQDEMO_FAILOVER_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let cluster = Cluster::start("floop");
    let keep = std::env::var("MQDEMO_FAILOVER_LOGS").map(std::path::PathBuf::from).ok();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = keep.as_deref().unwrap_or(tmp.path());
    let _ = std::fs::create_dir_all(dir);
    let csv = csv_rows(dir, "floop.csv", 1..=50_000);
    let mut bad = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        match failover_once(&cluster, dir, &csv, run) {
            Ok(line) => eprintln!("cluster: {line} ({:.1} s)", t.elapsed().as_secs_f64()),
            Err(line) => {
                eprintln!("cluster: FAILED {line}");
                bad.push(line);
            }
        }
    }
    eprintln!(
        "cluster: failover loop: {} of {runs} runs lost nothing and exited 0",
        runs - bad.len()
    );
    assert!(bad.is_empty(), "{bad:#?}");
}
