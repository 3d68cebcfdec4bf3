//! JSON lines in (`produce tabular --format jsonl`, `request`): one JSON object per line is
//! one row, sent as it was written (JSON values already have their types: nothing is
//! retyped). Blank lines are skipped; a line that is not one JSON object (another value, not
//! JSON, not UTF-8, a key given twice, longer than the row limit) is a bad row, named by its
//! line; a line over the limit is never held in memory.

use super::Next;
use color_eyre::eyre::{Result, eyre};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::collections::{HashSet, VecDeque};
use std::io::{self, BufRead, BufReader, Read};

/// Non-blank lines read ahead by the opening check, at most.
const OPENING_LINES: usize = 10;

/// Why a line is not a row, when it is not UTF-8.
const NOT_UTF8: &str = "not valid UTF-8 (JSON lines are UTF-8 text)";

/// JSON lines, read a line at a time.
pub(crate) struct JsonLines {
    shown: String,
    reader: BufReader<Box<dyn Read + Send>>,
    /// Lines read so far (skipped and blank ones included).
    line: u64,
    skip_left: u64,
    max: u64,
    /// Lines read ahead by the opening check (object text or nothing), replayed first.
    ahead: VecDeque<(Vec<u8>, Next)>,
}

impl JsonLines {
    /// Read JSON lines from `raw` (`shown` names it in messages): `skip` lines dropped first,
    /// lines over `max` bytes bad. The opening check refuses an input whose first lines
    /// (up to 10, none good) all fail: it is not JSON lines at all.
    pub(crate) fn open(
        raw: Box<dyn Read + Send>,
        shown: String,
        skip: u64,
        max: u64,
    ) -> Result<JsonLines> {
        let reader = BufReader::with_capacity(64 * 1024, raw);
        let mut lines =
            JsonLines { shown, reader, line: 0, skip_left: skip, max, ahead: VecDeque::new() };
        lines.check_opening()?;
        Ok(lines)
    }

    /// Read ahead until a good line: refuse the input when there is none in the first lines.
    fn check_opening(&mut self) -> Result<()> {
        let mut first_bad: Option<(u64, String, Vec<u8>)> = None;
        while self.ahead.len() < OPENING_LINES {
            let mut text = Vec::new();
            let next = self.read_input(&mut text)?;
            match &next {
                Next::End => break,
                Next::Row(_) => {
                    self.ahead.push_back((text, next));
                    return Ok(());
                }
                Next::Bad { line, why } => {
                    if first_bad.is_none() {
                        first_bad = Some((*line, why.clone(), text));
                    }
                    self.ahead.push_back((Vec::new(), next));
                }
            }
        }
        let Some((line, why, text)) = first_bad else {
            return Err(eyre!(
                "{}: no JSON object in it (empty, or only blank lines{}); check the --file path",
                self.shown,
                if self.skip_left > 0 || self.line > 0 { " after --skip-rows" } else { "" }
            ));
        };
        let what = match self.ahead.len() {
            1 => "its only line fails".to_string(),
            n if n < OPENING_LINES => format!("all {n} of its lines fail"),
            n => format!("the first {n} lines all fail"),
        };
        Err(eyre!(
            "{}: {what} as JSON lines (line {line}: {why}): it is not JSON lines, one object per \
             line; {}. Nothing was sent",
            self.shown,
            not_jsonl_hint(&text, &why)
        ))
    }

    /// The next row: its object text in `out` (replacing what was there).
    pub(crate) fn read(&mut self, out: &mut Vec<u8>) -> Result<Next> {
        if let Some((text, next)) = self.ahead.pop_front() {
            *out = text;
            return Ok(next);
        }
        self.read_input(out)
    }

    /// The next non-blank line of the input, checked.
    fn read_input(&mut self, out: &mut Vec<u8>) -> Result<Next> {
        loop {
            out.clear();
            let len = read_line_within(&mut self.reader, self.max, out)
                .map_err(|e| eyre!("cannot read {}: {e}", self.shown))?;
            if len == 0 {
                return Ok(Next::End);
            }
            self.line += 1;
            if self.skip_left > 0 {
                self.skip_left -= 1;
                continue;
            }
            let line = self.line;
            if len > self.max.saturating_add(1) {
                out.clear();
                let why = format!(
                    "a line of {len} bytes, over the {} byte limit (--max-message-size)",
                    self.max
                );
                return Ok(Next::Bad { line, why });
            }
            trim(out, line == 1);
            if out.is_empty() {
                continue;
            }
            return Ok(match check_object(out) {
                Ok(()) => Next::Row(line),
                Err(why) => Next::Bad { line, why },
            });
        }
    }
}

