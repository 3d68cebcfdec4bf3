//! Broker URLs: where they come from (--url, AMQP_URL, --url-file) and how a list splits.

use super::UsageError;
use crate::cli;
use std::path::Path;

/// The broker URLs to use: from --url / AMQP_URL (each value may be a list), or from the
/// file of --url-file / AMQP_URL_FILE, or the default. Never both: which one was meant is
/// not guessed.
pub(super) fn broker_urls(
    given: &[String],
    file: Option<&Path>,
) -> Result<Vec<String>, UsageError> {
    match (given.is_empty(), file) {
        (false, Some(_)) => Err(UsageError(
            "--url / AMQP_URL and --url-file / AMQP_URL_FILE are both set: give the broker URL \
             one way (unset AMQP_URL to use --url-file)"
                .into(),
        )),
        (true, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                UsageError(format!(
                    "cannot read --url-file {}: {e}; check the path",
                    path.display()
                ))
            })?;
            let urls = split_urls(&text);
            if urls.is_empty() {
                return Err(UsageError(format!(
                    "--url-file {} holds no URL; write amqp://USER:PASS@HOST:PORT/VHOST in it",
                    path.display()
                )));
            }
            Ok(urls)
        }
        (true, None) => Ok(vec![cli::DEFAULT_URL.to_string()]),
        (false, None) => Ok(given.iter().flat_map(|list| split_urls(list)).collect()),
    }
}

/// Split a list of broker URLs only where a new URL begins: at a `,` (or whitespace, e.g. a
/// line break in a file) followed by `amqp://` or `amqps://`. A comma anywhere else, e.g. in
/// a password, stays part of its URL.
pub fn split_urls(list: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut start, mut from) = (0, 0);
    while let Some(i) = crate::amqp::next_amqp_url(&list[from..]).map(|i| from + i) {
        if i > start && list[..i].ends_with(|c: char| c == ',' || c.is_whitespace()) {
            parts.push(&list[start..i]);
            start = i;
        }
        from = i + 1;
    }
    parts.push(&list[start..]);
    parts
        .into_iter()
        .map(|p| p.trim().trim_end_matches(',').trim_end())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}
