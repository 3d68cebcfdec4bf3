//! `--checkpoint FILE`: the offset of the last stream message durably handled, kept in a
//! small JSON file (`{"queue":"events","offset":1234,"id":"id:...","anchor":{"offset":0,
//! "id":"sha256:..."}}`) that is replaced atomically (a temporary file, fsync, rename, fsync
//! of the directory) after each ack. `id` and `anchor` identify the message at the offset
//! and an earlier one of the same replay, for a resumed run to check; files without them
//! (an older mqdemo's, a first run's start) load too.

use crate::amqp::{Anchor, Checkpointer, Identity, Offset, StreamRead};
use crate::config::{Checkpoint, StreamConfig};
use crate::output::Reporter;
use color_eyre::eyre::{Result, WrapErr, bail};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a first run saves before it reads anything: where a rerun starts if this one acks
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// From the first message.
    First,
    /// Right after this offset.
    After(u64),
    /// From what was written since this Unix time (seconds).
    Since(u64),
}

impl Start {
    /// The start record of a first run at `start`: `next` and `last` become the time now.
    pub(crate) fn of(start: Offset) -> Start {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let now = now.map_or(0, |d| d.as_secs());
        match start {
            Offset::First | Offset::At(0) => Start::First,
            Offset::At(n) => Start::After(n - 1),
            Offset::Time(t) => Start::Since(t),
            Offset::Next | Offset::Last => Start::Since(now),
        }
    }
}

/// A saved checkpoint: where a run resumes, and (after an ack) what identifies the message
/// right before that, for the resumed run to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Saved {
    /// Where the run resumes.
    pub(crate) resume: Offset,
    /// With an offset: the message at it (None: a start record, or an older checkpoint).
    pub(crate) mark: Option<Identity>,
}

/// A checkpoint file for one queue.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointFile {
    path: PathBuf,
    queue: String,
}

impl CheckpointFile {
    pub(crate) fn new(path: &Path, queue: &str) -> CheckpointFile {
        CheckpointFile { path: path.to_path_buf(), queue: queue.to_string() }
    }

    /// Where a run resumes (right after the offset saved, or where the first run started
    /// when it acked nothing yet), or None when there is no file yet.
    #[cfg(test)]
    pub(crate) fn load(&self) -> Result<Option<Offset>> {
        Ok(self.load_saved()?.map(|s| s.resume))
    }

    /// [`Self::load`], and what identifies the message at the saved offset (when saved).
    pub(crate) fn load_saved(&self) -> Result<Option<Saved>> {
        let shown = self.path.display();
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).wrap_err(format!(
                    "cannot read checkpoint {shown}; check --checkpoint and the file's permissions"
                ));
            }
        };
        let Some(saved) = parse(&text) else {
            bail!(
                "checkpoint {shown} is not a checkpoint mqdemo wrote (it holds no queue and \
                 offset); check --checkpoint: give it a file of its own (a new one starts from \
                 --offset)"
            );
        };
        if saved.0 != self.queue {
            bail!(
                "checkpoint {shown} belongs to queue '{}', not '{}'; give each stream its own \
                 --checkpoint file",
                saved.0,
                self.queue
            );
        }
        Ok(Some(saved.1))
    }

    /// A first run starts at `start` (nothing acked yet): save where a rerun starts if this
    /// one acks nothing (it may end quietly, or be killed before its first ack), so that
    /// what is written meanwhile is not skipped.
    pub(crate) fn save_start(&self, start: Offset) -> Result<()> {
        let form = match Start::of(start) {
            Start::First => serde_json::json!({ "from": "first" }),
            Start::After(o) => serde_json::json!({ "offset": o }),
            Start::Since(t) => serde_json::json!({ "since": t }),
        };
        let mut form = form;
        form["queue"] = serde_json::Value::from(self.queue.as_str());
        let shown = self.path.display();
        self.write(&form.to_string()).wrap_err(format!(
            "cannot write checkpoint {shown} before reading; check that its directory exists and \
             is writable (nothing was read yet)"
        ))
    }

    /// A first run saves its start only once the stream is checked: before that, check that
    /// the file can be written at all (a temporary file beside it, removed again).
    pub(crate) fn check_writable(&self) -> Result<()> {
        let shown = self.path.display();
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".check-{}", std::process::id()));
        std::fs::File::create(&tmp).and_then(|_| std::fs::remove_file(&tmp)).wrap_err(format!(
            "cannot write checkpoint {shown} before reading; check that its directory exists and \
             is writable (nothing was read yet)"
        ))
    }

    /// Replace the file with `offset` (and what identifies its message), durably.
    pub(crate) fn save(&self, offset: u64, mark: &Identity) -> Result<()> {
        let shown = self.path.display();
        let mut form = serde_json::json!({ "queue": self.queue, "offset": offset, "id": mark.id });
        if let Some(a) = &mark.anchor {
            form["anchor"] = serde_json::json!({ "offset": a.offset, "id": a.id });
        }
        self.write(&form.to_string()).wrap_err(format!(
            "cannot write checkpoint {shown}; check that its directory exists and is writable \
             (the messages are acked: a rerun starts from the checkpoint before)"
        ))
    }

    /// Replace the file with `text`, durably.
    fn write(&self, text: &str) -> std::io::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map_or_else(|| "checkpoint".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(&dir)?.sync_all()
    }
}