/// Read one line (terminator included) into `out`, keeping at most `max + 1` bytes of it
/// (enough to tell it is over): the line's whole length, 0 at the end of the input.
pub(crate) fn read_line_within<R: BufRead>(
    reader: &mut R,
    max: u64,
    out: &mut Vec<u8>,
) -> io::Result<u64> {
    let keep = usize::try_from(max.saturating_add(1)).unwrap_or(usize::MAX);
    let mut len = 0u64;
    loop {
        let buf = match reader.fill_buf() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        };
        if buf.is_empty() {
            return Ok(len);
        }
        let (n, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = keep.saturating_sub(out.len()).min(n);
        out.extend_from_slice(&buf[..room]);
        reader.consume(n);
        len += n as u64;
        if done {
            return Ok(len);
        }
    }
}

/// Drop the line's surrounding whitespace (its terminator, a `\r`) and, on the first line,
/// a UTF-8 byte order mark.
fn trim(text: &mut Vec<u8>, first: bool) {
    let end = text.len() - text.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
    text.truncate(end);
    let mut start = 0;
    if first && text.starts_with(b"\xef\xbb\xbf") {
        start = 3;
    }
    start += text[start..].iter().take_while(|b| b.is_ascii_whitespace()).count();
    text.drain(..start);
}

/// Why `text` is not one JSON object a consumer can read back whole, if it is not: not UTF-8,
/// not JSON, another JSON value, a key given twice (a consumer would keep only one of them),
/// a number out of range.
pub(crate) fn check_object(text: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(text).map_err(|_| NOT_UTF8.to_string())?;
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_any(ObjectCheck).and_then(|()| de.end()).map_err(|e| describe(&e))
}

/// A serde_json error without its "at line 1" (the line is named by the caller).
fn describe(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let what = full.rsplit_once(" at line ").map_or(full.as_str(), |(what, _)| what);
    if e.is_data() {
        return what.to_string();
    }
    format!("not JSON: {what} at column {}", e.column())
}

/// Accepts one JSON object whose keys are all different.
struct ObjectCheck;

impl<'de> Visitor<'de> for ObjectCheck {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("one JSON object per line")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if keys.contains(&key) {
                return Err(de::Error::custom(format!(
                    "the key {key:?} is given twice (a reader would keep only one of its values)"
                )));
            }
            // Values are read whole (not skipped), so a number no reader can hold fails here.
            map.next_value::<serde_json::Value>()?;
            keys.insert(key);
        }
        Ok(())
    }
}

