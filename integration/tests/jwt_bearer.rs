//! The JWT bearer grant (RFC 7523 section 2.1) and the Maskinporten preset, against the
//! embedded server: the request's shape, the assertion's claims, and the refusals
//! (`invalid_grant` for a wrong audience, an expired or a replayed grant).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use entur_auth::assertion::PrivateKey;
use entur_auth::{
    Credentials, Error, MaskinportenEnvironment, OAuthErrorCode, TokenEndpoint, TokenSource,
};
use entur_auth_test::TestServer;
use http_body_util::Full;
use serde_json::Value;
use tower::ServiceExt;

const RSA_KEY: &str = include_str!("../../tests/fixtures/test-only-client-rsa.key.pem");
const RSA_PUB: &str = include_str!("../../tests/fixtures/test-only-client-rsa.pub.pem");

fn key() -> PrivateKey {
    PrivateKey::from_pem(RSA_KEY.as_bytes())
        .unwrap()
        .key_id("mp-key-1")
}

fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[tokio::test]
async fn the_grant_carries_a_fresh_assertion_and_no_other_client_authentication() {
    let server = TestServer::builder()
        .client_public_key_pem(RSA_PUB)
        .start()
        .await
        .unwrap();
    let endpoint = TokenEndpoint::new(&server.token_url())
        .unwrap()
        .scope("read write");
    let source = TokenSource::builder(endpoint, Credentials::jwt_bearer(server.client_id(), key()))
        .allow_http_loopback(true)
        .transport(server.token_transport())
        .build()
        .unwrap();
    source.prefetch().await.unwrap();
    assert_eq!(source.current().unwrap().scope(), Some("read write"));

    let params = form(&server.last_token_request().unwrap().body);
    let names: Vec<&str> = params.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["grant_type", "assertion", "scope"]);
    assert_eq!(params[0].1, "urn:ietf:params:oauth:grant-type:jwt-bearer");
    let mut parts = params[1].1.split('.');
    let (header, claims) = (decode(parts.next().unwrap()), decode(parts.next().unwrap()));
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "mp-key-1");
    assert_eq!(claims["iss"], server.client_id());
    assert_eq!(claims["sub"], server.client_id(), "RFC 7523 asks for sub");
    assert_eq!(claims["aud"], server.token_url().as_str());
}

/// The Maskinporten preset, its requests sent to the embedded server (which plays
/// Maskinporten's test environment: its issuer as the only audience).
async fn maskinporten(server: &TestServer, endpoint: TokenEndpoint) -> Result<TokenSource, Error> {
    maskinporten_with(server, endpoint, key()).await
}

async fn maskinporten_with(
    server: &TestServer,
    endpoint: TokenEndpoint,
    key: PrivateKey,
) -> Result<TokenSource, Error> {
    let url: http::Uri = server.token_url().parse().unwrap();
    let transport = server.token_transport().map_request(
        move |mut request: http::Request<Full<bytes::Bytes>>| {
            assert_eq!(request.uri(), "https://test.maskinporten.no/token");
            *request.uri_mut() = url.clone();
            request
        },
    );
    let source = TokenSource::builder(endpoint, Credentials::jwt_bearer(server.client_id(), key))
        .transport(transport)
        .rejected_backoff(Duration::from_millis(1), Duration::from_millis(1))
        .build()?;
    source.prefetch().await.map(|()| source)
}

