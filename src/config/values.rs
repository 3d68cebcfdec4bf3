//! Validation of single values: CSV format, queue names and specs, durations.

use super::*;

pub(super) fn csv_format(
    a: &cli::CsvReadArgs,
    max_row_bytes: u64,
) -> Result<CsvFormat, UsageError> {
    let csv_flag = [
        (a.no_header, "--no-header"),
        (a.delimiter != ",", "--delimiter"),
        (a.encoding.is_some(), "--encoding"),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag));
    let rows = match a.format {
        None => RowsFormat::Detect,
        Some(cli::InputFormat::Csv) => RowsFormat::Csv,
        Some(cli::InputFormat::Jsonl) => RowsFormat::Jsonl,
    };
    if let (RowsFormat::Jsonl, Some(flag)) = (rows, csv_flag) {
        return Err(UsageError(format!(
            "{flag} with --format jsonl: {flag} shapes CSV, and JSON lines objects name their \
             own fields; drop {flag} (--skip-rows works for JSON lines)"
        )));
    }
    Ok(CsvFormat {
        rows,
        csv_flag,
        header: !a.no_header,
        skip_rows: a.skip_rows,
        delimiter: delimiter(&a.delimiter)?,
        encoding: a.encoding.as_deref().map(encoding).transpose()?.flatten(),
        max_row_bytes,
    })
}

/// `--delimiter`: one ASCII character, or `tab` / `\t`.
pub(super) fn delimiter(given: &str) -> Result<u8, UsageError> {
    match given {
        "tab" | "TAB" | "\\t" | "\t" => Ok(b'\t'),
        _ if given.len() == 1
            && given.is_ascii()
            && !matches!(given.as_bytes()[0], b'"' | b'\n' | b'\r') =>
        {
            Ok(given.as_bytes()[0])
        }
        _ => Err(UsageError(format!(
            "--delimiter {given:?}: give one ASCII character other than a quote or a line \
             break, e.g. --delimiter ';', --delimiter '|' or --delimiter tab"
        ))),
    }
}

/// `--encoding`: a WHATWG label; None for UTF-8 (read as it is).
pub(super) fn encoding(label: &str) -> Result<Option<&'static encoding_rs::Encoding>, UsageError> {
    match encoding_rs::Encoding::for_label(label.trim().as_bytes()) {
        Some(e) if e == encoding_rs::UTF_8 => Ok(None),
        Some(e) if e != encoding_rs::REPLACEMENT => Ok(Some(e)),
        _ => Err(UsageError(format!(
            "--encoding {label}: not an encoding this reads; give a WHATWG label such as \
             latin1 (= windows-1252), iso-8859-15, windows-1250, shift_jis, gbk or utf-16le"
        ))),
    }
}

/// `--metrics-addr HOST:PORT`: an IP address or a name that resolves (`localhost`), and a
/// port other than 0 (a random port nobody could find to scrape).
pub(super) fn metrics_addr(given: &str) -> Result<std::net::SocketAddr, UsageError> {
    use std::net::ToSocketAddrs;
    let bad = |why: &str| {
        UsageError(format!(
            "--metrics-addr {given:?}: {why}; give HOST:PORT to listen on, e.g. --metrics-addr \
             127.0.0.1:9090 (0.0.0.0:9090 for every interface)"
        ))
    };
    let (host, port) = given.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0 would pick a random port, which nobody could scrape"));
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, port));
    }
    match (host, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Ok(addr),
        _ => Err(bad("the host is neither an IP address nor a name that resolves")),
    }
}

pub(super) fn queue_spec(
    given: Option<String>,
    args: &cli::QueueArgs,
    kind: Kind,
) -> Result<QueueSpec, UsageError> {
    let name = queue_name(given.unwrap_or_else(|| kind.default_queue().to_string()))?;
    let dead_letter_queue = args.dead_letter_queue.clone().map(queue_name).transpose()?;
    if dead_letter_queue.as_ref() == Some(&name) {
        return Err(UsageError(format!("--dead-letter-queue {name}: must differ from --queue")));
    }
    super::stream::check_queue_args(args, args.queue_type == Some(cli::QueueTypeArg::Stream))?;
    if args.max_length == Some(0) {
        return Err(UsageError("--max-length 0: a queue must hold at least 1 message".into()));
    }
    Ok(QueueSpec {
        name,
        queue_type: args.queue_type.map(|t| match t {
            cli::QueueTypeArg::Classic => QueueType::Classic,
            cli::QueueTypeArg::Quorum => QueueType::Quorum,
            cli::QueueTypeArg::Stream => QueueType::Stream,
        }),
        dead_letter_queue,
        max_length: args.max_length,
        delivery_limit: Some(args.delivery_limit),
        max_age: args.max_age.clone(),
        max_length_bytes: args.max_length_bytes,
    })
}

pub(super) fn queue_name(name: String) -> Result<String, UsageError> {
    if name.is_empty() || name.len() > 255 {
        return Err(UsageError(format!(
            "--queue {name:?}: a queue name must be 1 to 255 bytes long"
        )));
    }
    if name.starts_with("amq.") {
        return Err(UsageError(format!(
            "--queue {name}: names starting with `amq.` are reserved by RabbitMQ; pick another"
        )));
    }
    Ok(name)
}

pub(super) fn seconds(flag: &str, value: f64, zero_ok: bool) -> Result<Duration, UsageError> {
    if value.is_finite() && value >= 1e9 {
        return Err(UsageError(format!(
            "{flag}: {value} s is too long; give at most 999999999 s (about 31 years)"
        )));
    }
    let ok = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0));
    if !ok {
        let want = if zero_ok { "0 or more" } else { "more than 0" };
        return Err(UsageError(format!("{flag} {value}: must be a number of seconds, {want}")));
    }
    Ok(Duration::from_secs_f64(value))
}
