//! The `hot_path` stacks measured drift-proof: criterion times one function after another, and
//! on a shared 2-core machine the whole machine's speed drifts between them by more than the
//! layers differ. Here the four stacks run in small batches, round-robin with a rotating
//! order, so every stack sees the same drift; the figures are medians over the rounds and
//! the median of the per-round ratios.
//!
//! `cargo bench --bench interleaved` (about 30 s). Prints the sequential (one thread) and the
//! contended (two threads, each running the same rounds over clones of one service) figures.

use std::fmt;
use std::hint::black_box;
use std::task::Context;
use std::time::Instant;

use entur_auth::EnturAuthLayer;
use futures_util::task::noop_waker_ref;
use http::header::AUTHORIZATION;
use tower::ServiceBuilder;
use tower_http::set_header::SetRequestHeaderLayer;

#[path = "support/mod.rs"]
mod support;

use support::*;

const BATCH: usize = 2_000;
const WARMUP_ROUNDS: usize = 50;
const ROUNDS: usize = 600;
const STACKS: [&str; 4] = ["no_layer", "static_header", "entur_auth", "rwlock_format"];

/// Nanoseconds per request over one batch.
fn batch<S>(svc: &mut S, cx: &mut Context<'_>) -> f64
where
    S: Responds,
    S::Error: fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..BATCH {
        black_box(send(svc, cx, black_box(request())));
    }
    start.elapsed().as_nanos() as f64 / BATCH as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the rounds over clones of the four stacks; returns, per round, the time per request
/// of each stack.
fn rounds<A, B, C, D>(mut a: A, mut b: B, mut c: C, mut d: D) -> Vec<[f64; 4]>
where
    A: Responds,
    B: Responds,
    C: Responds,
    D: Responds,
    A::Error: fmt::Debug,
    B::Error: fmt::Debug,
    C::Error: fmt::Debug,
    D::Error: fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = Vec::with_capacity(ROUNDS);
    for round in 0..WARMUP_ROUNDS + ROUNDS {
        let mut t = [0.0; 4];
        for k in 0..4 {
            let which = (k + round) % 4;
            t[which] = match which {
                0 => batch(&mut a, &mut cx),
                1 => batch(&mut b, &mut cx),
                2 => batch(&mut c, &mut cx),
                _ => batch(&mut d, &mut cx),
            };
        }
        if round >= WARMUP_ROUNDS {
            out.push(t);
        }
    }
    out
}

fn report(title: &str, rounds: &[[f64; 4]]) {
    let med = |i: usize| median(rounds.iter().map(|t| t[i]).collect());
    let m: Vec<f64> = (0..4).map(med).collect();
    println!(
        "{title}: medians of {} rounds of {BATCH} requests",
        rounds.len()
    );
    for (name, value) in STACKS.iter().zip(&m) {
        println!("  {name:<14} {value:>8.1} ns/request");
    }
    let per_round = |f: &dyn Fn(&[f64; 4]) -> f64| median(rounds.iter().map(f).collect());
    println!(
        "  entur_auth / static_header          {:.3} (median of per-round ratios {:.3})",
        m[2] / m[1],
        per_round(&|t| t[2] / t[1])
    );
    println!(
        "  added cost entur_auth / static      {:.3} (median of per-round ratios {:.3})",
        (m[2] - m[0]) / (m[1] - m[0]),
        per_round(&|t| (t[2] - t[0]) / (t[1] - t[0]))
    );
    println!(
        "  added cost rwlock_format / entur    {:.2} (median of per-round ratios {:.2})",
        (m[3] - m[0]) / (m[2] - m[0]),
        per_round(&|t| (t[3] - t[0]) / (t[2] - t[0]))
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it with no flag: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let fixture = Fixture::new();
    let bare = ServiceBuilder::new().service(Inner);
    let stat = ServiceBuilder::new()
        .layer(SetRequestHeaderLayer::overriding(
            AUTHORIZATION,
            fixture.static_header(),
        ))
        .service(Inner);
    let entur = ServiceBuilder::new()
        .layer(EnturAuthLayer::new(fixture.source.clone()))
        .service(Inner);
    let rw = ServiceBuilder::new().layer(fixture.rwlock()).service(Inner);

    report(
        "hot_path (1 thread)",
        &rounds(bare, stat.clone(), entur.clone(), rw.clone()),
    );

    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (stat, entur, rw) = (stat.clone(), entur.clone(), rw.clone());
            std::thread::spawn(move || rounds(Inner, stat, entur, rw))
        })
        .collect();
    let all: Vec<[f64; 4]> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("bench thread"))
        .collect();
    report("hot_path_contended (2 threads, shared clones)", &all);
}
