//! The model's process group: registered so a second signal can kill every model at once,
//! killed on every way out, waited for without reaping.

use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

/// Environment variables a model never sees: broker credentials.
pub(super) const SECRET_ENV: [&str; 2] = ["AMQP_URL", "AMQP_URL_FILE"];

/// Process groups of running model children, killed when a second signal ends mqdemo at
/// once.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// SIGKILL every running model's process group (for an immediate exit).
pub(crate) fn kill_all() {
    let groups = GROUPS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for &g in groups.iter() {
        if let Some(pid) = rustix::process::Pid::from_raw(g) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

pub(super) fn register(group: i32, on: bool) {
    let mut groups = GROUPS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if on {
        groups.push(group);
    } else {
        groups.retain(|&g| g != group);
    }
}

/// SIGKILL the child's process group (the shell and everything it started).
pub(super) fn kill_group(process: &mut Child) {
    let group = i32::try_from(process.id()).ok().and_then(rustix::process::Pid::from_raw);
    match group {
        Some(pid) => {
            if rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).is_err() {
                let _ = process.kill();
            }
        }
        None => {
            let _ = process.kill();
        }
    }
}

/// Whether `process` exits within `deadline` (it stays unreaped).
pub(super) fn exited_within(process: &Child, deadline: Duration) -> bool {
    use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
    let Some(pid) = i32::try_from(process.id()).ok().and_then(Pid::from_raw) else {
        return false;
    };
    let until = std::time::Instant::now() + deadline;
    loop {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        match waitid(WaitId::Pid(pid), options) {
            Ok(Some(_)) => return true,
            Ok(None) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return false,
        }
    }
}
