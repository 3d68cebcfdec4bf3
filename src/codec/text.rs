//! Text codec: UTF-8 files, whole or one line per message.
//!
//! A line message carries the line WITH its own terminator (`\n` or `\r\n`; the last line
//! may have none), like Python's `for line in file`, so the lines of a file concatenated in
//! order give back the file byte for byte. It also names the whole file it belongs to (its
//! SHA-256, size and line count) and the line's byte offset in it, so a consumer can put every
//! line in its place whatever order they arrive in, and never mixes two files of one name.

use super::file::{self, FileMessage};
use super::{
    Delivery, HeaderValue, Headers, Kind, Message, file_message_id, message_id, sha256_hex,
};
use sha2::{Digest, Sha256};

/// Header: 1-based line number of a `--split line` message.
pub const LINE: &str = "line";
/// Header: lowercase hex SHA-256 of the whole file a line belongs to.
pub const FILE_SHA256: &str = "file_sha256";
/// Header: size in bytes of the whole file a line belongs to.
pub const FILE_SIZE: &str = "file_size";
/// Header: number of lines of the whole file a line belongs to.
pub const LINES: &str = "lines";
/// Header: byte offset of the line in its file.
pub const OFFSET: &str = "offset";
/// Largest file accepted line by line (1 TiB): a bound on what a header can make a consumer
/// allocate on disk.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// Content type of text messages.
pub const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// The bytes are not UTF-8; `line` is the 1-based line of the first bad byte.
#[derive(Debug, PartialEq, Eq)]
pub struct NotUtf8 {
    /// 1-based line number of the first invalid byte.
    pub line: u64,
}

/// Check that `bytes` are UTF-8; `first_line` is the line number of the first byte.
pub fn check_utf8(bytes: &[u8], first_line: u64) -> Result<(), NotUtf8> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(()),
        Err(e) => {
            let newlines = bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count();
            Err(NotUtf8 { line: first_line + newlines as u64 })
        }
    }
}

/// A message for a whole text file.
pub fn encode_file(source: &str, bytes: Vec<u8>) -> Result<Message, NotUtf8> {
    check_utf8(&bytes, 1)?;
    Ok(build(source, None, bytes))
}

/// The whole file a line message belongs to: its identity on the consumer's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its number of lines (a last line without terminator counts).
    pub lines: u64,
}

/// SHA-256, size and line count of a file fed in pieces (a producer reads it once).
#[derive(Default)]
pub struct FileDigest {
    hasher: Sha256,
    size: u64,
    lines: u64,
    ends_in_newline: bool,
}

impl FileDigest {
    /// Feed the next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.lines += bytes.iter().filter(|b| **b == b'\n').count() as u64;
        if let Some(last) = bytes.last() {
            self.ends_in_newline = *last == b'\n';
        }
    }

    /// The identity of everything fed so far.
    pub fn finish(self) -> FileIdentity {
        let unterminated = u64::from(self.size > 0 && !self.ends_in_newline);
        FileIdentity {
            sha256: super::hex(&self.hasher.finalize()),
            size: self.size,
            lines: self.lines + unterminated,
        }
    }
}

/// A message for line `line` (1-based, at byte `offset`) of `source`, whose whole content is
/// `file`; terminator included.
pub fn encode_line(
    source: &str,
    file: &FileIdentity,
    line: u64,
    offset: u64,
    bytes: Vec<u8>,
) -> Result<Message, NotUtf8> {
    check_utf8(&bytes, line)?;
    let mut msg = build(source, Some((line, &file.sha256)), bytes);
    for (name, value) in
        [(LINE, line), (FILE_SIZE, file.size), (LINES, file.lines), (OFFSET, offset)]
    {
        msg.headers.insert(name.into(), HeaderValue::Int(i64::try_from(value).unwrap_or(i64::MAX)));
    }
    msg.headers.insert(FILE_SHA256.into(), HeaderValue::Str(file.sha256.clone()));
    Ok(msg)
}

/// What a received text message says about being a line of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinePart {
    /// Line `line` at byte `offset` of `file`.
    Placed {
        /// 1-based line number.
        line: u64,
        /// Byte offset of the line in the file.
        offset: u64,
        /// The whole file.
        file: FileIdentity,
    },
    /// A `line` header without the file's identity (mqdemo before `file_sha256`, or another
    /// producer): which file it belongs to cannot be known.
    Unplaced {
        /// 1-based line number.
        line: u64,
    },
}

