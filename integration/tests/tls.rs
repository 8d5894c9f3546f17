//! TLS for real: an HTTPS token endpoint on 127.0.0.1 with a certificate from a private CA
//! made in the test.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "support/pki.rs"]
mod pki;

use std::time::Duration;

use common::*;
use entur_auth::{TokenEndpoint, TokenSource};
use entur_auth_test::TestServer;
use pki::{private_ca, Pki};

/// Serves the embedded server's token endpoint over HTTPS on 127.0.0.1; returns the token URL.
async fn https_token_endpoint(server: &TestServer, pki: &Pki) -> String {
    let port = pki::https_token_endpoint(server, pki).await;
    format!("https://127.0.0.1:{port}/oauth/token")
}

fn builder(server: &TestServer, url: &str) -> entur_auth::TokenSourceBuilder {
    let endpoint = TokenEndpoint::new(url).unwrap().audience(server.audience());
    TokenSource::builder(endpoint, server.credentials()).fetch_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn private_ca_works_when_added_as_an_extra_root() {
    let server = server(Duration::from_secs(60)).await;
    let pki = private_ca();
    let url = https_token_endpoint(&server, &pki).await;

    let pem = builder(&server, &url)
        .extra_root_certificate(pki.ca_pem.as_bytes())
        .build()
        .unwrap();
    pem.prefetch().await.unwrap();

    let der = builder(&server, &url)
        .extra_root_certificate(pki.ca_der.clone())
        .build()
        .unwrap();
    der.prefetch().await.unwrap();
    assert_eq!(server.token_requests(), 2);
}

#[tokio::test]
async fn unknown_ca_is_a_clear_certificate_error() {
    let server = server(Duration::from_secs(60)).await;
    let pki = private_ca();
    let url = https_token_endpoint(&server, &pki).await;
    let source = builder(&server, &url).build().unwrap();
    let error = source.prefetch().await.unwrap_err();
    assert!(
        (error.kind() == entur_auth::ErrorKind::Unavailable && error.status().is_none()),
        "{error:?}"
    );
    let text = error.report().to_string();
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(text.contains("extra_root_certificate"), "{text}");
    assert_eq!(server.token_requests(), 0, "no credentials were sent");
}

#[tokio::test]
async fn invalid_extra_root_is_a_configuration_error() {
    let server = server(Duration::from_secs(60)).await;
    for pem in [&b"not a certificate"[..], b""] {
        let error = builder(&server, "https://127.0.0.1:1/oauth/token")
            .extra_root_certificate(pem)
            .build()
            .unwrap_err();
        assert!(error.kind() == entur_auth::ErrorKind::Config, "{error}");
        assert!(
            error
                .report()
                .to_string()
                .contains("extra root certificate"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn https_is_required_for_remote_hosts_even_when_loopback_http_is_allowed() {
    let server = server(Duration::from_secs(60)).await;
    let endpoint = TokenEndpoint::new("http://partner.dev.entur.org/oauth/token").unwrap();
    let error = TokenSource::builder(endpoint, server.credentials())
        .allow_http_loopback(true)
        .build()
        .unwrap_err();
    assert!(error.report().to_string().contains("HTTPS"), "{error}");
}
