//! Codec throughput benchmarks: CSV -> JSON messages, JSON decode, value typing, and image
//! sniffing/headers. Run with `cargo bench --bench codec`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use csv::StringRecord;
use mqdemo::codec::{image, tabular};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Rows the in-memory CSV is repeated up to for `csv_read_and_encode`.
const BIG_ROWS: usize = 10_000;
/// Rows in the batch body for `json_decode`.
const BATCH_ROWS: usize = 100;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join("data")
}

fn csv_bytes() -> Vec<u8> {
    std::fs::read(data_dir().join("tabular_data.csv")).expect("read tabular_data.csv")
}

/// Header names and data records of the example CSV.
fn csv_records(bytes: &[u8]) -> (Vec<String>, Vec<StringRecord>) {
    let mut rdr = csv::ReaderBuilder::new().from_reader(bytes);
    let header = rdr.headers().expect("csv header").iter().map(str::to_string).collect();
    let rows = rdr.records().collect::<Result<Vec<_>, _>>().expect("csv records");
    (header, rows)
}

fn encoder(header: &[String]) -> tabular::Encoder {
    tabular::Encoder::new("tabular_data.csv", header.iter().map(String::as_str))
}

/// The example CSV (header once) with its data rows repeated to at least `rows` rows.
fn repeated_csv(bytes: &[u8], rows: usize) -> (Vec<u8>, usize) {
    let text = std::str::from_utf8(bytes).expect("utf-8 csv");
    let (header, body) = text.split_once('\n').expect("header line");
    let body = body.trim_end_matches('\n');
    let per_copy = body.lines().count();
    let copies = rows.div_ceil(per_copy);
    let mut out = Vec::with_capacity(header.len() + 1 + copies * (body.len() + 1));
    out.extend_from_slice(header.as_bytes());
    out.push(b'\n');
    for _ in 0..copies {
        out.extend_from_slice(body.as_bytes());
        out.push(b'\n');
    }
    (out, copies * per_copy)
}

fn csv_to_json_encode(c: &mut Criterion) {
    let (header, rows) = csv_records(&csv_bytes());
    let enc = encoder(&header);
    let mut g = c.benchmark_group("csv_to_json_encode");
    g.throughput(Throughput::Elements(rows.len() as u64));

    // Full message per row: JSON body + headers + label + SHA-256 message id.
    g.bench_function("encode_row", |b| {
        b.iter(|| {
            for (i, rec) in rows.iter().enumerate() {
                let msg = enc.encode_row(black_box(rec), i as u64 + 1).expect("row encodes");
                black_box(msg);
            }
        })
    });

    // JSON body only, into a reused buffer (no hashing, no allocation per row).
    g.bench_function("write_object", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            for rec in &rows {
                out.clear();
                enc.write_object(black_box(rec), &mut out).expect("row encodes");
                black_box(&out);
            }
        })
    });

    // JSON body only, but a fresh Vec per row as encode_row does: isolates allocation.
    g.bench_function("write_object_fresh_vec", |b| {
        b.iter(|| {
            for rec in &rows {
                let mut out = Vec::with_capacity(header.len() * 16);
                enc.write_object(black_box(rec), &mut out).expect("row encodes");
                black_box(out);
            }
        })
    });

    // The message id alone (SHA-256 over prefix + body) for each row's body.
    let bodies: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            enc.write_object(r, &mut out).expect("row encodes");
            out
        })
        .collect();
    g.bench_function("message_id_only", |b| {
        b.iter(|| {
            for (i, body) in bodies.iter().enumerate() {
                let id = mqdemo::codec::message_id(
                    mqdemo::codec::Kind::Tabular,
                    "tabular_data.csv",
                    &(i + 1).to_string(),
                    black_box(body),
                );
                black_box(id);
            }
        })
    });
    // The raw SHA-256 of the same input message_id hashes, without the position string,
    // hex formatting or String allocation: splits hashing from the rest of message_id.
    g.bench_function("sha256_only", |b| {
        b.iter(|| {
            for body in &bodies {
                let mut h = Sha256::new();
                for part in [&b"mqdemo/1"[..], b"tabular", b"tabular_data.csv", b"123"] {
                    h.update(part);
                    h.update([0u8]);
                }
                h.update(black_box(body));
                black_box(h.finalize());
            }
        })
    });
    g.finish();
}

