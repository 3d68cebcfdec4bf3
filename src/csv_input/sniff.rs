//! Which format the rows are in: the file name says (`*.jsonl`, `*.csv`, ...), else the first
//! non-blank byte after --skip-rows lines does (`{`: JSON lines). The bytes read to find it
//! are given back to the parser ([`Replay`]), so stdin is read once.

use crate::config::RowsFormat;
use std::io::{self, Read};
use std::path::Path;

/// Bytes read ahead at most to find the first non-blank byte (skipped lines included);
/// past it the input is taken for CSV.
const PEEK_LIMIT: usize = 1 << 20;
/// Bytes asked for in one read while peeking.
const PEEK_STEP: usize = 16 * 1024;

const BOM: &[u8] = b"\xef\xbb\xbf";

/// The format a file's name gives, if it gives one (the extension, any case).
pub(crate) fn by_name(path: &Path) -> Option<RowsFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" | "json-lines" => Some(RowsFormat::Jsonl),
        "csv" | "tsv" => Some(RowsFormat::Csv),
        _ => None,
    }
}

/// Read ahead to the first non-blank byte after `skip` lines (and a UTF-8 BOM): that byte
/// (None at the end of the input, or past [`PEEK_LIMIT`]) and a reader that gives back
/// everything, the bytes read ahead first.
pub(crate) fn first_byte<R: Read>(mut inner: R, skip: u64) -> io::Result<(Replay<R>, Option<u8>)> {
    let mut head = Vec::new();
    let found = loop {
        let had = head.len();
        head.resize(had + PEEK_STEP, 0);
        let n = loop {
            match inner.read(&mut head[had..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        head.truncate(had + n);
        let ended = n == 0 || head.len() >= PEEK_LIMIT;
        if let Some(found) = decide(&head, skip, ended) {
            break found;
        }
    };
    Ok((Replay { head, at: 0, inner }, found))
}

/// The first non-blank byte after `skip` lines in `head`: Some(None) when there is none and
/// no more will come (`ended`), None when more bytes are needed.
fn decide(head: &[u8], skip: u64, ended: bool) -> Option<Option<u8>> {
    if !ended && head.len() < BOM.len() && BOM.starts_with(head) {
        return None;
    }
    let mut at = if head.starts_with(BOM) { BOM.len() } else { 0 };
    for _ in 0..skip {
        match memchr::memchr(b'\n', &head[at..]) {
            Some(i) => at += i + 1,
            None => return ended.then_some(None),
        }
    }
    match head[at..].iter().find(|b| !b.is_ascii_whitespace()) {
        Some(&b) => Some(Some(b)),
        None => ended.then_some(None),
    }
}

/// The bytes read ahead, then the rest of the input.
pub(crate) struct Replay<R> {
    head: Vec<u8>,
    at: usize,
    inner: R,
}

impl<R: Read> Read for Replay<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.head.len() {
            return self.inner.read(buf);
        }
        let n = buf.len().min(self.head.len() - self.at);
        buf[..n].copy_from_slice(&self.head[self.at..self.at + n]);
        self.at += n;
        if self.at == self.head.len() {
            self.head = Vec::new();
            self.at = 0;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out one byte per read (a slow pipe).
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some((&b, rest)) = self.0.split_first() else { return Ok(0) };
            buf[0] = b;
            self.0 = rest;
            Ok(1)
        }
    }

    fn first(input: &[u8], skip: u64) -> Option<u8> {
        let (mut replay, found) = first_byte(Trickle(input), skip).expect("reads");
        let mut all = Vec::new();
        replay.read_to_end(&mut all).expect("replays");
        assert_eq!(all, input, "every byte given back, in order");
        found
    }

    #[test]
    fn the_first_non_blank_byte_after_skipped_lines_and_a_bom_decides() {
        assert_eq!(first(b"{\"a\":1}\n", 0), Some(b'{'));
        assert_eq!(first(b"\n  \r\n\t{\"a\":1}\n", 0), Some(b'{'));
        assert_eq!(first(b"\xef\xbb\xbf{\"a\":1}\n", 0), Some(b'{'));
        assert_eq!(first(b"id,name\n1,x\n", 0), Some(b'i'));
        assert_eq!(first(b"# made by a tool, 2024\n{\"a\":1}\n", 1), Some(b'{'));
        assert_eq!(first(b"{ meta }\nid,x\n", 1), Some(b'i'));
    }

    #[test]
    fn nothing_decides_an_empty_or_blank_input() {
        assert_eq!(first(b"", 0), None);
        assert_eq!(first(b" \n\n", 0), None);
        assert_eq!(first(b"only a skipped line\n", 1), None);
        assert_eq!(first(b"\xef\xbb", 0), Some(0xef), "a cut BOM is no BOM");
    }

    #[test]
    fn names_decide_by_extension_in_any_case() {
        for (name, want) in [
            ("a.jsonl", Some(RowsFormat::Jsonl)),
            ("b.NDJSON", Some(RowsFormat::Jsonl)),
            ("c.json-lines", Some(RowsFormat::Jsonl)),
            ("d.csv", Some(RowsFormat::Csv)),
            ("e.TSV", Some(RowsFormat::Csv)),
            ("f.json", None),
            ("g.txt", None),
            ("-", None),
            ("noext", None),
        ] {
            assert_eq!(by_name(Path::new(name)), want, "{name}");
        }
    }
}
