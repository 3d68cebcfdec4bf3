use super::*;
use crate::codec::text::{self, FileDigest, LINE};
use crate::codec::{HeaderValue, image};

fn delivery(body: &[u8], id: Option<&str>, ct: Option<&str>, source: Option<&str>) -> Delivery {
    let mut d = Delivery {
        body: body.to_vec(),
        message_id: id.map(str::to_string),
        content_type: ct.map(str::to_string),
        ..Delivery::default()
    };
    if let Some(s) = source {
        d.headers.insert(SOURCE.into(), HeaderValue::Str(s.into()));
    }
    d
}

fn identity(text: &[u8]) -> FileIdentity {
    let mut d = FileDigest::default();
    d.update(text);
    d.finish()
}

#[test]
fn a_line_of_no_known_file_gets_a_name_of_its_own() {
    assert_eq!(line_path(Path::new("notes/a.txt"), 3), Path::new("notes/a.line-3.txt"));
    assert_eq!(line_path(Path::new("README"), 12), Path::new("README.line-12"));
    let long = "x".repeat(200);
    let p = line_path(Path::new(&long), u64::MAX);
    assert!(p.as_os_str().len() < 255, "still a valid file name");
}

#[test]
fn the_body_is_checked_against_its_sha256_header_in_either_case() {
    let mut d = delivery(b"pixels", None, None, None);
    assert!(intact(&d), "no header: nothing to check");
    let digest = sha256_hex(b"pixels");
    d.headers.insert(SHA256.into(), HeaderValue::Str(digest.to_ascii_uppercase()));
    assert!(intact(&d));
    assert_eq!(claimed_sha256(&d), Some(digest.to_ascii_uppercase().as_str()));
    d.body.push(b'!');
    assert!(!intact(&d));
    assert!(!sha256_matches(&digest, &d.body));
    assert!(!sha256_matches("not a digest", b"pixels"));
    assert_eq!(CORRUPT, "body does not match its sha256 header", "a wire-visible reason");
}

#[test]
fn whole_files_are_named_from_a_safe_source_else_their_message_id() {
    let d = delivery(b"x", Some("order-7"), Some("image/png"), Some("shapes/a.png"));
    let names = whole_names(&d);
    assert_eq!(names.rel.as_deref(), Some(Path::new("shapes/a.png")));
    assert_eq!(names.unsafe_source, None);
    assert_eq!(names.fallback, "order-7.png");
    assert_eq!(names.tags, AltTags::from_id("order-7"));
    let bad = whole_names(&delivery(b"x", Some("m1"), Some("image/png"), Some("../etc/x")));
    assert_eq!((bad.rel, bad.unsafe_source.as_deref()), (None, Some("../etc/x")));
    assert_eq!(bad.fallback, "m1.png");
    let none = whole_names(&delivery(b"x", Some("m1"), None, None));
    assert_eq!((none.rel, none.unsafe_source), (None, None), "no source is not unsafe");
}

#[test]
fn ids_that_are_not_plain_short_names_are_hashed_and_no_id_uses_the_body() {
    for id in ["a/b", "../x", "id with space", &"x".repeat(65)] {
        let names = whole_names(&delivery(b"x", Some(id), Some("text/plain"), None));
        let hashed = &sha256_hex(id.as_bytes())[..32];
        assert_eq!(names.fallback, format!("{hashed}.txt"), "{id:?}");
        assert_eq!(names.tags.full, hashed);
        assert_eq!(names.tags.short, hashed[..12]);
    }
    let names = whole_names(&delivery(b"body", None, Some("image/jpeg"), None));
    assert_eq!(names.fallback, format!("{}.jpg", &sha256_hex(b"body")[..32]));
    let plain = "A".repeat(64);
    assert_eq!(whole_names(&delivery(b"x", Some(&plain), None, None)).tags.full, plain);
}

#[test]
fn files_sent_line_by_line_are_named_from_their_file_sha256() {
    let file = identity(b"one\ntwo\n");
    let d = delivery(b"two\n", Some("m"), Some(text::CONTENT_TYPE), Some("notes/a.txt"));
    let names = line_names(&d, &file);
    assert_eq!(names.rel.as_deref(), Some(Path::new("notes/a.txt")));
    assert_eq!(names.fallback, format!("{}.txt", &file.sha256[..32]));
    assert_eq!(names.tags.short, file.sha256[..12]);
    assert_eq!(names.tags.full, file.sha256);
}

#[test]
fn decoding_places_lines_and_names_the_rest_as_files() {
    let file = identity(b"one\ntwo\n");
    let msg = text::encode_line("n/a.txt", &file, 2, 4, b"two\n".to_vec()).expect("utf8");
    let d = Delivery {
        body: msg.body.clone(),
        headers: msg.headers.clone(),
        content_type: Some(msg.content_type.clone()),
        message_id: Some(msg.message_id.clone()),
        ..Delivery::default()
    };
    match text::decode(&d) {
        Ok(FileMessage::Line { line: 2, offset: 4, file: f, names }) => {
            assert_eq!(f, file);
            assert_eq!(names, line_names(&d, &file));
        }
        other => panic!("{other:?}"),
    }
    // An image with a line header is still a whole image.
    let mut img = delivery(b"x", Some("m"), Some("image/png"), Some("a.png"));
    img.headers.insert(LINE.into(), HeaderValue::Int(3));
    assert_eq!(image::decode(&img), FileMessage::Whole(whole_names(&img)));
    // A line of no known file: a file of its own beside the one it names.
    let mut unplaced = delivery(b"x\n", Some("m"), Some("text/plain"), Some("d/a.txt"));
    unplaced.headers.insert(LINE.into(), HeaderValue::Int(3));
    match text::decode(&unplaced) {
        Ok(FileMessage::Whole(names)) => {
            assert_eq!(names.rel.as_deref(), Some(Path::new("d/a.line-3.txt")));
            assert_eq!(names.fallback, "m.txt");
        }
        other => panic!("{other:?}"),
    }
    unplaced.headers.insert(LINE.into(), HeaderValue::Int(0));
    let refused = text::decode(&unplaced);
    assert_eq!(refused, Err("line message without a positive integer line header".into()));
    let whole = delivery(b"x\n", Some("m"), Some("text/plain"), Some("d/a.txt"));
    assert_eq!(text::decode(&whole), Ok(FileMessage::Whole(whole_names(&whole))));
}
