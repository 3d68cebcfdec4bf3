//! `request`: the client of `serve`. Sends rows (CSV or JSON lines, from a file or stdin)
//! as requests (up to --concurrency in flight), matches replies by correlation id, writes one line per row in request order
//! (the answer, or a JSON error object: the server's reason, a timeout, a row that could
//! not be sent), and reports latency percentiles. Any failure fails the run.

use crate::amqp::{Received, RpcClient, with_client};
use crate::codec::{DEADLINE_HEADER, HeaderValue, now_millis};
use crate::config::{Global, RequestConfig};
use crate::csv_input::{self, Item, Opening, Rows};
use crate::output::{Progress, Reporter, Summary};
use color_eyre::eyre::{Result, WrapErr, eyre};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(crate) use crate::output::Outcome;

/// A request in flight.
struct Pending {
    seq: u64,
    sent: Instant,
    label: String,
}

/// Send every row, collect every reply (or its timeout).
pub(crate) fn run(
    global: &Global,
    cfg: &RequestConfig,
    stop: &Arc<AtomicBool>,
    stdout: Box<dyn Write + Send>,
) -> Result<Outcome> {
    let (mut rdr, _) = Rows::open(&cfg.file, &cfg.format, &Opening { regular: false, stop })?;
    let out: Box<dyn Write + Send> = match &cfg.output {
        None => stdout,
        Some(path) => Box::new(crate::csv_output::append(path)?.file),
    };
    let reporter = Reporter::new(!global.quiet, Progress::Open, &format!("⇄ {}", cfg.queue.name));
    let mut run = Run {
        out: BufWriter::new(out),
        pending: HashMap::new(),
        ready: BTreeMap::new(),
        next_out: 0,
        latencies: Vec::new(),
        failed: Vec::new(),
        bytes: 0,
        padded: 0,
        skipped: 0,
        // Unique per run, so concurrent clients never take each other's replies for theirs.
        prefix: format!("{}-{}-", std::process::id(), epoch_nanos()),
    };
    let started = Instant::now();
    let result = with_client(&global.endpoints, &cfg.queue, |client| {
        run.exchange(client, &mut rdr, cfg, stop, &reporter)
    });
    reporter.finish();
    let flushed = run.out.flush().wrap_err("cannot write replies");
    let error = result.err().or(flushed.err());
    for (label, why) in run.failed.iter().take(5) {
        reporter.warn(&format!("no reply to {label}: {why}"));
    }
    let summary = Summary {
        verb: "requested",
        messages: run.latencies.len() as u64,
        bytes: run.bytes,
        elapsed: started.elapsed(),
        skipped: run.skipped,
        failed: run.failed.len() as u64,
        failed_to: None,
        counts: Vec::new(),
        note: match run.padded {
            0 => percentiles(&mut run.latencies),
            1 => format!("padded 1 short row with nulls; {}", percentiles(&mut run.latencies)),
            n => format!("padded {n} short rows with nulls; {}", percentiles(&mut run.latencies)),
        },
    };
    Ok(Outcome { summary, error })
}

struct Run {
    out: BufWriter<Box<dyn Write + Send>>,
    /// correlation id -> request.
    pending: HashMap<String, Pending>,
    /// Replies waiting for an earlier one, by request number (None: it failed).
    ready: BTreeMap<u64, Option<Vec<u8>>>,
    next_out: u64,
    latencies: Vec<Duration>,
    failed: Vec<(String, String)>,
    bytes: u64,
    prefix: String,
    /// Rows shorter than the header, padded with nulls.
    padded: u64,
    /// Rows that could not be sent (named on stderr as they come).
    skipped: u64,
}

