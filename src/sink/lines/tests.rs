use super::*;
use crate::codec::text::FileDigest;
use proptest::prelude::*;
use std::fs;

fn identity(text: &[u8]) -> FileIdentity {
    let mut d = FileDigest::default();
    d.update(text);
    d.finish()
}

/// The lines of `text` as (line, offset, bytes).
fn split(text: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    for (i, piece) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        out.push((i as u64 + 1, offset, piece.to_vec()));
        offset += piece.len() as u64;
    }
    out
}

fn add(a: &mut Assembly, source: &str, file: &FileIdentity, l: &(u64, u64, Vec<u8>)) -> Added {
    let rel = crate::codec::path::safe_relative_path(source);
    let tags = AltTags::from_id(&file.sha256[..32]);
    let line = Line {
        source,
        rel: rel.as_deref(),
        fallback: "fallback.txt",
        tags: &tags,
        file,
        line: l.0,
        offset: l.1,
        body: &l.2,
    };
    a.add(&line).expect("add")
}

fn visible(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .map(|n| (n.clone(), fs::read(dir.join(&n)).expect("read")))
        .collect();
    v.sort();
    v
}

fn staging_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(STAGING_PREFIX))
        .count()
}

#[test]
fn lines_in_any_order_give_the_file_and_two_files_of_one_name_stay_two() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Assembly::new(dir.path()).expect("assembly");
    let (one, two) = (b"a1\na2\na3\n".to_vec(), b"b1\nb2\nb3\nb4\nb5".to_vec());
    let (f1, f2) = (identity(&one), identity(&two));
    let mut lines1 = split(&one);
    let mut lines2 = split(&two);
    lines1.reverse();
    lines2.swap(0, 3);
    let mut outcomes = Vec::new();
    for (l1, l2) in lines1.iter().zip(&lines2) {
        outcomes.push(add(&mut a, "n.txt", &f1, l1));
        outcomes.push(add(&mut a, "n.txt", &f2, l2));
    }
    for l in &lines2[3..] {
        outcomes.push(add(&mut a, "n.txt", &f2, l));
    }
    a.sync().expect("sync");
    assert_eq!(outcomes.iter().filter(|o| matches!(o, Added::Complete(_))).count(), 2);
    let files = visible(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().any(|(n, b)| n == "n.txt" && *b == one));
    assert!(files.iter().any(|(n, b)| n != "n.txt" && *b == two));
    assert_eq!(staging_files(dir.path()), 0);
    assert_eq!(add(&mut a, "n.txt", &f1, &lines1[0]), Added::Duplicate, "late copy");
}

#[test]
fn a_restart_resumes_from_the_marks_and_never_touches_a_foreign_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("n.txt"), b"the user's\n").expect("seed");
    let text = b"1\n2\n3\n4\n".to_vec();
    let f = identity(&text);
    let lines = split(&text);
    {
        let mut a = Assembly::new(dir.path()).expect("assembly");
        assert_eq!(add(&mut a, "n.txt", &f, &lines[1]), Added::Kept);
        assert_eq!(add(&mut a, "n.txt", &f, &lines[0]), Added::Kept);
        a.sync().expect("sync");
        // Written but never synced: not marked, so it must come again.
        assert_eq!(add(&mut a, "n.txt", &f, &lines[3]), Added::Kept);
        assert_eq!(a.incomplete()[0].have, 3);
    }
    let mut a = Assembly::new(dir.path()).expect("assembly");
    assert_eq!(add(&mut a, "n.txt", &f, &lines[0]), Added::Duplicate);
    assert_eq!(add(&mut a, "n.txt", &f, &lines[2]), Added::Kept);
    assert_eq!(a.incomplete()[0].have, 3, "line 4 was not durable");
    let done = add(&mut a, "n.txt", &f, &lines[3]);
    a.sync().expect("sync");
    let alt = dir.path().join(format!("n.{}.txt", &f.sha256[..12]));
    assert_eq!(
        done,
        Added::Complete(Stored::Renamed { wanted: dir.path().join("n.txt"), written: alt.clone() })
    );
    assert_eq!(fs::read(&alt).expect("read"), text);
    assert_eq!(fs::read(dir.path().join("n.txt")).expect("read"), b"the user's\n");
    assert!(a.incomplete().is_empty());
    // Produced again later, by a consumer that forgot: the file is found in place.
    let mut fresh = Assembly::new(dir.path()).expect("assembly");
    assert_eq!(add(&mut fresh, "n.txt", &f, &lines[2]), Added::Duplicate);
    assert_eq!(staging_files(dir.path()), 0);
}

