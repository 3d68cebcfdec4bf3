//! Durations on the command line: `5s`, `500ms`, `2m`, `1.5h`, `1d`; a plain number is
//! seconds, as it always was.

/// Seconds in one of each unit a duration may carry.
const UNITS: [(&str, f64); 5] =
    [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0)];

/// Parse a duration into seconds: a number, optionally followed by `ms`, `s`, `m`, `h` or
/// `d` (`0.5`, `500ms`, `2m`). Negative, infinite and unit-less garbage are refused with the
/// forms that are accepted (clap prints the error after the flag's name).
pub fn secs(given: &str) -> Result<f64, String> {
    let text = given.trim();
    // A plain number is seconds, in any spelling Rust reads (`1e3` included).
    if let Ok(v) = text.parse::<f64>()
        && v.is_finite()
        && v >= 0.0
    {
        return Ok(v);
    }
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" => Some(1.0),
        u => UNITS.iter().find(|(name, _)| name.eq_ignore_ascii_case(u)).map(|(_, s)| *s),
    };
    let value = number.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
    match (value, scale) {
        (Some(v), Some(scale)) => Ok(v * scale),
        _ => Err(format!(
            "`{given}` is not a duration: give seconds (2, 0.5) or a number with a unit \
             (500ms, 5s, 2m, 1h, 1d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::secs;

    #[test]
    fn plain_numbers_are_seconds() {
        assert_eq!(secs("5"), Ok(5.0));
        assert_eq!(secs("0.25"), Ok(0.25));
        assert_eq!(secs("0"), Ok(0.0));
        assert_eq!(secs("1e3"), Ok(1000.0), "plain numbers keep every spelling they had");
    }

    #[test]
    fn units_scale() {
        assert_eq!(secs("500ms"), Ok(0.5));
        assert_eq!(secs("5s"), Ok(5.0));
        assert_eq!(secs("2m"), Ok(120.0));
        assert_eq!(secs("1.5h"), Ok(5400.0));
        assert_eq!(secs("1d"), Ok(86400.0));
        assert_eq!(secs("10 S"), Ok(10.0));
    }

    #[test]
    fn garbage_is_refused_with_the_accepted_forms() {
        for bad in ["", "s", "-1", "-1s", "5x", "5 minutes", "inf", "NaN", "1e999", "5s5", "1e3s5"]
        {
            let err = secs(bad).expect_err(bad);
            assert!(err.contains("500ms, 5s, 2m"), "{bad}: {err}");
        }
    }
}
