//! A Python virtual environment for an example whose model is a Python script: made with
//! `python3 -m venv` and filled with `pip install -r requirements.txt` when it is missing or
//! the requirements changed since it was made (a stamp file in the venv holds the
//! requirements it was made from), and reused as it is otherwise.
//!
//! A lock file next to the venv makes a second run wait for the first one's install instead
//! of installing alongside it.

use crate::common::{Res, spawn};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The oldest Python the pinned wheels are built for.
const MIN_PYTHON: (u32, u32) = (3, 11);
/// Creating the venv (no network).
const VENV_DEADLINE: Duration = Duration::from_secs(120);
/// pip install, downloads included, on a slow link.
const INSTALL_DEADLINE: Duration = Duration::from_secs(900);
/// The file in the venv that holds the requirements it was made from.
const STAMP: &str = "mqdemo-requirements.txt";

/// What [`ready`] found or did.
pub enum Made {
    /// The venv was there with these requirements.
    Reused,
    /// The venv was (re)made and the requirements installed, in this time.
    Installed(Duration),
}

/// The venv's Python at `dir`, with `requirements` installed: reused when its stamp says
/// it was made from the same requirements, else made anew.
pub fn ready(dir: &Path, requirements: &Path) -> Res<(PathBuf, Made)> {
    let wanted = std::fs::read_to_string(requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let python = dir.join("bin").join("python");
    let _lock = lock(dir)?;
    let stamp = std::fs::read_to_string(dir.join(STAMP)).ok();
    if python.is_file() && stamp.as_deref() == Some(wanted.as_str()) {
        return Ok((python, Made::Reused));
    }
    let started = Instant::now();
    make(dir, requirements)?;
    std::fs::write(dir.join(STAMP), wanted)
        .map_err(|e| format!("cannot write {}: {e}", dir.join(STAMP).display()))?;
    Ok((python, Made::Installed(started.elapsed())))
}

/// An exclusive lock on `<dir>.lock`, held until the file is dropped.
fn lock(dir: &Path) -> Res<std::fs::File> {
    let path = dir.with_extension("lock");
    let cannot = |e: std::io::Error| format!("cannot lock {}: {e}", path.display());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(cannot)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(cannot)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| cannot(e.into()))?;
    Ok(file)
}

/// `python3 -m venv dir`, then `pip install -r requirements` into it.
fn make(dir: &Path, requirements: &Path) -> Res<()> {
    let version = python3_version()?;
    clear(dir)?;
    println!(
        "  venv:    making {} with Python {}.{} and installing {} (once; later runs reuse it)",
        dir.display(),
        version.0,
        version.1,
        requirements.display()
    );
    let mut venv = Command::new("python3");
    venv.arg("-m").arg("venv").arg(dir);
    spawn(venv, "python3 -m venv")?.wait(VENV_DEADLINE).map_err(|e| {
        format!(
            "python3 -m venv {} failed: install the venv module (Debian, Ubuntu: apt-get \
             install python3-venv) and run again\n{e}",
            dir.display()
        )
    })?;
    let mut pip = Command::new(dir.join("bin").join("python"));
    pip.args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
        .args(["--progress-bar", "off", "--quiet", "-r"])
        .arg(requirements);
    spawn(pip, "pip install")?.wait(INSTALL_DEADLINE).map_err(|e| {
        format!(
            "pip install -r {} failed: check that PyPI is reachable and that each pin has a \
             wheel for Python {}.{} on this platform, then run again\n{e}",
            requirements.display(),
            version.0,
            version.1
        )
    })?;
    Ok(())
}

/// The (major, minor) of `python3` on PATH; an error naming the fix when it is missing or
/// older than [`MIN_PYTHON`].
fn python3_version() -> Res<(u32, u32)> {
    let (min_major, min_minor) = MIN_PYTHON;
    let missing = |why: String| {
        format!(
            "python3 {why}: install Python {min_major}.{min_minor} or newer with its venv \
             module (Debian, Ubuntu: apt-get install python3 python3-venv) and run again"
        )
    };
    let out = Command::new("python3")
        .args(["-c", "import sys; print(*sys.version_info[:2])"])
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing("is not on PATH".to_string()),
            _ => missing(format!("cannot be run ({e})")),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace().map(str::parse::<u32>);
    let version = match (out.status.success(), parts.next(), parts.next()) {
        (true, Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => return Err(missing(format!("did not say its version ({})", out.status)).into()),
    };
    if version < MIN_PYTHON {
        return Err(missing(format!("is {}.{}", version.0, version.1)).into());
    }
    Ok(version)
}

/// Remove an old or half-made venv at `dir`; refuse to remove a directory that is not one.
fn clear(dir: &Path) -> Res<()> {
    if dir.join("pyvenv.cfg").is_file() {
        return std::fs::remove_dir_all(dir)
            .map_err(|e| format!("cannot remove the old venv {}: {e}", dir.display()).into());
    }
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display()).into()),
    };
    if !empty {
        return Err(format!(
            "{} exists and is not a Python venv: remove it, or choose another directory",
            dir.display()
        )
        .into());
    }
    Ok(())
}
