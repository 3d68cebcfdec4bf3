//! Helpers for the tests of `pipe` and `serve` against untrusted models: inputs that name
//! themselves (a header `k`), so an answer (which inherits the headers) shows whose it is.

use crate::support::{Mqdemo, TestQueue, connect, mqdemo};
use amiquip::{AmqpProperties, AmqpValue, FieldTable, Publish, QueueDeclareOptions};

/// Publish `bodies` to `q` (declared durable), each with a message id and a header `k`
/// holding its index, so an answer (which inherits the headers) names its input.
pub fn publish_indexed(q: &TestQueue, bodies: &[Vec<u8>], reply_to: Option<&str>) {
    let mut conn = connect();
    let ch = conn.open_channel(None).expect("channel");
    ch.queue_declare(q.name.clone(), QueueDeclareOptions { durable: true, ..Default::default() })
        .expect("declare");
    for (i, body) in bodies.iter().enumerate() {
        let mut h = FieldTable::new();
        h.insert("k".into(), AmqpValue::LongLongInt(i as i64));
        let mut props = AmqpProperties::default()
            .with_headers(h)
            .with_message_id(format!("{}-{i}", q.name))
            .with_correlation_id(format!("c{i}"));
        if let Some(to) = reply_to {
            props = props.with_reply_to(to.to_string());
        }
        ch.basic_publish("", Publish::with_properties(body, q.name.clone(), props))
            .expect("publish");
    }
    let _ = ch.close();
    let _ = conn.close();
}

/// Every message of `q`, taken off it.
pub fn drain(q: &TestQueue) -> Vec<amiquip::Delivery> {
    let mut got = Vec::new();
    while let Some(d) = q.get() {
        got.push(d);
    }
    got
}

pub fn header_int(d: &amiquip::Delivery, name: &str) -> Option<i64> {
    match d.properties.headers().as_ref()?.get(name)? {
        AmqpValue::LongLongInt(n) => Some(*n),
        AmqpValue::LongInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

pub fn header_str(d: &amiquip::Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.get(name)? {
        AmqpValue::LongString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `n` JSON rows `{"i":k}`.
pub fn rows(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{{\"i\":{i}}}").into_bytes()).collect()
}

/// Assert that at most `allowed` answers went to the wrong input, showing the run if not.
pub fn assert_shifted_at_most(
    answers: &[amiquip::Delivery],
    inputs: &[Vec<u8>],
    allowed: usize,
    out: &crate::support::Output,
) {
    let bad = shifted(answers, inputs);
    assert!(
        bad.len() <= allowed,
        "{} answers published for the wrong input (exit {:?}): {bad:?}\n{}",
        bad.len(),
        out.code(),
        out.stderr
    );
}

/// Answers whose body is not their input's (the model echoes; the input is named by the
/// inherited `k` header), as text.
pub fn shifted(answers: &[amiquip::Delivery], inputs: &[Vec<u8>]) -> Vec<String> {
    answers
        .iter()
        .filter(|a| {
            header_int(a, "k")
                .and_then(|k| usize::try_from(k).ok())
                .and_then(|k| inputs.get(k))
                .is_none_or(|input| *input != a.body)
        })
        .map(|a| {
            let body = String::from_utf8_lossy(&a.body);
            let body: String = body.chars().take(60).collect();
            format!("k={:?}: {body}", header_int(a, "k"))
        })
        .collect()
}

/// `mqdemo pipe --from FROM --to TO --exec EXEC EXTRA...`.
pub fn pipe(from: &TestQueue, to: &TestQueue, exec: &str, extra: &[&str]) -> Mqdemo {
    let mut args = vec!["pipe", "--from", &from.name, "--to", &to.name, "--exec", exec];
    args.extend_from_slice(extra);
    mqdemo(&args)
}

/// A request to `q` (declared durable) with `x-mqdemo-deadline`, a header `k`, message id
/// `Q-req-k` and correlation id `ck`.
pub fn publish_request(q: &TestQueue, body: &[u8], deadline_ms: i64, k: i64) {
    let mut conn = connect();
    let ch = conn.open_channel(None).expect("channel");
    ch.queue_declare(q.name.clone(), QueueDeclareOptions { durable: true, ..Default::default() })
        .expect("declare");
    let mut h = FieldTable::new();
    h.insert("x-mqdemo-deadline".into(), AmqpValue::LongLongInt(deadline_ms));
    h.insert("k".into(), AmqpValue::LongLongInt(k));
    let props = AmqpProperties::default()
        .with_headers(h)
        .with_message_id(format!("{}-req-{k}", q.name))
        .with_correlation_id(format!("c{k}"))
        .with_content_type("application/json".to_string());
    ch.basic_publish("", Publish::with_properties(body, q.name.clone(), props)).expect("publish");
    let _ = ch.close();
    let _ = conn.close();
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
