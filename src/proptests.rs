//! Property tests (proptest) for the pure, security-relevant parts: `source` sanitising,
//! file storing under the output root, lossless CSV field typing and the tabular round trip.

use crate::codec::path::safe_relative_path;
use crate::codec::tabular::{Encoder, Typed, csv_field, decode, type_value};
use crate::sink::{AltTags, DirSink, Queued, Stored, TEMP_PREFIX};
use proptest::prelude::*;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Longest component `safe_relative_path` may return (bytes).
const MAX_COMPONENT: usize = 200;

/// Resolve `.` and `..` lexically (no file system access), as a path-traversal check would.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Building blocks of hostile and ordinary path-like strings.
fn path_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just("/".to_string()),
        Just("\\".to_string()),
        Just("a".to_string()),
        Just("b.txt".to_string()),
        Just("CON".to_string()),
        Just("nul.txt".to_string()),
        Just("com1".to_string()),
        Just("Lpt9.png".to_string()),
        Just("x:y".to_string()),
        Just("C:".to_string()),
        Just("\0".to_string()),
        Just("a\0b".to_string()),
        Just(".hidden".to_string()),
        Just("trailing.".to_string()),
        Just("trailing ".to_string()),
        Just("~".to_string()),
        Just("x".repeat(MAX_COMPONENT)),
        Just("x".repeat(MAX_COMPONENT + 1)),
        Just("é".repeat(MAX_COMPONENT / 2)),
        Just("é".repeat(MAX_COMPONENT / 2 + 1)),
        Just("Zoë".to_string()),
        Just("日本語".to_string()),
        Just("\u{202e}gnp.exe".to_string()),
        Just("\u{ff0f}".to_string()),
        Just("\u{2215}".to_string()),
        Just("\u{feff}".to_string()),
        "[a-z. ]{1,5}",
        ".{0,4}",
    ]
}

/// Separators between pieces, including ones that smuggle in `.`/`..`.
fn path_sep() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("/"), Just("//"), Just("\\"), Just(""), Just("/./"), Just("/../"),]
}

/// Path-like strings made of the pieces above.
fn path_like() -> impl Strategy<Value = String> {
    prop::collection::vec((path_piece(), path_sep()), 0..10).prop_map(|parts| {
        let mut s = String::new();
        for (piece, sep) in parts {
            s.push_str(&piece);
            s.push_str(sep);
        }
        s
    })
}

/// Any string, or a path-like one.
fn any_source() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), path_like()]
}

/// Windows reserved device names, refused by design (see `safe_relative_path` docs), so
/// not "safe components" even though they match `[A-Za-z0-9_-]`.
fn is_device_name(part: &str) -> bool {
    let up = part.to_ascii_uppercase();
    matches!(up.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((up.starts_with("COM") || up.starts_with("LPT"))
            && up.len() == 4
            && up.as_bytes()[3].is_ascii_digit())
}

/// Strings made only of safe components: `[A-Za-z0-9_-]{1,20}` joined by '/', 1 to 5 parts.
fn safe_source() -> impl Strategy<Value = String> {
    prop::collection::vec(
        "[A-Za-z0-9_-]{1,20}".prop_filter("Windows device name", |p| !is_device_name(p)),
        1..=5,
    )
    .prop_map(|parts| parts.join("/"))
}

/// Check every invariant of a path returned by `safe_relative_path`.
fn check_safe(source: &str, p: &Path) -> Result<(), TestCaseError> {
    prop_assert!(p.is_relative(), "{source:?} -> {p:?} is not relative");
    prop_assert!(p.components().next().is_some(), "{source:?} -> empty path");
    for comp in p.components() {
        let Component::Normal(name) = comp else {
            return Err(TestCaseError::fail(format!("{source:?} -> {p:?} has component {comp:?}")));
        };
        let name = name
            .to_str()
            .ok_or_else(|| TestCaseError::fail(format!("{source:?} -> non-UTF-8 {p:?}")))?;
        prop_assert!(name != "." && name != "..", "{source:?} -> {p:?}");
        prop_assert!(!name.contains(['\0', '/', '\\', ':']), "{source:?} -> component {name:?}");
        prop_assert!(
            name.len() <= MAX_COMPONENT,
            "{source:?} -> component of {} bytes",
            name.len()
        );
    }
    let root = Path::new("/srv/out");
    let joined = normalise(&root.join(p));
    prop_assert!(
        joined.starts_with(root) && joined != root,
        "{source:?} -> {p:?} escapes: {joined:?}"
    );
    Ok(())
}

/// Numeric-looking strings: canonical and non-canonical integers, decimals, exponents.
fn numberish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[-+]?[0-9]{1,25}(\\.[0-9]{0,20})?([eE][-+]?[0-9]{1,3})?",
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|i| i.to_string()),
        finite_f64().prop_map(|f| serde_json::to_string(&f).unwrap_or_default()),
        any::<f64>().prop_map(|f| f.to_string()),
    ]
}

/// Finite f64 values of every class, including subnormals and raw bit patterns.
fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![any::<f64>(), any::<u64>().prop_map(f64::from_bits), (-1e6f64..1e6f64),]
        .prop_filter("finite", |f| f.is_finite())
}

/// Check the typing contract for one field.
fn check_typed(field: &str) -> Result<(), TestCaseError> {
    match type_value(field) {
        Typed::Null => prop_assert!(field.is_empty(), "{field:?} typed as null"),
        Typed::Str(s) => {
            prop_assert_eq!(s, field);
            prop_assert!(!field.is_empty());
        }
        Typed::Number(n) => {
            prop_assert_eq!(n, field);
            let v: serde_json::Value = serde_json::from_str(field).map_err(|e| {
                TestCaseError::fail(format!("{field:?} typed as number but not JSON: {e}"))
            })?;
            prop_assert!(v.is_number(), "{field:?} parsed as {v:?}");
            let back = serde_json::to_string(&v)
                .map_err(|e| TestCaseError::fail(format!("{field:?}: {e}")))?;
            prop_assert_eq!(back, field, "number does not round-trip through serde_json");
        }
    }
    Ok(())
}

