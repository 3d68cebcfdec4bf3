//! Stdout as a sink. On a pipe, bytes a flush has written may still sit in the kernel's pipe
//! buffer, unread: if the reader exits (`| head`), they are gone, and a consumer that acked
//! them after its flush lost them. [`Handoff`] makes `flush` return only once the reader
//! has taken every byte (the pipe is empty), and fail with `BrokenPipe` if it went away
//! first, so only rows the next program has read are ever acked. Writes to a pipe wait for
//! room with `poll` rather than inside write(2), so a stop signal ends them even when the
//! reader stalls.

use rustix::event::Timespec;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::FileType;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the pipe is looked at while the reader has not taken everything (or has left
/// no room to write).
const POLL: Timespec = Timespec { tv_sec: 0, tv_nsec: 2_000_000 };
/// How long a flush still waits for the reader after a stop signal.
const GRACE_AFTER_STOP: Duration = Duration::from_secs(2);

/// A writer whose `flush` waits, on a pipe, until the reader has read everything written.
pub(crate) struct Handoff<W: Write + AsFd> {
    inner: W,
    pipe: bool,
    stop: Arc<AtomicBool>,
}

impl<W: Write + AsFd> Handoff<W> {
    /// Wrap `inner`; the wait applies only when it is a pipe (FIFO). `stop` (a signal) ends a
    /// wait for a reader that no longer reads, after a short grace.
    pub(crate) fn new(inner: W, stop: Arc<AtomicBool>) -> Self {
        let pipe = rustix::fs::fstat(inner.as_fd())
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Fifo);
        Handoff { inner, pipe, stop }
    }

    /// Wait until the pipe is empty; `BrokenPipe` when no reader is left.
    fn wait_taken(&self) -> io::Result<()> {
        let mut stopped_at = None;
        loop {
            let unread = rustix::io::ioctl_fionread(self.inner.as_fd())?;
            if unread == 0 {
                return Ok(());
            }
            self.wait(PollFlags::empty(), unread)?;
            self.check_stop(&mut stopped_at, unread)?;
        }
    }

    /// Write straight to the pipe, at most `PIPE_BUF` bytes once it has room for them (so the
    /// write never blocks where a signal could not end it).
    fn write_pipe(&self, buf: &[u8]) -> io::Result<usize> {
        let mut stopped_at = None;
        loop {
            if self.wait(PollFlags::OUT, 0)? {
                let n = buf.len().min(PIPE_BUF);
                return rustix::io::write(self.inner.as_fd(), &buf[..n]).map_err(io::Error::from);
            }
            let unread = rustix::io::ioctl_fionread(self.inner.as_fd())?;
            self.check_stop(&mut stopped_at, unread)?;
        }
    }

    /// Poll the pipe once for `events`: true if they came, `BrokenPipe` if the reader left.
    fn wait(&self, events: PollFlags, unread: u64) -> io::Result<bool> {
        let mut fds = [PollFd::new(&self.inner, events)];
        match poll(&mut fds, Some(&POLL)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let got = fds[0].revents();
        if got.intersects(PollFlags::ERR | PollFlags::HUP) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the reader of stdout exited with {unread} bytes unread"),
            ));
        }
        Ok(!events.is_empty() && got.intersects(events))
    }

    /// After a stop signal, give a reader that no longer reads a short grace, then give up.
    fn check_stop(&self, stopped_at: &mut Option<Instant>, unread: u64) -> io::Result<()> {
        if !self.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if stopped_at.get_or_insert_with(Instant::now).elapsed() <= GRACE_AFTER_STOP {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "stopped by a signal while the reader of stdout had {unread} bytes unread; \
                 the rows not acked stay queued"
            ),
        ))
    }
}

/// Bytes a pipe write is guaranteed to take at once when poll says it has room.
const PIPE_BUF: usize = 4096;

impl<W: Write + AsFd> Write for Handoff<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pipe { self.write_pipe(buf) } else { self.inner.write(buf) }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pipe { self.wait_taken() } else { self.inner.flush() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        (std::fs::File::from(r), std::fs::File::from(w))
    }

    #[test]
    fn flush_returns_once_the_reader_took_everything() {
        let (mut r, w) = pipe();
        let mut out = Handoff::new(w, Arc::new(AtomicBool::new(false)));
        assert!(out.pipe);
        out.write_all(b"row 1\nrow 2\n").expect("write");
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut buf = [0u8; 12];
            r.read_exact(&mut buf).expect("read");
            (buf, r)
        });
        let started = Instant::now();
        out.flush().expect("flush");
        assert!(started.elapsed() >= Duration::from_millis(40), "flush waited for the reader");
        let (buf, _r) = reader.join().expect("reader");
        assert_eq!(&buf, b"row 1\nrow 2\n");
    }

    #[test]
    fn flush_fails_when_the_reader_left_bytes_unread() {
        let (r, w) = pipe();
        let mut out = Handoff::new(w, Arc::new(AtomicBool::new(false)));
        out.write_all(b"never read\n").expect("write");
        drop(r);
        let err = out.flush().expect_err("nobody read it");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_file_is_not_waited_for() {
        let f = tempfile::tempfile().expect("tempfile");
        let mut out = Handoff::new(f, Arc::new(AtomicBool::new(false)));
        assert!(!out.pipe);
        out.write_all(b"x\n").and_then(|()| out.flush()).expect("flush");
    }
}
