//! The pure parts: routes, the text, readiness, the publisher's meter.

use super::*;

fn get(m: &Metrics, url: &str) -> (u16, &'static str, String) {
    route(true, url, m)
}

#[test]
fn only_metrics_ready_and_live_are_served() {
    let m = Metrics::new("in");
    assert_eq!(get(&m, "/live").0, 200);
    let (status, content_type, _) = get(&m, "/metrics?name[]=x");
    assert_eq!((status, content_type), (200, "text/plain; version=0.0.4; charset=utf-8"));
    for url in ["/", "/metrics/", "/favicon.ico", "/../metrics", "//live"] {
        assert_eq!(get(&m, url).0, 404, "{url}");
    }
    assert_eq!(route(false, "/metrics", &m).0, 405);
}

#[test]
fn every_name_the_issue_lists_is_exposed_with_its_queue_label() {
    let m = Metrics::new("in");
    let mut meter = Meter::with(&m, &["out".into()]);
    meter.published(1, "out");
    let text = m.render();
    for name in [
        "mqdemo_messages_received_total{queue=\"in\"} 0",
        "mqdemo_messages_acked_total{queue=\"in\"} 0",
        "mqdemo_messages_published_total{queue=\"out\"} 1",
        "mqdemo_messages_confirmed_total{queue=\"out\"} 0",
        "mqdemo_messages_nacked_total{queue=\"out\"} 0",
        "mqdemo_messages_duplicate_total{queue=\"in\"} 0",
        "mqdemo_messages_failed_total{queue=\"in\"} 0",
        "mqdemo_requests_expired_total{queue=\"in\"} 0",
        "mqdemo_reconnects_total 0",
        "mqdemo_connected 0",
        "mqdemo_in_flight{queue=\"in\"} 0",
        "# TYPE mqdemo_model_call_seconds histogram",
        "# TYPE mqdemo_confirm_seconds histogram",
        "# TYPE mqdemo_batch_size histogram",
        "mqdemo_batch_size_bucket{le=\"64\"} 0",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

#[test]
fn ready_only_while_every_worker_consumes() {
    let h = Health::default();
    assert!(!h.ready().0, "no worker yet");
    h.workers.store(2, Ordering::SeqCst);
    h.connected.store(2, Ordering::SeqCst);
    h.consuming.store(1, Ordering::SeqCst);
    let (ready, why) = h.ready();
    assert!(!ready && why.contains("1 of 2"), "{why}");
    assert!(h.connected());
    h.consuming.store(2, Ordering::SeqCst);
    assert!(h.ready().0);
}

#[test]
fn a_worker_counts_once_while_up_and_not_after_it_is_dropped() {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut up = Up::new(Some(&N), false);
    assert_eq!(N.load(Ordering::SeqCst), 0);
    up.set(true);
    up.set(true);
    assert_eq!(N.load(Ordering::SeqCst), 1, "up twice counts once");
    up.set(false);
    up.set(false);
    assert_eq!(N.load(Ordering::SeqCst), 0, "down twice counts once");
    let second = Up::new(Some(&N), true);
    assert_eq!(N.load(Ordering::SeqCst), 1);
    drop(second);
    drop(up);
    assert_eq!(N.load(Ordering::SeqCst), 0, "dropped: down");
    let mut off = Up::new(None, true);
    off.set(false);
}

#[test]
fn replies_share_one_series_and_nacks_are_not_confirms() {
    let m = Metrics::new("in");
    let mut meter = Meter::with(&m, &["results".into(), "in.failed".into()]);
    meter.published(1, "amq.rabbitmq.reply-to.g1h2AA.abc");
    meter.published(2, "amq.gen-xyz");
    meter.published(3, "results");
    meter.published(4, "in.failed");
    let first_two: Vec<Sent> = meter.sent.drain(..2).map(|(_, s)| s).collect();
    meter.settled(first_two, true);
    let rest: Vec<Sent> = meter.sent.drain(..).map(|(_, s)| s).collect();
    meter.settled(rest, false);
    let text = m.render();
    for line in [
        "mqdemo_messages_published_total{queue=\"(reply_to)\"} 2",
        "mqdemo_messages_confirmed_total{queue=\"(reply_to)\"} 2",
        "mqdemo_messages_nacked_total{queue=\"results\"} 1",
        "mqdemo_messages_confirmed_total{queue=\"results\"} 0",
        "mqdemo_messages_nacked_total{queue=\"in.failed\"} 1",
        "mqdemo_confirm_seconds_count{queue=\"(reply_to)\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(!text.contains("amq.gen"), "no per-client label:\n{text}");
}
