//! entur-auth with the frameworks around it: the examples, tests and README code that need
//! axum, tonic, reqwest, a Prometheus exporter, proptest or a private CA.
//!
//! This package publishes nothing. It exists so that the root package's dev-dependencies stay
//! small: `cargo run --example quickstart` compiles none of these crates, while `cargo test
//! --all-features` in the repository's root still builds and runs everything here.

pub mod grpc;

/// The README's code blocks, compiled as doc tests here, where every crate they use is a
/// dependency; with every feature (`cargo test --all-features`), which its tonic, reqwest and
/// Redis code needs.
#[cfg(all(doctest, feature = "tonic", feature = "reqwest", feature = "redis"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
