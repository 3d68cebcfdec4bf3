//! Text codec: UTF-8 files, whole or one line per message.
//!
//! A line message carries the line WITH its own terminator (`\n` or `\r\n`; the last line
//! may have none), like Python's `for line in file`, so the lines of a file concatenated in
//! order give back the file byte for byte.

use super::{HeaderValue, Headers, Kind, Message, file_message_id, message_id, sha256_hex};

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

/// A message for line `line` (1-based) of `source`, terminator included.
pub fn encode_line(source: &str, line: u64, bytes: Vec<u8>) -> Result<Message, NotUtf8> {
    check_utf8(&bytes, line)?;
    Ok(build(source, Some(line), bytes))
}

fn build(source: &str, line: Option<u64>, body: Vec<u8>) -> Message {
    let mut headers = Headers::new();
    headers.insert("source".into(), HeaderValue::Str(source.to_string()));
    headers.insert("size".into(), HeaderValue::Int(body.len() as i64));
    let digest = sha256_hex(&body);
    let message_id = match line {
        Some(n) => message_id(Kind::Text, source, &n.to_string(), &body),
        None => file_message_id(Kind::Text, source, &digest),
    };
    headers.insert("sha256".into(), HeaderValue::Str(digest));
    let label = match line {
        Some(n) => {
            headers.insert("line".into(), HeaderValue::Int(i64::try_from(n).unwrap_or(i64::MAX)));
            format!("{source}:{n}")
        }
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

    #[test]
    fn line_carries_its_number() {
        let msg = encode_line("a.txt", 7, b"seven\n".to_vec()).expect("utf8");
        assert_eq!(msg.headers.get("line"), Some(&HeaderValue::Int(7)));
        assert_eq!(msg.label, "a.txt:7");
        assert_ne!(
            msg.message_id,
            encode_line("a.txt", 8, b"seven\n".to_vec()).expect("utf8").message_id
        );
    }

    #[test]
    fn non_utf8_names_the_line() {
        assert_eq!(check_utf8(b"ok\nok\nbad \xff\n", 1), Err(NotUtf8 { line: 3 }));
        assert_eq!(
            encode_line("a.txt", 5, b"\xc3".to_vec()).map(|m| m.label),
            Err(NotUtf8 { line: 5 })
        );
        assert_eq!(check_utf8(b"", 1), Ok(()));
    }
}
