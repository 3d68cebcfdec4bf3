//! Settling confirms: nacks stay nacks, nothing is settled twice.

use super::take_settled;
use std::collections::VecDeque;

fn pending(tags: &[u64]) -> VecDeque<(u64, u64)> {
    tags.iter().map(|&t| (t, t)).collect()
}

#[test]
fn a_nack_before_a_multiple_ack_stays_a_nack() {
    let mut p = pending(&[1, 2, 3, 4, 5]);
    // The broker nacks 2 and 4 at once (queue full), then acks up to 5 with `multiple`.
    assert_eq!(take_settled(&mut p, 2, false), [2]);
    assert_eq!(take_settled(&mut p, 4, false), [4]);
    assert_eq!(take_settled(&mut p, 5, true), [1, 3, 5], "the ack settles only what is left");
    assert!(p.is_empty());
}

#[test]
fn a_confirm_settles_nothing_twice() {
    let mut p = pending(&[1, 2, 3]);
    assert_eq!(take_settled(&mut p, 2, true), [1, 2]);
    assert!(take_settled(&mut p, 2, true).is_empty(), "a repeated multiple ack");
    assert!(take_settled(&mut p, 1, false).is_empty(), "a late single confirm");
    assert_eq!(take_settled(&mut p, 9, false), Vec::<u64>::new(), "an unknown tag");
    assert_eq!(take_settled(&mut p, 3, false), [3]);
}

#[test]
fn a_multiple_confirm_stops_at_its_tag() {
    let mut p = pending(&[3, 4, 7, 8]);
    assert_eq!(take_settled(&mut p, 5, true), [3, 4]);
    assert_eq!(p.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [7, 8]);
}
