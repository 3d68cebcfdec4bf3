//! The TCP stream under a connection, counting the bytes the broker sends: amiquip hands a
//! consumer only whole deliveries, and a probe waiting for one must tell a large body still
//! arriving from nothing sent (see `probe::Patience`).

use amiquip::IoStream;
use mio::net::TcpStream;
use mio::{Evented, Poll, PollOpt, Ready, Token};
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A TCP stream and the count of bytes read from it so far, shared with the session.
pub(super) struct CountedStream {
    inner: TcpStream,
    received: Arc<AtomicU64>,
}

impl CountedStream {
    /// `inner`, adding each byte read to `received`.
    pub(super) fn new(inner: TcpStream, received: Arc<AtomicU64>) -> CountedStream {
        CountedStream { inner, received }
    }
}

impl Read for CountedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Write for CountedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Evented for CountedStream {
    fn register(
        &self,
        poll: &Poll,
        token: Token,
        interest: Ready,
        opts: PollOpt,
    ) -> io::Result<()> {
        self.inner.register(poll, token, interest, opts)
    }

    fn reregister(
        &self,
        poll: &Poll,
        token: Token,
        interest: Ready,
        opts: PollOpt,
    ) -> io::Result<()> {
        self.inner.reregister(poll, token, interest, opts)
    }

    fn deregister(&self, poll: &Poll) -> io::Result<()> {
        self.inner.deregister(poll)
    }
}

impl IoStream for CountedStream {}
