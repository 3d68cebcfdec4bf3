use super::*;

fn tags(id: &str) -> AltTags {
    AltTags::from_id(id)
}

#[test]
fn store_never_overwrites_different_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sink = DirSink::new(dir.path()).expect("sink");
    let rel = PathBuf::from("sub/a.png");
    let queued = sink.store(Some(&rel), "x.bin", &tags("id1"), b"one").expect("store");
    assert_eq!(queued, Queued::Pending);
    assert!(!dir.path().join("sub/a.png").exists(), "in place only once synced");
    let first = sink.sync().expect("sync");
    assert_eq!(first, [Stored::Written(dir.path().join("sub/a.png"))]);
    // The same content again, then other content for the same name.
    let again = sink.store(Some(&rel), "x.bin", &tags("id1"), b"one").expect("store");
    assert_eq!(again, Queued::Duplicate(dir.path().join("sub/a.png")));
    sink.store(Some(&rel), "x.bin", &tags("id2"), b"two").expect("store");
    let group = sink.sync().expect("sync");
    assert_eq!(
        group,
        [Stored::Renamed {
            wanted: dir.path().join("sub/a.png"),
            written: dir.path().join("sub/a.id2.png")
        }]
    );
    assert_eq!(fs::read(dir.path().join("sub/a.id2.png")).expect("read"), b"two");
    assert_eq!(fs::read(dir.path().join("sub/a.png")).expect("read"), b"one");
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("sub"))
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn identical_files_in_one_group_are_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sink = DirSink::new(dir.path()).expect("sink");
    let rel = PathBuf::from("a.txt");
    sink.store(Some(&rel), "f", &tags("one"), b"same").expect("store");
    sink.store(Some(&rel), "f", &tags("two"), b"same").expect("store");
    let a = dir.path().join("a.txt");
    assert_eq!(sink.sync().expect("sync"), [Stored::Written(a.clone()), Stored::Duplicate(a)]);
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
}

#[test]
fn alternative_names_go_on_to_the_full_id_then_a_counter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sink = DirSink::new(dir.path()).expect("sink");
    let rel = PathBuf::from("o.txt");
    for (id, body) in [("order-2024-01", "1"), ("order-2024-02", "2"), ("order-2024-02", "3")] {
        sink.store(Some(&rel), "f", &tags(id), body.as_bytes()).expect("store");
    }
    let names: Vec<String> = sink
        .sync()
        .expect("sync")
        .into_iter()
        .map(|s| match s {
            Stored::Written(p) | Stored::Renamed { written: p, .. } => p,
            Stored::Duplicate(p) => panic!("{p:?} is no duplicate"),
        })
        .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    assert_eq!(names, ["o.txt", "o.order-2024-0.txt", "o.order-2024-02.txt"]);
    sink.store(Some(&rel), "f", &tags("order-2024-02"), b"4").expect("store");
    let next = sink.sync().expect("sync");
    assert!(
        matches!(&next[..], [Stored::Renamed { written, .. }] if written.ends_with("o.order-2024-0.2.txt")),
        "{next:?}"
    );
}

#[test]
fn a_file_with_no_free_name_is_refused_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tags("id");
    let target = dir.path().join("x.txt");
    for path in candidates(&target, &t) {
        fs::write(&path, b"other content").expect("seed");
    }
    let mut sink = DirSink::new(dir.path()).expect("sink");
    let refused = sink.store(Some(Path::new("x.txt")), "f", &t, b"x").expect("store");
    assert!(matches!(&refused, Queued::Refused(why) if why.contains("x.txt")), "{refused:?}");
    assert_eq!(
        sink.store(Some(Path::new("y.txt")), "f", &t, b"y").expect("store"),
        Queued::Pending
    );
    assert_eq!(sink.sync().expect("sync"), [Stored::Written(dir.path().join("y.txt"))]);
}

#[test]
fn store_does_not_follow_symlinked_directories() {
    let outside = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
    let mut sink = DirSink::new(dir.path()).expect("sink");
    sink.store(Some(Path::new("link/x.txt")), "fallback.txt", &tags("t"), b"hi").expect("store");
    let stored = sink.sync().expect("sync");
    assert_eq!(stored, [Stored::Written(dir.path().join("fallback.txt"))]);
    assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
}

#[test]
fn a_directory_swapped_for_a_symlink_before_the_sync_is_not_followed() {
    let outside = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sink = DirSink::new(dir.path()).expect("sink");
    let queued = sink.store(Some(Path::new("d/x.txt")), "f.txt", &tags("t"), b"hi");
    assert_eq!(queued.expect("store"), Queued::Pending);
    fs::rename(dir.path().join("d"), dir.path().join("moved")).expect("mv");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("d")).expect("symlink");
    sink.sync().expect("the file goes into the directory it was written in");
    assert_eq!(fs::read(dir.path().join("moved/x.txt")).expect("read"), b"hi");
    assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
}

#[test]
fn an_unsynced_group_leaves_no_file_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sink = DirSink::new(dir.path()).expect("sink");
    for i in 0..GROUP_FILES {
        assert!(!sink.group_full());
        let body = i.to_string();
        sink.store(Some(Path::new("a.txt")), "f.txt", &tags(&body), body.as_bytes())
            .expect("store");
    }
    assert!(sink.group_full());
    drop(sink);
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
}
