//! `mqdemo demo`: produce -> consume -> verify for every kind, on sample data embedded in the
//! binary, against the configured broker, on fresh queues deleted afterwards.

use crate::amqp::{QueueSpec, Session};
use crate::cli::{
    DEFAULT_CONFIRM_TIMEOUT_SECS, DEFAULT_CONFIRM_WINDOW, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PREFETCH,
};
use crate::codec::Kind;
use crate::config::{ConsumeConfig, Global, ProduceConfig, RowFormat, SinkConfig, Source};
use crate::output::{Summary, human_bytes};
use crate::{consume, produce};
use color_eyre::eyre::{Result, WrapErr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

macro_rules! sample {
    ($path:literal) => {
        ($path, include_bytes!(concat!("../examples/data/", $path)) as &[u8])
    };
}

/// The examples/data set (minus its generator), as relative path and bytes.
pub(crate) const SAMPLES: &[(&str, &[u8])] = &[
    sample!("tabular_data.csv"),
    sample!("images/cat_like.jpg"),
    sample!("images/gradient.png"),
    sample!("images/photos/noise.jpg"),
    sample!("images/photos/stripes.png"),
    sample!("images/shapes/circle.png"),
    sample!("images/shapes/squares.jpg"),
    sample!("texts/notes/crlf_lines.txt"),
    sample!("texts/notes/multilingual.txt"),
    sample!("texts/review_negative.txt"),
    sample!("texts/review_positive.txt"),
];

/// One produce -> consume -> verify loop.
struct Case {
    name: &'static str,
    kind: Kind,
    split_lines: bool,
}

const CASES: [Case; 4] = [
    Case { name: "tabular", kind: Kind::Tabular, split_lines: false },
    Case { name: "image", kind: Kind::Image, split_lines: false },
    Case { name: "text", kind: Kind::Text, split_lines: false },
    Case { name: "text --split line", kind: Kind::Text, split_lines: true },
];

struct Row {
    name: &'static str,
    produced: Summary,
    consumed: Summary,
    verified: String,
    ok: bool,
}

/// What the demo found: its report (the table and what to do next) and whether every kind
/// verified.
pub(crate) struct Verdict {
    /// The lines to show.
    pub text: String,
    /// Every kind arrived intact.
    pub ok: bool,
}

/// Run the demo on every kind.
pub(crate) fn run(global: &Global, stop: &Arc<AtomicBool>) -> Result<Verdict> {
    // A refused connection already says how to start a broker.
    let (mut session, _) = Session::open_first(&global.endpoints)?;
    let tmp = tempfile::Builder::new()
        .prefix("mqdemo-demo.")
        .tempdir()
        .wrap_err("cannot create a temp directory")?;
    let data = tmp.path().join("data");
    write_samples(&data)?;
    let quiet = Global { quiet: true, ..global.clone() };
    let mut text = format!("mqdemo demo against {}\n", session.endpoint().masked());
    let mut rows = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let queue = format!("mqdemo-demo-{}-{}-{i}", std::process::id(), case.kind.as_str());
        let out = tmp.path().join(format!("out{i}"));
        let result = run_case(&quiet, case, &queue, &data, &out, stop);
        let deleted = session.delete_queue(&queue);
        let row = result?;
        deleted?;
        rows.push(row);
    }
    let _ = session.close();
    text.push_str(&table(&rows));
    let ok = rows.iter().all(|r| r.ok);
    text.push_str(if ok {
        "all verified; queues deleted. Next: mqdemo produce tabular --file examples/data/tabular_data.csv"
    } else {
        "verification FAILED (see above)"
    });
    Ok(Verdict { text, ok })
}

