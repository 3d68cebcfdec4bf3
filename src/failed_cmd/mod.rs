//! `failed show` and `failed requeue`: the messages consume, pipe and serve could not use
//! wait in a failed queue (`<queue>.failed`, each as it came plus an `x-mqdemo-error`
//! header with the reason); these commands look at them and, once the cause is fixed, put
//! them back where they came from.
//!
//! Both read the failed queue with [`crate::amqp::Browser`] (`basic.get`, every message held
//! unacked until the end). `show` then releases them all, so they stay where they were, in
//! order; `requeue` publishes a copy of each with confirms and acks the failed message only
//! once its copy is confirmed, so a stop at any moment loses nothing (at worst a message is
//! in both queues: the copy keeps its message id, so consumers that dedupe by id store it
//! once).

mod requeue;
mod show;

use crate::config::{FailedAction, FailedConfig, Global};
use color_eyre::eyre::{Report, Result, eyre};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// How a `failed` run ended.
pub(crate) struct Done {
    /// The summary line for stderr (empty: none, the error says it all).
    pub summary: String,
    /// Nothing failed.
    pub clean: bool,
    /// What stopped it early, if anything.
    pub error: Option<Report>,
}

/// Run `failed show` (rows to `stdout`) or `failed requeue`.
pub(crate) fn run(
    global: &Global,
    cfg: &FailedConfig,
    stop: &Arc<AtomicBool>,
    stdout: Box<dyn Write + Send>,
) -> Result<Done> {
    match &cfg.action {
        FailedAction::Show { count, json, body_bytes } => {
            let view = show::View { count: *count, json: *json, body_bytes: *body_bytes };
            show::run(global, &cfg.queue, &view, stop, stdout)
        }
        FailedAction::Requeue { to, count } => requeue::run(global, &cfg.queue, to, *count, stop),
    }
}

/// The error for a failed queue that does not exist.
fn no_failed_queue(queue: &str) -> Report {
    eyre!(
        "queue '{queue}' does not exist (nothing was sent to it yet, or the name is wrong; \
         mqdemo names it <queue>.failed, or as --failed-queue said); list the queues with \
         `rabbitmqctl list_queues name messages`"
    )
}