#[test]
fn a_file_that_cannot_be_placed_is_placed_when_its_last_line_comes_again() {
    // The target directory refuses the link (immutable): the run stops, the last line is
    // not marked, and its redelivery to a restarted consumer completes the file.
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("d");
    fs::create_dir(&sub).expect("mkdir");
    let text = b"one\ntwo\nthree\n".to_vec();
    let (f, lines) = (identity(&text), split(&text));
    let chattr = |flag: &str| {
        let ok = std::process::Command::new("chattr").arg(flag).arg(&sub).status();
        assert!(ok.is_ok_and(|s| s.success()), "chattr {flag} (needs root on ext4)");
    };
    {
        let mut a = Assembly::new(dir.path()).expect("assembly");
        assert_eq!(add(&mut a, "d/x.txt", &f, &lines[0]), Added::Kept);
        assert_eq!(add(&mut a, "d/x.txt", &f, &lines[1]), Added::Kept);
        chattr("+i");
        let rel = crate::codec::path::safe_relative_path("d/x.txt");
        let tags = AltTags::from_id(&f.sha256[..32]);
        let last = Line {
            source: "d/x.txt",
            rel: rel.as_deref(),
            fallback: "fallback.txt",
            tags: &tags,
            file: &f,
            line: 3,
            offset: lines[2].1,
            body: &lines[2].2,
        };
        let failed = a.add(&last);
        chattr("-i");
        assert!(failed.is_err(), "the directory refused the link");
        a.sync().expect("the first two lines are durable");
    }
    let mut a = Assembly::new(dir.path()).expect("assembly");
    assert!(matches!(add(&mut a, "d/x.txt", &f, &lines[2]), Added::Complete(_)));
    a.sync().expect("sync");
    assert_eq!(fs::read(sub.join("x.txt")).expect("placed"), text);
}

#[test]
fn lines_that_do_not_add_up_fail_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Assembly::new(dir.path()).expect("assembly");
    let f = identity(b"x\ny\n");
    add(&mut a, "n.txt", &f, &(1, 0, b"x\n".to_vec()));
    let last = add(&mut a, "n.txt", &f, &(2, 2, b"z\n".to_vec()));
    assert!(matches!(&last, Added::Refused(why) if why.contains("do not add up")), "{last:?}");
    a.sync().expect("sync");
    assert!(visible(dir.path()).is_empty());
    assert_eq!(staging_files(dir.path()), 0);
}

#[test]
fn a_second_process_on_the_same_file_is_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = identity(b"1\n2\n");
    let mut a = Assembly::new(dir.path()).expect("assembly");
    add(&mut a, "n.txt", &f, &(1, 0, b"1\n".to_vec()));
    a.sync().expect("sync");
    let mut b = Assembly::new(dir.path()).expect("assembly");
    let rel = PathBuf::from("n.txt");
    let tags = AltTags::from_id("t");
    let line = Line {
        source: "n.txt",
        rel: Some(&rel),
        fallback: "f",
        tags: &tags,
        file: &f,
        line: 2,
        offset: 2,
        body: b"2\n",
    };
    let err = b.add(&line).map(|_| ()).expect_err("locked");
    assert!(format!("{err}").contains("another mqdemo consumer"), "{err}");
}

#[test]
fn more_files_than_open_slots_are_closed_and_reopened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Assembly::new(dir.path()).expect("assembly");
    let texts: Vec<Vec<u8>> =
        (0..MAX_OPEN + 40).map(|i| format!("{i} one\n{i} two\n").into_bytes()).collect();
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(
            add(&mut a, &format!("f{i}.txt"), &identity(text), &split(text)[0]),
            Added::Kept
        );
    }
    let open = a.files.values().filter(|s| s.data.is_some()).count();
    assert!(open <= MAX_OPEN, "{open} staging files open");
    for (i, text) in texts.iter().enumerate() {
        let done = add(&mut a, &format!("f{i}.txt"), &identity(text), &split(text)[1]);
        assert!(matches!(done, Added::Complete(Stored::Written(_))), "{i}: {done:?}");
    }
    a.sync().expect("sync");
    assert_eq!(visible(dir.path()).len(), texts.len());
    assert_eq!(staging_files(dir.path()), 0);
}

