//! ModelChild against real child processes (`sh -c`).

use super::*;

const T: Duration = Duration::from_secs(10);

fn child(command: &str, framing: Framing, timeout: Duration) -> ModelChild {
    let options = ChildOptions { framing, timeout, max_answer: 1 << 20, max_stderr_line: 4096 };
    ModelChild::new(command, options, Arc::new(AtomicBool::new(false)))
}

#[test]
fn lines_round_trip_and_empty_answers_mean_nothing() {
    // Upper-cases each line; answers an empty line for "skip".
    let mut c = child(
        r#"while IFS= read -r l; do if [ "$l" = skip ]; then echo; else echo "$l" | tr a-z A-Z; fi; done"#,
        Framing::Lines,
        T,
    );
    assert_eq!(
        c.call(b"{\"a\":\"x\"}").expect("answer"),
        Answer::Output(b"{\"A\":\"X\"}".to_vec())
    );
    assert_eq!(c.call(b"skip").expect("answer"), Answer::Nothing);
    // Pretty JSON is sent as one line.
    assert_eq!(c.call(b"{\n \"b\": 1\n}").expect("answer"), Answer::Output(b"{\"B\":1}".to_vec()));
    assert!(c.call(b"two\nlines").is_err());
    assert_eq!(c.starts, 1);
}

#[test]
fn a_streaming_echo_of_a_long_line_is_one_answer() {
    // `cat` writes the start of its answer before it has read the end of the request:
    // that is not speaking out of turn.
    let mut c = child("cat", Framing::Lines, T);
    let body = vec![b'x'; 300_000];
    for _ in 0..3 {
        assert_eq!(c.call(&body).expect("answer"), Answer::Output(body.clone()));
    }
    c.settled(SETTLE_CAP).expect("cat is quiet after its answer");
    assert_eq!(c.starts, 1);
}

#[test]
fn a_second_line_or_a_banner_is_out_of_turn() {
    // Written right after the answer: caught with it, or by the wait for quiet.
    let mut c = child("while read l; do echo \"$l\"; echo log; done", Framing::Lines, T);
    let f = match c.call(b"a") {
        Err(f) => f,
        Ok(_) => c.settled(SETTLE_CAP).expect_err("two lines at once"),
    };
    assert!(f.out_of_turn && f.reason.contains("print logs to stderr"), "{}", f.reason);
    // Written a while after the answer, before the child reads again: caught by waiting
    // for it to be back reading its input.
    // (A model that forks for its pause, `sleep 0.1` in sh, has an instant where /proc
    // may not list the new process yet: python's own sleep is seen every time.)
    let model = "python3 -u -c 'import sys, time\nfor l in sys.stdin:\n    \
                 print(l.strip()); time.sleep(0.1); print(\"log\")'";
    let mut c = child(model, Framing::Lines, T);
    assert_eq!(c.call(b"a").expect("first line taken"), Answer::Output(b"a".to_vec()));
    let f = c.settled(SETTLE_CAP).expect_err("the second line");
    assert!(f.out_of_turn && f.reason.contains("print logs to stderr"), "{}", f.reason);
    let mut c = child("echo loaded; sleep 0.2; cat", Framing::Lines, T);
    let f = c.call(b"a").expect_err("the banner");
    assert_eq!(f.blame, Blame::Model, "{}", f.reason);
}

#[test]
fn a_model_that_never_goes_quiet_is_waited_for_only_a_few_times() {
    // A background process asleep on a timer: never quiet (killed with the group).
    let mut c = child("sleep 30 & cat", Framing::Lines, T);
    for i in 0..SETTLE_GIVE_UP + 2 {
        let started = std::time::Instant::now();
        assert_eq!(c.call(b"x").expect("answer"), Answer::Output(b"x".to_vec()));
        c.settled(Duration::from_millis(300)).expect("no stray output");
        let took = started.elapsed();
        if i < SETTLE_GIVE_UP {
            assert!(took >= Duration::from_millis(300), "answer {i} not held: {took:?}");
        } else {
            assert!(took < Duration::from_millis(200), "answer {i} held {took:?}");
        }
    }
}

#[test]
fn frames_carry_any_bytes() {
    let mut c = child("cat", Framing::Frames, T);
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    assert_eq!(c.call(&body).expect("answer"), Answer::Output(body));
}

#[test]
fn a_frame_batch_is_one_call_and_one_answer() {
    let mut c = child("cat", Framing::FrameBatch(3), T);
    let big: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let req = crate::codec::batch::frames_request(&[b"a", &big, b""]).expect("request");
    assert_eq!(c.call(&req).expect("answer"), Answer::Output(req.clone()));
    // More answers than the batch holds break the framing: the child is stopped.
    let mut c = child("cat", Framing::FrameBatch(2), T);
    let f = c.call(&req).expect_err("three answers to a batch of at most two");
    assert!(f.reason.contains("more than a batch holds"), "{}", f.reason);
}

#[test]
fn a_crash_fails_the_message_with_the_reason_and_the_next_call_restarts() {
    let mut c = child(
        r#"while IFS= read -r l; do if [ "$l" = boom ]; then echo "ValueError: boom" >&2; exit 3; fi; echo ok; done"#,
        Framing::Lines,
        T,
    );
    assert_eq!(c.call(b"1").expect("answer"), Answer::Output(b"ok".to_vec()));
    let f = c.call(b"boom").expect_err("crash");
    assert!(
        f.reason.contains("exit status: 3") && f.reason.contains("ValueError: boom"),
        "{}",
        f.reason
    );
    assert_eq!(f.blame, Blame::Message);
    assert_eq!(c.call(b"2").expect("answer after restart"), Answer::Output(b"ok".to_vec()));
    assert_eq!(c.starts, 2);
}

#[test]
fn a_silent_child_times_out_and_a_missing_command_is_fatal() {
    // `sleep` runs under the shell (not exec'd): the kill must reach it too, or it would
    // hold stderr open (and linger) for 30 s.
    let started = std::time::Instant::now();
    let mut c = child("sleep 30; echo never", Framing::Lines, Duration::from_millis(200));
    let f = c.call(b"x").expect_err("timeout");
    assert!(f.reason.contains("no answer within"), "{}", f.reason);
    assert!(started.elapsed() < STDERR_GRACE, "took {:?}", started.elapsed());
    let mut c = child("no-such-model-command-xyz", Framing::Lines, T);
    let f = c.call(b"x").expect_err("not found");
    assert_eq!(f.blame, Blame::Model, "{}", f.reason);
    // A model that dies at start-up (before any message) is broken, not the message.
    let mut c = child("echo 'ImportError: no numpy' >&2; exit 1", Framing::Lines, T);
    c.start().expect("sh starts");
    let until = std::time::Instant::now() + T;
    while !c.has_exited() {
        assert!(std::time::Instant::now() < until, "the model never exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    let f = c.call(b"x").expect_err("died at start");
    assert!(
        f.blame == Blame::Model && f.reason.contains("before its first message"),
        "{}",
        f.reason
    );
    assert!(f.reason.contains("ImportError"), "{}", f.reason);
}