/// Read the line headers of `d`: None for a whole file (no `line` header), Err with the
/// reason when `line` is not a positive integer or the identity headers are partial or
/// inconsistent with the body.
pub fn line_part(d: &Delivery) -> Result<Option<LinePart>, String> {
    if !d.headers.contains_key(LINE) {
        return Ok(None);
    }
    // A `line` header makes it a line, never a whole file: one that is not a positive
    // integer would otherwise put one line under the real file's name.
    let Some(line) = d.header_int(LINE).filter(|n| *n > 0) else {
        return Err(format!("line message without a positive integer {LINE} header"));
    };
    let line = line as u64;
    let names = [FILE_SHA256, FILE_SIZE, LINES, OFFSET];
    if names.iter().all(|n| !d.headers.contains_key(*n)) {
        return Ok(Some(LinePart::Unplaced { line }));
    }
    let int = |name: &str| {
        d.header_int(name)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| format!("line message without a non-negative integer {name} header"))
    };
    let sha256 = d
        .header_str(FILE_SHA256)
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("line message whose {FILE_SHA256} header is not a SHA-256"))?
        .to_ascii_lowercase();
    let file = FileIdentity { sha256, size: int(FILE_SIZE)?, lines: int(LINES)? };
    let offset = int(OFFSET)?;
    check_place(line, offset, d.body.len() as u64, &file)?;
    Ok(Some(LinePart::Placed { line, offset, file }))
}

/// A received text message: a whole file, a line of no known file (a file of its own), or a
/// line placed in its file; Err with the reason when its line headers are unusable (see
/// [`line_part`]).
pub fn decode(d: &Delivery) -> Result<FileMessage, String> {
    Ok(file::decode(d, line_part(d)?))
}

/// Err when line `line` of `len` bytes at `offset` cannot be part of `file`.
fn check_place(line: u64, offset: u64, len: u64, file: &FileIdentity) -> Result<(), String> {
    let bad = |why: &str| Err(format!("line {line} at byte {offset}: {why}"));
    if file.size > MAX_FILE_SIZE {
        return bad("the file is over the 1 TiB a consumer assembles line by line");
    }
    if file.lines == 0 || file.lines > file.size || line > file.lines {
        return bad(&format!("{} lines do not fit a file of {} bytes", file.lines, file.size));
    }
    let end = offset.checked_add(len).filter(|e| *e <= file.size);
    let last = line == file.lines;
    if len == 0 || end.is_none() || (line == 1) != (offset == 0) || last != (end == Some(file.size))
    {
        return bad(&format!("{len} bytes do not fit a file of {} bytes", file.size));
    }
    Ok(())
}

