//! Image classification with `mqdemo pipe --framing frames`: image files go through a
//! queue into a model child that labels each one with a nearest-centroid classifier on
//! colour histograms (trained at start-up on the labelled pictures in
//! examples/data/image_classes/train: no downloaded weights), and the labels land in a
//! results queue carrying the image's `source` header (pipe copies the input's headers,
//! except those that describe the input body: size, sha256, width, height).
//!
//! Run: `cargo build --release && cargo run --release --example image_classification`
//! (broker at AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2f).
//!
//! With no arguments this program orchestrates: `mqdemo produce image` on
//! examples/data/image_classes/test, `mqdemo pipe` with itself as the model, then it reads
//! the labels (body and headers) off the results queue, checks every picture got the label
//! of its directory, deletes its queues and exits 0 only if the check passed.
//! `image_classification model [--train DIR]` is the model child: frames (4-byte
//! big-endian length + image bytes) in, frames with `{"label": ..., "distance": ...}` out.

mod common;

use common::{Env, Res};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The bundled pictures: `<label>/<file>` under each.
const TRAIN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/image_classes/train");
const TEST_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/image_classes/test");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => orchestrate(),
        Some("model") => model::run(&args[1..]).map(|()| true),
        Some(other) => Err(format!(
            "unknown argument {other:?}: run with no arguments, or as `model [--train DIR]`"
        )
        .into()),
    };
    common::finish("image_classification", result)
}

/// produce image -> pipe through the classifier -> read labels with headers -> check.
fn orchestrate() -> Res<bool> {
    let env = Env::new("images")?;
    let (images_q, labels_q) = (env.queue("images"), env.queue("labels"));
    let _cleanup = env.cleanup(&[&images_q, &labels_q]);
    let expected = labelled_files(Path::new(TEST_DIR))?;
    println!(
        "image_classification: {} pictures from examples/data/image_classes/test, queues {images_q} -> {labels_q}",
        expected.len()
    );

    let produced = common::run(
        env.mqdemo(&["produce", "image", "--directory", TEST_DIR, "--queue", &images_q]),
        "mqdemo produce image",
    )?;
    println!("  produce: {}", produced.summary());

    let model = env.model_command(&["--train", TRAIN_DIR]);
    let count = expected.len().to_string();
    let piped = common::run(
        env.mqdemo(&[
            "pipe",
            "--from",
            &images_q,
            "--to",
            &labels_q,
            "--framing",
            "frames",
            "--exec",
            &model,
            "--count",
            &count,
        ]),
        "mqdemo pipe",
    )?;
    println!("  pipe:    {}", piped.summary());

    // A downstream consumer of the labels: the body says what, the copied headers say which
    // picture. pipe confirmed every label before it exited, so they are all there.
    let labels = env.take(&labels_q, expected.len(), Duration::from_secs(10))?;
    let mut wrong = Vec::new();
    for delivery in &labels {
        let source = common::header(delivery, "source").unwrap_or_default();
        let answer: Value = serde_json::from_slice(&delivery.body).unwrap_or(Value::Null);
        let label = answer.get("label").and_then(Value::as_str).unwrap_or("?");
        let distance = answer.get("distance").and_then(Value::as_f64).unwrap_or(f64::NAN);
        let want = expected.iter().find(|(s, _)| *s == source).map(|(_, l)| l.as_str());
        let verdict = if want == Some(label) { "ok" } else { "WRONG" };
        println!("    {source:<22} {label:<7} distance {distance:.3}  {verdict}");
        if want != Some(label) {
            wrong.push(format!("{source} labelled {label}, expected {}", want.unwrap_or("?")));
        }
    }
    let right = labels.len() - wrong.len();
    if wrong.is_empty() {
        println!(
            "image_classification: check passed: {right}/{} pictures labelled correctly",
            expected.len()
        );
        Ok(true)
    } else {
        println!(
            "image_classification: check FAILED: {right}/{} right; {}",
            expected.len(),
            wrong.join("; ")
        );
        Ok(false)
    }
}

/// `(<label>/<file> as the source header spells it, label)` for every file under `dir`.
fn labelled_files(dir: &Path) -> Res<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (label, path) in walk_labelled(dir)? {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        out.push((format!("{label}/{file}"), label));
    }
    Ok(out)
}