fn csv_read_and_encode(c: &mut Criterion) {
    let (big, n_rows) = repeated_csv(&csv_bytes(), BIG_ROWS);
    let mut g = c.benchmark_group("csv_read_and_encode");
    g.throughput(Throughput::Elements(n_rows as u64));
    g.sample_size(20);
    g.bench_function(BenchmarkId::new("read_encode_row", n_rows), |b| {
        b.iter(|| {
            let mut rdr = csv::ReaderBuilder::new().from_reader(black_box(big.as_slice()));
            let header = rdr.headers().expect("csv header").clone();
            let enc = tabular::Encoder::new("tabular_data.csv", header.iter());
            let mut rec = StringRecord::new();
            let mut row = 0u64;
            while rdr.read_record(&mut rec).expect("csv record") {
                row += 1;
                black_box(enc.encode_row(&rec, row).expect("row encodes"));
            }
            row
        })
    });
    // What `produce tabular` runs: the file through csv_input (guard for quotes and row
    // length, header check) and the encoder; compare with read_encode_row (bare csv).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.csv");
    std::fs::write(&path, &big).expect("write big.csv");
    g.bench_function(BenchmarkId::new("csv_input_read_encode_row", n_rows), |b| {
        b.iter(|| {
            let format = mqdemo::config::CsvFormat::default();
            let mut input = mqdemo::csv_input::CsvInput::open(&path, &format).expect("opens");
            let enc = input.encoder();
            let mut rec = StringRecord::new();
            let mut row = 0u64;
            while let mqdemo::csv_input::Next::Row(_) = input.read(&mut rec).expect("record") {
                row += 1;
                black_box(enc.encode_row(&rec, row).expect("row encodes"));
            }
            row
        })
    });
    g.finish();
}

fn json_decode(c: &mut Criterion) {
    let (header, rows) = csv_records(&csv_bytes());
    let enc = encoder(&header);
    let mut one = Vec::new();
    enc.write_object(&rows[0], &mut one).expect("row encodes");
    let mut batch = vec![b'['];
    for (i, rec) in rows.iter().cycle().take(BATCH_ROWS).enumerate() {
        if i > 0 {
            batch.push(b',');
        }
        enc.write_object(rec, &mut batch).expect("row encodes");
    }
    batch.push(b']');

    let mut g = c.benchmark_group("json_decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_row", |b| b.iter(|| tabular::decode(black_box(&one)).expect("decodes")));
    g.throughput(Throughput::Elements(BATCH_ROWS as u64));
    g.bench_function(BenchmarkId::new("batch", BATCH_ROWS), |b| {
        b.iter(|| tabular::decode(black_box(&batch)).expect("decodes"))
    });
    g.finish();
}

fn type_value(c: &mut Criterion) {
    let fields = ["123", "-7", "1.5", "", "abc", "007"];
    let mut g = c.benchmark_group("type_value");
    g.throughput(Throughput::Elements(fields.len() as u64));
    g.bench_function("mix", |b| {
        b.iter(|| {
            for f in fields {
                black_box(tabular::type_value(black_box(f)));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    for f in fields {
        let name = if f.is_empty() { "empty" } else { f };
        g.bench_with_input(BenchmarkId::new("field", name), f, |b, f| {
            b.iter(|| tabular::type_value(black_box(f)))
        });
    }
    g.finish();
}

fn image_files() -> Vec<(String, Vec<u8>)> {
    let root = data_dir().join("images");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read image dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(&root).expect("under root");
                let rel =
                    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>();
                files.push((rel.join("/"), std::fs::read(&path).expect("read image")));
            }
        }
    }
    files.sort();
    files
}

fn image_sniff_and_headers(c: &mut Criterion) {
    let files = image_files();
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let mut g = c.benchmark_group("image_sniff_and_headers");
    g.throughput(Throughput::Bytes(total));
    g.bench_function("sniff_all", |b| {
        b.iter(|| {
            for (_, bytes) in &files {
                black_box(image::sniff(black_box(bytes)));
            }
        })
    });
    // encode takes the Vec by value; the clone (a memcpy of a few KiB) is part of the cost,
    // as it is for the producer that reads the file into a fresh Vec.
    g.bench_function("encode_all", |b| {
        b.iter(|| {
            for (name, bytes) in &files {
                black_box(image::encode(name, black_box(bytes.clone())).expect("image"));
            }
        })
    });
    for (name, bytes) in &files {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", name), bytes, |b, bytes| {
            b.iter(|| image::encode(name, black_box(bytes.clone())).expect("image"))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1200))
        .sample_size(30)
}

/// The group lives in a private module: `criterion_group!` makes an undocumented `pub fn`.
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = config();
        targets = csv_to_json_encode, csv_read_and_encode, json_decode, type_value,
            image_sniff_and_headers
    }
}
criterion_main!(group::benches);