/// A checkpoint file's text: its queue and what it saved; None when it is not a checkpoint
/// mqdemo wrote (not JSON, no queue, no place in a stream, or an `anchor` of another shape).
fn parse(text: &[u8]) -> Option<(String, Saved)> {
    let saved = serde_json::from_slice::<Value>(text).ok()?;
    let field = |k: &str| saved.get(k);
    let resume = match (field("offset"), field("since"), field("from")) {
        (Some(o), _, _) => Offset::At(o.as_u64()?.saturating_add(1)),
        (None, Some(t), _) => Offset::Time(t.as_u64()?),
        (None, None, Some(f)) if f.as_str() == Some("first") => Offset::First,
        _ => return None,
    };
    let queue = field("queue")?.as_str()?.to_string();
    let anchor = match field("anchor") {
        None | Some(Value::Null) => None,
        Some(a) => Some(Anchor {
            offset: a.get("offset")?.as_u64()?,
            id: a.get("id")?.as_str()?.to_string(),
        }),
    };
    let id = field("id").and_then(Value::as_str).map(str::to_string);
    let mark = match (resume, id) {
        (Offset::At(_), Some(id)) => Some(Identity { id, anchor }),
        _ => None,
    };
    Some((queue, Saved { resume, mark }))
}

impl Checkpointer for CheckpointFile {
    fn save(&self, offset: u64, mark: &Identity) -> Result<()> {
        CheckpointFile::save(self, offset, mark)
    }

    fn save_start(&self, start: Offset) -> Result<()> {
        CheckpointFile::save_start(self, start)
    }
}

/// How a run reads stream `queue`: from right after its checkpoint if it has one, else from
/// --offset (default `next`), to --until, saving to its checkpoint file (if any) after each
/// ack. `sqlite`: the --sqlite database and table (where `--checkpoint sqlite` lives). A
/// first run's start is saved, in the file or the database, by the consumer once the
/// stream is checked ([`Checkpointer::save_start`]), before it reads anything.
pub(crate) fn reading(
    cfg: &StreamConfig,
    queue: &str,
    sqlite: Option<(&Path, &str)>,
    reporter: &Reporter,
) -> Result<StreamRead> {
    let (saved, place, file, db) = match (&cfg.checkpoint, sqlite) {
        (Some(Checkpoint::File(path)), _) => {
            let file = CheckpointFile::new(path, queue);
            (file.load_saved()?, path.display().to_string(), Some(file), None)
        }
        (Some(Checkpoint::Sqlite), Some((db, table))) => {
            let saved = crate::results_db::resume_point(db, queue, table)?;
            (saved, format!("{} (table {table})", db.display()), None, Some((db, table)))
        }
        _ => (None, String::new(), None, None),
    };
    let resumed_from = saved.as_ref().map(|_| place.clone());
    let mark = saved.as_ref().and_then(|s| s.mark.clone());
    let saved = saved.map(|s| s.resume);
    let start = match saved {
        Some(resume) => {
            let given =
                if cfg.offset.is_some() { " (--offset is for a run with none)" } else { "" };
            let at = match resume {
                Offset::At(n) => format!("at offset {n}"),
                Offset::Time(t) => format!("from what was written since {t} (Unix time)"),
                _ => "from the first message".to_string(),
            };
            reporter
                .warn(&format!("resuming '{queue}' {at} from the checkpoint in {place}{given}"));
            resume
        }
        // A first run: the consumer saves its start once the stream is checked.
        None => {
            if let Some(f) = &file {
                f.check_writable()?;
            }
            cfg.offset.unwrap_or(Offset::Next)
        }
    };
    let checkpoint = match (file, db) {
        (Some(f), _) => Some(Box::new(f) as Box<dyn Checkpointer>),
        (None, Some((db, table))) => Some(Box::new(DbStart {
            db: db.to_path_buf(),
            queue: queue.to_string(),
            table: table.to_string(),
        }) as Box<dyn Checkpointer>),
        (None, None) => None,
    };
    let (checked_id, anchor) = mark.map_or((None, None), |m| (Some(m.id), m.anchor));
    Ok(StreamRead { start, until: cfg.until, checkpoint, resumed_from, checked_id, anchor })
}

/// `--checkpoint sqlite`: the offset is committed with the rows (the sink's flush), so a
/// save after the ack has nothing left to do; the start record is written here, once the
/// stream is checked, like a file's.
struct DbStart {
    db: PathBuf,
    queue: String,
    table: String,
}

