//! `private_key_jwt` (RFC 7523 section 2.2) against the embedded server: RSA and P-256 keys
//! from PEM, a fresh assertion for every token request, a signer of one's own, and every
//! refusal the server makes (expired, not yet issued, wrong audience, replayed `jti`, wrong
//! key, wrong `kid`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use entur_auth::assertion::{Algorithm, PrivateKey, Signer, Transient};
use entur_auth::{
    BoxError, ClientAuth, Credentials, Error, OAuthErrorCode, TokenEndpoint, TokenSource,
};
use entur_auth_test::TestServer;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower::ServiceExt;

const RSA_KEY: &str = include_str!("fixtures/test-only-client-rsa.key.pem");
const RSA_PKCS1_KEY: &str = include_str!("fixtures/test-only-client-rsa-pkcs1.key.pem");
const RSA_PUB: &str = include_str!("fixtures/test-only-client-rsa.pub.pem");
const EC_KEY: &str = include_str!("fixtures/test-only-client-ec.key.pem");
const EC_PUB: &str = include_str!("fixtures/test-only-client-ec.pub.pem");
const OTHER_PUB: &str = include_str!("fixtures/test-only-other-rsa.pub.pem");

async fn server_with(public_key: &str) -> TestServer {
    TestServer::builder()
        .client_public_key_pem(public_key)
        .start()
        .await
        .unwrap()
}

fn source_for(server: &TestServer, endpoint: TokenEndpoint, signer: impl Signer) -> TokenSource {
    TokenSource::builder(
        endpoint,
        Credentials::private_key_jwt(server.client_id(), signer),
    )
    .allow_http_loopback(true)
    .transport(server.token_transport())
    .rejected_backoff(Duration::from_millis(1), Duration::from_millis(1))
    .build()
    .unwrap()
}

/// The last token request's parameters (JSON body, as `server.endpoint()` sends).
fn last_params(server: &TestServer) -> serde_json::Map<String, Value> {
    let request = server.last_token_request().unwrap();
    match serde_json::from_slice(&request.body).unwrap() {
        Value::Object(map) => map,
        _ => panic!("not a JSON object"),
    }
}

fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The header and claims of a compact JWS.
fn jws(assertion: &str) -> (Value, Value) {
    let mut parts = assertion.split('.');
    (decode(parts.next().unwrap()), decode(parts.next().unwrap()))
}

