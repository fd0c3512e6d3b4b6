//! Start and stop real components for integration tests, one concern per
//! submodule, all re-exported here so that `use common::*;` brings in
//! everything:
//!
//! - `mosquitto`: a Mosquitto broker on a free loopback port;
//! - `ejabberd`: ejabberd's MQTT broker (no shared subscriptions) on one;
//! - `worker`: the `ansible-worker` binary with a generated or given config;
//! - `observer`: an MQTT client that records every status document;
//! - `poll_controller`: an HTTP controller that workers with
//!   `transport = "http"` poll for tasks and post statuses to;
//! - `controller`: an MQTT 5 client with a login of its own, Response Topics
//!   and the broker's reason codes;
//! - `recorder`: an MQTT client that records every message on one filter
//!   (events, retained messages);
//! - `procs`: processes found and killed through `/proc`;
//! - `ansible`: the test venv's `ansible-playbook` and the test playbooks;
//! - `ledger`: a file `ledger.yml` appends to, counting real runs;
//! - `appliance`: `config.example.toml` made runnable on free ports;
//! - `http`, `sse`, `prometheus`: a client for the HTTP API, its event stream
//!   and its metrics;
//! - `raw_mqtt`: MQTT packets as bytes, for what client libraries will not send;
//! - `rest_controller`: `examples/controllers/http/controller.py`, the
//!   example controller of the HTTP transport, as a child process;
//! - `schema`: the JSON Schemas of `docs/schema/`, which every status document
//!   the observer or the HTTP client receives must pass;
//! - `tmpfs`: a small file system mounted for one test, to fill and free;
//! - `tls`: a private CA and certificates;
//! - `docker`: the images and compose projects of `docker/`, for the container
//!   tests.
//!
//! This file keeps what they all share: deadlines, waiting, ports and ids.
#![allow(dead_code)] // each test binary uses a different part of this module

mod ansible;
mod appliance;
mod controller;
mod docker;
mod ejabberd;
mod http;
mod ledger;
mod mosquitto;
mod observer;
mod poll_controller;
mod procs;
mod prometheus;
mod raw_mqtt;
mod recorder;
mod rest_controller;
mod schema;
mod sse;
mod tls;
mod tmpfs;
mod worker;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

// Each test binary uses a different part of these, too.
#[allow(unused_imports)]
pub use self::{
    ansible::*, appliance::*, controller::*, docker::*, ejabberd::*, http::*, ledger::*,
    mosquitto::*, observer::*, poll_controller::*, procs::*, prometheus::*, raw_mqtt::*,
    recorder::*, rest_controller::*, schema::*, sse::*, tls::*, tmpfs::*, worker::*,
};

/// Generous deadline for anything that involves a real `ansible-playbook` on a
/// busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// The project's own checkout.
pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1 (bound then released), never one this test
/// process was given before: two listeners of one appliance must differ.
///
/// It is taken below the kernel's ephemeral range: a port handed out by
/// binding port 0 lies inside that range, where any outgoing connection of a
/// parallel test (a client's local port) may take it between the release
/// here and the listener's bind (CI saw `Address already in use` so).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (low, high) = (10_000u16, ephemeral_start().max(10_001));
    let span = u64::from(high - low);
    let mut candidate = low + (random_u64() % span) as u16;
    for _ in 0..span {
        if !given.contains(&candidate) && TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            given.push(candidate);
            return candidate;
        }
        candidate = if candidate + 1 >= high {
            low
        } else {
            candidate + 1
        };
    }
    panic!("no free port between {low} and {high}");
}

/// The first port of the kernel's ephemeral range (32768 if unreadable).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A random number from std's per-process hash seed, so that test binaries
/// running side by side start their port search at different places.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async twin of [`wait_until`].
pub async fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A short random id for a task or group.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}
