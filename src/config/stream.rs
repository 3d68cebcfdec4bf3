//! Reading a stream: `--offset`, `--until`, `--checkpoint` and the stream's retention flags,
//! checked and turned into plain values (times resolved against the clock once, at start).

use super::UsageError;
use crate::amqp::{Offset, QueueSpec, Until};
use std::path::{Path, PathBuf};

/// How a consume or pipe run reads a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// `--offset`; None: right after the checkpoint, else `next`.
    pub offset: Option<Offset>,
    /// `--until`.
    pub until: Option<Until>,
    /// `--checkpoint`.
    pub checkpoint: Option<Checkpoint>,
}

/// Where the offset of the last message durably handled is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// A JSON file, replaced atomically after each ack.
    File(PathBuf),
    /// The `--sqlite` database, committed with the rows.
    Sqlite,
}

/// The stream flags of a run reading `queue`; None when the queue is not a stream.
/// `rows_to`: the file the run writes its rows to, with its flag (`--output` or `--sqlite`,
/// where `--checkpoint sqlite` can live); a `--checkpoint` file must not be it.
pub(super) fn stream_config(
    args: &crate::cli::StreamArgs,
    queue: &QueueSpec,
    rows_to: Option<(&str, &Path)>,
    now_ms: u64,
) -> Result<Option<StreamConfig>, UsageError> {
    let sqlite = rows_to.is_some_and(|(flag, _)| flag == "--sqlite");
    let given = [
        ("--offset", args.offset.is_some()),
        ("--until", args.until.is_some()),
        ("--checkpoint", args.checkpoint.is_some()),
    ];
    if !queue.is_stream() {
        return match given.iter().find(|(_, g)| *g) {
            Some((flag, _)) => Err(UsageError(format!(
                "{flag} reads a stream: add --queue-type stream (queue '{}' must be one; a \
                 classic or quorum queue has no offsets)",
                queue.name
            ))),
            None => Ok(None),
        };
    }
    let offset = args.offset.as_deref().map(|t| offset(t, now_ms)).transpose()?;
    let until = args.until.as_deref().map(|t| until(t, now_ms)).transpose()?;
    if let (Some(o), Some(u), Some(ot), Some(ut)) = (offset, until, &args.offset, &args.until) {
        check_window(o, u, ot, ut)?;
    }
    let checkpoint = match &args.checkpoint {
        None => None,
        Some(p) if p.as_os_str() == "sqlite" => {
            if !sqlite {
                return Err(UsageError(
                    "--checkpoint sqlite keeps the offset in the --sqlite database: give \
                     --sqlite FILE, or --checkpoint FILE for a file of its own"
                        .into(),
                ));
            }
            Some(Checkpoint::Sqlite)
        }
        Some(p) if p.as_os_str().is_empty() || p.is_dir() => {
            return Err(UsageError(format!(
                "--checkpoint {}: give a file name (it is created on the first ack)",
                p.display()
            )));
        }
        // A FIFO would block the read of the checkpoint (and a device never end it).
        Some(p) if std::fs::metadata(p).is_ok_and(|m| !m.is_file()) => {
            return Err(UsageError(format!(
                "--checkpoint {}: not a regular file (a FIFO, a device); give a file name (it \
                 is created on the first ack)",
                p.display()
            )));
        }
        Some(p) => {
            if let Some((flag, rows)) = rows_to.filter(|(_, rows)| same_file(p, rows)) {
                return Err(UsageError(same_file_refusal(p, flag, rows)));
            }
            if stdout_is(p) {
                return Err(UsageError(format!(
                    "--checkpoint {}: stdout is that file, so the checkpoint would replace what \
                     is written to it; redirect stdout elsewhere or give --checkpoint a file of \
                     its own",
                    p.display()
                )));
            }
            Some(Checkpoint::File(p.clone()))
        }
    };
    Ok(Some(StreamConfig { offset, until, checkpoint }))
}

/// Whether `a` and `b` name one file, also when neither exists yet (their directories
/// resolved, symbolic links and `..` included, a link to a file not there yet by its
/// target).
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return x.dev() == y.dev() && x.ino() == y.ino();
    }
    matches!((resolved(a, 8), resolved(b, 8)), (Some(x), Some(y)) if x == y)
}

