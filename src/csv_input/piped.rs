//! Reading a pipe (stdin) so that a signal is not held up by it: a `tail -f` that writes
//! nothing would otherwise keep the reader blocked in `read` past SIGTERM until the next line.
//! A thread does the blocking reads and hands the pieces over; the reader waits for them a
//! little at a time and gives up once the stop flag is set.

use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Bytes read at once from the pipe.
const PIECE: usize = 64 * 1024;
/// Pieces read ahead of the parser, at most.
const PIECES_AHEAD: usize = 4;
/// How often the stop flag is looked at while the pipe is quiet.
const LOOK: Duration = Duration::from_millis(100);

/// What [`Piped::read`] fails with once a signal asked the run to stop.
pub const STOPPED: &str = "stopped by a signal while waiting for input";

/// A pipe read on a thread of its own; reads end with an error once `stop` is set.
pub(crate) struct Piped {
    pieces: Receiver<io::Result<Vec<u8>>>,
    piece: Vec<u8>,
    at: usize,
    ended: bool,
    stop: Arc<AtomicBool>,
}

impl Piped {
    /// Start reading `inner` on a thread. The thread ends at the end of the input or when the
    /// reader is dropped and its next piece is refused; a thread blocked in `read` when the
    /// process exits is simply ended with it.
    pub(crate) fn new<R: Read + Send + 'static>(mut inner: R, stop: Arc<AtomicBool>) -> Piped {
        let (tx, rx) = crossbeam_channel::bounded(PIECES_AHEAD);
        let spawned = std::thread::Builder::new().name("mqdemo-stdin".into()).spawn(move || {
            loop {
                let mut piece = vec![0u8; PIECE];
                let got = match inner.read(&mut piece) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(n) => {
                        piece.truncate(n);
                        Ok(piece)
                    }
                    Err(e) => Err(e),
                };
                let last = !matches!(&got, Ok(p) if !p.is_empty());
                if tx.send(got).is_err() || last {
                    return;
                }
            }
        });
        let pieces = match spawned {
            Ok(_) => rx,
            Err(e) => {
                // No thread: the failure is reported by the first read.
                let (tx, rx) = crossbeam_channel::bounded(1);
                let _ = tx.send(Err(e));
                rx
            }
        };
        Piped { pieces, piece: Vec::new(), at: 0, ended: false, stop }
    }
}

impl Read for Piped {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            if self.stop.load(Ordering::SeqCst) {
                return Err(io::Error::other(STOPPED));
            }
            match self.pieces.recv_timeout(LOOK) {
                Ok(Ok(piece)) if piece.is_empty() => self.ended = true,
                Ok(Ok(piece)) => (self.piece, self.at) = (piece, 0),
                Ok(Err(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.ended = true;
                    return Err(io::Error::other("the input reader thread ended early"));
                }
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A reader that hands out its pieces one per read, then blocks for good.
    struct Slow(Vec<Vec<u8>>, crossbeam_channel::Receiver<()>);

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                let _ = self.1.recv(); // never sent: blocks like a quiet pipe
                return Ok(0);
            }
            let p = self.0.remove(0);
            buf[..p.len()].copy_from_slice(&p);
            Ok(p.len())
        }
    }

    #[test]
    fn pieces_come_through_in_order_and_the_end_is_the_end() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut r = Piped::new(&b"a,b\n1,2\n"[..], stop);
        let mut all = String::new();
        r.read_to_string(&mut all).expect("reads");
        assert_eq!(all, "a,b\n1,2\n");
        assert_eq!(r.read(&mut [0u8; 8]).ok(), Some(0), "still the end");
    }

    #[test]
    fn a_quiet_pipe_gives_up_promptly_once_stopped() {
        let (_keep, never) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut r = Piped::new(Slow(vec![b"x\n".to_vec()], never), Arc::clone(&stop));
        let mut buf = [0u8; 16];
        assert_eq!(r.read(&mut buf).ok(), Some(2), "what was written comes at once");
        stop.store(true, Ordering::SeqCst);
        let asked = Instant::now();
        let err = r.read(&mut buf).expect_err("stopped");
        assert_eq!(err.to_string(), STOPPED);
        assert!(asked.elapsed() < Duration::from_secs(2), "{:?}", asked.elapsed());
    }
}