/// `(label, file)` for every file in the label directories under `dir`, sorted.
fn walk_labelled(dir: &Path) -> Res<Vec<(String, PathBuf)>> {
    let unreadable = |e: std::io::Error| {
        format!(
            "cannot read {}: {e}; it should hold one directory of pictures per label \
             (regenerate with python3 examples/data/generate_image_classes.py)",
            dir.display()
        )
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        if !entry.file_type().map_err(unreadable)?.is_dir() {
            continue;
        }
        let label = entry.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(entry.path()).map_err(unreadable)? {
            out.push((label.clone(), file.map_err(unreadable)?.path()));
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(unreadable(std::io::Error::other("no pictures")).into());
    }
    Ok(out)
}

/// The model child: nearest centroid on colour histograms.
mod model {
    use super::common::{self, Res};
    use serde_json::json;
    use std::io::Cursor;
    use std::path::Path;

    /// Bins per colour channel: 4 x 4 x 4 = 64 bins.
    const BINS: usize = 4;

    pub fn run(args: &[String]) -> Res<()> {
        let train = match args {
            [] => super::TRAIN_DIR.to_string(),
            [flag, dir] if flag == "--train" => dir.clone(),
            _ => return Err("usage: image_classification model [--train DIR]".into()),
        };
        let centroids = train_centroids(Path::new(&train))?;
        eprintln!(
            "image model: {} labels from {train}: {}",
            centroids.len(),
            centroids.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join(", ")
        );
        common::answer_frames(|image| {
            // A picture we cannot decode ends the child with the reason: mqdemo pipe moves
            // that message to the failed queue (x-mqdemo-error) and restarts the model.
            let histogram = histogram(&decode_rgb(image)?);
            let (label, distance) = nearest(&centroids, &histogram);
            let answer = json!({"label": label, "distance": (distance * 1000.0).round() / 1000.0});
            Ok(answer.to_string().into_bytes())
        })
    }

    /// The mean histogram of each label's training pictures.
    pub fn train_centroids(dir: &Path) -> Res<Vec<(String, Vec<f64>)>> {
        let mut centroids: Vec<(String, Vec<f64>, usize)> = Vec::new();
        for (label, path) in super::walk_labelled(dir)? {
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read training picture {}: {e}", path.display()))?;
            let h = histogram(&decode_rgb(&bytes).map_err(|e| format!("{}: {e}", path.display()))?);
            match centroids.iter_mut().find(|(l, _, _)| *l == label) {
                Some((_, sum, n)) => {
                    sum.iter_mut().zip(&h).for_each(|(s, x)| *s += x);
                    *n += 1;
                }
                None => centroids.push((label, h, 1)),
            }
        }
        Ok(centroids
            .into_iter()
            .map(|(label, sum, n)| (label, sum.into_iter().map(|s| s / n as f64).collect()))
            .collect())
    }

    /// The closest centroid by L1 distance (0 = same colours, 2 = no colour in common).
    pub fn nearest<'a>(centroids: &'a [(String, Vec<f64>)], h: &[f64]) -> (&'a str, f64) {
        centroids
            .iter()
            .map(|(label, c)| (label.as_str(), c.iter().zip(h).map(|(a, b)| (a - b).abs()).sum()))
            .min_by(|a: &(&str, f64), b| a.1.total_cmp(&b.1))
            .unwrap_or(("unknown", f64::INFINITY))
    }

    /// The share of pixels in each of the BINS^3 colour cubes.
    pub fn histogram(pixels: &[[u8; 3]]) -> Vec<f64> {
        let mut h = vec![0.0; BINS * BINS * BINS];
        let bin = |v: u8| v as usize * BINS / 256;
        for [r, g, b] in pixels {
            h[(bin(*r) * BINS + bin(*g)) * BINS + bin(*b)] += 1.0;
        }
        let n = pixels.len().max(1) as f64;
        h.iter_mut().for_each(|x| *x /= n);
        h
    }

    /// PNG or JPEG bytes -> RGB pixels.
    pub fn decode_rgb(bytes: &[u8]) -> Res<Vec<[u8; 3]>> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            decode_png(bytes)
        } else if bytes.starts_with(&[0xFF, 0xD8]) {
            decode_jpeg(bytes)
        } else {
            Err(format!("not a PNG or JPEG ({} bytes)", bytes.len()).into())
        }
    }

    fn decode_png(bytes: &[u8]) -> Res<Vec<[u8; 3]>> {
        let mut decoder = png::Decoder::new(Cursor::new(bytes));
        // Palette and low bit depths expanded, 16-bit stripped: 8-bit grey/RGB(A) out.
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info()?;
        let mut buf = vec![0; reader.output_buffer_size().ok_or("PNG too large")?];
        let info = reader.next_frame(&mut buf)?;
        let data = &buf[..info.buffer_size()];
        Ok(match info.color_type {
            png::ColorType::Rgb => data.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect(),
            png::ColorType::Rgba => data.chunks_exact(4).map(|p| [p[0], p[1], p[2]]).collect(),
            png::ColorType::Grayscale => data.iter().map(|&v| [v, v, v]).collect(),
            png::ColorType::GrayscaleAlpha => data.chunks_exact(2).map(|p| [p[0]; 3]).collect(),
            other => return Err(format!("unexpected PNG colour type {other:?}").into()),
        })
    }

    fn decode_jpeg(bytes: &[u8]) -> Res<Vec<[u8; 3]>> {
        let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
        let data = decoder.decode()?;
        let info = decoder.info().ok_or("JPEG without a frame header")?;
        Ok(match info.pixel_format {
            jpeg_decoder::PixelFormat::RGB24 => {
                data.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect()
            }
            jpeg_decoder::PixelFormat::L8 => data.iter().map(|&v| [v, v, v]).collect(),
            other => return Err(format!("unsupported JPEG pixel format {other:?}").into()),
        })
    }
}