/// The absolute path `p` names, for a file that may not exist yet: a symbolic link is
/// followed to its target (up to `links` of them).
fn resolved(p: &Path, links: u32) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(target) = std::fs::read_link(p)
        && links > 0
    {
        return resolved(&dir.join(target), links - 1);
    }
    Some(dir.canonicalize().ok()?.join(p.file_name()?))
}

/// Whether this process's stdout is the file at `path` (`>> run.ckpt`).
fn stdout_is(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(out) = rustix::fs::fstat(std::io::stdout()) else {
        return false;
    };
    std::fs::metadata(path).is_ok_and(|m| m.dev() == out.st_dev && m.ino() == out.st_ino)
}

/// The error for a `--checkpoint` naming the run's own rows (`flag`: `--output`, `--sqlite`).
fn same_file_refusal(checkpoint: &Path, flag: &str, rows: &Path) -> String {
    let (what, keep) = if flag == "--sqlite" {
        ("database", "; to keep the offset in the database, give --checkpoint sqlite")
    } else {
        ("file", "")
    };
    format!(
        "--checkpoint {} is the {flag} {what} {}: the checkpoint would replace the rows; give \
         --checkpoint a file of its own{keep}",
        checkpoint.display(),
        rows.display()
    )
}

/// A window that ends where it begins or before (`--offset 5 --until offset:3`, two times
/// swapped) reads nothing by construction: refused, naming both flags. An offset against a
/// time cannot be compared before reading, nor can `first`, `last` or `next` against a time.
fn check_window(
    offset: Offset,
    until: Until,
    o_text: &str,
    u_text: &str,
) -> Result<(), UsageError> {
    let empty = match (offset, until) {
        (Offset::At(n), Until::Offset(m)) => m <= n,
        (Offset::First, Until::Offset(m)) => m == 0,
        // A time offset starts at its whole second; an --until time at or before that second
        // stops before every message stored from it.
        (Offset::Time(secs), Until::Time(ms)) => ms <= secs.saturating_mul(1000),
        _ => false,
    };
    if !empty {
        return Ok(());
    }
    Err(UsageError(format!(
        "--until {u_text} is not after --offset {o_text}: the window is empty; give an --until \
         later than the --offset (were they swapped?)"
    )))
}

/// What the flags of a stream rule out, for a queue declared with `queue_type`.
pub(super) fn check_queue_args(
    args: &crate::cli::QueueArgs,
    stream: bool,
) -> Result<(), UsageError> {
    if !stream {
        return match (&args.max_age, args.max_length_bytes) {
            (Some(_), _) => {
                Err(UsageError("--max-age is a stream's retention: add --queue-type stream".into()))
            }
            (None, Some(_)) => Err(UsageError(
                "--max-length-bytes is a stream's retention here: add --queue-type stream (for \
                 other queues bound them with --max-length)"
                    .into(),
            )),
            (None, None) => Ok(()),
        };
    }
    if let Some(age) = &args.max_age {
        max_age(age)?;
    }
    if args.dead_letter_queue.is_some() {
        return Err(UsageError(
            "--dead-letter-queue with --queue-type stream: a stream dead-letters nothing (what \
             cannot be used goes to the --failed-queue); drop --dead-letter-queue"
                .into(),
        ));
    }
    if args.max_length.is_some() {
        return Err(UsageError(
            "--max-length with --queue-type stream: a stream is bounded by retention; use \
             --max-length-bytes or --max-age"
                .into(),
        ));
    }
    Ok(())
}

/// `--max-age`: a whole number and one of the broker's units (Y, M, D, h, m, s).
fn max_age(text: &str) -> Result<(), UsageError> {
    let unit = text.chars().last().unwrap_or(' ');
    let number = &text[..text.len() - unit.len_utf8().min(text.len())];
    let digits = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    if digits && "YMDhms".contains(unit) && number.parse::<u64>().is_ok_and(|n| n > 0) {
        return Ok(());
    }
    Err(UsageError(format!(
        "--max-age {text:?}: give a whole number and one of the broker's units Y (years), M \
         (months), D (days), h, m, s, e.g. 7D or 12h"
    )))
}

const OFFSET_FORMS: &str = "first, last, next, an offset (1234), an RFC 3339 time \
                            (2026-12-01T10:00:00Z) or a duration back from now (10m, 2h, 1d)";

