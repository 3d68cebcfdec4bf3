//! Whether the model said all it had to say for an input: it has gone quiet (back waiting
//! for its next input, see `waiting`), with nothing more on its stdout.

use super::{Blame, Failure, ModelChild, SETTLE_GIVE_UP, SETTLE_SPINS, exited_within, waiting};
use crossbeam_channel::TryRecvError;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl ModelChild {
    /// After an answer: wait until the child has gone quiet (up to `cap`): nothing in its
    /// process tree running or asleep on a timer, so nothing more can come for that input
    /// until it is given another; output meanwhile fails it (the answer was not the whole
    /// of it). Where /proc cannot tell, only the output already there is checked.
    pub(crate) fn settled(&mut self, cap: Duration) -> Result<(), Failure> {
        if self.settle_timeouts >= SETTLE_GIVE_UP {
            return self.quiet();
        }
        let until = Instant::now() + cap;
        let mut pause = Duration::from_micros(50);
        let mut spins = 0;
        loop {
            self.quiet()?;
            let Some(run) = self.running.as_ref() else { return Ok(()) };
            if exited_within(&run.process, Duration::ZERO) {
                // What it wrote before exiting is in the pipe: one more look.
                std::thread::sleep(Duration::from_millis(20));
                return self.quiet();
            }
            match waiting::quiescent(run.process.id()) {
                // Quiet, so all it wrote is in the pipe: done once the reader has read and
                // handled all of it (then `quiet` has seen it).
                Some(true) if !run.drained() => {}
                Some(true) => {
                    self.settle_timeouts = 0;
                    return self.quiet();
                }
                None => return self.quiet(),
                Some(false) => {}
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if Instant::now() >= until {
                self.settle_timeouts += 1;
                if self.settle_timeouts == SETTLE_GIVE_UP {
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "mqdemo: the --exec model never goes quiet between inputs (something in \
                         it runs or sleeps on a timer); its answers are no longer held back \
                         for it, so keep its stdout for answers only"
                    );
                }
                return Ok(());
            }
            // A fast model is quiet within microseconds of its answer (a sleep would cost
            // the timer slack, 50 us): yield first, then sleep longer and longer.
            if spins < SETTLE_SPINS {
                spins += 1;
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(2));
            }
        }
    }

    /// Check that the child has said nothing since its last answer; else it fails (the
    /// output belongs to no input) and is stopped. Called before each request, and before
    /// the last answer is published.
    pub(crate) fn quiet(&mut self) -> Result<(), Failure> {
        let Some(run) = self.running.as_mut() else { return Ok(()) };
        let extra = match run.events.try_recv() {
            Ok(_) => true,
            Err(TryRecvError::Empty) => run.turns.partial.load(Ordering::SeqCst) > 0,
            // It closed its stdout: the next call finds out whether it exited.
            Err(TryRecvError::Disconnected) => false,
        };
        if !extra {
            return Ok(());
        }
        if self.answered == 0 {
            return Err(self.spoke_first());
        }
        Err(self.out_of_turn("it wrote more than one answer for one input: print logs to stderr"))
    }

    pub(super) fn spoke_first(&mut self) -> Failure {
        let mut f = self.failed(
            "the model wrote to stdout before it was asked: print logs to stderr, stdout is \
             only for answers",
            true,
        );
        f.blame = Blame::Model;
        f
    }
}
