//! What a received image or text file message is, before anything is stored: whether its body
//! matches its `sha256` header, the relative name it asks for (its `source` header, when
//! safe), the name used otherwise (from its message id, or for a line from its file's
//! SHA-256, with an extension from its content type), the tags of its alternative names,
//! and, for a line, its place in its file. Pure: the consumer only stores what this says.

use super::path::{AltTags, safe_relative_path};
use super::text::{FileIdentity, LinePart};
use super::{Delivery, extension_for, sha256_hex};
use std::path::{Path, PathBuf};

/// Header: lowercase (or uppercase) hex SHA-256 of the body.
pub const SHA256: &str = "sha256";
/// Header: the file's path relative to the producer's input directory, `/`-separated.
pub const SOURCE: &str = "source";
/// Why a message whose body does not match its `sha256` header is refused.
pub const CORRUPT: &str = "body does not match its sha256 header";

/// Where a received file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The `source` header as a safe relative path; None when there is none or it is unsafe.
    pub rel: Option<PathBuf>,
    /// The `source` header when it is not safe (the file goes to `fallback` instead).
    pub unsafe_source: Option<String>,
    /// A plain file name in the output directory, used when `rel` is None or unusable.
    pub fallback: String,
    /// The tags of the alternative names used when the wanted name holds other content.
    pub tags: AltTags,
}

/// What a received image or text message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileMessage {
    /// A whole file, or a line that names no file of its own (its name then says which line:
    /// `name.line-N.ext`, a file of its own, never appended to anything).
    Whole(Names),
    /// Line `line`, at byte `offset`, of `file` (named after the whole file).
    Line {
        /// 1-based line number.
        line: u64,
        /// Byte offset of the line in its file.
        offset: u64,
        /// The whole file.
        file: FileIdentity,
        /// Where the whole file goes.
        names: Names,
    },
}

/// `d` as a file message; `part` is what its line headers say (None: not a line).
pub fn decode(d: &Delivery, part: Option<LinePart>) -> FileMessage {
    match part {
        None => FileMessage::Whole(whole_names(d)),
        Some(LinePart::Unplaced { line }) => {
            let mut names = whole_names(d);
            names.rel = names.rel.map(|r| line_path(&r, line));
            FileMessage::Whole(names)
        }
        Some(LinePart::Placed { line, offset, file }) => {
            let names = line_names(d, &file);
            FileMessage::Line { line, offset, file, names }
        }
    }
}

/// The `sha256` header of `d`, if it has one.
pub fn claimed_sha256(d: &Delivery) -> Option<&str> {
    d.header_str(SHA256)
}

/// Whether `body`'s SHA-256 is the hex digest `want` (either letter case).
pub fn sha256_matches(want: &str, body: &[u8]) -> bool {
    want.eq_ignore_ascii_case(&sha256_hex(body))
}

/// Whether `d`'s body matches its `sha256` header (true when it has none).
pub fn intact(d: &Delivery) -> bool {
    claimed_sha256(d).is_none_or(|want| sha256_matches(want, &d.body))
}

/// Names for a whole file: fallback and tags from the message id (or the body's hash when
/// there is none; hashed too when it is not a plain short name).
pub fn whole_names(d: &Delivery) -> Names {
    let id = d.id_or_hash();
    let safe_id = if id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        id
    } else {
        sha256_hex(id.as_bytes())[..32].to_string()
    };
    let fallback = format!("{safe_id}.{}", extension_for(d.content_type.as_deref()));
    named(d, fallback, AltTags::from_id(&safe_id))
}

/// Names for a file sent line by line: fallback and tags from the file's SHA-256.
pub fn line_names(d: &Delivery, file: &FileIdentity) -> Names {
    let fallback = format!("{}.{}", &file.sha256[..32], extension_for(d.content_type.as_deref()));
    let tags = AltTags { short: file.sha256[..12].to_string(), full: file.sha256.clone() };
    named(d, fallback, tags)
}

fn named(d: &Delivery, fallback: String, tags: AltTags) -> Names {
    let source = d.header_str(SOURCE);
    let rel = source.and_then(safe_relative_path);
    let unsafe_source = source.filter(|_| rel.is_none()).map(str::to_string);
    Names { rel, unsafe_source, fallback, tags }
}

/// `dir/name.ext` -> `dir/name.line-N.ext`: where a line that names no file of its own is
/// stored (as a file of its own, never appended to anything).
pub fn line_path(rel: &Path, line: u64) -> PathBuf {
    let stem = rel.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match rel.extension() {
        Some(ext) => format!("{stem}.line-{line}.{}", ext.to_string_lossy()),
        None => format!("{stem}.line-{line}"),
    };
    rel.with_file_name(name)
}

#[cfg(test)]
mod tests;
