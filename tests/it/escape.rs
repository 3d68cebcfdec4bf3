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

/// A directory holding a regular file, a symlink to a file inside, one to a file outside,
/// a dangling one, one to a directory outside, and a FIFO (nobody ever writes to it: opening
/// it for reading would block for good). Returns the outside directory, kept alive.
fn hostile_input(dir: &Path, regular: &[(&str, &[u8])]) -> tempfile::TempDir {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("secret.txt"), "outside the tree\n").expect("write");
    for (name, bytes) in regular {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
    symlink(dir.join(regular[0].0), dir.join("link-in")).expect("symlink");
    symlink(outside.path().join("secret.txt"), dir.join("link-out")).expect("symlink");
    symlink(dir.join("gone"), dir.join("link-dangling")).expect("symlink");
    symlink(outside.path(), dir.join("link-dir")).expect("symlink");
    let fifo = std::process::Command::new("mkfifo").arg(dir.join("pipe")).status();
    assert!(fifo.is_ok_and(|s| s.success()), "mkfifo");
    outside
}

/// What every producer says about the input of [`hostile_input`].
fn assert_named_and_counted(res: &crate::support::Output, q: &TestQueue, sent: u32) {
    assert_eq!(res.code(), Some(1), "skipped items make exit 1:\n{}", res.stderr);
    for name in ["link-in", "link-out", "link-dangling", "link-dir", "pipe"] {
        let said = res.stderr.lines().any(|l| l.contains("skipped") && l.contains(name));
        assert!(said, "{name} not named as skipped:\n{}", res.stderr);
    }
    assert_eq!(count_after(&res.stderr, "skipped"), 5, "{}", res.stderr);
    assert_eq!(q.depth(), sent, "only the regular files are sent");
}

/// Runs of the producers over symlinks and FIFOs end promptly, whatever the FIFO.
const PRODUCE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

#[test]
fn producers_name_and_count_the_symlinks_and_fifos_they_skip() {
    let src = tempfile::tempdir().expect("tempdir");
    let _outside = hostile_input(src.path(), &[("a.txt", b"one\ntwo\n")]);
    for split in ["file", "line"] {
        let q = TestQueue::new(&format!("escape-walk-{split}"));
        let args = ["produce", "text", "--directory", s(src.path()), "--split", split];
        let mut args = args.to_vec();
        args.extend(["--queue", &q.name]);
        let res = crate::support::wait(mqdemo(&args).spawn(), PRODUCE_DEADLINE);
        assert_named_and_counted(&res, &q, if split == "line" { 2 } else { 1 });
    }
    let images = tempfile::tempdir().expect("tempdir");
    let png = std::fs::read(crate::support::data("images/gradient.png")).expect("sample");
    let _outside = hostile_input(images.path(), &[("g.png", &png)]);
    let q = TestQueue::new("escape-walk-image");
    let args = ["produce", "image", "--directory", s(images.path()), "--queue", &q.name];
    let res = crate::support::wait(mqdemo(&args).spawn(), PRODUCE_DEADLINE);
    assert_named_and_counted(&res, &q, 1);
}
