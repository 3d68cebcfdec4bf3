//! Micro-batches as a model child sees them (`pipe`/`serve --batch-size N`), pure:
//! - `json-batch`: one line holding a JSON array of the inputs (a JSON body as it is, a text
//!   body as a JSON string); the answer is one line holding a JSON array of exactly as many
//!   answers, in order, `null` meaning "no output for this input".
//! - batched `frames`: a 4-byte big-endian count, then that many frames (a 4-byte big-endian
//!   length, then the bytes); the answer has the same shape, a frame of length 0 meaning "no
//!   output for this input".

use serde_json::value::RawValue;

/// What one input of a batch answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchAnswer {
    /// Publish these bytes.
    Output(Vec<u8>),
    /// No output for this input.
    Nothing,
}

/// How one body goes into a `json-batch` array: a JSON body as it is (compacted if it spans
/// lines), a text body as a JSON string. `Err`: why it cannot (it is neither).
pub fn json_item(body: &[u8], content_type: Option<&str>) -> Result<Vec<u8>, String> {
    let text_body = content_type.is_some_and(|ct| ct.starts_with("text/"));
    if !text_body && let Ok(raw) = serde_json::from_slice::<&RawValue>(body) {
        let raw = raw.get().as_bytes();
        if !raw.contains(&b'\n') && !raw.contains(&b'\r') {
            return Ok(raw.to_vec());
        }
        // Whitespace between tokens only (a string holds no raw line break): compact it.
        let v: serde_json::Value = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
        return serde_json::to_vec(&v).map_err(|e| e.to_string());
    }
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::to_vec(text).map_err(|e| e.to_string()),
        Err(_) => Err("its body is neither JSON nor UTF-8 text, so it cannot go into a \
                       --framing json-batch array; use --framing frames"
            .into()),
    }
}

/// The request line (without its line break) for items made by [`json_item`].
pub fn json_request<I: AsRef<[u8]>>(items: &[I]) -> Vec<u8> {
    let mut line =
        Vec::with_capacity(items.iter().map(|i| i.as_ref().len() + 1).sum::<usize>() + 2);
    line.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        line.extend_from_slice(item.as_ref());
    }
    line.push(b']');
    line
}

/// The model's answer line to a batch of `expected` inputs: one answer per input, in order.
/// A JSON string answer is published as its text; any other value as its JSON text.
pub fn json_answers(line: &[u8], expected: usize) -> Result<Vec<BatchAnswer>, String> {
    let values: Vec<&RawValue> = serde_json::from_slice(line).map_err(|e| {
        format!("its answer to a batch of {expected} is not a JSON array of answers ({e})")
    })?;
    if values.len() != expected {
        return Err(format!(
            "it answered {} answers to a batch of {expected} (one per input, in order; null \
             for no output)",
            values.len()
        ));
    }
    values
        .into_iter()
        .map(|v| {
            let text = v.get();
            if text == "null" {
                Ok(BatchAnswer::Nothing)
            } else if text.starts_with('"') {
                let s: String = serde_json::from_str(text).map_err(|e| e.to_string())?;
                Ok(if s.is_empty() { BatchAnswer::Nothing } else { BatchAnswer::Output(s.into()) })
            } else {
                Ok(BatchAnswer::Output(text.as_bytes().to_vec()))
            }
        })
        .collect()
}

/// A batched frames request: the count, then each body as a frame. `Err`: a body or the
/// count does not fit 4 bytes.
pub fn frames_request(bodies: &[&[u8]]) -> Result<Vec<u8>, String> {
    let count = u32::try_from(bodies.len()).map_err(|_| "too many inputs in one batch")?;
    let mut out = Vec::with_capacity(4 + bodies.iter().map(|b| 4 + b.len()).sum::<usize>());
    out.extend_from_slice(&count.to_be_bytes());
    for body in bodies {
        let len = u32::try_from(body.len())
            .map_err(|_| "a body is over 4 GiB, more than a frame can carry")?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
    }
    Ok(out)
}

/// Where a batched frames answer at the head of `buf` stands.
#[derive(Debug, PartialEq, Eq)]
pub enum FramesSplit {
    /// Not all of it has arrived.
    Need,
    /// It breaks the limits (why).
    TooLong(String),
    /// Complete: its length in bytes, the count included.
    Whole(usize),
}

/// Whether `buf` starts with a whole batched frames answer: at most `max_count` frames,
/// each at most `max_frame` bytes.
pub fn frames_split(buf: &[u8], max_count: usize, max_frame: usize) -> FramesSplit {
    let Some(count) = be_u32(buf, 0) else { return FramesSplit::Need };
    let count = count as usize;
    if count > max_count {
        return FramesSplit::TooLong(format!(
            "it announced {count} answers, more than a batch holds (--batch-size {max_count})"
        ));
    }
    let mut at = 4;
    for _ in 0..count {
        let Some(len) = be_u32(buf, at) else { return FramesSplit::Need };
        let len = len as usize;
        if len > max_frame {
            return FramesSplit::TooLong(format!(
                "it announced an answer frame of {len} bytes, over --max-answer-bytes {max_frame}"
            ));
        }
        at += 4 + len;
        if buf.len() < at {
            return FramesSplit::Need;
        }
    }
    FramesSplit::Whole(at)
}

