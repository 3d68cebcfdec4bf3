//! The one integration test binary: the real `mqdemo` binary against a real broker
//! (AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2f).

mod broker;
mod cluster;
mod confirms;
mod docs;
mod errors;
mod examples;
mod faults;
mod flows;
mod handoff;
mod interop;
mod ml;
mod proxy;
mod reliability;
mod attack1;
mod support;
mod wire;
