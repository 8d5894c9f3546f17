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

/// The guides' code blocks (docs/*.md), compiled as doc tests like the README's: one item per
/// guide, under the same features.
#[cfg(all(doctest, feature = "tonic", feature = "reqwest", feature = "redis"))]
pub mod guide_doctests {
    #[doc = include_str!("../../docs/usage.md")]
    pub struct Usage;
    #[doc = include_str!("../../docs/credentials.md")]
    pub struct Credentials;
    #[doc = include_str!("../../docs/refusals.md")]
    pub struct Refusals;
    #[doc = include_str!("../../docs/configuration.md")]
    pub struct Configuration;
    #[doc = include_str!("../../docs/lifecycle.md")]
    pub struct Lifecycle;
    #[doc = include_str!("../../docs/observability.md")]
    pub struct Observability;
    #[doc = include_str!("../../docs/fleet.md")]
    pub struct Fleet;
    #[doc = include_str!("../../docs/testing.md")]
    pub struct Testing;
    #[doc = include_str!("../../docs/performance.md")]
    pub struct Performance;
}
