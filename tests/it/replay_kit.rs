//! What the replay tests (replay16 and the attacks16* files) share: stream queues and the
//! command words for them, producing rows, reading rows back, times as RFC 3339, and
//! publishing to a stream as another producer.

use crate::support::{TestQueue, connect, mqdemo, s, url};
use amiquip::{AmqpProperties, Publish};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `ID` of each JSON line (rows or answers); lines that are not JSON are skipped.
pub fn ids(jsonl: &str) -> Vec<u64> {
    jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["ID"].as_u64())
        .collect()
}

/// The IDs stored in the `results` table of `db`, one entry per row (none without the
/// database or the table).
pub fn stored(db: &Path) -> Vec<u64> {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare("SELECT \"ID\" FROM results ORDER BY 1") else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get::<_, i64>(0))
        .expect("query")
        .map(|r| r.expect("row") as u64)
        .collect()
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// Unix seconds as RFC 3339 (UTC), by `date`.
pub fn rfc3339(secs: u64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date runs");
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

/// Publish JSON bodies `{"ID":id,"v":v}` to `q` as another producer (amiquip, persistent,
/// with publisher confirms, waited for), each with `props(id)`.
pub fn publish_rows(q: &TestQueue, rows: &[(u64, &str)], props: impl Fn(u64) -> AmqpProperties) {
    let mut conn = connect();
    let ch = conn.open_channel(None).expect("channel");
    ch.enable_publisher_confirms().expect("confirms");
    let confirms = ch.listen_for_publisher_confirms().expect("listen");
    for (id, v) in rows {
        let body = format!("{{\"ID\":{id},\"v\":\"{v}\"}}");
        let p = props(*id).with_content_type("application/json".into()).with_delivery_mode(2);
        ch.basic_publish("", Publish::with_properties(body.as_bytes(), q.name.clone(), p))
            .expect("publish");
    }
    let mut confirmed = 0;
    while confirmed < rows.len() as u64 {
        match confirms.recv_timeout(Duration::from_secs(10)).expect("a confirm") {
            amiquip::Confirm::Ack(p) => {
                confirmed = if p.multiple { p.delivery_tag } else { confirmed + 1 };
            }
            amiquip::Confirm::Nack(p) => panic!("nacked: {p:?}"),
        }
    }
    let _ = ch.close();
    let _ = conn.close();
}

/// Whether the rows were synced to disk before the checkpoint that covers them: in an
/// `strace -f` log at `trace`, an fdatasync (or an fsync of fd 1, a redirected stdout)
/// between the last rename onto `checkpoint` (a file name) and the one before it (the
/// checkpoint's own file and directory are synced with fsync). The calls, for a message.
pub fn synced_before_checkpoint(trace: &Path, checkpoint: &str) -> (bool, String) {
    let text = std::fs::read_to_string(trace).expect("trace");
    let calls: Vec<&str> =
        text.lines().map(|l| l.split_once(' ').map_or(l, |(_, c)| c).trim_start()).collect();
    let renames: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.starts_with("rename") && c.contains(checkpoint))
        .map(|(i, _)| i)
        .collect();
    let last = *renames.last().expect("the checkpoint renamed into place");
    let before = renames.len().checked_sub(2).map_or(0, |i| renames[i]);
    let synced = calls[before..last]
        .iter()
        .any(|c| c.starts_with("fdatasync(") || c.starts_with("fsync(1)"));
    (synced, calls.join("\n"))
}

/// A stream queue of an attack round (`PREFIX-NAME-pid-n`), and its failed queue, both
/// deleted on drop.
pub fn attack_queue(prefix: &str, name: &str) -> (TestQueue, TestQueue) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let _ = url();
    let name = format!("{prefix}-{name}-{}-{n}", std::process::id());
    (TestQueue::named(format!("{name}.failed")), TestQueue::named(name))
}

/// `words`, `--queue Q --queue-type stream`, then `more`.
pub fn on_stream<'a>(q: &'a TestQueue, words: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    let mut a: Vec<&str> = words.to_vec();
    a.extend(["--queue", q.name.as_str(), "--queue-type", "stream"]);
    a.extend(more);
    a
}

/// Produce rows `ids` into stream `q` with mqdemo (confirmed), from `dir/name`, a CSV `ID,v`.
pub fn produce(q: &TestQueue, dir: &Path, name: &str, ids: impl IntoIterator<Item = u64>) {
    let mut text = String::from("ID,v\n");
    for id in ids {
        text.push_str(&format!("{id},v{id}\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write csv");
    mqdemo(&on_stream(q, &["produce", "tabular"], &["--file", s(&path), "-q"]))
        .run()
        .expect_code(0);
}