impl Checkpointer for DbStart {
    fn save(&self, _offset: u64, _mark: &Identity) -> Result<()> {
        Ok(())
    }

    fn save_start(&self, start: Offset) -> Result<()> {
        crate::results_db::save_start(&self.db, &self.queue, &self.table, Start::of(start))
    }
}

/// The summary's note on a stream: where a run stopped at --until, and what retention
/// dropped before it was read.
pub(crate) fn stream_note(o: &crate::amqp::ConsumeOutcome) -> String {
    let mut notes = Vec::new();
    if o.dropped > 0 {
        notes.push(format!(
            "skipped {} messages the stream's retention dropped before they were read",
            o.dropped
        ));
    }
    if let Some(at) = o.until {
        notes.push(format!("stopped at --until, before offset {at}"));
    }
    notes.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(id: &str) -> Identity {
        Identity { id: id.to_string(), anchor: None }
    }

    fn parsed(text: &str) -> Option<Saved> {
        parse(text.as_bytes()).map(|(q, s)| {
            assert_eq!(q, "events");
            s
        })
    }

    #[test]
    fn a_checkpoint_with_or_without_an_anchor_loads() {
        let anchor = Anchor { offset: 3, id: "sha256:aa".to_string() };
        let full = r#"{"queue":"events","offset":9,"id":"sha256:bb","anchor":{"offset":3,"id":"sha256:aa"}}"#;
        let mark = Identity { id: "sha256:bb".to_string(), anchor: Some(anchor) };
        assert_eq!(parsed(full), Some(Saved { resume: Offset::At(10), mark: Some(mark) }));
        // An older mqdemo's: no anchor, or no id at all.
        let no_anchor = r#"{"queue":"events","offset":9,"id":"id:m9"}"#;
        let only_id = Saved { resume: Offset::At(10), mark: Some(super::tests::mark("id:m9")) };
        assert_eq!(parsed(no_anchor), Some(only_id));
        let bare = r#"{"queue":"events","offset":9}"#;
        assert_eq!(parsed(bare), Some(Saved { resume: Offset::At(10), mark: None }));
        let null = r#"{"queue":"events","offset":9,"id":"id:m9","anchor":null}"#;
        assert_eq!(parsed(null).and_then(|s| s.mark).map(|m| m.anchor), Some(None));
        // Start records name no message.
        let since = r#"{"queue":"events","since":1700000000,"id":"id:x"}"#;
        assert_eq!(parsed(since), Some(Saved { resume: Offset::Time(1_700_000_000), mark: None }));
        // An anchor of another shape is no checkpoint mqdemo wrote.
        for bad in [
            r#"{"queue":"events","offset":9,"id":"id:m9","anchor":{"offset":-1,"id":"x"}}"#,
            r#"{"queue":"events","offset":9,"id":"id:m9","anchor":{"offset":1}}"#,
            r#"{"queue":"events","offset":9,"id":"id:m9","anchor":"sha256:aa"}"#,
            r#"{"queue":"events","offset":-9}"#,
            r#"{"offset":9}"#,
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn an_anchor_is_saved_and_loaded_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = CheckpointFile::new(&dir.path().join("run.ckpt"), "events");
        let mark = Identity {
            id: "sha256:bb".to_string(),
            anchor: Some(Anchor { offset: 0, id: "sha256:aa".to_string() }),
        };
        c.save(7, &mark).expect("save");
        let saved = c.load_saved().expect("load").expect("saved");
        assert_eq!(saved, Saved { resume: Offset::At(8), mark: Some(mark) });
    }

    #[test]
    fn saves_and_loads_for_its_queue_only() {
        let dir = std::env::temp_dir().join(format!("mqdemo-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test file");
        let path = dir.join("run.ckpt");
        let c = CheckpointFile::new(&path, "events");
        assert_eq!(c.load().expect("test file"), None);
        c.save(41, &mark("id:a")).expect("test file");
        c.save(42, &mark("id:b")).expect("test file");
        assert_eq!(c.load().expect("test file"), Some(Offset::At(43)));
        c.save_start(Offset::First).expect("test file");
        assert_eq!(c.load().expect("test file"), Some(Offset::First));
        c.save_start(Offset::Time(1_700_000_000)).expect("test file");
        assert_eq!(c.load().expect("test file"), Some(Offset::Time(1_700_000_000)));
        c.save_start(Offset::At(10)).expect("test file");
        assert_eq!(c.load().expect("test file"), Some(Offset::At(10)));
        c.save(42, &mark("id:b")).expect("test file");
        let other = CheckpointFile::new(&path, "other").load().expect_err("refused");
        assert!(format!("{other}").contains("belongs to queue 'events'"), "{other}");
        std::fs::write(&path, b"garbage").expect("test file");
        let bad = c.load().expect_err("refused");
        assert!(format!("{bad}").contains("not a checkpoint"), "{bad}");
        let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("test file").collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left");
        std::fs::remove_dir_all(&dir).expect("test file");
    }
}
