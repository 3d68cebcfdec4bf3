//! Files stay inside, and look like what they are: consumers never write through a symlink
//! planted in the output directory (final names, alternative names, staging files,
//! subdirectories), names that do not show as themselves fall back to a safe name, and
//! producers name and count the symlinks and FIFOs they skip (never opening a FIFO).

use crate::support::{TestQueue, consume_files, count_after, mqdemo, s, tree, wait_until};
use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use sha2::{Digest, Sha256};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// A directory holding a regular file, a symlink to a file inside, one to a file outside,
/// a dangling one, one to a directory outside, and a FIFO (nobody ever writes to it: opening
/// it for reading would block for good). Returns the outside directory, kept alive.
fn hostile_input(dir: &Path, regular: &[(&str, &[u8])]) -> tempfile::TempDir {
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

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Line `n` (1-based) of `file`, published with the headers `produce text --split line`
/// writes (`source` left out when None), as a forger would.
fn publish_line(q: &TestQueue, id: &str, source: Option<&str>, file: &[u8], n: usize) {
    let lines: Vec<&[u8]> = file.split_inclusive(|b| *b == b'\n').collect();
    let offset: usize = lines[..n - 1].iter().map(|l| l.len()).sum();
    let body = lines[n - 1];
    let mut h = vec![
        int("size", body.len() as u64),
        text("sha256", &sha256_hex(body)),
        int("line", n as u64),
        int("file_size", file.len() as u64),
        int("lines", lines.len() as u64),
        int("offset", offset as u64),
        text("file_sha256", &sha256_hex(file)),
    ];
    if let Some(source) = source {
        h.push(text("source", source));
    }
    raw_text(q, body, id, &refs(&h));
}

/// Every line of `file`, in order.
fn publish_file(q: &TestQueue, id: &str, source: Option<&str>, file: &[u8]) {
    for n in 1..=file.split_inclusive(|b| *b == b'\n').count() {
        publish_line(q, &format!("{id}-{n}"), source, file, n);
    }
}

/// The staging file name of a file sent line by line (see `sink::lines::staging_key`).
fn staging_name(source: &str, file: &[u8]) -> String {
    let mut key = b"mqdemo-lines/1\0".to_vec();
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(sha256_hex(file).as_bytes());
    format!(".mqdemo-part.{}", &sha256_hex(&key)[..32])
}

/// Everything under `root` (symlinks as their targets, not followed), for a before/after
/// comparison.
fn snapshot(root: &Path) -> Vec<(PathBuf, String)> {
    let mut all: Vec<(PathBuf, String)> = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| {
            let what = if e.file_type().is_symlink() {
                format!("-> {:?}", std::fs::read_link(e.path()).ok())
            } else if e.file_type().is_file() {
                String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default()).into_owned()
            } else {
                "dir".to_string()
            };
            (e.path().to_path_buf(), what)
        })
        .collect();
    all.sort();
    all
}

/// An outside directory the consumer must never touch: a file to append to, a directory
/// to create files in, and room for files a dangling symlink would create.
fn outside() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("victim.txt"), "the victim\n").expect("write");
    std::fs::create_dir(dir.path().join("elsewhere")).expect("mkdir");
    dir
}

