//! Tests of the guard, the decoding and the messages.

use super::*;
use encoding_rs::Encoding;

/// Everything the guard lets through, read in `chunk`-byte pieces, or its error.
fn guarded(input: &[u8], skip: u64, max: u64, chunk: usize) -> Result<Vec<u8>, String> {
    let mut g = Guard::new(input, b',', skip, max);
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        match g.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[test]
fn quotes_that_close_pass_through_whatever_the_chunk_size() {
    let ok: &[&[u8]] = &[
        b"a,b\n1,\"two\nlines\"\n",
        b"a,b\n1,\"say \"\"hi\"\"\"\n",
        b"a,b\r\n1,\"x\"\r\n",
        b"a,b\n5\" pipe,x\n",   // a quote inside an unquoted field is data
        b"a,b\n\"ab\"c\"d,x\n", // after a closed field, a quote is data
        b"\xef\xbb\xbf\"a\",b\n1,2\n", // BOM, then a quoted header field
        b"a,b\n1,\"\"",         // an empty quoted field at the end of the file
    ];
    for input in ok {
        for chunk in [1, 2, 3, 7, 4096] {
            assert_eq!(
                guarded(input, 0, 1 << 20, chunk).as_deref(),
                Ok(*input),
                "{:?} in chunks of {chunk}",
                String::from_utf8_lossy(input)
            );
        }
    }
}

#[test]
fn an_unterminated_quote_names_the_line_it_opened_on() {
    for chunk in [1, 5, 4096] {
        let err = guarded(b"a,b\n1,ok\n2,\"x\n3,y\n4,z\n", 0, 1 << 20, chunk);
        assert_eq!(err, Err("line 3: unterminated quote".into()), "chunk {chunk}");
        let err = guarded(b"a,b\n1,\"x\"\"\n", 0, 1 << 20, chunk);
        assert_eq!(err, Err("line 2: unterminated quote".into()), "chunk {chunk}");
    }
}

#[test]
fn a_row_over_the_limit_names_the_line_it_began_on() {
    let mut input = b"a,b\n1,x\n2,".to_vec();
    input.extend(std::iter::repeat_n(b'y', 100));
    input.extend_from_slice(b"\n3,z\n");
    assert_eq!(guarded(&input, 0, 50, 16), Err("line 3: row longer than 50 bytes".into()));
    // A runaway quote is caught by the limit long before the end of the file.
    let mut runaway = b"a,b\n\"x\n".to_vec();
    for _ in 0..100 {
        runaway.extend_from_slice(b"1,2\n");
    }
    assert_eq!(guarded(&runaway, 0, 50, 16), Err("line 2: row longer than 50 bytes".into()));
    assert!(guarded(&input, 0, 200, 16).is_ok());
    // A long row inside one piece: the rows before it still go on, then the error.
    let mut g = Guard::new(&input[..], b',', 0, 50);
    let mut buf = vec![0u8; 4096];
    assert_eq!(g.read(&mut buf).expect("rows before the long one"), 8);
    assert_eq!(&buf[..8], b"a,b\n1,x\n");
    let err = g.read(&mut buf).expect_err("then the long row");
    assert_eq!(err.to_string(), "line 3: row longer than 50 bytes");
}

#[test]
fn skipped_lines_are_dropped_and_still_counted() {
    let input = b"569,30,\"malignant\nmeta\na,b\n1,\"x\n";
    assert_eq!(guarded(input, 2, 1 << 20, 3), Err("line 4: unterminated quote".into()));
    assert_eq!(guarded(b"m\na,b\n", 1, 1 << 20, 2).as_deref(), Ok(&b"a,b\n"[..]));
    assert_eq!(guarded(b"m\n", 5, 1 << 20, 2).as_deref(), Ok(&b""[..]));
}

#[test]
fn latin1_and_utf16_decode_to_utf8() {
    let latin1 = b"City\n\xd5akman\n".to_vec();
    let mut out = String::new();
    decode(io::Cursor::new(latin1), Encoding::for_label(b"latin1"))
        .expect("decoder")
        .read_to_string(&mut out)
        .expect("decodes");
    assert_eq!(out, "City\nÕakman\n");
    // UTF-16LE with a BOM is recognised without --encoding.
    let mut utf16 = vec![0xff, 0xfe];
    for u in "a\tb\n1\t\u{e9}\n".encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    let mut out = String::new();
    decode(io::Cursor::new(utf16), None)
        .expect("decoder")
        .read_to_string(&mut out)
        .expect("decodes");
    assert_eq!(out, "a\tb\n1\té\n");
}

#[test]
fn the_first_read_holds_more_than_a_bom() {
    let mut r = decode(io::Cursor::new(b"\xef\xbb\xbf\"id\",n\n".to_vec()), None).expect("reader");
    let mut buf = [0u8; 64];
    assert_eq!(r.read(&mut buf).expect("reads"), 10, "the BOM and the line");
}

#[test]
fn malformed_bytes_in_the_given_encoding_name_their_line() {
    let sjis = b"a\nb\n\x82\n".to_vec();
    let mut out = String::new();
    let err = decode(io::Cursor::new(sjis), Encoding::for_label(b"shift_jis"))
        .expect("decoder")
        .read_to_string(&mut out)
        .expect_err("malformed");
    assert_eq!(err.to_string(), "line 3: not valid Shift_JIS");
}

#[test]
fn duplicates_are_described_briefly() {
    let dups = tabular::duplicate_columns(["0", "0", "5", "5", "0", "0", "0", "0", "0", "0"]);
    assert_eq!(
        describe_duplicates(&dups),
        r#""0" (columns 1, 2, 5, 6, 7, 8, ...), "5" (columns 3, 4)"#
    );
}
