//! File names, pure: the safe relative path made from a sender's `source` header, and the
//! alternative names a file takes when the name it wants holds other content (the sink
//! tries them in order).

use std::path::{Component, Path, PathBuf};

/// Longest path component accepted from a `source` header (bytes).
const MAX_COMPONENT: usize = 200;
/// Most directory levels accepted from a `source` header.
const MAX_DEPTH: usize = 16;

/// Highest counter of an alternative name (`name.TAG.N.ext`, N from 2).
pub(crate) const MAX_COUNTER: u32 = 100;

/// Turn a sender-supplied `source` into a relative path, or None when any part of it is
/// unsafe: absolute, `..`, `.`, empty components, NUL/control characters, format characters
/// (bidirectional overrides, zero-width characters), backslashes, colons, Windows device
/// names, trailing dots or spaces, hidden names, over-long names.
pub(crate) fn safe_relative_path(source: &str) -> Option<PathBuf> {
    if source.is_empty() || source.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = source.split('/').collect();
    if parts.len() > MAX_DEPTH || !parts.iter().all(|p| safe_component(p)) {
        return None;
    }
    let path: PathBuf = parts.iter().collect();
    // Defence in depth: the joined path must be purely normal components.
    path.components().all(|c| matches!(c, Component::Normal(_))).then_some(path)
}

fn safe_component(part: &str) -> bool {
    if part.is_empty() || part.len() > MAX_COMPONENT || part.starts_with('.') {
        return false;
    }
    if part.ends_with(' ') || part.ends_with('.') {
        return false;
    }
    if part
        .chars()
        .any(|c| invisible(c) || matches!(c, '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|'))
    {
        return false;
    }
    !is_windows_device(part)
}

/// Characters that do not show as themselves in a name: controls (Unicode Cc), format
/// characters (Cf: bidirectional overrides and isolates that make `evil\u{202e}gnp.exe` show
/// as `evilexe.png`, zero-width characters, BOM, soft hyphen, tags) and line and paragraph
/// separators (Zl, Zp). The Cf list is Unicode 15.1's.
fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061c}'
                | '\u{06dd}'
                | '\u{070f}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08e2}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

fn is_windows_device(part: &str) -> bool {
    let stem = part.split('.').next().unwrap_or(part).trim_end().to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit())
}

/// The tags of a file's alternative names: `name.SHORT.ext`, then `name.FULL.ext`, then
/// `name.SHORT.N.ext` (see [`candidates`]). Both must be safe file-name characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AltTags {
    /// A short tag (the id's first 12 characters).
    pub short: String,
    /// The whole (safe) id.
    pub full: String,
}

impl AltTags {
    /// Tags from a safe id: its first 12 characters, and all of it.
    pub fn from_id(id: &str) -> AltTags {
        AltTags { short: id.chars().take(12).collect(), full: id.to_string() }
    }
}

/// Every name a file wanted at `target` may take, in order: `target`, `name.SHORT.ext`,
/// `name.FULL.ext` (when FULL is longer), then `name.SHORT.N.ext` for N in 2..=[`MAX_COUNTER`].
pub(crate) fn candidates<'a>(
    target: &'a Path,
    tags: &'a AltTags,
) -> impl Iterator<Item = PathBuf> + 'a {
    let full = (tags.full != tags.short).then(|| alternative_name(target, &tags.full));
    std::iter::once(target.to_path_buf())
        .chain(std::iter::once(alternative_name(target, &tags.short)))
        .chain(full)
        .chain((2..=MAX_COUNTER).map(|n| alternative_name(target, &format!("{}.{n}", tags.short))))
}

/// `dir/name.ext` -> `dir/name.TAG.ext`.
fn alternative_name(target: &Path, tag: &str) -> PathBuf {
    let stem = target.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match target.extension() {
        Some(ext) => format!("{stem}.{tag}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{tag}"),
    };
    target.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hostile_sources_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../../x",
            "a/../../b",
            "a/./../../b",
            "./a",
            "a//b",
            "a/",
            "a\0b",
            "..",
            ".",
            ".hidden",
            "a/.ssh/x",
            "CON",
            "nul.txt",
            "com1.png",
            "LPT9",
            "a\\..\\b",
            "c:/x",
            "C:x",
            "tab\there",
            "trailing.",
            "trailing ",
            &"x".repeat(300),
        ] {
            assert_eq!(safe_relative_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn format_and_bidi_characters_are_refused_in_every_component() {
        // Found by attack: `evil\u{202e}gnp.exe` passed and shows as `evilexe.png`.
        for bad in [
            "evil\u{202e}gnp.exe",
            "d\u{202e}ir/a.txt",
            "a/b\u{2066}c.txt",
            "zero\u{200b}width.png",
            "\u{200f}rlm.txt",
            "\u{feff}bom.txt",
            "arabic\u{061c}mark.txt",
            "soft\u{00ad}hyphen.txt",
            "tag\u{e0041}.txt",
            "line\u{2028}sep.txt",
            "para\u{2029}sep.txt",
            "c1\u{0085}next.txt",
            "del\u{7f}.txt",
        ] {
            assert_eq!(safe_relative_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ordinary_sources_are_kept() {
        for good in [
            "a.png",
            "shapes/circle.png",
            "Zoë/über 1.txt",
            "שלום/مرحبا.txt",
            "日本語/ファイル.png",
            "com10.png",
            "console.jpg",
            "a b/c-d_e.f",
        ] {
            let p = safe_relative_path(good).unwrap_or_else(|| panic!("{good} refused"));
            assert_eq!(p, PathBuf::from(good));
        }
    }

    #[test]
    fn candidates_are_distinct_and_stay_in_the_directory() {
        let t = AltTags { short: "abc".into(), full: "abcdef".into() };
        let all: Vec<PathBuf> = candidates(Path::new("d/n.txt"), &t).collect();
        let unique: HashSet<&PathBuf> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        assert_eq!(all.len(), 3 + (MAX_COUNTER as usize - 1));
        assert!(all.iter().all(|p| p.parent() == Some(Path::new("d"))));
        assert_eq!(all[2], Path::new("d/n.abcdef.txt"));
    }
}