impl Run {
    fn exchange(
        &mut self,
        client: &mut RpcClient<'_>,
        rdr: &mut Rows,
        cfg: &RequestConfig,
        stop: &AtomicBool,
        reporter: &Reporter,
    ) -> Result<()> {
        let mut object = Vec::new();
        let mut seq = 0u64;
        let mut more = true;
        loop {
            if stop.load(Ordering::SeqCst) {
                for (_, p) in self.pending.drain() {
                    self.failed.push((p.label, "stopped by a signal".into()));
                }
                return Err(eyre!("stopped by a signal"));
            }
            // Keep --concurrency requests in flight while rows remain.
            while more && self.pending.len() < cfg.concurrency {
                if cfg.num_records.is_some_and(|n| seq >= n) {
                    more = false;
                    break;
                }
                let item = match rdr.next(&mut object) {
                    // A signal while waiting on stdin: handled at the top of the loop.
                    Err(_) if stop.load(Ordering::SeqCst) => break,
                    other => other?,
                };
                match item {
                    Item::End => more = false,
                    Item::Bad { line, why } => {
                        // Skipped and named, as `produce` does; the replies so far are kept,
                        // and its place in the output holds an error line.
                        let what = bad_row(rdr, seq, line, &why);
                        reporter.warn(&format!("skipped {what}"));
                        self.skipped += 1;
                        seq += 1;
                        self.ready.insert(seq, Some(error_line(&format!("line {line}"), &what)));
                        self.write_ready()?;
                    }
                    Item::Row { row, padded, .. } => {
                        let body = std::mem::take(&mut object);
                        let mut msg = rdr.encoder().encode_object(body, row);
                        seq += 1;
                        self.padded += u64::from(padded);
                        // Each request is its own event: two clients sending the same row
                        // must not look like one redelivered message to the server.
                        let id = format!("{}{seq}", self.prefix);
                        msg.message_id = id.clone();
                        msg.route.correlation_id = Some(id.clone());
                        // serve does not answer it past the time this client waits for it.
                        let ttl = i64::try_from(cfg.timeout.as_millis()).unwrap_or(i64::MAX);
                        msg.headers.insert(
                            DEADLINE_HEADER.into(),
                            HeaderValue::Int(now_millis().saturating_add(ttl)),
                        );
                        let label = msg.label.clone();
                        client.send(msg, cfg.timeout)?;
                        self.pending.insert(id, Pending { seq, sent: Instant::now(), label });
                    }
                }
            }
            if self.pending.is_empty() && !more {
                return Ok(());
            }
            self.expire(cfg.timeout)?;
            match client.recv(Duration::from_millis(100))? {
                Received::Reply(r) => {
                    let Some(p) = r.correlation_id.and_then(|c| self.pending.remove(&c)) else {
                        continue; // not ours, or already given up on
                    };
                    if let Some(why) = r.error {
                        // The server could not answer: said at once, in the request's place.
                        self.ready.insert(p.seq, Some(error_line(&p.label, &why)));
                        self.failed.push((p.label, why));
                        self.write_ready()?;
                        continue;
                    }
                    self.latencies.push(p.sent.elapsed());
                    self.bytes += r.body.len() as u64;
                    self.ready.insert(p.seq, Some(r.body));
                    self.write_ready()?;
                    let n = self.latencies.len();
                    reporter.status(|| format!("{n} replies, {} in flight", self.pending.len()));
                }
                Received::Returned(corr) => {
                    if let Some(p) = corr.and_then(|c| self.pending.remove(&c)) {
                        let why = "returned unroutable by the broker";
                        self.ready.insert(p.seq, Some(error_line(&p.label, why)));
                        self.failed.push((p.label, why.into()));
                        self.write_ready()?;
                    }
                }
                Received::Nothing => {}
            }
        }
    }

    /// Give up on requests older than `timeout`.
    fn expire(&mut self, timeout: Duration) -> Result<()> {
        let late: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent.elapsed() > timeout)
            .map(|(c, _)| c.clone())
            .collect();
        for c in late {
            if let Some(p) = self.pending.remove(&c) {
                let why = format!(
                    "no reply within {} s (--timeout); is `mqdemo serve` running on this queue?",
                    timeout.as_secs_f64()
                );
                self.ready.insert(p.seq, Some(error_line(&p.label, &why)));
                self.failed.push((p.label, why));
            }
        }
        self.write_ready()
    }

    /// Write replies in request order as far as they are contiguous.
    fn write_ready(&mut self) -> Result<()> {
        while let Some(entry) = self.ready.first_entry() {
            if *entry.key() != self.next_out + 1 {
                break;
            }
            if let Some(body) = entry.remove() {
                self.out
                    .write_all(&body)
                    .and_then(|()| self.out.write_all(b"\n"))
                    .wrap_err("cannot write replies")?;
            }
            self.next_out += 1;
        }
        Ok(())
    }
}

/// The output line of a request that got no answer: a JSON object naming it and why.
fn error_line(request: &str, why: &str) -> Vec<u8> {
    serde_json::json!({ "error": why, "request": request }).to_string().into_bytes()
}

/// A row `request` cannot send: named, with the fix when it is the first row of a CSV.
fn bad_row(rdr: &Rows, sent: u64, line: u64, why: &str) -> String {
    let hint = match (sent, why, rdr.csv_header_line()) {
        (_, csv_input::NOT_UTF8, _) => format!("; {}", csv_input::encoding_hint()),
        (0, _, Some(header)) => format!("; {}", csv_input::header_hint(header)),
        _ => String::new(),
    };
    format!("{} line {line}: {why}{hint}", rdr.source())
}

fn epoch_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// "latency p50 1.2 ms, p95 3.4 ms, p99 5.0 ms" over the answered requests.
fn percentiles(latencies: &mut [Duration]) -> String {
    if latencies.is_empty() {
        return "no replies".into();
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    format!("latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms", at(0.50), at(0.95), at(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut l: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentiles(&mut l), "latency p50 50.00 ms, p95 95.00 ms, p99 99.00 ms");
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(percentiles(&mut one), "latency p50 7.00 ms, p95 7.00 ms, p99 7.00 ms");
        assert_eq!(percentiles(&mut []), "no replies");
    }
}
