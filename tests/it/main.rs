//! The one integration test binary: the real `mqdemo` binary against a real broker
//! (AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2f).

mod attacks;
mod attacks11;
mod attacks11b;
mod broker;
mod cluster;
mod confirms;
mod csv_wild;
mod docs;
mod errors;
mod escape;
mod examples;
mod failed;
mod failed14;
mod faults;
mod flows;
mod handoff;
mod input14;
mod interop;
mod limits;
mod lines;
mod meta14;
mod metrics15;
mod ml;
mod model;
mod proxy;
mod publish14;
mod reliability;
mod secrets;
mod stage_kit;
mod storage;
mod support;
mod terminal14;
mod usage13;
mod usage14;
mod wire;
