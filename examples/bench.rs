//! The benchmark suite: in ONE run, on the same broker and the same generated data, a raw
//! amiquip loop (the ceiling), mqdemo's own commands, and pika scripts written like the
//! original demo; prints a table of medians, ratios and mqdemo's peak RSS, and verifies that
//! every message arrived.
//!
//! Run: `benches/run.sh [--quick]` (builds in release mode, then runs this example).

#[path = "common/sample_csv.rs"]
mod sample_csv;

use amiquip::{
    Confirm, ConfirmSmoother, Connection, ConsumerMessage, ConsumerOptions, Publish,
    QueueDeclareOptions,
};
use mqdemo::codec::{Message, image, text};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One measured case: rows/s (or MB/s) for each contender.
#[derive(Default)]
struct Row {
    case: String,
    unit: &'static str,
    ceiling: Option<f64>,
    mqdemo: Option<f64>,
    pika: Option<f64>,
    pika_confirm: Option<f64>,
    rss_kb: Option<u64>,
    note: String,
}

struct Env {
    quick: bool,
    url: String,
    runs: usize,
    rows: usize,
    dir: PathBuf,
    mqdemo: PathBuf,
    python: Option<String>,
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only WORD`: run just the cases whose name contains WORD (e.g. "image").
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let dir = tempfile::Builder::new().prefix("mqdemo-bench.").tempdir()?;
    let exe = std::env::current_exe()?;
    let release = exe.parent().and_then(Path::parent).ok_or("cannot locate target dir")?;
    let env = Env {
        url,
        runs: match args.iter().position(|a| a == "--runs").and_then(|i| args.get(i + 1)) {
            Some(n) => n.parse().map_err(|_| "--runs takes a number")?,
            None if quick => 1,
            None => 3,
        },
        rows: if quick { 5_000 } else { 100_000 },
        quick,
        dir: dir.path().to_path_buf(),
        mqdemo: release.join("mqdemo"),
        python: pika_python(),
    };
    if !env.mqdemo.exists() {
        return Err(
            format!("{} missing: run benches/run.sh (it builds it)", env.mqdemo.display()).into()
        );
    }
    let csv = write_csv(&env.dir, env.rows)?;
    let images = write_images(&env.dir, quick)?;
    let texts = write_texts(&env.dir, quick)?;
    eprintln!(
        "bench: {} rows, {} image bytes, {} runs each; broker {}",
        env.rows,
        dir_bytes(&images),
        env.runs,
        mask(&env.url)
    );
    type Case<'a> = (&'a str, Box<dyn Fn() -> Res<Row> + 'a>);
    let cases: Vec<Case<'_>> = vec![
        ("produce tabular", Box::new(|| produce_tabular(&env, &csv, 1))),
        ("consume tabular", Box::new(|| consume_tabular(&env, &csv, 1))),
        ("produce tabular batch", Box::new(|| produce_tabular(&env, &csv, 100))),
        ("consume tabular batch", Box::new(|| consume_tabular(&env, &csv, 100))),
        ("produce image", Box::new(|| files(&env, "image", &images, true, 1))),
        ("consume image", Box::new(|| files(&env, "image", &images, false, 1))),
        ("consume image workers", Box::new(|| files(&env, "image", &images, false, 4))),
        ("produce text", Box::new(|| files(&env, "text", &texts, true, 1))),
        ("consume text", Box::new(|| files(&env, "text", &texts, false, 1))),
        ("consume text workers", Box::new(|| files(&env, "text", &texts, false, 4))),
        ("consume tabular metrics", Box::new(|| consume_metrics(&env, &csv))),
        ("replay stream", Box::new(|| replay_stream(&env, &csv))),
    ];
    let mut table = Vec::new();
    for (name, case) in &cases {
        if only.as_deref().is_none_or(|w| name.contains(w)) {
            table.push(case()?);
        }
    }
    if !table.is_empty() {
        print_table(&table, &env);
    }
    if only.as_deref().is_none_or(|w| "pipe batch".contains(w)) {
        pipe_batching(&env, &csv)?;
    }
    Ok(())
}

fn mask(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if s < at => format!("{}****{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// A python3 that can import pika, if any (set PYTHON to choose).
fn pika_python() -> Option<String> {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok =
        Command::new(&py).args(["-c", "import pika"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

// ---------- data ----------

fn write_csv(dir: &Path, rows: usize) -> Res<PathBuf> {
    Ok(sample_csv::write(dir, "credit.csv", rows)?)
}

/// Images of mixed sizes, 5 KB to 5 MB: a real PNG header (sniffable, with dimensions)
/// followed by incompressible filler.
fn write_images(dir: &Path, quick: bool) -> Res<PathBuf> {
    let root = dir.join("images");
    std::fs::create_dir_all(&root)?;
    let png =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/images/gradient.png"))?;
    let sizes: &[usize] = if quick {
        &[5_000, 50_000, 500_000, 2_000_000]
    } else {
        &[5_000, 20_000, 100_000, 500_000, 1_000_000, 5_000_000]
    };
    let copies = if quick { 3 } else { 20 };
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for (i, size) in sizes.iter().cycle().take(sizes.len() * copies).enumerate() {
        let mut bytes = png.clone();
        while bytes.len() < *size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(root.join(format!("img{i:04}.png")), bytes)?;
    }
    Ok(root)
}

fn write_texts(dir: &Path, quick: bool) -> Res<PathBuf> {
    let root = dir.join("texts");
    std::fs::create_dir_all(&root)?;
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/data/texts/review_positive.txt"
    ))?;
    for i in 0..if quick { 200 } else { 2000 } {
        std::fs::write(root.join(format!("doc{i:05}.txt")), sample.repeat(1 + i % 4))?;
    }
    Ok(root)
}

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            let rel = e.path().strip_prefix(dir).ok()?.to_string_lossy().into_owned();
            Some((rel, std::fs::read(e.path()).ok()?))
        })
        .collect();
    v.sort();
    v
}

// ---------- broker helpers ----------

fn depth(url: &str, queue: &str) -> Res<u32> {
    let mut conn = Connection::insecure_open(url)?;
    let ch = conn.open_channel(None)?;
    let n = ch.queue_declare_passive(queue)?.declared_message_count().unwrap_or(0);
    conn.close()?;
    Ok(n)
}

fn reset(url: &str, queue: &str) -> Res<()> {
    let mut conn = Connection::insecure_open(url)?;
    let ch = conn.open_channel(None)?;
    let _ = ch.queue_delete(queue, Default::default());
    conn.close()?;
    Ok(())
}

fn expect_depth(url: &str, queue: &str, want: u32, who: &str) -> Res<()> {
    let got = depth(url, queue)?;
    if got != want {
        return Err(format!("{who}: queue {queue} holds {got} messages, expected {want}").into());
    }
    Ok(())
}

// ---------- the ceiling: a bare amiquip loop ----------

/// The same messages mqdemo sends (body and properties), persistent, to a durable queue,
/// confirms pipelined over a window of 1024: what the client library can do at best.
fn ceiling_publish(url: &str, queue: &str, msgs: &[Message]) -> Res<Duration> {
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ceiling_publish_to(url, queue, durable, msgs)
}

/// [`ceiling_publish`] to a queue declared with `options` (a stream, say).
fn ceiling_publish_to(
    url: &str,
    queue: &str,
    options: QueueDeclareOptions,
    msgs: &[Message],
) -> Res<Duration> {
    let mut conn = Connection::insecure_open(url)?;
    let ch = conn.open_channel(None)?;
    ch.queue_declare(queue, options)?;
    let confirms = ch.listen_for_publisher_confirms()?;
    ch.enable_publisher_confirms()?;
    let mut smoother = ConfirmSmoother::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    let started = Instant::now();
    let mut settle = |c: Confirm, acked: &mut u64| -> Res<()> {
        for c in smoother.process(c) {
            match c {
                Confirm::Ack(_) => *acked += 1,
                Confirm::Nack(_) => return Err("nack".into()),
            }
        }
        Ok(())
    };
    for msg in msgs {
        while sent - acked >= 1024 {
            settle(confirms.recv()?, &mut acked)?;
        }
        let props = mqdemo::amqp::wire_properties(msg);
        ch.basic_publish(
            "",
            Publish {
                body: &msg.body,
                routing_key: queue.to_string(),
                mandatory: true,
                immediate: false,
                properties: props,
            },
        )?;
        sent += 1;
        while let Ok(c) = confirms.try_recv() {
            settle(c, &mut acked)?;
        }
    }
    while acked < sent {
        settle(confirms.recv()?, &mut acked)?;
    }
    // Closing is part of the run, as in mqdemo's own timing.
    conn.close()?;
    Ok(started.elapsed())
}

/// What the ceiling consumer does with each body, as mqdemo's sinks must: append a line to
/// a file (flushed before each ack), or write a file and fsync it (durable before its ack).
#[derive(Clone, Copy)]
enum Sink<'a> {
    Lines(&'a Path),
    Files(&'a Path),
}

/// Prefetch 1000, one multiple-ack per 100 messages (and at the end), after the sink.
fn ceiling_consume(url: &str, queue: &str, count: usize, sink: Sink<'_>) -> Res<(Duration, u64)> {
    ceiling_consume_with(url, queue, ConsumerOptions::default(), count, sink)
}

/// [`ceiling_consume`] with these consumer options (a stream offset, say).
fn ceiling_consume_with(
    url: &str,
    queue: &str,
    options: ConsumerOptions,
    count: usize,
    sink: Sink<'_>,
) -> Res<(Duration, u64)> {
    use std::io::Write;
    // From before connecting, as mqdemo's consume timing is.
    let started = Instant::now();
    let mut conn = Connection::insecure_open(url)?;
    let ch = conn.open_channel(None)?;
    ch.qos(0, 1000, false)?;
    let consumer = ch.basic_consume(queue, options)?;
    let mut lines = match sink {
        Sink::Lines(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
        Sink::Files(d) => {
            std::fs::create_dir_all(d)?;
            None
        }
    };
    let (mut n, mut bytes) = (0usize, 0u64);
    for msg in consumer.receiver().iter() {
        let ConsumerMessage::Delivery(d) = msg else { return Err("consumer ended".into()) };
        n += 1;
        bytes += d.body.len() as u64;
        match (&mut lines, sink) {
            (Some(w), _) => {
                w.write_all(&d.body)?;
                w.write_all(b"\n")?;
            }
            (None, Sink::Files(dir)) => {
                let mut f = std::fs::File::create(dir.join(format!("{n}.bin")))?;
                f.write_all(&d.body)?;
                f.sync_all()?;
            }
            _ => {}
        }
        if n % 100 == 0 || n == count {
            if let Some(w) = &mut lines {
                w.flush()?;
            }
            d.ack_multiple(&ch)?;
        }
        if n == count {
            break;
        }
    }
    let keep = consumer.receiver().clone();
    consumer.cancel()?;
    drop(consumer);
    ch.close()?;
    drop(keep);
    conn.close()?;
    Ok((started.elapsed(), bytes))
}

// ---------- running mqdemo and pika ----------

struct Run {
    seconds: f64,
    messages: u64,
    rss_kb: Option<u64>,
    /// User + system CPU seconds (what the machine's other load changes least).
    cpu: Option<f64>,
}

/// Run mqdemo under /usr/bin/time; seconds and messages from its summary line.
fn mqdemo(env: &Env, args: &[&str]) -> Res<Run> {
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("RSS_KB=%M\nCPU_S=%U %S")
        .arg(&env.mqdemo)
        .arg("--url")
        .arg(&env.url)
        .args(args)
        .stdout(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("mqdemo {} failed:\n{stderr}", args.join(" ")).into());
    }
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("mqdemo: produced") || l.starts_with("mqdemo: consumed"))
        .ok_or("no summary")?;
    let number_after = |word: &str| -> Option<f64> {
        summary.split(word).nth(1)?.split_whitespace().next()?.trim_end_matches(',').parse().ok()
    };
    let messages =
        number_after(" produced ").or_else(|| number_after(" consumed ")).ok_or("no count")? as u64;
    let seconds = number_after(" in ").ok_or("no seconds")?;
    let rss_kb =
        stderr.lines().find_map(|l| l.strip_prefix("RSS_KB=")).and_then(|v| v.trim().parse().ok());
    let cpu = stderr
        .lines()
        .find_map(|l| l.strip_prefix("CPU_S="))
        .and_then(|v| v.split_whitespace().map(|x| x.parse::<f64>().ok()).sum::<Option<f64>>());
    Ok(Run { seconds, messages, rss_kb, cpu })
}

/// Run a pika script; it prints {"messages", "bytes", "seconds"}.
fn pika(env: &Env, script: &str, args: &[&str]) -> Res<Option<Run>> {
    let Some(py) = &env.python else { return Ok(None) };
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pika/").to_string() + script;
    // The demo-style consumers wait forever for missing messages: bound them.
    let out = Command::new("timeout").arg("900").arg(py).arg(path).args(args).output()?;
    if !out.status.success() {
        return Err(
            format!("pika {script} failed: {}", String::from_utf8_lossy(&out.stderr)).into()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii())?;
    Ok(Some(Run {
        seconds: v["seconds"].as_f64().ok_or("seconds")?,
        messages: v["messages"].as_u64().ok_or("messages")?,
        rss_kb: None,
        cpu: None,
    }))
}

fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "localhost".into())
}

// ---------- cases ----------

fn rows_messages(csv: &Path, batch: usize) -> Res<Vec<Message>> {
    let mut rdr = csv::Reader::from_path(csv)?;
    let headers = rdr.headers()?.clone();
    let enc = mqdemo::codec::tabular::Encoder::new("credit.csv", headers.iter());
    let mut msgs = Vec::new();
    let (mut cur, mut n, mut first) = (Vec::new(), 0u64, 1u64);
    for (i, rec) in rdr.records().enumerate() {
        let (rec, row) = (rec?, i as u64 + 1);
        if batch == 1 {
            msgs.push(enc.encode_row(&rec, row).map_err(|e| e.0)?);
            continue;
        }
        if n == 0 {
            first = row;
        }
        cur.push(if n == 0 { b'[' } else { b',' });
        enc.write_object(&rec, &mut cur).map_err(|e| e.0)?;
        n += 1;
        if n == batch as u64 {
            cur.push(b']');
            msgs.push(enc.encode_batch(std::mem::take(&mut cur), first, n));
            n = 0;
        }
    }
    if n > 0 {
        cur.push(b']');
        msgs.push(enc.encode_batch(cur, first, n));
    }
    Ok(msgs)
}

fn file_messages(kind: &str, files: &[(String, Vec<u8>)]) -> Res<Vec<Message>> {
    files
        .iter()
        .map(|(rel, bytes)| match kind {
            "image" => {
                image::encode(rel, bytes.clone()).map_err(|_| format!("{rel}: not an image").into())
            }
            _ => text::encode_file(rel, bytes.clone())
                .map_err(|_| format!("{rel}: not UTF-8").into()),
        })
        .collect()
}

fn produce_tabular(env: &Env, csv: &Path, batch: usize) -> Res<Row> {
    let q = format!("bench-tab-{batch}-{}", std::process::id());
    let bodies = rows_messages(csv, batch)?;
    let msgs = bodies.len() as u32;
    let rows = env.rows as f64;
    let (mut ceil, mut mq, mut pk, mut pkc, mut rss) = (vec![], vec![], vec![], vec![], 0);
    for _ in 0..env.runs {
        reset(&env.url, &q)?;
        let t = ceiling_publish(&env.url, &q, &bodies)?;
        expect_depth(&env.url, &q, msgs, "ceiling")?;
        ceil.push(rows / t.as_secs_f64());
        reset(&env.url, &q)?;
        let batch_s = batch.to_string();
        let r = mqdemo(
            env,
            &[
                "produce",
                "tabular",
                "--file",
                csv.to_str().ok_or("path")?,
                "--queue",
                &q,
                "--batch-size",
                &batch_s,
            ],
        )?;
        expect_depth(&env.url, &q, msgs, "mqdemo")?;
        mq.push(rows / r.seconds);
        rss = rss.max(r.rss_kb.unwrap_or(0));
        if batch == 1 {
            reset(&env.url, &q)?;
            if let Some(p) = pika(
                env,
                "produce_tabular.py",
                &[
                    "--file",
                    csv.to_str().ok_or("path")?,
                    "--queue",
                    &q,
                    "--host",
                    &host_of(&env.url),
                ],
            )? {
                expect_depth(&env.url, &q, msgs, "pika")?;
                pk.push(p.messages as f64 / p.seconds);
            }
        }
    }
    if batch == 1 && env.python.is_some() {
        // One round trip per row is slow: measure it on a slice of the file, once.
        reset(&env.url, &q)?;
        let small = env.dir.join("credit-small.csv");
        let text = std::fs::read_to_string(csv)?;
        let head: Vec<&str> =
            text.lines().take(1 + env.rows.min(if env.quick { 1_000 } else { 5_000 })).collect();
        std::fs::write(&small, head.join("\n") + "\n")?;
        if let Some(p) = pika(
            env,
            "produce_tabular.py",
            &[
                "--file",
                small.to_str().ok_or("path")?,
                "--queue",
                &q,
                "--host",
                &host_of(&env.url),
                "--confirm",
            ],
        )? {
            pkc.push(p.messages as f64 / p.seconds);
        }
    }
    reset(&env.url, &q)?;
    Ok(Row {
        case: if batch == 1 {
            "produce tabular, 1 row/message".into()
        } else {
            format!("produce tabular --batch-size {batch}")
        },
        unit: "rows/s",
        ceiling: median(ceil),
        mqdemo: median(mq),
        pika: median(pk),
        pika_confirm: median(pkc),
        rss_kb: Some(rss),
        note: format!("{msgs} messages verified in the queue"),
    })
}

fn consume_tabular(env: &Env, csv: &Path, batch: usize) -> Res<Row> {
    let q = format!("bench-tabc-{batch}-{}", std::process::id());
    let bodies = rows_messages(csv, batch)?;
    let msgs = bodies.len();
    let rows = env.rows as f64;
    let (mut ceil, mut mq, mut pk, mut rss) = (vec![], vec![], vec![], 0);
    let out = env.dir.join("rows.jsonl");
    for _ in 0..env.runs {
        reset(&env.url, &q)?;
        ceiling_publish(&env.url, &q, &bodies)?;
        let (t, _) =
            ceiling_consume(&env.url, &q, msgs, Sink::Lines(&env.dir.join("ceiling.jsonl")))?;
        ceil.push(rows / t.as_secs_f64());
        expect_depth(&env.url, &q, 0, "ceiling consume")?;
        ceiling_publish(&env.url, &q, &bodies)?;
        let _ = std::fs::remove_file(&out);
        let count = msgs.to_string();
        let r = mqdemo(
            env,
            &[
                "consume",
                "tabular",
                "--queue",
                &q,
                "--count",
                &count,
                "--output",
                out.to_str().ok_or("path")?,
                "--prefetch",
                "1000",
            ],
        )?;
        if r.messages != msgs as u64 {
            return Err(format!("mqdemo consumed {} of {msgs}", r.messages).into());
        }
        expect_depth(&env.url, &q, 0, "mqdemo consume")?;
        mq.push(rows / r.seconds);
        rss = rss.max(r.rss_kb.unwrap_or(0));
        if batch == 1 && env.python.is_some() {
            // Prefetch 1 is slow: measure it on at most 20,000 rows.
            let part = &bodies[..msgs.min(20_000)];
            ceiling_publish(&env.url, &q, part)?;
            let n = part.len().to_string();
            if let Some(p) = pika(
                env,
                "consume_tabular.py",
                &["--queue", &q, "--count", &n, "--host", &host_of(&env.url)],
            )? {
                expect_depth(&env.url, &q, 0, "pika consume")?;
                pk.push(p.messages as f64 / p.seconds);
            }
        }
    }
    reset(&env.url, &q)?;
    Ok(Row {
        case: if batch == 1 {
            "consume tabular to a file".into()
        } else {
            format!("consume tabular, batches of {batch}")
        },
        unit: "rows/s",
        ceiling: median(ceil),
        mqdemo: median(mq),
        pika: median(pk),
        pika_confirm: None,
        rss_kb: Some(rss),
        note: format!("{msgs} messages, {} rows written", env.rows),
    })
}

/// `consume tabular` with `--metrics-addr` against without (issue 15: within 3%): the same
/// messages, runs alternated (which goes first swaps each pair), /metrics scraped every
/// 250 ms while a run with it goes on (Prometheus' default is every 15 s).
fn consume_metrics(env: &Env, csv: &Path) -> Res<Row> {
    let q = format!("bench-metrics-{}", std::process::id());
    let bodies = rows_messages(csv, 1)?;
    let msgs = bodies.len();
    let out = env.dir.join("metrics-rows.jsonl");
    let pairs = if env.quick { 1 } else { env.runs.max(5) };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let (mut with, mut without, mut scrapes, mut rss) = (vec![], vec![], 0, 0);
    let (mut cpu_with, mut cpu_without) = (vec![], vec![]);
    for pair in 0..pairs {
        let order = if pair % 2 == 0 { [true, false] } else { [false, true] };
        for metered in order {
            reset(&env.url, &q)?;
            ceiling_publish(&env.url, &q, &bodies)?;
            let _ = std::fs::remove_file(&out);
            let count = msgs.to_string();
            let mut args = vec!["consume", "tabular", "--queue", &q, "--count", &count];
            args.extend(["--output", out.to_str().ok_or("path")?, "--prefetch", "1000"]);
            if metered {
                args.extend(["--metrics-addr", &addr]);
            }
            let done = std::sync::atomic::AtomicBool::new(false);
            let (r, scraped) = std::thread::scope(|s| {
                let scraper = s.spawn(|| scrape_until(port, &done));
                let r = mqdemo(env, &args);
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                (r, scraper.join().unwrap_or(0))
            });
            let r = r?;
            if r.messages != msgs as u64 {
                return Err(format!("mqdemo consumed {} of {msgs}", r.messages).into());
            }
            expect_depth(&env.url, &q, 0, "mqdemo consume")?;
            rss = rss.max(r.rss_kb.unwrap_or(0));
            let cpu = r.cpu.ok_or("no CPU time from /usr/bin/time")?;
            if metered {
                scrapes += scraped;
                with.push(env.rows as f64 / r.seconds);
                cpu_with.push(cpu);
            } else {
                without.push(env.rows as f64 / r.seconds);
                cpu_without.push(cpu);
            }
        }
    }
    reset(&env.url, &q)?;
    let spread = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(l, h), x| (l.min(*x), h.max(*x)));
        format!("{}-{}", fmt(Some(lo)), fmt(Some(hi)))
    };
    let spreads = format!("runs with {}, without {}", spread(&with), spread(&without));
    let (with, without) = (median(with), median(without));
    let (cpu_with, cpu_without) = (median(cpu_with), median(cpu_without));
    Ok(Row {
        case: "consume tabular to a file, --metrics-addr (vs without)".into(),
        unit: "rows/s",
        ceiling: None,
        mqdemo: with,
        pika: None,
        pika_confirm: None,
        rss_kb: Some(rss),
        note: format!(
            "without: {} rows/s; with/without {}; CPU s with {:.3}, without {:.3} ({} of \
             without's rate); {pairs} alternated pairs ({spreads}); {scrapes} scrapes of \
             /metrics (every 250 ms)",
            fmt(without),
            ratio(with, without),
            cpu_with.unwrap_or(0.0),
            cpu_without.unwrap_or(0.0),
            ratio(cpu_without, cpu_with)
        ),
    })
}

/// Replaying a stream of the rows (one message each) to a file from `first` (issue 16: at
/// least 0.9x): the raw amiquip stream consumer (prefetch 1000, `x-stream-offset: first`, the
/// same JSON-lines sink) against `consume tabular --queue-type stream --offset first`, on the
/// same stream, runs alternated (which goes first swaps each pair).
fn replay_stream(env: &Env, csv: &Path) -> Res<Row> {
    let q = format!("bench-replay-{}", std::process::id());
    let bodies = rows_messages(csv, 1)?;
    let msgs = bodies.len();
    reset(&env.url, &q)?;
    let mut stream = amiquip::FieldTable::new();
    stream.insert("x-queue-type".into(), amiquip::AmqpValue::LongString("stream".into()));
    let options = QueueDeclareOptions { durable: true, arguments: stream, ..Default::default() };
    ceiling_publish_to(&env.url, &q, options, &bodies)?;
    let (out, raw_out) = (env.dir.join("replay.jsonl"), env.dir.join("replay-raw.jsonl"));
    let (mut raw, mut mq, mut rss) = (vec![], vec![], 0);
    let (mut raw_cpu, mut mq_cpu, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..env.runs {
        let order = if pair % 2 == 0 { [true, false] } else { [false, true] };
        let (mut ours_rate, mut raw_rate) = (0.0, 0.0);
        for ours in order {
            if ours {
                let _ = std::fs::remove_file(&out);
                let count = msgs.to_string();
                let mut args = vec!["consume", "tabular", "--queue", &q, "--queue-type"];
                args.extend(["stream", "--offset", "first", "--count", &count, "--prefetch"]);
                args.extend(["1000", "--output", out.to_str().ok_or("path")?]);
                let r = mqdemo(env, &args)?;
                if r.messages != msgs as u64 {
                    return Err(format!("mqdemo replayed {} of {msgs}", r.messages).into());
                }
                rss = rss.max(r.rss_kb.unwrap_or(0));
                ours_rate = env.rows as f64 / r.seconds;
                mq.push(ours_rate);
                mq_cpu.push(r.cpu.ok_or("no CPU time from /usr/bin/time")?);
            } else {
                let mut first = amiquip::FieldTable::new();
                let at = amiquip::AmqpValue::LongString("first".into());
                first.insert("x-stream-offset".into(), at);
                let options = ConsumerOptions { arguments: first, ..Default::default() };
                let cpu = self_cpu();
                let (t, _) =
                    ceiling_consume_with(&env.url, &q, options, msgs, Sink::Lines(&raw_out))?;
                raw_cpu.push(self_cpu() - cpu);
                raw_rate = env.rows as f64 / t.as_secs_f64();
                raw.push(raw_rate);
            }
        }
        pairs.push(ours_rate / raw_rate);
    }
    let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    if lines(&out) != msgs || lines(&raw_out) != msgs {
        return Err(format!(
            "replay wrote {} and {} lines of {msgs}",
            lines(&out),
            lines(&raw_out)
        )
        .into());
    }
    reset(&env.url, &q)?;
    let (raw, mq) = (median(raw), median(mq));
    let (raw_cpu, mq_cpu) = (median(raw_cpu).unwrap_or(0.0), median(mq_cpu).unwrap_or(0.0));
    let pair_ratio = median(pairs.clone()).unwrap_or(0.0);
    let pairs: Vec<String> = pairs.iter().map(|r| format!("{r:.2}")).collect();
    Ok(Row {
        case: "replay a stream from first to a file".into(),
        unit: "rows/s",
        ceiling: raw,
        mqdemo: mq,
        pika: None,
        pika_confirm: None,
        rss_kb: Some(rss),
        note: format!(
            "{msgs} messages, {} alternated pairs; median of the pairs' ratios {pair_ratio:.2}x \
             ({}); CPU s mqdemo {mq_cpu:.2}, raw {raw_cpu:.2}",
            env.runs,
            pairs.join(", ")
        ),
    })
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat (clock
/// ticks of 1/100 s).
fn self_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) end at its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: Vec<f64> =
        rest.split_whitespace().skip(11).take(2).filter_map(|t| t.parse().ok()).collect();
    ticks.iter().sum::<f64>() / 100.0
}

/// GET /metrics on 127.0.0.1:port every 250 ms until `done`; how many answered 200.
fn scrape_until(port: u16, done: &std::sync::atomic::AtomicBool) -> usize {
    use std::io::{Read, Write};
    let mut ok = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let addr = ([127, 0, 0, 1], port).into();
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut text = String::new();
            if s.read_to_string(&mut text).is_ok() && text.starts_with("HTTP/1.1 200") {
                ok += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    ok
}

fn files(env: &Env, kind: &str, dir: &Path, produce: bool, workers: usize) -> Res<Row> {
    let q = format!("bench-{kind}-{}", std::process::id());
    let originals = dir_files(dir);
    let bodies = file_messages(kind, &originals)?;
    let n = bodies.len();
    let mb = bodies.iter().map(|m| m.body.len() as f64).sum::<f64>() / 1e6;
    let (mut ceil, mut mq, mut pk, mut rss) = (vec![], vec![], vec![], 0);
    let dir_s = dir.to_str().ok_or("path")?;
    for run in 0..env.runs {
        reset(&env.url, &q)?;
        if produce {
            let t = ceiling_publish(&env.url, &q, &bodies)?;
            expect_depth(&env.url, &q, n as u32, "ceiling")?;
            ceil.push(mb / t.as_secs_f64());
            reset(&env.url, &q)?;
            let r = mqdemo(env, &["produce", kind, "--directory", dir_s, "--queue", &q])?;
            expect_depth(&env.url, &q, n as u32, "mqdemo")?;
            mq.push(mb / r.seconds);
            rss = rss.max(r.rss_kb.unwrap_or(0));
            reset(&env.url, &q)?;
            if let Some(p) = pika(
                env,
                "produce_files.py",
                &["--directory", dir_s, "--queue", &q, "--host", &host_of(&env.url)],
            )? {
                expect_depth(&env.url, &q, n as u32, "pika")?;
                pk.push(mb / p.seconds);
            }
        } else {
            ceiling_publish(&env.url, &q, &bodies)?;
            let sink_dir = env.dir.join(format!("ceiling-{kind}-{run}"));
            let (t, _) = ceiling_consume(&env.url, &q, n, Sink::Files(&sink_dir))?;
            let _ = std::fs::remove_dir_all(&sink_dir);
            ceil.push(mb / t.as_secs_f64());
            mqdemo(env, &["produce", kind, "--directory", dir_s, "--queue", &q])?;
            let out = env.dir.join(format!("out-{kind}-{run}"));
            let count = n.to_string();
            let w = workers.to_string();
            let r = mqdemo(
                env,
                &[
                    "consume",
                    kind,
                    "--queue",
                    &q,
                    "--count",
                    &count,
                    "--workers",
                    &w,
                    "--output-directory",
                    out.to_str().ok_or("path")?,
                ],
            )?;
            if dir_files(&out) != originals {
                return Err(format!("mqdemo consume {kind}: output differs from input").into());
            }
            mq.push(mb / r.seconds);
            rss = rss.max(r.rss_kb.unwrap_or(0));
            if env.python.is_some() && workers == 1 {
                mqdemo(env, &["produce", kind, "--directory", dir_s, "--queue", &q])?;
                let pout = env.dir.join(format!("pika-{kind}-{run}"));
                if let Some(p) = pika(
                    env,
                    "consume_files.py",
                    &[
                        "--queue",
                        &q,
                        "--count",
                        &count,
                        "--output-directory",
                        pout.to_str().ok_or("path")?,
                        "--host",
                        &host_of(&env.url),
                    ],
                )? {
                    pk.push(mb / p.seconds);
                }
            }
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    reset(&env.url, &q)?;
    Ok(Row {
        case: match (produce, workers) {
            (true, _) => format!("produce {kind} ({n} files, {mb:.0} MB)"),
            (false, 1) => format!("consume {kind} ({n} files, {mb:.0} MB)"),
            (false, w) => format!("consume {kind} --workers {w}"),
        },
        unit: "MB/s",
        ceiling: median(ceil),
        mqdemo: median(mq),
        pika: median(pk),
        pika_confirm: None,
        rss_kb: Some(rss),
        note: if produce {
            "count verified in the queue".into()
        } else {
            "files verified byte for byte".into()
        },
    })
}

// ---------- micro-batching ----------

/// A model with a fixed cost of 5 ms per call (`--framing json-batch`): answers each input
/// with its row and logs each call's batch size. `cost` 0 gives the pipe's own ceiling.
const BATCH_MODEL: &str = r#"
import json, sys, time
cost, log = float(sys.argv[1]), open(sys.argv[2], "a")
for line in sys.stdin:
    batch = json.loads(line)
    if cost: time.sleep(cost)
    log.write(f"{len(batch)}\n"); log.flush()
    print(json.dumps([{"row": r, "score": 0.5} for r in batch]), flush=True)
"#;

/// `pipe --framing json-batch` with a 5 ms model at --batch-size 64 and 1, and at 64 with a
/// model that costs nothing (the pipe's ceiling on this broker), alternated in one run;
/// prints msg/s, the ratio, the target and the batch-fill histogram.
fn pipe_batching(env: &Env, csv: &Path) -> Res<()> {
    let rows = if env.quick { 2_000 } else { 20_000 };
    let (from, to) = (
        format!("bench-batch-in-{}", std::process::id()),
        format!("bench-batch-out-{}", std::process::id()),
    );
    let model = env.dir.join("batch_model.py");
    std::fs::write(&model, BATCH_MODEL)?;
    let configs: [(&str, u16, &str); 3] = [
        ("5 ms model, --batch-size 64", 64, "0.005"),
        ("5 ms model, --batch-size 1", 1, "0.005"),
        ("0 ms model, --batch-size 64 (ceiling)", 64, "0"),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut fill: Vec<usize> = Vec::new();
    let count = rows.to_string();
    for _ in 0..env.runs {
        for (i, (_, batch, cost)) in configs.iter().enumerate() {
            reset(&env.url, &from)?;
            reset(&env.url, &to)?;
            let produced = Command::new(&env.mqdemo)
                .args(["--url", &env.url, "--quiet", "produce", "tabular", "--file"])
                .arg(csv)
                .args(["--queue", &from, "--num-records", &count])
                .output()?;
            if !produced.status.success() {
                return Err(
                    format!("produce: {}", String::from_utf8_lossy(&produced.stderr)).into()
                );
            }
            let log = env.dir.join(format!("batches-{i}.log"));
            let _ = std::fs::remove_file(&log);
            let exec = format!("python3 {} {cost} {}", model.display(), log.display());
            let out = Command::new(&env.mqdemo)
                .args([
                    "--url",
                    &env.url,
                    "pipe",
                    "--from",
                    &from,
                    "--to",
                    &to,
                    "--framing",
                    "json-batch",
                ])
                .args(["--batch-size", &batch.to_string(), "--count", &count, "--exec", &exec])
                .output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let summary = stderr
                .lines()
                .find(|l| l.starts_with("mqdemo: piped"))
                .ok_or_else(|| format!("pipe failed: {stderr}"))?;
            let seconds: f64 = summary
                .split(" in ")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .and_then(|t| t.parse().ok())
                .ok_or("no seconds in the pipe's summary")?;
            expect_depth(&env.url, &to, rows as u32, "pipe")?;
            rates[i].push(rows as f64 / seconds);
            if i == 0 {
                let sizes = std::fs::read_to_string(&log)?;
                fill.extend(sizes.lines().filter_map(|l| l.parse::<usize>().ok()));
            }
        }
    }
    reset(&env.url, &from)?;
    reset(&env.url, &to)?;
    reset(&env.url, &format!("{from}.failed"))?;
    let med: Vec<Option<f64>> = rates.into_iter().map(median).collect();
    println!();
    println!("| pipe --framing json-batch, {rows} rows | msg/s (median of {}) |", env.runs);
    println!("|---|---|");
    for ((name, _, _), m) in configs.iter().zip(&med) {
        println!("| {name} | {} |", fmt(*m));
    }
    let ideal = med[2].map(|c| c.min(64.0 / 0.005));
    println!();
    println!(
        "batched / unbatched: {} (target >= 20x); batched / min(ceiling, 64 / 5 ms = 12800): {} (target >= 0.8x)",
        ratio(med[0], med[1]),
        ratio(med[0], ideal)
    );
    let buckets: [(&str, std::ops::RangeInclusive<usize>); 5] =
        [("1", 1..=1), ("2-15", 2..=15), ("16-31", 16..=31), ("32-63", 32..=63), ("64", 64..=64)];
    let calls = fill.len().max(1);
    let hist: Vec<String> = buckets
        .iter()
        .map(|(name, r)| {
            let n = fill.iter().filter(|s| r.contains(s)).count();
            format!("{name}: {n} ({:.0}%)", 100.0 * n as f64 / calls as f64)
        })
        .collect();
    println!("batch fill at --batch-size 64 (model calls by batch size): {}", hist.join(", "));
    Ok(())
}

// ---------- output ----------

fn fmt(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn print_table(rows: &[Row], env: &Env) {
    println!(
        "| case | unit | ceiling (raw amiquip + same sink work) | mqdemo | pika (no confirms) | pika (confirms) | mqdemo/ceiling | mqdemo/pika | mqdemo/pika+confirms | mqdemo peak RSS | checked |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.case,
            r.unit,
            fmt(r.ceiling),
            fmt(r.mqdemo),
            fmt(r.pika),
            fmt(r.pika_confirm),
            ratio(r.mqdemo, r.ceiling),
            ratio(r.mqdemo, r.pika),
            ratio(r.mqdemo, r.pika_confirm),
            r.rss_kb.map_or("-".into(), |k| format!("{:.1} MB", k as f64 / 1024.0)),
            r.note
        );
    }
    println!();
    println!(
        "medians of {} run(s); {} CPU(s); persistent messages, durable classic queues, confirms on for mqdemo and the ceiling{}",
        env.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if env.python.is_none() {
            "; pika columns empty: pip install -r benches/pika/requirements.txt"
        } else {
            ""
        }
    );
}
