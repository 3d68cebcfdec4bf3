//! `failed show|requeue` arguments -> [`FailedConfig`].

use super::UsageError;
use super::values::queue_name;
use crate::cli::{FailedCommand, ShowFormat};

/// The suffix of the failed queue consume, pipe and serve name by default.
pub const FAILED_SUFFIX: &str = ".failed";

/// A `failed` run.
#[derive(Debug, Clone)]
pub struct FailedConfig {
    /// The failed queue looked at or taken from.
    pub queue: String,
    /// What to do with it.
    pub action: FailedAction,
}

/// What `failed` does.
#[derive(Debug, Clone)]
pub enum FailedAction {
    /// List messages, leaving them in place.
    Show {
        /// At most this many.
        count: u64,
        /// One JSON object a line instead of text.
        json: bool,
        /// Bytes of each body previewed.
        body_bytes: usize,
    },
    /// Move messages back.
    Requeue {
        /// The queue they go to.
        to: String,
        /// At most this many (else the depth at the start).
        count: Option<u64>,
    },
}

/// Validate `failed ...`.
pub(super) fn failed(cmd: FailedCommand) -> Result<FailedConfig, UsageError> {
    match cmd {
        FailedCommand::Show(s) => Ok(FailedConfig {
            queue: positional(s.queue)?,
            action: FailedAction::Show {
                count: s.count,
                json: s.format == ShowFormat::Json,
                body_bytes: usize::try_from(s.body_bytes).unwrap_or(usize::MAX),
            },
        }),
        FailedCommand::Requeue(r) => {
            let queue = positional(r.queue)?;
            let to = match r.to {
                Some(to) => {
                    queue_name(to).map_err(|e| UsageError(e.0.replacen("--queue", "--to", 1)))?
                }
                None => original_queue(&queue)?,
            };
            if to == queue {
                return Err(UsageError(format!(
                    "--to {to}: must differ from the failed queue (the messages would come \
                     straight back); name the queue they came from"
                )));
            }
            Ok(FailedConfig { queue, action: FailedAction::Requeue { to, count: r.count } })
        }
    }
}

/// The QUEUE argument, checked like --queue.
fn positional(name: String) -> Result<String, UsageError> {
    queue_name(name).map_err(|e| UsageError(e.0.replacen("--queue", "QUEUE", 1)))
}

/// The queue a failed queue's messages came from, by mqdemo's naming (`<queue>.failed`).
fn original_queue(failed: &str) -> Result<String, UsageError> {
    match failed.strip_suffix(FAILED_SUFFIX) {
        Some(original) if !original.is_empty() => Ok(original.to_string()),
        _ => Err(UsageError(format!(
            "failed requeue {failed}: the name does not end in {FAILED_SUFFIX}, so the queue \
             its messages came from is not known; name it with --to QUEUE"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::FailedRequeue;

    fn requeue(queue: &str, to: Option<&str>) -> Result<FailedConfig, UsageError> {
        let r = FailedRequeue { queue: queue.into(), to: to.map(String::from), count: None };
        failed(FailedCommand::Requeue(r))
    }

    fn target(cfg: FailedConfig) -> String {
        match cfg.action {
            FailedAction::Requeue { to, .. } => to,
            FailedAction::Show { .. } => panic!("a requeue"),
        }
    }

    #[test]
    fn requeue_goes_back_to_the_queue_before_the_suffix() {
        assert_eq!(target(requeue("records.failed", None).expect("ok")), "records");
        assert_eq!(target(requeue("a.failed.failed", None).expect("ok")), "a.failed");
        assert_eq!(target(requeue("bad", Some("records")).expect("ok")), "records");
    }

    #[test]
    fn requeue_without_a_known_origin_names_the_fix() {
        for queue in ["bad_records", ".failed", "records.FAILED"] {
            let err = requeue(queue, None).expect_err("no origin");
            assert!(err.0.contains("--to QUEUE"), "{}", err.0);
            assert!(err.0.contains(queue), "{}", err.0);
        }
        let err = requeue("q.failed", Some("q.failed")).expect_err("a loop");
        assert!(err.0.starts_with("--to q.failed"), "{}", err.0);
        assert!(requeue("q.failed", Some("")).is_err(), "an empty name");
    }
}