fn write_samples(root: &Path) -> Result<()> {
    for (rel, bytes) in SAMPLES {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .wrap_err_with(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, bytes)
            .wrap_err_with(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn run_case(
    global: &Global,
    case: &Case,
    queue: &str,
    data: &Path,
    out: &Path,
    stop: &Arc<AtomicBool>,
) -> Result<Row> {
    let source = match case.kind {
        Kind::Tabular => Source::Csv {
            file: data.join("tabular_data.csv"),
            num_records: None,
            batch_size: 1,
            repeat: false,
            format: crate::config::CsvFormat::default(),
        },
        Kind::Image => Source::Files {
            directory: data.join("images"),
            split_lines: false,
            filter: crate::config::FileFilter::default(),
        },
        Kind::Text => Source::Files {
            directory: data.join("texts"),
            split_lines: case.split_lines,
            filter: crate::config::FileFilter::default(),
        },
    };
    let produce_cfg = ProduceConfig {
        kind: case.kind,
        queue: QueueSpec::plain(queue),
        interval: Duration::ZERO,
        publisher: crate::amqp::PublisherOptions {
            window: DEFAULT_CONFIRM_WINDOW as usize,
            window_bytes: crate::config::WINDOW_BYTES,
            confirm_timeout: Duration::from_secs_f64(DEFAULT_CONFIRM_TIMEOUT_SECS),
        },
        max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        run_id: None,
        source,
        publish: crate::config::Publish::default(),
    };
    let produced = produce::run(global, &produce_cfg, stop)?;
    if let Some(e) = produced.error {
        return Err(e.wrap_err(format!("demo: producing {} failed", case.name)));
    }
    let sink = match case.kind {
        Kind::Tabular => SinkConfig::Rows {
            output: Some(out.with_extension("csv")),
            format: RowFormat::CSV,
            with_meta: false,
        },
        _ => SinkConfig::Directory(out.to_path_buf()),
    };
    let consume_cfg = ConsumeConfig {
        kind: case.kind,
        queue: QueueSpec::plain(queue),
        count: Some(produced.summary.messages),
        idle_timeout: Some(Duration::from_secs(10)),
        prefetch: DEFAULT_PREFETCH,
        workers: 1,
        sink,
        // The demo's own data decodes; a message that did not would fail the check below.
        failed: None,
        stream: None,
    };
    let consumed = consume::run(global, &consume_cfg, stop, Box::new(std::io::sink()))?;
    if let Some(e) = consumed.error {
        return Err(e.wrap_err(format!("demo: consuming {} failed", case.name)));
    }
    let (verified, ok) = match case.kind {
        Kind::Tabular => verify_csv(&data.join("tabular_data.csv"), &out.with_extension("csv"))?,
        Kind::Image => verify_tree(&data.join("images"), out)?,
        Kind::Text => verify_tree(&data.join("texts"), out)?,
    };
    let ok = ok && produced.summary.clean() && consumed.summary.clean();
    Ok(Row {
        name: case.name,
        produced: produced.summary,
        consumed: consumed.summary,
        verified,
        ok,
    })
}

/// Rows back as CSV must equal the input file byte for byte.
fn verify_csv(input: &Path, output: &Path) -> Result<(String, bool)> {
    let want = std::fs::read(input).wrap_err_with(|| format!("cannot read {}", input.display()))?;
    let got = std::fs::read(output).unwrap_or_default();
    let want_lines: Vec<&[u8]> = want.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let got_lines: Vec<&[u8]> = got.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let rows = want_lines.len().saturating_sub(1);
    let same = want_lines.iter().zip(&got_lines).skip(1).filter(|(a, b)| a == b).count();
    let ok = want == got;
    Ok((format!("{same}/{rows} rows{}", if ok { "" } else { " MISMATCH" }), ok))
}

/// Every input file must be in the output under the same path with the same bytes, and
/// nothing else.
fn verify_tree(input: &Path, output: &Path) -> Result<(String, bool)> {
    let want = list(input)?;
    let got = list(output)?;
    let same =
        want.iter().filter(|(rel, bytes)| got.iter().any(|(r, b)| r == rel && b == bytes)).count();
    let ok = same == want.len() && got.len() == want.len();
    Ok((format!("{same}/{} files{}", want.len(), if ok { "" } else { " MISMATCH" }), ok))
}

fn list(root: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    if !root.exists() {
        return Ok(files);
    }
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.wrap_err_with(|| format!("cannot list {}", root.display()))?;
        if entry.file_type().is_file() {
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap_or(entry.path())
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(entry.path())
                .wrap_err_with(|| format!("cannot read {}", entry.path().display()))?;
            files.push((rel, bytes));
        }
    }
    Ok(files)
}

fn table(rows: &[Row]) -> String {
    let mut t = format!(
        "\n{:<18} {:>8} {:>10} {:>12} {:>12}  verified\n",
        "kind", "messages", "bytes", "produce/s", "consume/s"
    );
    for r in rows {
        t.push_str(&format!(
            "{:<18} {:>8} {:>10} {:>12.0} {:>12.0}  {}\n",
            r.name,
            r.produced.messages,
            human_bytes(r.produced.bytes),
            r.produced.rate(),
            r.consumed.rate(),
            r.verified
        ));
    }
    t.push('\n');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_samples_match_examples_data() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data");
        let mut on_disk: Vec<String> = walkdir::WalkDir::new(&root)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                e.path()
                    .strip_prefix(&root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            // The demo's samples: the CSV and the images/ and texts/ trees (not the ML
            // examples' own data or the generators).
            .filter(|p| {
                p == "tabular_data.csv" || p.starts_with("images/") || p.starts_with("texts/")
            })
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SAMPLES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "update SAMPLES in src/demo.rs");
    }

    #[test]
    fn csv_verification_detects_a_difference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        std::fs::write(&a, "x,y\n1,2\n3,4\n").expect("write");
        std::fs::write(&b, "x,y\n1,2\n3,5\n").expect("write");
        assert_eq!(verify_csv(&a, &a).expect("verify"), ("2/2 rows".to_string(), true));
        assert_eq!(verify_csv(&a, &b).expect("verify"), ("1/2 rows MISMATCH".to_string(), false));
    }
}