#[test]
fn line_files_never_write_through_symlinks_planted_in_the_output_directory() {
    let q = TestQueue::new("escape-planted");
    let (out, far) = (tempfile::tempdir().expect("tempdir"), outside());
    let (o, f) = (out.path(), far.path());
    let victim = f.join("victim.txt");
    // A line of no known file with an unsafe source: named from its message id.
    symlink(&victim, o.join("fb-unplaced.txt")).expect("symlink");
    symlink(f.join("made-1.txt"), o.join("fb-unplaced.fb-unplaced.txt")).expect("symlink");
    raw_text(
        &q,
        b"unplaced\n",
        "fb-unplaced",
        &refs(&[text("source", "../x.txt"), int("line", 3)]),
    );
    // A file with an unsafe source: named from its SHA-256; every name tried is planted.
    let evil = b"evil 1\nevil 2\n".as_slice();
    let sha = sha256_hex(evil);
    symlink(&victim, o.join(format!("{}.txt", &sha[..32]))).expect("symlink");
    symlink(f.join("made-2.txt"), o.join(format!("{}.{}.txt", &sha[..32], &sha[..12])))
        .expect("symlink");
    publish_file(&q, "evil", Some("/etc/evil.txt"), evil);
    // A file with no source at all: its staging marks planted (dangling, and to the victim).
    let bare = b"bare 1\nbare 2\n".as_slice();
    symlink(&victim, o.join(format!("{}.marks", staging_name("", bare)))).expect("symlink");
    publish_file(&q, "bare", None, bare);
    // A safe source through a symlinked subdirectory, as lines and as a whole file.
    symlink(f.join("elsewhere"), o.join("sub")).expect("symlink");
    let deep = b"deep 1\ndeep 2\n".as_slice();
    publish_file(&q, "deep", Some("sub/x.txt"), deep);
    raw_text(&q, b"whole\n", "whole-1", &refs(&[text("source", "sub/w.txt")]));
    // A staging file planted as a symlink: its lines cannot be stored and are rejected.
    let staged = b"staged 1\nstaged 2\n".as_slice();
    symlink(&victim, o.join(staging_name("s.txt", staged))).expect("symlink");
    publish_file(&q, "staged", Some("s.txt"), staged);
    let before = snapshot(f);
    let res = consume_files(&q, "text", o, &["--idle-timeout", "2"]).run();
    assert_eq!(snapshot(f), before, "something outside changed:\n{}", res.stderr);
    let files = visible(o);
    let want = [
        ("fb-unplaced.fb-unplaced.2.txt".to_string(), "unplaced\n"),
        (format!("{}.{sha}.txt", &sha[..32]), "evil 1\nevil 2\n"),
        (format!("{}.txt", &sha256_hex(bare)[..32]), "bare 1\nbare 2\n"),
        (format!("{}.txt", &sha256_hex(deep)[..32]), "deep 1\ndeep 2\n"),
        ("whole-1.txt".to_string(), "whole\n"),
    ];
    for (name, body) in &want {
        assert!(
            files.contains(&(name.clone(), body.to_string())),
            "{name}: {files:?}\n{}",
            res.stderr
        );
    }
    assert_eq!(files.len(), want.len(), "{files:?}");
    assert_eq!(count_after(&res.stderr, "failed"), 2, "{}", res.stderr);
    assert!(res.stderr.contains("in the way"), "{}", res.stderr);
    assert_eq!(res.code(), Some(1), "{}", res.stderr);
}

#[test]
fn a_subdirectory_swapped_for_a_symlink_while_its_file_is_assembled_is_not_followed() {
    let q = TestQueue::new("escape-swap");
    let (out, far) = (tempfile::tempdir().expect("tempdir"), outside());
    let file = b"one\ntwo\n".as_slice();
    publish_line(&q, "swap-1", Some("sub/x.txt"), file, 1);
    let consumer = consume_files(&q, "text", out.path(), &["--count", "2"]).watch();
    // Line 1 is durable (marked) and its directory made: swap the directory for a symlink.
    let marks = out.path().join(format!("{}.marks", staging_name("sub/x.txt", file)));
    wait_until(Duration::from_secs(20), "line 1 marked", || marks.exists());
    std::fs::remove_dir(out.path().join("sub")).expect("rmdir");
    symlink(far.path().join("elsewhere"), out.path().join("sub")).expect("symlink");
    let before = snapshot(far.path());
    publish_line(&q, "swap-2", Some("sub/x.txt"), file, 2);
    let res = consumer.finish(Duration::from_secs(30));
    assert_eq!(snapshot(far.path()), before, "written through the symlink:\n{}", res.stderr);
    let fallback = format!("{}.txt", &sha256_hex(file)[..32]);
    assert_eq!(visible(out.path()), [(fallback, "one\ntwo\n".to_string())], "{}", res.stderr);
    assert_eq!(res.code(), Some(0), "{}", res.stderr);
}
