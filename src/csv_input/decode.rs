//! Decoding: the raw bytes counted for progress, then turned into UTF-8 (--encoding, a
//! UTF-16 byte order mark).

use encoding_rs::{Decoder, DecoderResult, Encoding};
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::guard::GuardError;

/// Raw bytes read, counted for progress.
pub(super) struct Counted<R> {
    pub(super) inner: R,
    pub(super) n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The file as UTF-8: as it is, unless --encoding names another encoding or the file starts
/// with a UTF-16 byte order mark.
pub(super) fn decode<R: Read + Send + 'static>(
    mut raw: R,
    encoding: Option<&'static Encoding>,
) -> io::Result<Box<dyn Read + Send>> {
    let mut head = [0u8; 3];
    let mut n = 0;
    while n < head.len() {
        match raw.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let raw = Prefixed { head, len: n, pos: 0, inner: raw };
    let utf16 = Encoding::for_bom(&head[..n])
        .map(|(e, _)| e)
        .filter(|e| *e == encoding_rs::UTF_16LE || *e == encoding_rs::UTF_16BE);
    Ok(match encoding.or(utf16) {
        // new_decoder sniffs a BOM (which wins over the label) and removes it.
        Some(enc) => Box::new(Transcode::new(raw, enc.new_decoder(), enc)),
        None => Box::new(raw),
    })
}

/// The bytes read to sniff a BOM, then the rest, in one read: csv-core takes a first read
/// holding only a BOM for the end of the file (it strips the BOM and sees no input).
pub(super) struct Prefixed<R> {
    head: [u8; 3],
    len: usize,
    pos: usize,
    inner: R,
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            return self.inner.read(buf);
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
        self.pos += n;
        if n == buf.len() {
            return Ok(n);
        }
        Ok(n + self.inner.read(&mut buf[n..])?)
    }
}

/// Bytes in `encoding` -> UTF-8; a malformed sequence is an error naming its line.
pub(super) struct Transcode<R> {
    inner: R,
    decoder: Decoder,
    encoding: &'static Encoding,
    raw: Vec<u8>,
    raw_pos: usize,
    raw_len: usize,
    eof: bool,
    out: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    /// Newlines written so far (to name the line of a malformed sequence).
    lines: u64,
    /// A malformed sequence was found on this line: the next read fails.
    failed: Option<u64>,
    done: bool,
}

impl<R: Read> Transcode<R> {
    fn new(inner: R, decoder: Decoder, encoding: &'static Encoding) -> Self {
        Transcode {
            inner,
            decoder,
            encoding,
            raw: vec![0; 64 * 1024],
            raw_pos: 0,
            raw_len: 0,
            eof: false,
            out: vec![0; 64 * 1024 * 3 + 16],
            out_pos: 0,
            out_len: 0,
            lines: 0,
            failed: None,
            done: false,
        }
    }

    /// Decode the next piece into `out`.
    fn fill(&mut self) -> io::Result<()> {
        if self.raw_pos == self.raw_len && !self.eof {
            self.raw_len = loop {
                match self.inner.read(&mut self.raw) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            self.raw_pos = 0;
            self.eof = self.raw_len == 0;
        }
        let (result, read, written) = self.decoder.decode_to_utf8_without_replacement(
            &self.raw[self.raw_pos..self.raw_len],
            &mut self.out,
            self.eof,
        );
        self.raw_pos += read;
        let newlines = memchr::memchr_iter(b'\n', &self.out[..written]).count() as u64;
        self.out_pos = 0;
        self.out_len = written;
        match result {
            DecoderResult::InputEmpty => self.done = self.eof,
            DecoderResult::OutputFull => {}
            DecoderResult::Malformed(..) => self.failed = Some(self.lines + newlines + 1),
        }
        self.lines += newlines;
        Ok(())
    }
}

impl<R: Read> Read for Transcode<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out_len {
                let n = buf.len().min(self.out_len - self.out_pos);
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(n);
            }
            if let Some(line) = self.failed {
                let encoding = self.encoding.name();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    GuardError::Malformed { line, encoding },
                ));
            }
            if self.done {
                return Ok(0);
            }
            self.fill()?;
        }
    }
}
