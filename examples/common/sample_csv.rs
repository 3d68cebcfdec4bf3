//! A large CSV for the benchmarks: the sample credit-card rows cycled, IDs 1..=rows.

use std::path::{Path, PathBuf};

/// Write `rows` rows shaped like `examples/data/tabular_data.csv` to `dir/name`.
pub fn write(dir: &Path, name: &str, rows: usize) -> std::io::Result<PathBuf> {
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/data/tabular_data.csv"
    ))?;
    let mut lines = sample.lines();
    let header = lines.next().ok_or_else(|| std::io::Error::other("empty sample CSV"))?;
    let body: Vec<&str> = lines.collect();
    let mut out = String::with_capacity(rows * 100);
    out.push_str(header);
    out.push('\n');
    for i in 0..rows {
        let rest = body[i % body.len()].split_once(',').map_or("", |(_, r)| r);
        out.push_str(&format!("{},{rest}\n", i + 1));
    }
    let path = dir.join(name);
    std::fs::write(&path, out)?;
    Ok(path)
}