async fn maskinporten_server() -> TestServer {
    TestServer::builder()
        .client_public_key_pem(RSA_PUB)
        .assertion_audience(MaskinportenEnvironment::Test.issuer())
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_maskinporten_preset_sends_what_digdir_documents() {
    let server = maskinporten_server().await;
    let endpoint =
        TokenEndpoint::maskinporten(MaskinportenEnvironment::Test, "digdir:dialogporten")
            .maskinporten_resource("https://api.example.no");
    let source = maskinporten(&server, endpoint).await.unwrap();
    assert_eq!(
        source.current().unwrap().scope(),
        Some("digdir:dialogporten")
    );

    let request = server.last_token_request().unwrap();
    assert_eq!(
        request.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let params = form(&request.body);
    let names: Vec<&str> = params.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["grant_type", "assertion"],
        "nothing else in the body"
    );
    let mut parts = params[1].1.split('.');
    let (header, claims) = (decode(parts.next().unwrap()), decode(parts.next().unwrap()));
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "mp-key-1");
    let mut names: Vec<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["aud", "exp", "iat", "iss", "jti", "resource", "scope"],
        "only the claims Maskinporten documents: another one is refused"
    );
    assert_eq!(claims["aud"], "https://test.maskinporten.no/");
    assert_eq!(claims["iss"], server.client_id());
    assert_eq!(claims["scope"], "digdir:dialogporten");
    assert_eq!(
        claims["resource"],
        serde_json::json!(["https://api.example.no"])
    );
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(
        lifetime <= 120,
        "Maskinporten allows at most 120 s: {lifetime}"
    );
}

#[test]
fn the_maskinporten_presets_name_digdirs_endpoints() {
    for (environment, url, issuer) in [
        (
            MaskinportenEnvironment::Test,
            "https://test.maskinporten.no/token",
            "https://test.maskinporten.no/",
        ),
        (
            MaskinportenEnvironment::Production,
            "https://maskinporten.no/token",
            "https://maskinporten.no/",
        ),
    ] {
        let endpoint = TokenEndpoint::maskinporten(environment, "s");
        assert_eq!(endpoint.url(), url);
        // The issuer is the assertion's audience; no `audience` or `scope` parameter goes
        // in the body (the scope is a claim).
        let shown = format!("{endpoint:?}");
        assert!(shown.contains("audience: None, scope: None"), "{shown}");
        assert!(
            shown.contains(&format!(
                "assertion: AssertionSettings {{ audience: Some({issuer:?})"
            )),
            "{shown}"
        );
    }
}

fn assert_invalid_grant(error: &Error, reason: &str) {
    assert_eq!(
        error.oauth_code(),
        Some(&OAuthErrorCode::InvalidGrant),
        "expected invalid_grant: {error:?}"
    );
    let description = error.description().unwrap_or_default();
    assert!(description.contains(reason), "{description}");
    assert!(
        error.report().to_string().contains("Maskinporten"),
        "advice: {error}"
    );
}

#[tokio::test]
async fn wrong_audience_and_expired_grants_are_refused() {
    // Production's audience sent to the test environment.
    let server = maskinporten_server().await;
    let endpoint = TokenEndpoint::maskinporten(MaskinportenEnvironment::Test, "s")
        .assertion_audience(MaskinportenEnvironment::Production.issuer());
    let error = maskinporten(&server, endpoint).await.unwrap_err();
    assert_invalid_grant(&error, "aud");

    let late = TestServer::builder()
        .client_public_key_pem(RSA_PUB)
        .assertion_audience(MaskinportenEnvironment::Test.issuer())
        .issuer_clock_offset_secs(120)
        .start()
        .await
        .unwrap();
    let endpoint = TokenEndpoint::maskinporten(MaskinportenEnvironment::Test, "s");
    let error = maskinporten(&late, endpoint).await.unwrap_err();
    assert_invalid_grant(&error, "expired");
    assert_eq!(server.tokens_issued() + late.tokens_issued(), 0);
}

#[tokio::test]
async fn a_replayed_grant_is_refused() {
    let server = maskinporten_server().await;
    let endpoint = TokenEndpoint::maskinporten(MaskinportenEnvironment::Test, "s");
    maskinporten(&server, endpoint).await.unwrap();
    let captured = server.last_token_request().unwrap();
    let mut replay = http::Request::post(server.token_url())
        .body(Full::new(captured.body.clone()))
        .unwrap();
    *replay.headers_mut() = captured.headers.clone();
    let response = server.token_transport().oneshot(replay).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(server.assertions_replayed(), 1);
    assert_eq!(server.tokens_issued(), 1);
}

