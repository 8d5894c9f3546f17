//! Instruction counts of the hot path, for `valgrind --tool=callgrind`: deterministic where
//! wall-clock benches on a shared machine are not.
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! BIN=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -1)
//! for stack in no_layer static_header entur_auth; do
//!   for n in 0 100000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null $BIN $stack $n 2>&1 | grep Collected
//!   done
//! done
//! ```
//!
//! Per request: (count at 100,000 − count at 0) / 100,000, which removes the setup (runtime,
//! embedded server, first token). Same request and inner service as the other benches.
//! Run as a plain `cargo bench` (no arguments) it sends a few requests through each stack and
//! exits, so that CI keeps it building and working.

use std::hint::black_box;
use std::task::Context;

use entur_auth::EnturAuthLayer;
use futures_util::task::noop_waker_ref;
use http::header::AUTHORIZATION;
use tower::layer::util::Identity;
use tower::{Layer, ServiceBuilder};
use tower_http::set_header::SetRequestHeaderLayer;

#[path = "support/mod.rs"]
mod support;

use support::*;

fn run<S: Responds>(mut svc: S, n: usize)
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    for _ in 0..n {
        black_box(send(&mut svc, &mut cx, black_box(request())));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; only `STACK N` selects a measurement.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (stacks, n) = match args.as_slice() {
        [stack, n] if !stack.starts_with('-') => (
            vec![stack.as_str()],
            n.parse().expect("N: a number of requests"),
        ),
        _ => (vec!["no_layer", "static_header", "entur_auth"], 10),
    };
    let fixture = Fixture::new();
    for stack in stacks {
        match stack {
            "no_layer" => run(
                ServiceBuilder::new().layer(Identity::new()).service(Inner),
                n,
            ),
            "static_header" => run(
                SetRequestHeaderLayer::overriding(AUTHORIZATION, fixture.static_header())
                    .layer(Inner),
                n,
            ),
            "entur_auth" => run(EnturAuthLayer::new(fixture.source.clone()).layer(Inner), n),
            other => panic!("unknown stack {other:?}: no_layer, static_header or entur_auth"),
        }
    }
}