/// `--offset`.
pub(crate) fn offset(text: &str, now_ms: u64) -> Result<Offset, UsageError> {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "first" => return Ok(Offset::First),
        "last" => return Ok(Offset::Last),
        "next" => return Ok(Offset::Next),
        _ => {}
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        // Offset 0 is where every stream begins: `first`, also once retention dropped it.
        return t
            .parse()
            .map(|n| if n == 0 { Offset::First } else { Offset::At(n) })
            .map_err(|_| UsageError(format!("--offset {text}: too large for a stream offset")));
    }
    match time(t, now_ms) {
        Some(Ok(ms)) => Ok(Offset::Time(ms / 1000)),
        Some(Err(why)) => Err(UsageError(format!("--offset {text}: {why}"))),
        None => Err(UsageError(format!("--offset {text:?}: give {OFFSET_FORMS}"))),
    }
}

/// `--until`.
pub(crate) fn until(text: &str, now_ms: u64) -> Result<Until, UsageError> {
    let t = text.trim();
    if let Some(n) = t.strip_prefix("offset:") {
        return n.trim().parse().map(Until::Offset).map_err(|_| {
            UsageError(format!("--until {text}: offset:N takes a whole number, e.g. offset:1000"))
        });
    }
    let forms = "an RFC 3339 time (2026-12-01T11:00:00Z), a duration back from now (10m, 2h, \
                 1d) or offset:N";
    match time(t, now_ms) {
        Some(Ok(ms)) => Ok(Until::Time(ms)),
        Some(Err(why)) => Err(UsageError(format!("--until {text}: {why}"))),
        None => Err(UsageError(format!("--until {text:?}: give {forms}"))),
    }
}

/// A point in time, in Unix milliseconds: RFC 3339, or a duration with a unit back from
/// `now_ms`. None: neither form; Some(Err): the form, but not a time it can use.
fn time(text: &str, now_ms: u64) -> Option<Result<u64, String>> {
    if text.len() >= 10 && text.as_bytes()[4] == b'-' {
        return Some(rfc3339_ms(text));
    }
    // A duration needs its unit here: a plain number is an offset.
    if !text.ends_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let secs = crate::cli::secs(text).ok()?;
    let back = (secs * 1000.0).round();
    if back >= now_ms as f64 {
        return Some(Err("that reaches back before 1970".into()));
    }
    Some(Ok(now_ms - back as u64))
}

/// RFC 3339 (`2026-12-01T10:00:00Z`, `2026-12-01T11:00:00.5+01:00`) as Unix milliseconds.
pub(crate) fn rfc3339_ms(text: &str) -> Result<u64, String> {
    let bad = || {
        "not an RFC 3339 time; write it like 2026-12-01T10:00:00Z or 2026-12-01T11:00:00+01:00"
            .to_string()
    };
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |from: usize, to: usize| -> Result<u64, String> {
        let s = text.get(from..to).ok_or_else(bad)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let first3: String = frac[..digits].chars().chain("000".chars()).take(3).collect();
        millis = first3.parse::<u64>().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let hh = rest[1..3].parse::<i64>().map_err(|_| bad())?;
            let mm = rest[4..6].parse::<i64>().map_err(|_| bad())?;
            if hh > 23 || mm > 59 {
                return Err(bad());
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hh * 3600 + mm * 60)
        }
        _ => return Err(bad()),
    };
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let month_days = [31, if leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day == 0
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(format!("{}: a date or time out of range", bad()));
    }
    let local =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59);
    let utc = i64::try_from(local).map_err(|_| bad())? - offset_secs;
    let utc = u64::try_from(utc).map_err(|_| "before 1970".to_string())?;
    Ok(utc * 1000 + millis)
}

