//! Issue 13: `--ca-cert` with an `amqp://` URL is bad usage (exit 2), not silently ignored.

use crate::support::{Output, bin_path, mqdemo, wait};
use std::process::{Command, Stdio};
use std::time::Duration;

const FIX: &str = "only amqps:// URLs use a CA certificate";

/// The first line names the flag, the plain URL (masked) and the fix.
fn refused(out: Output, plain: &str) {
    let out = out.expect_code(2);
    let first = out.first_error_line();
    for needle in ["--ca-cert ca.pem", FIX, plain, "use an amqps:// URL or drop --ca-cert"] {
        assert!(first.contains(needle), "first line lacks {needle:?}: {}", out.stderr);
    }
    assert!(!out.stderr.contains("secret"), "the password is masked: {}", out.stderr);
}

/// mqdemo with only these broker settings in its environment (support's `mqdemo` sets
/// AMQP_URL).
fn bare(env: &[(&str, &str)], args: &[&str]) -> Output {
    let child = Command::new(bin_path())
        .args(args)
        .env_remove("AMQP_URL")
        .env_remove("AMQP_URL_FILE")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mqdemo binary starts");
    wait(child, Duration::from_secs(30))
}

#[test]
fn ca_cert_with_an_amqp_url_is_a_usage_error() {
    let out = mqdemo(&["--url", "amqp://u:secret@h/%2f", "--ca-cert", "ca.pem", "demo"]).run();
    refused(out, "amqp://****@h/%2f");
    // The scheme is read case-insensitively.
    let out = mqdemo(&["--url", "AMQP://h/", "--ca-cert", "ca.pem", "demo"]).run();
    refused(out, "amqp://h/");
    // Every command, before anything is read or connected.
    let out = mqdemo(&[
        "--url",
        "amqp://h/",
        "--ca-cert",
        "ca.pem",
        "produce",
        "text",
        "--directory",
        "/nonexistent",
    ])
    .run();
    refused(out, "amqp://h/");
}

#[test]
fn ca_cert_with_the_default_url_is_a_usage_error() {
    // No --url, no AMQP_URL: the default amqp:// URL.
    let out = bare(&[], &["--ca-cert", "ca.pem", "consume", "text"]);
    refused(out, "amqp://****@localhost:5672/%2f");
}

#[test]
fn one_amqp_url_in_a_list_is_enough_to_refuse_ca_cert() {
    let repeated = mqdemo(&[
        "--url",
        "amqps://a/",
        "--url",
        "amqps://b/,amqp://u:secret@c/",
        "--ca-cert",
        "ca.pem",
        "demo",
    ])
    .run();
    refused(repeated, "amqp://****@c/");
    let env_list =
        bare(&[("AMQP_URL", "amqps://a/, amqp://u:secret@b/")], &["--ca-cert", "ca.pem", "demo"]);
    refused(env_list, "amqp://****@b/");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("url");
    std::fs::write(&file, "amqps://a/\namqp://c/\n").expect("write");
    let from_file =
        bare(&[], &["--url-file", file.to_str().expect("utf-8"), "--ca-cert", "ca.pem", "demo"]);
    refused(from_file, "amqp://c/");
}

#[test]
fn ca_cert_with_amqps_urls_only_is_taken() {
    // Past validation: the CA file is read (and is missing here), so not bad usage.
    let out = mqdemo(&[
        "--url",
        "amqps://127.0.0.1:1/,amqps://127.0.0.1:2/",
        "--ca-cert",
        "/nonexistent/ca.pem",
        "--connect-timeout",
        "2",
        "--retry-for",
        "0",
        "produce",
        "text",
        "--directory",
        "src/cli",
    ])
    .run();
    assert_ne!(out.code(), Some(2), "{}", out.stderr);
    assert!(!out.stderr.contains(FIX), "{}", out.stderr);
    assert!(out.first_error_line().contains("--ca-cert /nonexistent/ca.pem"), "{}", out.stderr);
}