/// The answers in a whole batched frames answer (as [`frames_split`] found it), checked
/// against the `expected` count.
pub fn frames_answers(answer: &[u8], expected: usize) -> Result<Vec<BatchAnswer>, String> {
    let count = be_u32(answer, 0).ok_or("its answer is cut short")? as usize;
    if count != expected {
        return Err(format!(
            "it answered {count} frames to a batch of {expected} (one per input, in order; \
             length 0 for no output)"
        ));
    }
    let mut out = Vec::with_capacity(count);
    let mut at = 4;
    for _ in 0..count {
        let len = be_u32(answer, at).ok_or("its answer is cut short")? as usize;
        let body = answer.get(at + 4..at + 4 + len).ok_or("its answer is cut short")?;
        out.push(if body.is_empty() {
            BatchAnswer::Nothing
        } else {
            BatchAnswer::Output(body.to_vec())
        });
        at += 4 + len;
    }
    Ok(out)
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_go_in_as_they_are_and_text_as_strings() {
        let row = json_item(br#"{"a": 1, "b": "x"}"#, Some("application/json")).expect("fine");
        assert_eq!(row, br#"{"a": 1, "b": "x"}"#);
        let spread = json_item(b"{\"a\":\n 1}", Some("application/json")).expect("fine");
        assert_eq!(spread, br#"{"a":1}"#, "one line");
        let text = json_item(b"123", Some("text/plain; charset=utf-8")).expect("fine");
        assert_eq!(text, br#""123""#, "a text body stays text");
        let line = json_item(b"hello \"you\"\n", None).expect("fine");
        assert_eq!(line, br#""hello \"you\"\n""#);
        let err = json_item(&[0xff, 0xfe], None).expect_err("refused");
        assert!(err.contains("--framing frames"), "{err}");
        let req = json_request(&[row, text]);
        assert_eq!(req, br#"[{"a": 1, "b": "x"},"123"]"#);
        assert!(!json_request(&[spread]).contains(&b'\n'));
    }

    #[test]
    fn json_answers_keep_order_and_count() {
        let got = json_answers(br#"[{"p":1}, null, "cat", 2.5, ""]"#, 5).expect("fine");
        assert_eq!(
            got,
            vec![
                BatchAnswer::Output(br#"{"p":1}"#.to_vec()),
                BatchAnswer::Nothing,
                BatchAnswer::Output(b"cat".to_vec()),
                BatchAnswer::Output(b"2.5".to_vec()),
                BatchAnswer::Nothing,
            ]
        );
        assert!(
            json_answers(b"[1,2]", 3).expect_err("refused").contains("2 answers to a batch of 3")
        );
        assert!(json_answers(b"{\"p\":1}", 1).expect_err("refused").contains("not a JSON array"));
        assert!(json_answers(b"", 1).expect_err("refused").contains("not a JSON array"));
        assert!(json_answers(b"[1,", 1).is_err());
    }

    #[test]
    fn frames_round_trip_and_limits() {
        let req = frames_request(&[b"ab", b"", b"xyz"]).expect("fine");
        assert_eq!(req, b"\0\0\0\x03\0\0\0\x02ab\0\0\0\0\0\0\0\x03xyz");
        for cut in 0..req.len() {
            assert_eq!(frames_split(&req[..cut], 3, 10), FramesSplit::Need, "cut at {cut}");
        }
        assert_eq!(frames_split(&req, 3, 10), FramesSplit::Whole(req.len()));
        let mut more = req.clone();
        more.extend_from_slice(b"tail");
        assert_eq!(frames_split(&more, 3, 10), FramesSplit::Whole(req.len()));
        assert!(
            matches!(frames_split(&req, 2, 10), FramesSplit::TooLong(w) if w.contains("3 answers"))
        );
        assert!(
            matches!(frames_split(&req, 3, 2), FramesSplit::TooLong(w) if w.contains("3 bytes"))
        );
        let answers = frames_answers(&req, 3).expect("fine");
        assert_eq!(
            answers,
            vec![
                BatchAnswer::Output(b"ab".to_vec()),
                BatchAnswer::Nothing,
                BatchAnswer::Output(b"xyz".to_vec())
            ]
        );
        assert!(frames_answers(&req, 4).expect_err("refused").contains("3 frames to a batch of 4"));
        assert_eq!(frames_split(b"\0\0\0\0", 3, 10), FramesSplit::Whole(4));
        assert!(frames_answers(b"\0\0\0\0", 2).is_err());
    }
}
