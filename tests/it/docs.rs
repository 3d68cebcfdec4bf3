//! Every `mqdemo ...` command line in the README and docker-compose.yaml parses with the real
//! clap definition (no Docker engine runs here, so this is how compose is checked).

use clap::Parser;
use mqdemo::cli::Cli;
use std::path::Path;

fn command_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim().trim_start_matches("- ").trim_start_matches("$ ");
        let line = line
            .trim_start_matches("command: ")
            .trim_matches('"')
            .trim_matches('\'');
        let start = if pending.is_empty() {
            line.find("mqdemo ")
        } else {
            Some(0)
        };
        let Some(start) = start else { continue };
        let piece = &line[start..];
        if !pending.is_empty() || piece.starts_with("mqdemo ") {
            pending.push_str(piece.trim_end_matches('\\'));
            pending.push(' ');
            if !piece.ends_with('\\') {
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    lines
}

fn words(line: &str) -> Vec<String> {
    let cut = line.split(['|', '>', '&', ';', '#']).next().unwrap_or(line);
    cut.split_whitespace()
        .map(|w| w.trim_matches('`').to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

fn check(file: &str) -> usize {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).expect(file);
    let mut checked = 0;
    for line in command_lines(&text) {
        let argv = words(&line);
        if argv.first().map(String::as_str) != Some("mqdemo") || argv.len() < 2 {
            continue;
        }
        if let Err(e) = Cli::try_parse_from(&argv) {
            if !matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) {
                panic!("{file}: `{}` does not parse:\n{e}", argv.join(" "));
            }
        }
        checked += 1;
    }
    checked
}

#[test]
fn readme_command_lines_parse() {
    assert!(check("README.md") >= 10, "README should show every command");
}

#[test]
fn docker_compose_command_lines_parse() {
    assert!(
        check("docker-compose.yaml") >= 6,
        "compose runs three producers and three consumers"
    );
}
