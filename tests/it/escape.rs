//! Files stay inside, and look like what they are: consumers never write through a symlink
//! planted in the output directory (final names, alternative names, staging files,
//! subdirectories), names that do not show as themselves fall back to a safe name, and
//! producers name and count the symlinks and FIFOs they skip (never opening a FIFO).

use crate::support::{TestQueue, consume_files, count_after, mqdemo, s, tree};
use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use std::path::Path;

/// A text message as another producer (or a forger of mqdemo's headers) would send it.
fn raw_text(q: &TestQueue, body: &[u8], id: &str, headers: &[(&str, AmqpValue)]) {
    let mut h = FieldTable::new();
    for (k, v) in headers {
        h.insert((*k).to_string(), v.clone());
    }
    let props = AmqpProperties::default()
        .with_content_type("text/plain; charset=utf-8".into())
        .with_message_id(id.to_string())
        .with_headers(h);
    q.publish_raw(body, props);
}

fn text(name: &str, v: &str) -> (String, AmqpValue) {
    (name.to_string(), AmqpValue::LongString(v.into()))
}

fn int(name: &str, v: u64) -> (String, AmqpValue) {
    (name.to_string(), AmqpValue::LongLongInt(i64::try_from(v).unwrap_or(i64::MAX)))
}

fn refs(h: &[(String, AmqpValue)]) -> Vec<(&str, AmqpValue)> {
    h.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()
}

/// Visible files under `root` (hidden staging files left out), as (name, text).
fn visible(root: &Path) -> Vec<(String, String)> {
    tree(root)
        .into_iter()
        .filter(|(n, _)| !n.rsplit('/').next().is_some_and(|f| f.starts_with('.')))
        .map(|(n, b)| (n, String::from_utf8_lossy(&b).into_owned()))
        .collect()
}

#[test]
fn a_bidi_override_in_a_source_falls_back_to_the_safe_name() {
    let q = TestQueue::new("escape-bidi");
    let src = tempfile::tempdir().expect("tempdir");
    // Shows as `evilexe.png` in a file manager.
    std::fs::write(src.path().join("evil\u{202e}gnp.exe"), "not a picture\n").expect("write");
    std::fs::write(src.path().join("plain.txt"), "plain\n").expect("write");
    mqdemo(&["produce", "text", "--directory", s(src.path()), "--queue", &q.name])
        .run()
        .expect_code(0);
    // Another producer: a zero-width space in a directory, an isolate in a file name.
    raw_text(&q, b"zwsp\n", "zwsp-1", &refs(&[text("source", "d\u{200b}ir/x.txt")]));
    raw_text(&q, b"isolate\n", "iso-2", &refs(&[text("source", "a\u{2066}b.txt")]));
    let out = tempfile::tempdir().expect("tempdir");
    let res = consume_files(&q, "text", out.path(), &["--idle-timeout", "2"]).run();
    let files = visible(out.path());
    assert_eq!(res.code(), Some(0), "{}", res.stderr);
    assert_eq!(files.len(), 4, "{files:?}\n{}", res.stderr);
    for (name, _) in &files {
        assert!(
            name.chars().all(|c| c.is_ascii_graphic()),
            "{name:?} was named from an unsafe source"
        );
    }
    for (name, body) in
        [("plain.txt", "plain\n"), ("zwsp-1.txt", "zwsp\n"), ("iso-2.txt", "isolate\n")]
    {
        assert!(files.contains(&(name.to_string(), body.to_string())), "{name}: {files:?}");
    }
    assert!(files.iter().any(|(_, b)| b == "not a picture\n"), "{files:?}");
    assert_eq!(res.stderr.matches("unsafe source header").count(), 3, "{}", res.stderr);
}
