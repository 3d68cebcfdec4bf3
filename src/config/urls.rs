//! Broker URLs: where they come from (--url, AMQP_URL, --url-file) and how a list splits.

use super::UsageError;
use crate::amqp::Endpoint;
use crate::cli;
use std::path::Path;
use std::time::Duration;

/// The brokers to use, one endpoint per URL, each with --ca-cert. A CA certificate only
/// means something for amqps://: with --ca-cert, an amqp:// URL (the default one too) is
/// bad usage rather than a certificate silently unused.
pub(super) fn endpoints(
    g: &cli::GlobalArgs,
    timeout: Duration,
) -> Result<Vec<Endpoint>, UsageError> {
    let urls = broker_urls(&g.url, g.url_file.as_deref())?;
    let endpoints = urls
        .iter()
        .map(|u| {
            Endpoint::parse(u, g.rabbitmq_server.as_deref(), timeout)
                .map(|e| e.with_ca_cert(g.ca_cert.clone()))
                .map_err(|e| UsageError(e.0))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err(UsageError("--url: give at least one broker URL".into()));
    }
    if let Some(ca) = &g.ca_cert
        && let Some(plain) = endpoints.iter().find(|e| !e.masked().starts_with("amqps://"))
    {
        return Err(UsageError(format!(
            "--ca-cert {}: only amqps:// URLs use a CA certificate, not {}; use an amqps:// \
             URL or drop --ca-cert",
            ca.display(),
            plain.masked()
        )));
    }
    Ok(endpoints)
}

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
