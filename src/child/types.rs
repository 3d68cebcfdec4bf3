//! What a model child is asked with and answers: framing, options, answers and failures.

use std::time::Duration;

/// How bodies and answers are delimited on the child's stdin/stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One line each way (JSON rows).
    Lines,
    /// Length-prefixed frames (any bytes: images).
    Frames,
    /// `--framing frames --batch-size N` (N > 1): a 4-byte count, then that many frames,
    /// each way (the request comes whole from `codec::batch::frames_request`); at most N.
    FrameBatch(usize),
}

/// What the child answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Publish these bytes.
    Output(Vec<u8>),
    /// An empty answer: nothing to publish for this message.
    Nothing,
}

/// Whom a failure is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    /// The message in hand fails (to the failed queue); the next one gets a new child.
    Message,
    /// The model cannot work at all (not found, dead or talking before it was asked):
    /// retrying is pointless, the run stops and the message stays queued.
    Model,
    /// A stop signal came and the model did not finish in time: the message stays queued.
    Stopped,
}

/// Why a message failed in the child.
#[derive(Debug)]
pub(crate) struct Failure {
    /// For people and the `x-mqdemo-error` header.
    pub reason: String,
    /// What to do about it.
    pub blame: Blame,
    /// The child wrote to stdout out of turn: it would do it again, so the run stops.
    pub out_of_turn: bool,
}

impl Failure {
    pub(crate) fn new(reason: impl Into<String>, blame: Blame) -> Failure {
        Failure { reason: reason.into(), blame, out_of_turn: false }
    }
}

/// How a model child is run.
#[derive(Debug, Clone, Copy)]
pub struct ChildOptions {
    /// Framing on its pipes.
    pub framing: Framing,
    /// Deadline for writing one request and reading its answer.
    pub timeout: Duration,
    /// Largest answer (line or frame) accepted.
    pub max_answer: usize,
    /// Longest stderr line shown (the rest of the line is cut).
    pub max_stderr_line: usize,
}
