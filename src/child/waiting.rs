//! Whether a model is back waiting for its next input, seen in /proc (Linux): some task of
//! its process tree is blocked reading its stdin pipe — in read(2) on the pipe, or in
//! epoll_wait on a set that holds it (asyncio, Node). A model that is waiting has written
//! everything it will write for the input before; until then, more may come.

/// Processes of a model's tree looked at, at most.
const MAX_PROCESSES: usize = 64;

/// Whether a task of the tree under `leader` waits to read the pipe with inode `pipe`; None
/// when /proc cannot tell (no such files, or not allowed to read them).
pub(super) fn waiting_for_input(leader: u32, pipe: u64) -> Option<bool> {
    let want = format!("pipe:[{pipe}]");
    let mut todo = vec![leader];
    let mut looked = 0;
    let mut told = false;
    while let Some(pid) = todo.pop() {
        looked += 1;
        if looked > MAX_PROCESSES {
            break;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let dir = task.path();
            if let Ok(children) = std::fs::read_to_string(dir.join("children")) {
                todo.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
            let (Ok(wchan), Ok(syscall)) = (
                std::fs::read_to_string(dir.join("wchan")),
                std::fs::read_to_string(dir.join("syscall")),
            ) else {
                continue;
            };
            told = true;
            // "NR arg0 arg1 ...": the first argument of a read or an epoll_wait is the fd.
            let Some(fd) = syscall
                .split_whitespace()
                .nth(1)
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            else {
                continue;
            };
            let waits = if wchan.contains("pipe_read") || wchan.contains("pipe_wait") {
                fd_is(pid, fd, &want)
            } else if wchan.contains("epoll") {
                epoll_watches(pid, fd, &want)
            } else {
                false
            };
            if waits {
                return Some(true);
            }
        }
    }
    told.then_some(false)
}

fn fd_is(pid: u32, fd: u64, want: &str) -> bool {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|l| l.as_os_str() == want)
}

/// Whether the epoll instance `epfd` of `pid` watches a descriptor that is `want`.
fn epoll_watches(pid: u32, epfd: u64, want: &str) -> bool {
    let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")) else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.strip_prefix("tfd:"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .any(|fd| fd_is(pid, fd, want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn pipe_inode(stdin: &std::process::ChildStdin) -> u64 {
        rustix::fs::fstat(stdin).map(|s| s.st_ino).expect("fstat")
    }

    /// Poll until `want` or the deadline; what was seen last.
    fn becomes(leader: u32, pipe: u64, want: Option<bool>) -> Option<bool> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let got = waiting_for_input(leader, pipe);
            if got == want || Instant::now() > until {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_reader_blocked_on_its_stdin_is_waiting_a_sleeper_is_not() {
        // sh runs the loop itself (its `read` blocks on the pipe); `sleep` is busy work.
        let mut child = Command::new("sh")
            .args(["-c", "while read l; do sleep 0.5; done"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut stdin = child.stdin.take().expect("stdin");
        let ino = pipe_inode(&stdin);
        assert_eq!(becomes(child.id(), ino, Some(true)), Some(true), "blocked in read");
        stdin.write_all(b"x\n").expect("write");
        assert_eq!(becomes(child.id(), ino, Some(false)), Some(false), "busy sleeping");
        assert_eq!(becomes(child.id(), ino, Some(true)), Some(true), "back in read");
        drop(stdin);
        let _ = child.wait();
    }

    #[test]
    fn an_epoll_reader_of_its_stdin_is_waiting() {
        let script = "import selectors, sys\n\
                      sel = selectors.EpollSelector()\n\
                      sel.register(sys.stdin, selectors.EVENT_READ)\n\
                      while True:\n    sel.select()\n    \
                      if not sys.stdin.readline():\n        break\n";
        let Ok(mut child) =
            Command::new("python3").args(["-c", script]).stdin(Stdio::piped()).spawn()
        else {
            return; // no python3 here: the read(2) case above still holds
        };
        let stdin = child.stdin.take().expect("stdin");
        let ino = pipe_inode(&stdin);
        assert_eq!(becomes(child.id(), ino, Some(true)), Some(true), "blocked in epoll_wait");
        drop(stdin);
        let _ = child.wait();
    }
}