fn build(source: &str, line: Option<(u64, &str)>, body: Vec<u8>) -> Message {
    let mut headers = Headers::new();
    headers.insert("source".into(), HeaderValue::Str(source.to_string()));
    headers.insert("size".into(), HeaderValue::Int(body.len() as i64));
    let digest = sha256_hex(&body);
    let message_id = match line {
        // The file's digest is part of the position: the same line of two files of one name
        // (or of a file and its edited version) are different messages.
        Some((n, file)) => message_id(Kind::Text, source, &format!("{n}@{file}"), &body),
        None => file_message_id(Kind::Text, source, &digest),
    };
    headers.insert("sha256".into(), HeaderValue::Str(digest));
    let label = match line {
        Some((n, _)) => format!("{source}:{n}"),
        None => source.to_string(),
    };
    Message {
        kind: Kind::Text,
        content_type: CONTENT_TYPE.to_string(),
        message_id,
        headers,
        body,
        label,
        route: super::Route::default(),
        original: super::Original::default(),
        ticket: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::assert_round_trip;

    #[test]
    fn file_round_trips() {
        let text = "héllo\r\nwörld 🌍".as_bytes().to_vec();
        let msg = encode_file("notes/a.txt", text.clone()).expect("utf8");
        assert_eq!(msg.headers.get("line"), None);
        assert_round_trip(&msg, CONTENT_TYPE, |d| d.body.clone(), text);
    }

    fn identity(text: &[u8]) -> FileIdentity {
        let mut d = FileDigest::default();
        for piece in text.chunks(3) {
            d.update(piece);
        }
        d.finish()
    }

    fn received(msg: &Message) -> Delivery {
        Delivery { body: msg.body.clone(), headers: msg.headers.clone(), ..Delivery::default() }
    }

    #[test]
    fn file_digest_counts_lines_like_the_splitter() {
        assert_eq!(identity(b"").lines, 0);
        assert_eq!(identity(b"a").lines, 1);
        assert_eq!(identity(b"a\n").lines, 1);
        assert_eq!(identity(b"a\r\nb").lines, 2);
        assert_eq!(identity(b"\n\n").lines, 2);
        let id = identity(b"one\ntwo");
        assert_eq!((id.size, id.sha256), (7, sha256_hex(b"one\ntwo")));
    }

    #[test]
    fn line_carries_its_number_file_and_offset() {
        let file = identity(b"six\nseven\n");
        let msg = encode_line("a.txt", &file, 2, 4, b"seven\n".to_vec()).expect("utf8");
        assert_eq!(msg.headers.get(LINE), Some(&HeaderValue::Int(2)));
        assert_eq!(msg.headers.get(OFFSET), Some(&HeaderValue::Int(4)));
        assert_eq!(msg.label, "a.txt:2");
        let part = line_part(&received(&msg)).expect("valid");
        assert_eq!(part, Some(LinePart::Placed { line: 2, offset: 4, file: file.clone() }));
        let other = identity(b"six\nseven\n\n");
        assert_ne!(
            msg.message_id,
            encode_line("a.txt", &other, 2, 4, b"seven\n".to_vec()).expect("utf8").message_id,
            "the same line of another file of the same name is another message"
        );
    }

    #[test]
    fn lines_without_identity_are_unplaced_and_bad_identities_refused() {
        let mut d = Delivery { body: b"x\n".to_vec(), ..Delivery::default() };
        assert_eq!(line_part(&d), Ok(None));
        d.headers.insert(LINE.into(), HeaderValue::Int(3));
        assert_eq!(line_part(&d), Ok(Some(LinePart::Unplaced { line: 3 })));
        let file = identity(b"a\nb\n");
        let good = received(&encode_line("a", &file, 2, 2, b"b\n".to_vec()).expect("utf8"));
        assert!(line_part(&good).is_ok_and(|p| p.is_some()));
        let set = |name: &str, v: HeaderValue| {
            let mut d = good.clone();
            d.headers.insert(name.into(), v);
            line_part(&d)
        };
        for (name, v) in [
            (FILE_SHA256, HeaderValue::Str("abc".into())),
            (FILE_SIZE, HeaderValue::Int(3)),
            (FILE_SIZE, HeaderValue::Int(-1)),
            (FILE_SIZE, HeaderValue::Int(1 << 50)),
            (LINES, HeaderValue::Int(0)),
            (LINES, HeaderValue::Int(1)),
            (LINES, HeaderValue::Int(i64::MAX)),
            (OFFSET, HeaderValue::Int(0)),
            (OFFSET, HeaderValue::Int(1)),
            (OFFSET, HeaderValue::Int(i64::MAX)),
            (OFFSET, HeaderValue::Str("2".into())),
            // Found by attack: a string line number made a line into a whole file.
            (LINE, HeaderValue::Str("2".into())),
            (LINE, HeaderValue::Int(0)),
        ] {
            assert!(set(name, v.clone()).is_err(), "{name} = {v:?} accepted");
        }
        let mut partial = good.clone();
        partial.headers.remove(LINES);
        assert!(line_part(&partial).is_err(), "a partial identity is refused");
        // Found by attack: an unusable line number without identity headers took the real
        // file's name; a whole file with another producer's `lines` header is still a file.
        for v in [HeaderValue::Str("3".into()), HeaderValue::Int(0), HeaderValue::Int(-5)] {
            let mut d = Delivery { body: b"x\n".to_vec(), ..Delivery::default() };
            d.headers.insert(LINE.into(), v.clone());
            assert!(line_part(&d).is_err(), "line = {v:?} accepted");
        }
        let mut whole = Delivery { body: b"x\n".to_vec(), ..Delivery::default() };
        whole.headers.insert(LINES.into(), HeaderValue::Int(2));
        assert_eq!(line_part(&whole), Ok(None));
    }

    #[test]
    fn non_utf8_names_the_line() {
        assert_eq!(check_utf8(b"ok\nok\nbad \xff\n", 1), Err(NotUtf8 { line: 3 }));
        assert_eq!(
            encode_line("a.txt", &identity(b"\xc3"), 5, 0, b"\xc3".to_vec()).map(|m| m.label),
            Err(NotUtf8 { line: 5 })
        );
        assert_eq!(check_utf8(b"", 1), Ok(()));
    }
}