#[tokio::test]
async fn rsa_and_p256_keys_get_tokens_with_a_well_formed_assertion() {
    for (private, public, alg) in [
        (RSA_KEY, RSA_PUB, "RS256"),
        (RSA_PKCS1_KEY, RSA_PUB, "RS256"),
        (EC_KEY, EC_PUB, "ES256"),
    ] {
        let server = server_with(public).await;
        let key = PrivateKey::from_pem(private.as_bytes())
            .unwrap()
            .key_id("key-1");
        assert_eq!(format!("{:?}", key.algorithm()).to_uppercase(), alg);
        let source = source_for(&server, server.endpoint(), key);
        source.prefetch().await.unwrap();
        assert_eq!(server.tokens_issued(), 1);

        let params = last_params(&server);
        assert_eq!(params["grant_type"], "client_credentials");
        assert_eq!(params["client_id"], server.client_id());
        assert_eq!(
            params["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assert_eq!(params["audience"], server.audience());
        assert!(params.get("client_secret").is_none());
        let (header, claims) = jws(params["client_assertion"].as_str().unwrap());
        assert_eq!(header["alg"], alg);
        assert_eq!(header["kid"], "key-1");
        assert_eq!(claims["iss"], server.client_id());
        assert_eq!(claims["sub"], server.client_id());
        assert_eq!(claims["aud"], server.token_url().as_str());
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 60, "a short assertion");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
    }
}

#[test]
fn the_public_key_pem_is_the_spki_to_register() {
    for (private, public) in [
        (RSA_KEY, RSA_PUB),
        (RSA_PKCS1_KEY, RSA_PUB),
        (EC_KEY, EC_PUB),
    ] {
        let key = PrivateKey::from_pem(private.as_bytes()).unwrap();
        assert_eq!(
            key.public_key_pem(),
            public,
            "as openssl pkey -pubout writes it"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn every_token_request_signs_a_fresh_assertion() {
    let server = TestServer::builder()
        .client_public_key_pem(RSA_PUB)
        .token_lifetime(Duration::from_secs(20))
        .start()
        .await
        .unwrap();
    let key = PrivateKey::from_pem(RSA_KEY.as_bytes()).unwrap();
    let source = source_for(&server, server.endpoint(), key);
    for _ in 0..4 {
        source.prefetch().await.unwrap();
        // Past the refresh point: the refresher fetches again.
        tokio::time::sleep(Duration::from_secs(17)).await;
    }
    let log = server.token_requests_log();
    assert!(log.len() >= 4, "{}", log.len());
    let jtis: std::collections::HashSet<String> = log
        .iter()
        .map(|entry| {
            let params: Value = serde_json::from_slice(&entry.request.body).unwrap();
            let (_, claims) = jws(params["client_assertion"].as_str().unwrap());
            claims["jti"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(jtis.len(), log.len(), "one jti per request");
    assert_eq!(
        server.tokens_issued(),
        log.len(),
        "every request was accepted"
    );
    assert_eq!(server.assertions_replayed(), 0);
}

/// Runs one fetch and returns its error.
async fn refused(server: &TestServer, endpoint: TokenEndpoint, private: &str) -> Error {
    let key = PrivateKey::from_pem(private.as_bytes()).unwrap();
    let source = source_for(server, endpoint, key);
    let error = source.prefetch().await.unwrap_err();
    assert_eq!(server.tokens_issued(), 0);
    error
}

fn assert_invalid_client(error: &Error, reason: &str) {
    assert_eq!(
        error.oauth_code(),
        Some(&OAuthErrorCode::InvalidClient),
        "expected invalid_client: {error:?}"
    );
    let description = error.description().unwrap_or_default();
    assert!(description.contains(reason), "{description}");
    let text = error.report().to_string();
    assert!(text.contains("public key registered"), "advice: {text}");
}

#[tokio::test]
async fn an_expired_assertion_is_refused() {
    // The server's clock is an hour ahead: the assertion expired 59 minutes ago there.
    let server = TestServer::builder()
        .client_public_key_pem(RSA_PUB)
        .issuer_clock_offset_secs(3600)
        .start()
        .await
        .unwrap();
    let error = refused(&server, server.endpoint(), RSA_KEY).await;
    assert_invalid_client(&error, "expired");
}

#[tokio::test]
async fn an_assertion_from_the_future_is_refused() {
    let server = TestServer::builder()
        .client_public_key_pem(RSA_PUB)
        .issuer_clock_offset_secs(-3600)
        .start()
        .await
        .unwrap();
    let error = refused(&server, server.endpoint(), RSA_KEY).await;
    assert_invalid_client(&error, "iat is in the future");
}

#[tokio::test]
async fn a_wrong_audience_is_refused_and_the_configured_one_accepted() {
    let server = server_with(RSA_PUB).await;
    let wrong = server
        .endpoint()
        .assertion_audience("https://elsewhere.example");
    let error = refused(&server, wrong, RSA_KEY).await;
    assert_invalid_client(&error, "aud");

    // A server that wants its issuer as the audience.
    let server = TestServer::builder()
        .client_public_key_pem(RSA_PUB)
        .assertion_audience("https://issuer.example/")
        .start()
        .await
        .unwrap();
    let error = refused(&server, server.endpoint(), RSA_KEY).await;
    assert_invalid_client(&error, "aud");
    let key = PrivateKey::from_pem(RSA_KEY.as_bytes()).unwrap();
    let endpoint = server
        .endpoint()
        .assertion_audience("https://issuer.example/");
    source_for(&server, endpoint, key).prefetch().await.unwrap();
    assert_eq!(server.tokens_issued(), 1);
}

#[tokio::test]
async fn a_replayed_assertion_is_refused() {
    let server = server_with(RSA_PUB).await;
    let key = PrivateKey::from_pem(RSA_KEY.as_bytes()).unwrap();
    source_for(&server, server.endpoint(), key)
        .prefetch()
        .await
        .unwrap();
    // Someone who captured the request sends it again.
    let captured = server.last_token_request().unwrap();
    let mut replay = http::Request::post(server.token_url())
        .body(Full::new(captured.body.clone()))
        .unwrap();
    *replay.headers_mut() = captured.headers.clone();
    let response = server.token_transport().oneshot(replay).await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("used before"),
        "{body}"
    );
    assert_eq!(server.assertions_replayed(), 1);
    assert_eq!(server.tokens_issued(), 1);
}

#[tokio::test]
async fn a_key_the_server_does_not_know_is_refused() {
    let server = server_with(OTHER_PUB).await;
    let error = refused(&server, server.endpoint(), RSA_KEY).await;
    assert_invalid_client(&error, "signature does not verify");

    // An EC key where RSA is registered: the algorithm is wrong before the signature is.
    let error = refused(&server, server.endpoint(), EC_KEY).await;
    assert_invalid_client(&error, "alg is not RS256");
}

#[tokio::test]
async fn the_kid_must_name_the_registered_key() {
    let server = TestServer::builder()
        .client_public_key_pem(RSA_PUB)
        .client_key_id("2024-1")
        .start()
        .await
        .unwrap();
    let error = refused(&server, server.endpoint(), RSA_KEY).await;
    assert_invalid_client(&error, "kid");
    let key = PrivateKey::from_pem(RSA_KEY.as_bytes())
        .unwrap()
        .key_id("2024-1");
    source_for(&server, server.endpoint(), key)
        .prefetch()
        .await
        .unwrap();
    assert_eq!(server.tokens_issued(), 1);
}

/// A signer of one's own (a KMS, an HSM): here a [`PrivateKey`] behind a counter, and one
/// whose service fails: for good, or for its first `n` calls with a failure that passes.
struct Kms {
    key: PrivateKey,
    calls: Arc<AtomicUsize>,
    fail: Failing,
}

#[derive(Clone, Copy)]
enum Failing {
    Never,
    Always,
    TransientlyFor(usize),
}

impl Signer for Kms {
    fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }
    fn key_id(&self) -> Option<&str> {
        Some("kms-key")
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::task::yield_now().await;
            match self.fail {
                Failing::Always => return Err("KMS: AccessDeniedException".into()),
                Failing::TransientlyFor(n) if call < n => {
                    return Err(Transient::new("KMS: ThrottlingException").into())
                }
                _ => {}
            }
            self.key.sign(message).await
        })
    }
}

#[tokio::test]
async fn a_signer_of_ones_own_signs_and_its_failures_are_errors() {
    let server = server_with(EC_PUB).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let kms = Kms {
        key: PrivateKey::from_pem(EC_KEY.as_bytes()).unwrap(),
        calls: calls.clone(),
        fail: Failing::Never,
    };
    source_for(&server, server.endpoint(), kms)
        .prefetch()
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let (header, _) = jws(last_params(&server)["client_assertion"].as_str().unwrap());
    assert_eq!(header["kid"], "kms-key");

    let failing = Kms {
        key: PrivateKey::from_pem(EC_KEY.as_bytes()).unwrap(),
        calls: calls.clone(),
        fail: Failing::Always,
    };
    let error = source_for(&server, server.endpoint(), failing)
        .prefetch()
        .await
        .unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Signer, "{error:?}");
    assert!(!error.is_transient());
    let report = error.report().to_string();
    assert!(report.contains("AccessDeniedException"), "{report}");
    assert!(
        report.contains("assertion::Transient"),
        "says how to mark a failure that passes: {report}"
    );
    assert_eq!(
        server.token_requests(),
        1,
        "nothing sent without an assertion"
    );
}

/// A signer's failure that passes (a KMS timeout, throttling) is retried on the fast
/// schedule, and `ready()` waits through it; any other failure ends `ready()` at once and
/// waits for the slow schedule.
#[tokio::test(start_paused = true)]
async fn a_signer_says_which_failures_pass() {
    let server = server_with(EC_PUB).await;
    let source = |fail| {
        let calls = Arc::new(AtomicUsize::new(0));
        let kms = Kms {
            key: PrivateKey::from_pem(EC_KEY.as_bytes()).unwrap(),
            calls: calls.clone(),
            fail,
        };
        let source = TokenSource::builder(
            server.endpoint(),
            Credentials::private_key_jwt(server.client_id(), kms),
        )
        .allow_http_loopback(true)
        .transport(server.token_transport())
        .build()
        .unwrap();
        (source, calls)
    };

    // Two throttled calls: ready() rides them out within 10 s, where the slow schedule
    // (30 s at first) would not.
    let (passing, calls) = source(Failing::TransientlyFor(2));
    passing.ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        server.token_requests(),
        1,
        "one request, with the assertion signed at last"
    );

    // A failure the signer did not mark: ready() fails at once with it, and the next try
    // is on the slow schedule.
    let (failing, calls) = source(Failing::Always);
    let error = failing.ready(Duration::from_secs(3600)).await.unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Signer, "{error:?}");
    assert!(!error.is_transient());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let retry_in = failing.status().retry_in.unwrap();
    assert!(retry_in >= Duration::from_secs(29), "{retry_in:?}");

    // The marked failure, as an error: transient, its cause kept.
    let (throttled, _) = source(Failing::TransientlyFor(usize::MAX));
    let error = throttled.prefetch().await.unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Signer && error.is_transient());
    assert!(
        error.report().to_string().contains("ThrottlingException"),
        "{}",
        error.report()
    );
    assert!(throttled.status().retry_in.unwrap() < Duration::from_secs(29));
}

