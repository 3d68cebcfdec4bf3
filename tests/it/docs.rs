//! Every `mqdemo ...` command line in the README, in docs/*.md and in docker-compose.yaml parses
//! with the real clap definition (no Docker engine runs here, so this is how compose is checked).

use clap::Parser;
use mqdemo::cli::Cli;
use std::path::Path;

/// `mqdemo ...` lines inside ```sh code blocks (Markdown) or `command:` values (YAML),
/// with `\` continuations joined.
fn command_lines(text: &str, markdown: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_code = !markdown;
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if markdown && line.starts_with("```") {
            // Only shell blocks hold runnable command lines; a bare fence is a synopsis.
            in_code = !in_code && matches!(&line[3..], "sh" | "bash" | "shell" | "console");
            continue;
        }
        if !in_code {
            continue;
        }
        let line = line.trim_start_matches("$ ");
        let line = if markdown { line } else { line.trim_start_matches("command:").trim() };
        if pending.is_empty() && !line.starts_with("mqdemo ") {
            continue;
        }
        pending.push_str(line.trim_end_matches('\\'));
        pending.push(' ');
        if !line.ends_with('\\') {
            lines.push(std::mem::take(&mut pending));
        }
    }
    lines
}

/// Shell words of `line` up to the first unquoted `|`, `>`, `&`, `;` or comment, with
/// single and double quotes removed (enough for the docs' and compose's lines).
fn words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut started) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, '|' | '>' | '&' | ';') => break,
            (None, '#') if !started => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, '`') => {}
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

fn check(file: &str) -> usize {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).expect(file);
    let mut checked = 0;
    for line in command_lines(&text, file.ends_with(".md")) {
        let argv = words(&line);
        if argv.first().map(String::as_str) != Some("mqdemo") || argv.len() < 2 {
            continue;
        }
        if let Err(e) = Cli::try_parse_from(&argv)
            && !matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            )
        {
            panic!("{file}: `{}` does not parse:\n{e}", argv.join(" "));
        }
        checked += 1;
    }
    checked
}

#[test]
fn shell_words_keep_quoted_commands_together() {
    assert_eq!(
        words("mqdemo pipe --exec 'python3 model.py' --to \"a b\" | head # x"),
        ["mqdemo", "pipe", "--exec", "python3 model.py", "--to", "a b"]
    );
}

#[test]
fn readme_command_lines_parse() {
    assert!(check("README.md") >= 10, "README should show every command");
}

/// Every Markdown file under docs/, so a command line moved out of the README is still checked.
fn docs_files() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("docs/")
        .map(|entry| entry.expect("docs/ entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    files.sort();
    files
}

#[test]
fn docs_command_lines_parse() {
    let files = docs_files();
    assert!(files.len() >= 5, "docs/ should hold the long material: {files:?}");
    let checked: usize = files.iter().map(|file| check(file)).sum();
    assert!(checked >= 12, "docs/ should show the moved command lines ({checked} checked)");
}

#[test]
fn docker_compose_command_lines_parse() {
    assert!(check("docker-compose.yaml") >= 6, "compose runs three producers and three consumers");
}