#[tokio::test]
async fn a_business_certificate_goes_in_the_x5c_header() {
    // The header's shape; Maskinporten checks that the certificate is the key's.
    let issuer = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client.example".to_owned()])
        .unwrap()
        .self_signed(&issuer)
        .unwrap();
    let key = PrivateKey::from_pem(RSA_KEY.as_bytes())
        .unwrap()
        .certificate_chain_pem(cert.pem().as_bytes())
        .unwrap();
    let server = maskinporten_server().await;
    let endpoint = TokenEndpoint::maskinporten(MaskinportenEnvironment::Test, "s");
    maskinporten_with(&server, endpoint, key).await.unwrap();
    let params = form(&server.last_token_request().unwrap().body);
    let header = decode(params[1].1.split('.').next().unwrap());
    use base64::engine::general_purpose::STANDARD;
    assert_eq!(
        header["x5c"],
        serde_json::json!([STANDARD.encode(cert.der())])
    );
    assert!(header.get("kid").is_none());

    let error = PrivateKey::from_pem(RSA_KEY.as_bytes())
        .unwrap()
        .certificate_chain_pem(b"no certificate here")
        .unwrap_err();
    assert!(
        error.report().to_string().contains("no CERTIFICATE block"),
        "{error}"
    );
}

#[tokio::test]
async fn maskinporten_refuses_an_es256_key_at_build_with_the_reason() {
    let server = maskinporten_server().await;
    let ec_key = PrivateKey::from_pem(
        include_str!("../../tests/fixtures/test-only-client-ec.key.pem").as_bytes(),
    )
    .unwrap()
    .key_id("mp-ec-key");
    let endpoint =
        TokenEndpoint::maskinporten(MaskinportenEnvironment::Test, "digdir:dialogporten");
    let error = maskinporten_with(&server, endpoint, ec_key)
        .await
        .expect_err("Maskinporten documents RS256, RS384 and RS512 only");
    assert!(error.kind() == entur_auth::ErrorKind::Config, "{error:?}");
    let text = error.report().to_string();
    assert!(
        text.contains("Maskinporten accepts assertions signed with RSA only"),
        "{text}"
    );
    assert!(text.contains("ES256"), "{text}");
    assert_eq!(
        server.token_requests(),
        0,
        "refused before anything is sent"
    );

    // The same key is fine for a server without that rule (the embedded server verifies ES256).
    let endpoint = TokenEndpoint::new(&server.token_url()).unwrap();
    let key = PrivateKey::from_pem(
        include_str!("../../tests/fixtures/test-only-client-ec.key.pem").as_bytes(),
    )
    .unwrap();
    assert!(
        TokenSource::builder(endpoint, Credentials::jwt_bearer(server.client_id(), key))
            .allow_http_loopback(true)
            .transport(server.token_transport())
            .build()
            .is_ok()
    );
}

#[tokio::test]
async fn maskinporten_refuses_a_key_with_neither_kid_nor_certificate_at_build() {
    let server = maskinporten_server().await;
    let anonymous = PrivateKey::from_pem(RSA_KEY.as_bytes()).unwrap();
    let endpoint =
        TokenEndpoint::maskinporten(MaskinportenEnvironment::Test, "digdir:dialogporten");
    let error = maskinporten_with(&server, endpoint.clone(), anonymous)
        .await
        .expect_err("Maskinporten finds the key by kid or x5c");
    assert!(error.kind() == entur_auth::ErrorKind::Config, "{error:?}");
    let text = error.report().to_string();
    assert!(text.contains("neither"), "{text}");
    assert!(text.contains("PrivateKey::key_id"), "{text}");
    assert!(text.contains("PrivateKey::certificate_chain_pem"), "{text}");
    assert_eq!(
        server.token_requests(),
        0,
        "refused before anything is sent"
    );

    // With a key id, the same key and endpoint get a token.
    maskinporten_with(&server, endpoint, key()).await.unwrap();
    assert_eq!(server.token_requests(), 1);
}
