//! `--include GLOB` and `--hidden`: which files under `--directory` a producer sends.
//!
//! A glob without `/` matches the file name at any depth (`*.png` matches `a.png` and
//! `train/cat/a.png`, as rsync and fd match); a glob with `/` matches the whole path under
//! the directory, `/`-separated, where `*` stays within one directory and `**` crosses any
//! number (`train/*.png`, `**/labels/*.txt`). Hidden entries (a name starting with `.`) are
//! left out unless `--hidden`; a hidden directory is not entered.

use super::UsageError;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Which files a directory producer sends.
#[derive(Debug, Clone)]
pub struct FileFilter {
    /// `--include` globs without `/`: matched against the file name.
    names: GlobSet,
    /// `--include` globs with `/`: matched against the path under the directory.
    paths: GlobSet,
    /// The globs as given, for messages.
    patterns: Vec<String>,
    /// `--hidden`: send hidden files and enter hidden directories.
    pub hidden: bool,
}

impl Default for FileFilter {
    /// Every file that is not hidden.
    fn default() -> Self {
        FileFilter {
            names: GlobSet::empty(),
            paths: GlobSet::empty(),
            patterns: Vec::new(),
            hidden: false,
        }
    }
}

impl FileFilter {
    /// Compile `--include` globs; a bad one is a usage error naming it.
    pub fn new(patterns: &[String], hidden: bool) -> Result<FileFilter, UsageError> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for given in patterns {
            let glob = normalise(given)?;
            // `./x` or `/x` names the top of --directory (as rsync reads a leading `/`).
            let anchored = given.starts_with("./") || given.starts_with('/');
            let compiled = GlobBuilder::new(&glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| {
                    UsageError(format!(
                        "--include {given:?}: not a valid glob ({}); e.g. --include '*.png' or \
                         --include 'train/**/*.jpg'",
                        e.kind()
                    ))
                })?;
            if glob.contains('/') || anchored {
                paths.add(compiled);
            } else {
                names.add(compiled);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|e| UsageError(format!("--include: cannot compile the globs: {e}")))
        };
        Ok(FileFilter {
            names: build(names)?,
            paths: build(paths)?,
            patterns: patterns.to_vec(),
            hidden,
        })
    }

    /// Whether a file is sent by `--include`: `rel` is its `/`-separated path under the
    /// directory, `name` its file name. With no `--include`, every file is.
    pub fn includes(&self, rel: &str, name: &str) -> bool {
        self.patterns.is_empty() || self.names.is_match(name) || self.paths.is_match(rel)
    }

    /// The `--include` globs, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Whether a directory entry's name makes it hidden (starts with `.`).
pub fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// A glob as it is matched: a leading `./` or `/` dropped (the path is under --directory),
/// a trailing `/` taken as everything under that directory.
fn normalise(given: &str) -> Result<String, UsageError> {
    let mut glob = given.trim_start_matches("./").trim_start_matches('/').to_string();
    if glob.ends_with('/') {
        glob.push_str("**");
    }
    if glob.is_empty() {
        return Err(UsageError(format!(
            "--include {given:?}: give a glob that names files, e.g. --include '*.png'"
        )));
    }
    Ok(glob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(globs: &[&str]) -> FileFilter {
        let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
        FileFilter::new(&globs, false).expect("valid globs")
    }

    fn sent(f: &FileFilter, rel: &str) -> bool {
        f.includes(rel, rel.rsplit('/').next().unwrap_or(rel))
    }

    #[test]
    fn a_glob_without_a_slash_matches_the_name_at_any_depth() {
        let f = filter(&["*.png"]);
        assert!(sent(&f, "a.png") && sent(&f, "train/cat/a.png"));
        assert!(!sent(&f, "labels.csv") && !sent(&f, "a.png.txt") && !sent(&f, "a.PNG"));
    }

    #[test]
    fn a_glob_with_a_slash_matches_the_path_and_star_stays_in_one_directory() {
        let f = filter(&["train/*.png"]);
        assert!(sent(&f, "train/a.png"));
        assert!(!sent(&f, "train/cat/a.png") && !sent(&f, "test/a.png") && !sent(&f, "a.png"));
        let deep = filter(&["train/**/*.png"]);
        assert!(sent(&deep, "train/a.png") && sent(&deep, "train/x/y/a.png"));
        let anywhere = filter(&["**/labels/*.txt"]);
        assert!(sent(&anywhere, "labels/a.txt") && sent(&anywhere, "x/labels/a.txt"));
    }

    #[test]
    fn several_globs_any_one_matching_sends_and_none_sends_everything() {
        let f = filter(&["*.png", "*.{jpg,jpeg}"]);
        assert!(sent(&f, "a.png") && sent(&f, "b/c.jpeg") && sent(&f, "c.jpg"));
        assert!(!sent(&f, "d.gif"));
        assert!(sent(&FileFilter::default(), "anything/at/all.bin"));
    }

    #[test]
    fn leading_dot_slash_and_trailing_slash_are_taken_as_meant() {
        let f = filter(&["./train/"]);
        assert!(sent(&f, "train/a.png") && sent(&f, "train/x/b.txt") && !sent(&f, "test/a.png"));
        assert!(sent(&filter(&["/top.txt"]), "top.txt"));
    }

    #[test]
    fn a_bad_glob_is_a_usage_error_naming_it() {
        for bad in ["[a", "{a,b", "", "/"] {
            let err = FileFilter::new(&[bad.to_string()], false).expect_err(bad);
            assert!(err.0.starts_with(&format!("--include {bad:?}")), "{}", err.0);
        }
    }

    #[test]
    fn hidden_names_start_with_a_dot() {
        use std::ffi::OsStr;
        assert!(is_hidden(OsStr::new(".DS_Store")) && is_hidden(OsStr::new(".git")));
        assert!(!is_hidden(OsStr::new("a.png")) && !is_hidden(OsStr::new("")));
    }

    #[test]
    fn a_leading_dot_slash_or_slash_anchors_at_the_top() {
        // Matched at every depth before: './*.txt' sent train/c.txt too.
        for glob in ["./*.txt", "/*.txt"] {
            let f = filter(&[glob]);
            assert!(f.includes("a.txt", "a.txt"), "{glob}");
            assert!(!f.includes("train/c.txt", "c.txt"), "{glob}");
        }
        assert!(filter(&["*.txt"]).includes("train/c.txt", "c.txt"));
    }
}