#[test]
fn unusable_keys_are_configuration_errors_that_say_why() {
    let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIO\n-----END EC PRIVATE KEY-----\n";
    let cases: [(&[u8], &str); 5] = [
        (b"", "no PRIVATE KEY block"),
        (RSA_PUB.as_bytes(), "no PRIVATE KEY block"),
        (
            b"-----BEGIN PRIVATE KEY-----\n@@@\n-----END PRIVATE KEY-----\n",
            "not valid PEM",
        ),
        (
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "encrypted",
        ),
        (sec1.as_bytes(), "SEC1"),
    ];
    for (pem, reason) in cases {
        let error = PrivateKey::from_pem(pem).unwrap_err();
        assert!(error.kind() == entur_auth::ErrorKind::Config);
        assert!(
            error.report().to_string().contains(reason),
            "{reason}: {error}"
        );
    }
    let fixtures = [
        (
            include_str!("fixtures/test-only-small-rsa.key.pem"),
            "2048 bits or more",
        ),
        (
            include_str!("fixtures/test-only-ed25519.key.pem"),
            "neither an RSA key nor an EC key on P-256",
        ),
        (
            include_str!("fixtures/test-only-p384.key.pem"),
            "neither an RSA key nor an EC key on P-256",
        ),
    ];
    for (pem, reason) in fixtures {
        let error = PrivateKey::from_pem(pem.as_bytes()).unwrap_err();
        assert!(
            error.report().to_string().contains(reason),
            "{reason}: {error}"
        );
    }
    let error = PrivateKey::from_pem_file("/nonexistent/key.pem").unwrap_err();
    assert!(
        error.report().to_string().contains("/nonexistent/key.pem"),
        "{error}"
    );
}

#[tokio::test]
async fn registered_claims_and_odd_lifetimes_are_refused_at_build() {
    let server = server_with(RSA_PUB).await;
    for endpoint in [
        server.endpoint().assertion_claim("exp", Value::from(1)),
        server.endpoint().assertion_lifetime(Duration::ZERO),
        server
            .endpoint()
            .assertion_lifetime(Duration::from_secs(3600)),
    ] {
        let key = PrivateKey::from_pem(RSA_KEY.as_bytes()).unwrap();
        let error = TokenSource::builder(endpoint, Credentials::private_key_jwt("c", key))
            .allow_http_loopback(true)
            .transport(server.token_transport())
            .build()
            .unwrap_err();
        assert!(error.kind() == entur_auth::ErrorKind::Config, "{error}");
        assert!(error.report().to_string().contains("assertion"), "{error}");
    }
    // A secret cannot be sent as a key.
    let error = TokenSource::builder(
        server.endpoint().client_auth(ClientAuth::PrivateKeyJwt),
        server.credentials(),
    )
    .allow_http_loopback(true)
    .transport(server.token_transport())
    .build()
    .unwrap_err();
    assert!(
        error
            .report()
            .to_string()
            .contains("Credentials::private_key_jwt"),
        "{error}"
    );
}