/// A CSV field for the tabular round trip: arbitrary or number-like.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        numberish(),
        Just(String::new()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("\"quoted\",\n".to_string()),
    ]
}

/// Unique column names and rows of exactly that width.
fn table() -> impl Strategy<Value = (Vec<String>, Vec<Vec<String>>)> {
    prop::collection::btree_set(any::<String>(), 1..8).prop_flat_map(|cols| {
        let cols: Vec<String> = cols.into_iter().collect();
        let width = cols.len();
        (Just(cols), prop::collection::vec(prop::collection::vec(field(), width), 1..4))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn safe_relative_path_only_returns_safe_paths(source in any_source()) {
        if let Some(p) = safe_relative_path(&source) {
            check_safe(&source, &p)?;
        }
    }

    #[test]
    fn safe_relative_path_keeps_safe_sources(source in safe_source()) {
        prop_assert_eq!(safe_relative_path(&source), Some(PathBuf::from(&source)));
    }

    #[test]
    fn type_value_is_lossless_for_any_string(field in any::<String>()) {
        check_typed(&field)?;
    }

    #[test]
    fn type_value_is_lossless_for_numberish(field in numberish()) {
        check_typed(&field)?;
    }

    #[test]
    fn type_value_types_i64_as_number(i in any::<i64>()) {
        let s = i.to_string();
        prop_assert_eq!(type_value(&s), Typed::Number(&s));
        check_typed(&s)?;
    }

    /// serde_json's own float text (what a consumer re-serialises to) is the canonical
    /// JSON text the module docs promise: it is always typed as a number.
    #[test]
    fn type_value_types_serde_json_f64_as_number(f in finite_f64()) {
        let s = serde_json::to_string(&f).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(type_value(&s), Typed::Number(&s));
        check_typed(&s)?;
    }

    #[test]
    fn tabular_rows_round_trip((cols, rows) in table()) {
        let enc = Encoder::new("p.csv", cols.iter().map(String::as_str));
        for (i, row) in rows.iter().enumerate() {
            let record = csv::StringRecord::from(row.clone());
            let msg = enc
                .encode_row(&record, i as u64 + 1)
                .map_err(|e| TestCaseError::fail(format!("encode: {e:?}")))?;
            let maps = decode(&msg.body).map_err(|e| {
                TestCaseError::fail(format!(
                    "decode: {e:?} body {:?}",
                    String::from_utf8_lossy(&msg.body)
                ))
            })?;
            prop_assert_eq!(maps.len(), 1);
            let keys: Vec<&str> = maps[0].keys().map(String::as_str).collect();
            let want_keys: Vec<&str> = cols.iter().map(String::as_str).collect();
            prop_assert_eq!(keys, want_keys);
            let got: Vec<String> = maps[0].values().map(|v| csv_field(v).into_owned()).collect();
            prop_assert_eq!(&got, row, "body {:?}", String::from_utf8_lossy(&msg.body));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dir_sink_writes_only_under_root(
        items in prop::collection::vec(
            (
                prop_oneof![any_source(), safe_source()],
                prop::collection::vec(any::<u8>(), 0..256),
            ),
            1..6,
        )
    ) {
        let outer = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let root = outer.path().join("root");
        let mut sink = DirSink::new(&root).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut queued = Vec::new();
        for (i, (source, body)) in items.iter().enumerate() {
            let rel = safe_relative_path(source);
            let tags = AltTags::from_id(&format!("t{i}"));
            match sink.store(rel.as_deref(), "fallback.bin", &tags, body)
                .map_err(|e| TestCaseError::fail(format!("store {source:?}: {e:#}")))?
            {
                Queued::Pending => queued.push(i),
                Queued::Duplicate(p) => check_stored(&root, &items[i], &p)?,
                Queued::Refused(why) => return Err(TestCaseError::fail(why)),
            }
            // Every other item is committed in a group with the next one.
            if i % 2 == 0 && i + 1 < items.len() {
                continue;
            }
            let group = sink.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(group.len(), queued.len());
            for (j, stored) in queued.drain(..).zip(group) {
                let path = match stored {
                    Stored::Written(p) | Stored::Duplicate(p) => p,
                    Stored::Renamed { written, .. } => written,
                };
                check_stored(&root, &items[j], &path)?;
            }
        }
        for entry in walkdir::WalkDir::new(outer.path()).min_depth(1) {
            let entry = entry.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let p = entry.path();
            prop_assert!(p.starts_with(&root), "{p:?} exists outside {root:?}");
            let name = entry.file_name().to_string_lossy();
            prop_assert!(!name.starts_with(TEMP_PREFIX), "temporary file left: {p:?}");
        }
    }
}

/// A stored item is under `root` and holds exactly its body.
fn check_stored(root: &Path, item: &(String, Vec<u8>), path: &Path) -> Result<(), TestCaseError> {
    let (source, body) = item;
    prop_assert!(
        normalise(path).starts_with(root),
        "{source:?} stored at {path:?}, outside {root:?}"
    );
    let back = fs::read(path).map_err(|e| TestCaseError::fail(format!("read {path:?}: {e}")))?;
    prop_assert_eq!(&back, body, "{:?} at {:?}", source, path);
    Ok(())
}