/// Days from 1970-01-01 to a date in the proleptic Gregorian calendar (year >= 1970;
/// Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_583_200_000; // 2025-12-01T10:00:00Z

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(rfc3339_ms("2025-12-01T10:00:00Z"), Ok(NOW));
        assert_eq!(rfc3339_ms("2025-12-01T11:00:00+01:00"), Ok(NOW));
        assert_eq!(rfc3339_ms("2025-12-01T09:30:00-00:30"), Ok(NOW));
        assert_eq!(rfc3339_ms("2025-12-01t10:00:00.25z"), Ok(NOW + 250));
        assert_eq!(rfc3339_ms("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        for bad in [
            "2025-12-01",
            "2025-12-01T10:00:00",
            "2025-13-01T10:00:00Z",
            "2025-02-29T10:00:00Z",
            "2025-12-01T24:00:00Z",
            "2025-12-01T10:00:00.Z",
            "2025-12-01T10:00:00+1:00",
            "1969-12-31T23:59:59Z",
            "2025-12-01T10:00:00Zjunk",
        ] {
            assert!(rfc3339_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn offsets() {
        assert_eq!(offset("first", NOW), Ok(Offset::First));
        assert_eq!(offset("LAST", NOW), Ok(Offset::Last));
        assert_eq!(offset("next", NOW), Ok(Offset::Next));
        assert_eq!(offset("1234", NOW), Ok(Offset::At(1234)));
        assert_eq!(offset("0", NOW), Ok(Offset::First));
        assert_eq!(offset("2025-12-01T10:00:00Z", NOW), Ok(Offset::Time(NOW / 1000)));
        assert_eq!(offset("10m", NOW), Ok(Offset::Time(NOW / 1000 - 600)));
        assert_eq!(offset("1d", NOW), Ok(Offset::Time(NOW / 1000 - 86_400)));
        for bad in ["", "-1", "soon", "10", "99999999999999999999999"] {
            if bad == "10" {
                continue; // an offset
            }
            let err = offset(bad, NOW).expect_err(bad);
            assert!(err.0.starts_with("--offset"), "{err:?}");
        }
        assert!(offset("100000d", NOW).expect_err("too far back").0.contains("before 1970"));
    }

    #[test]
    fn untils() {
        assert_eq!(until("offset:1000", NOW), Ok(Until::Offset(1000)));
        assert_eq!(until("2025-12-01T10:00:00Z", NOW), Ok(Until::Time(NOW)));
        assert_eq!(until("2h", NOW), Ok(Until::Time(NOW - 7_200_000)));
        for bad in ["1000", "offset:", "offset:x", "later"] {
            let err = until(bad, NOW).expect_err(bad);
            assert!(err.0.contains("offset:N"), "{err:?}");
        }
    }

    #[test]
    fn a_checkpoint_on_the_rows_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("mqdemo-same-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("test dir");
        let rows = dir.join("rows.jsonl");
        // Not there yet: compared by directory and name.
        assert!(same_file(&rows, &dir.join("sub").join("..").join("rows.jsonl")));
        assert!(!same_file(&rows, &dir.join("run.ckpt")));
        std::fs::write(&rows, "{}\n").expect("test file");
        std::os::unix::fs::symlink(&rows, dir.join("link")).expect("test link");
        assert!(same_file(&dir.join("link"), &rows));
        assert!(!same_file(&dir.join("run.ckpt"), &rows));
        let why = same_file_refusal(&rows, "--sqlite", &rows);
        assert!(why.contains("--checkpoint sqlite") && !why.contains("delete"), "{why}");
        std::fs::remove_dir_all(&dir).expect("test dir");
    }

    #[test]
    fn empty_windows_are_refused() {
        let window = |o: &str, u: &str| {
            check_window(offset(o, NOW).expect(o), until(u, NOW).expect(u), o, u)
        };
        for (o, u) in [
            ("5", "offset:3"),
            ("5", "offset:5"),
            ("first", "offset:0"),
            ("2025-12-01T10:00:00Z", "2025-12-01T09:00:00Z"),
            ("2025-12-01T10:00:00Z", "2025-12-01T10:00:00Z"),
            ("1h", "2h"),
        ] {
            let err = window(o, u).expect_err(u);
            assert!(err.0.starts_with("--until") && err.0.contains("--offset"), "{err:?}");
        }
        for (o, u) in [
            ("5", "offset:6"),
            ("first", "offset:1"),
            ("2025-12-01T10:00:00Z", "2025-12-01T10:00:00.5Z"),
            ("2h", "1h"),
            ("5", "1h"),
            ("next", "offset:3"),
            ("last", "1h"),
        ] {
            assert!(window(o, u).is_ok(), "{o} {u}");
        }
    }

    #[test]
    fn max_ages() {
        for good in ["7D", "12h", "1Y", "30m", "60s", "6M"] {
            assert!(max_age(good).is_ok(), "{good}");
        }
        for bad in ["", "7", "D", "7d", "0D", "1.5h", "7DD", "-1D", "7 D", "é"] {
            let err = max_age(bad).expect_err(bad);
            assert!(err.0.contains("7D"), "{err:?}");
        }
    }
}