/// The fix for an input whose first lines are not JSON objects, from the first bad line.
fn not_jsonl_hint(first: &[u8], why: &str) -> &'static str {
    if why == NOT_UTF8 {
        return "convert it to UTF-8 first, e.g. `iconv -f latin1 -t utf-8 FILE`, or give \
                --format csv if it is CSV";
    }
    match first {
        [b'[', ..] => {
            "a JSON array? Turn it into one object per line with `jq -c '.[]' FILE`, or give \
             --format csv if it is CSV"
        }
        b"{" => "one pretty-printed JSON document? Put each object on one line with `jq -c . FILE`",
        [b'{', ..] => "each line must hold one whole JSON object",
        _ => "if it is CSV, give --format csv",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(text: &str, skip: u64, max: u64) -> Result<JsonLines> {
        let raw: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        JsonLines::open(raw, "t.jsonl".into(), skip, max)
    }

    /// Every item read: (line, object text) for rows, (line, why) for bad ones.
    fn all(lines: &mut JsonLines) -> Vec<(u64, Result<String, String>)> {
        let mut got = Vec::new();
        let mut out = Vec::new();
        loop {
            match lines.read(&mut out).expect("reads") {
                Next::End => return got,
                Next::Row(line) => got.push((line, Ok(String::from_utf8_lossy(&out).into()))),
                Next::Bad { line, why } => got.push((line, Err(why))),
            }
        }
    }

    #[test]
    fn objects_come_as_written_and_blank_lines_are_skipped() {
        let text = "\u{feff}{\"a\": 1, \"b\": \"x\"}\r\n\n   \n  {\"a\":1.50,\"n\":null}  \n{\"z\":[1,{}]}";
        let mut lines = open(text, 0, 1 << 20).expect("opens");
        let got = all(&mut lines);
        assert_eq!(
            got,
            [
                (1, Ok(r#"{"a": 1, "b": "x"}"#.to_string())),
                (4, Ok(r#"{"a":1.50,"n":null}"#.to_string())),
                (5, Ok(r#"{"z":[1,{}]}"#.to_string())),
            ]
        );
    }

    #[test]
    fn a_line_that_is_not_one_object_is_bad_and_named_by_its_line() {
        let text = "{\"a\":1}\n[1,2]\n7\n{\"a\":\n{\"a\":1} {\"b\":2}\n{\"a\":1,\"a\":2}\n{\"x\":1e999}\n{\"ok\":true}\n";
        let mut lines = open(text, 0, 1 << 20).expect("opens");
        let got = all(&mut lines);
        let lines_of = |r: bool| -> Vec<u64> {
            got.iter().filter(|(_, x)| x.is_ok() == r).map(|(l, _)| *l).collect()
        };
        assert_eq!(lines_of(true), [1, 8]);
        assert_eq!(lines_of(false), [2, 3, 4, 5, 6, 7]);
        let why =
            |line: u64| got.iter().find(|(l, _)| *l == line).and_then(|(_, r)| r.clone().err());
        assert!(why(2).is_some_and(|w| w.contains("expected one JSON object per line")), "{got:?}");
        assert!(why(5).is_some_and(|w| w.contains("trailing characters")), "{got:?}");
        assert!(why(6).is_some_and(|w| w.contains("\"a\" is given twice")), "{got:?}");
        assert!(why(7).is_some_and(|w| w.starts_with("not JSON")), "{got:?}");
    }

    #[test]
    fn not_utf8_and_over_long_lines_are_bad_without_being_held() {
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
        let text = format!("{{\"a\":1}}\n{long}\n{{\"b\":\"\u{e9}\"}}\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"{\"c\":\"\xff\"}\n");
        let raw: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(bytes));
        let mut lines = JsonLines::open(raw, "t.jsonl".into(), 0, 50).expect("opens");
        let got = all(&mut lines);
        assert!(matches!(&got[1], (2, Err(w)) if w.contains("over the 50 byte limit")), "{got:?}");
        assert!(matches!(&got[2], (3, Ok(_))), "{got:?}");
        assert!(matches!(&got[3], (4, Err(w)) if w.starts_with("not valid UTF-8")), "{got:?}");
        let mut kept = Vec::new();
        let data = format!("{}\nnext\n", "y".repeat(1000));
        let mut reader = BufReader::with_capacity(16, data.as_bytes());
        assert_eq!(read_line_within(&mut reader, 10, &mut kept).ok(), Some(1001));
        assert_eq!(kept.len(), 11, "only the limit + 1 bytes are kept");
    }

    #[test]
    fn skip_rows_drops_lines_and_line_numbers_still_count_them() {
        let mut lines = open("made by tool x\n{\"a\":1}\n", 1, 1 << 20).expect("opens");
        assert_eq!(all(&mut lines), [(2, Ok(r#"{"a":1}"#.to_string()))]);
    }

    #[test]
    fn an_input_that_is_not_json_lines_is_refused_with_the_fix() {
        for (text, fix) in [
            ("id,name\n1,x\n2,y\n", "--format csv"),
            ("[{\"a\":1},\n{\"a\":2}]\n", "jq -c '.[]'"),
            ("{\n  \"a\": 1\n}\n", "jq -c ."),
        ] {
            let err = open(text, 0, 1 << 20).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("t.jsonl: ") && err.contains(fix), "{text:?}: {err}");
        }
        let err = open("\n \n", 0, 1 << 20).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no JSON object in it"), "{err}");
        // A bad first line followed by good ones is one bad row, not a refusal.
        let mut lines = open("oops\n{\"a\":1}\n", 0, 1 << 20).expect("opens");
        assert_eq!(all(&mut lines).len(), 2);
    }
}