#[test]
fn things_in_the_way_of_staging_files_fail_that_file_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (t1, t2, t3) = (b"1\n2\n".to_vec(), b"3\n4\n".to_vec(), b"5\n6\n".to_vec());
    let (f1, f2, f3) = (identity(&t1), identity(&t2), identity(&t3));
    let staging = |source: &str, f: &FileIdentity| {
        dir.path().join(format!("{STAGING_PREFIX}{}", staging_key(source, &f.sha256)))
    };
    // A directory where the staging file goes; a symlink where the marks go.
    fs::create_dir(staging("a.txt", &f1)).expect("mkdir");
    fs::write(staging("b.txt", &f2), b"").expect("seed");
    let marks = format!("{}.marks", staging("b.txt", &f2).display());
    std::os::unix::fs::symlink("/etc/passwd", &marks).expect("symlink");
    // Stale marks of a completion cut short, claiming both lines.
    let stale = format!("{}.marks", staging("c.txt", &f3).display());
    fs::write(&stale, format!("{}1\n2\n", marks_header("c.txt", &f3))).expect("seed");
    let mut a = Assembly::new(dir.path()).expect("assembly");
    let first = add(&mut a, "a.txt", &f1, &split(&t1)[0]);
    assert!(matches!(&first, Added::Refused(why) if why.contains("in the way")), "{first:?}");
    let second = add(&mut a, "b.txt", &f2, &split(&t2)[0]);
    assert!(matches!(&second, Added::Refused(why) if why.contains("in the way")), "{second:?}");
    assert_eq!(add(&mut a, "c.txt", &f3, &split(&t3)[1]), Added::Kept, "stale marks ignored");
    assert!(matches!(add(&mut a, "c.txt", &f3, &split(&t3)[0]), Added::Complete(_)));
    a.sync().expect("sync");
    assert_eq!(visible(dir.path()), [("c.txt".to_string(), t3)]);
    assert_eq!(fs::read_to_string("/etc/passwd").map(|s| s.contains("mqdemo")).ok(), Some(false));
}

proptest! {
    #[test]
    fn range_set_is_a_set(ops in prop::collection::vec((any::<bool>(), 0u64..64), 0..200)) {
        let mut set = RangeSet::default();
        let mut model = std::collections::BTreeSet::new();
        for (add, n) in ops {
            if add {
                prop_assert_eq!(set.insert(n), model.insert(n));
            } else {
                prop_assert_eq!(set.remove(n), model.remove(&n));
            }
            prop_assert_eq!(set.len(), model.len() as u64);
            for k in 0..65 {
                prop_assert_eq!(set.contains(k), model.contains(&k));
            }
            let ranges: Vec<(u64, u64)> = set.ranges.iter().map(|(s, e)| (*s, *e)).collect();
            prop_assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "{:?}", ranges);
        }
    }

    #[test]
    fn any_arrival_order_gives_back_the_file(
        text in "([a-c]{0,3}\n){1,12}[a-c]{0,2}",
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut a = Assembly::new(dir.path()).expect("assembly");
        let f = identity(text.as_bytes());
        let mut lines = split(text.as_bytes());
        let mut x = seed;
        for i in (1..lines.len()).rev() {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            lines.swap(i, (x >> 33) as usize % (i + 1));
        }
        for (i, l) in lines.iter().enumerate() {
            add(&mut a, "p.txt", &f, l);
            if i % 3 == 0 {
                a.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            // Every line again, as a redelivery: never written twice.
            prop_assert!(matches!(add(&mut a, "p.txt", &f, l), Added::Duplicate));
        }
        a.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(visible(dir.path()), vec![("p.txt".to_string(), text.into_bytes())]);
        prop_assert_eq!(staging_files(dir.path()), 0);
    }
}
