//! Whether a model has gone quiet after an answer, seen in /proc (Linux): every task of
//! its process tree waits for something to come from outside (its input, a pipe, a child,
//! a lock; an event loop without a timer pending) — none runs, sleeps on a timer, or is
//! anywhere else (loading a program, waiting for the disk). A model in that state cannot
//! write more for the input it answered until something arrives; a model that still runs,
//! sleeps (`time.sleep`) or has a timer pending (an event loop's `asyncio.sleep`) may.

/// Processes of a model's tree looked at, at most.
const MAX_PROCESSES: usize = 64;

/// Whether the tree under `leader` is quiet; None when /proc cannot tell (no such files,
/// or not allowed to read them).
pub(super) fn quiescent(leader: u32) -> Option<bool> {
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
            // Cheapest first: most checks end at a running task.
            let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else { continue };
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            if matches!(state, Some("R" | "D")) {
                return Some(false);
            }
            if matches!(state, Some("Z" | "X")) {
                continue;
            }
            let Ok(wchan) = std::fs::read_to_string(dir.join("wchan")) else { continue };
            // The timeout argument matters only for these waits.
            let syscall = if wchan.contains("epoll") || wchan.contains("futex") {
                let Ok(syscall) = std::fs::read_to_string(dir.join("syscall")) else { continue };
                syscall
            } else {
                String::new()
            };
            told = true;
            if busy(&wchan, &syscall) {
                return Some(false);
            }
        }
    }
    told.then_some(true)
}

/// Waits that last until something arrives from outside (input, a child's end, a lock, a
/// signal): a task in one of them cannot write by itself. Anything else a sleeping task
/// does (a timer, loading a program, a page from disk) may be followed by output.
const QUIET_WAITS: [&str; 13] = [
    "pipe_read",
    "pipe_wait",
    "do_wait",
    "futex",
    "do_select",
    "core_sys_select",
    "do_sys_poll",
    "wait_woken",
    "sk_wait",
    "unix_stream",
    "skb_wait",
    "sigsuspend",
    "sys_pause",
];

/// Whether a sleeping task may still produce output by itself: anything but a wait in
/// [`QUIET_WAITS`] or an event loop without a timer.
fn busy(wchan: &str, syscall: &str) -> bool {
    if syscall.starts_with("running") {
        return true;
    }
    // "NR arg0 arg1 arg2 arg3 ...": the timeout is the fourth argument of epoll_wait (an
    // int; epoll_pwait2's is a pointer) and of futex (a pointer).
    let arg3 = syscall
        .split_whitespace()
        .nth(4)
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    if wchan.contains("epoll") {
        // -1 (however wide the register) or none: no timer pending.
        return !arg3.is_some_and(|t| t == 0 || t & 0xffff_ffff == 0xffff_ffff);
    }
    if wchan.contains("futex") {
        // A lock wait with a deadline (`Event.wait(t)`, `queue.get(timeout=)`) ends by
        // itself: the thread may go on to write.
        return arg3.is_none_or(|t| t != 0);
    }
    !QUIET_WAITS.iter().any(|w| wchan.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Poll until `want` or the deadline; what was seen last.
    fn becomes(leader: u32, want: Option<bool>) -> Option<bool> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let got = quiescent(leader);
            if got == want || Instant::now() > until {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether `quiescent` says `want` at every look for `span`.
    fn stays(leader: u32, want: Option<bool>, span: Duration) -> bool {
        let until = Instant::now() + span;
        while Instant::now() < until {
            if quiescent(leader) != want {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
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
        assert_eq!(becomes(child.id(), Some(true)), Some(true), "blocked in read");
        stdin.write_all(b"x\n").expect("write");
        assert_eq!(becomes(child.id(), Some(false)), Some(false), "busy sleeping");
        assert_eq!(becomes(child.id(), Some(true)), Some(true), "back in read");
        drop(stdin);
        let _ = child.wait();
    }

    #[test]
    fn an_event_loop_with_a_timer_pending_is_busy_without_one_quiet() {
        // asyncio: a sleep pending makes the loop wait with a deadline.
        let script = "import asyncio, sys\n\
                      async def main():\n    \
                      print('timer', flush=True)\n    \
                      await asyncio.sleep(float(sys.argv[1]))\n    \
                      await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)\n\
                      asyncio.run(main())\n";
        let Ok(mut child) = Command::new("python3")
            .args(["-c", script, "1.5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        else {
            return; // no python3 here: the case above still holds
        };
        let stdin = child.stdin.take().expect("stdin");
        // Its line says the timer is about to start (read on a thread: a deadline, not a hang).
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut stdout, &mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("python started");
        assert_eq!(line.trim(), "timer");
        assert!(stays(child.id(), Some(false), Duration::from_millis(400)), "a timer is pending");
        assert_eq!(becomes(child.id(), Some(true)), Some(true), "waiting on input only");
        drop(stdin);
        let _ = child.wait();
    }

    #[test]
    fn a_pipeline_is_busy_while_any_stage_works() {
        // `cat` waits on the input at once; the second stage is still asleep.
        let mut child = Command::new("sh")
            .args(["-c", "cat | (sleep 1; cat)"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("sh");
        let stdin = child.stdin.take().expect("stdin");
        // From its start for a while (its `sleep 1` outlasts the look, even on a slow day).
        assert!(stays(child.id(), Some(false), Duration::from_millis(300)), "a stage sleeps");
        assert_eq!(becomes(child.id(), Some(true)), Some(true), "both stages read");
        drop(stdin);
        let _ = child.wait();
    }
}
