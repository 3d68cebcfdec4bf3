//! Stdout as a sink. On a pipe, bytes a flush has written may still sit in the kernel's pipe
//! buffer, unread: if the reader exits (`| head`), they are gone, and a consumer that acked
//! them after its flush lost them. [`Handoff`] makes `flush` return only once the reader
//! has taken every byte (the pipe is empty), and fail with `BrokenPipe` if it went away
//! first, so only rows the next program has read are ever acked.

use rustix::event::Timespec;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::FileType;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the pipe is looked at while the reader has not taken everything.
const POLL: Timespec = Timespec { tv_sec: 0, tv_nsec: 2_000_000 };
/// How long a flush still waits for the reader after a stop signal.
const GRACE_AFTER_STOP: Duration = Duration::from_secs(2);

/// A writer whose `flush` waits, on a pipe, until the reader has read everything written.
pub struct Handoff<W: Write + AsFd> {
    inner: W,
    pipe: bool,
    stop: Arc<AtomicBool>,
}

impl<W: Write + AsFd> Handoff<W> {
    /// Wrap `inner`; the wait applies only when it is a pipe (FIFO). `stop` (a signal) ends a
    /// wait for a reader that no longer reads, after a short grace.
    pub fn new(inner: W, stop: Arc<AtomicBool>) -> Self {
        let pipe = rustix::fs::fstat(inner.as_fd())
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Fifo);
        Handoff { inner, pipe, stop }
    }

    /// Wait until the pipe is empty; `BrokenPipe` when no reader is left.
    fn wait_taken(&self) -> io::Result<()> {
        let mut stopped_at: Option<Instant> = None;
        loop {
            let unread = rustix::io::ioctl_fionread(self.inner.as_fd())?;
            if unread == 0 {
                return Ok(());
            }
            let mut fds = [PollFd::new(&self.inner, PollFlags::empty())];
            poll(&mut fds, Some(&POLL))?;
            if fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("the reader of stdout exited with {unread} bytes unread"),
                ));
            }
            if self.stop.load(Ordering::SeqCst) {
                let since = *stopped_at.get_or_insert_with(Instant::now);
                if since.elapsed() > GRACE_AFTER_STOP {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "stopped by a signal while the reader of stdout had {unread} bytes \
                             unread; those rows stay queued"
                        ),
                    ));
                }
            }
        }
    }
}

impl<W: Write + AsFd> Write for Handoff<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()?;
        if self.pipe { self.wait_taken() } else { Ok(()) }
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
