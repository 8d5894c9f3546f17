//! Credential rotation on a running source: `set_credentials` (a new secret, a secret
//! replaced by a key) without rebuilding the source or the layer, the current token served
//! until it is replaced, and a secret file read again after `invalid_client`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use entur_auth::assertion::PrivateKey;
use entur_auth::{ClientSecret, Config, Credentials, Error, OAuthErrorCode, TokenSource};
use entur_auth_test::TestServer;
use http::StatusCode;

const RSA_KEY: &str = include_str!("fixtures/test-only-client-rsa.key.pem");
const RSA_PUB: &str = include_str!("fixtures/test-only-client-rsa.pub.pem");

async fn rotating_server() -> TestServer {
    TestServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .client_public_key_pem(RSA_PUB)
        .start()
        .await
        .unwrap()
}

fn builder(server: &TestServer, credentials: Credentials) -> entur_auth::TokenSourceBuilder {
    TokenSource::builder(server.endpoint(), credentials)
        .allow_http_loopback(true)
        .transport(server.token_transport())
        .jitter_seed(3)
}

fn is_invalid_client(error: &Error) -> bool {
    error.oauth_code() == Some(&OAuthErrorCode::InvalidClient)
}

#[tokio::test(start_paused = true)]
async fn set_credentials_rotates_a_secret_without_rebuilding_the_layer() {
    let server = rotating_server().await;
    let source = builder(&server, server.credentials()).build().unwrap();
    let mut api = client(&server, &source);
    assert_eq!(
        send(&mut api, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    let first = source.current().unwrap().id();

    // The server rotates first: the refresh at ~75 % is refused...
    server.set_client_secret("rotated-secret");
    tokio::time::sleep(Duration::from_secs(80)).await;
    assert_eq!(server.token_requests(), 2);
    assert!(is_invalid_client(
        source.status().last_error.as_ref().unwrap()
    ));
    // ...and the current token keeps being sent meanwhile.
    assert_eq!(
        send(&mut api, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(source.current().unwrap().id(), first);

    // The new secret arrives: the next attempt is made at once, not after the slow
    // schedule's 30 s or more.
    source
        .set_credentials(Credentials::new(server.client_id(), "rotated-secret"))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.token_requests(), 3);
    assert_eq!(server.tokens_issued(), 2);
    let second = source.current().unwrap().id();
    assert_ne!(second, first);
    // The layer built before the rotation sends the new token.
    assert_eq!(
        send(&mut api, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    let sent = server.api_requests_log();
    assert_ne!(sent[0].bearer, sent.last().unwrap().bearer);
}

#[tokio::test(start_paused = true)]
async fn set_credentials_can_replace_a_secret_with_a_key() {
    let server = rotating_server().await;
    let source = builder(&server, server.credentials()).build().unwrap();
    source.prefetch().await.unwrap();
    let key = PrivateKey::from_pem(RSA_KEY.as_bytes()).unwrap();
    source
        .set_credentials(Credentials::private_key_jwt(server.client_id(), key))
        .unwrap();
    // Nothing happens until the token is due: it is still good.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.token_requests(), 1);
    source.invalidate(source.current().unwrap().id());
    source.prefetch().await.unwrap();
    assert_eq!(server.tokens_issued(), 2);
    let body: serde_json::Value =
        serde_json::from_slice(&server.last_token_request().unwrap().body).unwrap();
    assert!(body.get("client_assertion").is_some() && body.get("client_secret").is_none());
}

#[tokio::test]
async fn set_credentials_refuses_another_client_and_unsendable_credentials() {
    let server = rotating_server().await;
    let source = builder(&server, server.credentials()).build().unwrap();
    let error = source
        .set_credentials(Credentials::new("someone-else", "s"))
        .unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Config);
    assert!(
        error.report().to_string().contains("someone-else"),
        "{error}"
    );
    assert!(!error.report().to_string().contains("\"s\""));

    let basic = TokenSource::builder(
        server
            .endpoint()
            .client_auth(entur_auth::ClientAuth::BasicUnencoded),
        Credentials::new("a", "s"),
    )
    .allow_http_loopback(true)
    .transport(server.token_transport())
    .build()
    .unwrap();
    let error = basic.set_credentials(Credentials::new("a", "s:1")).err();
    assert!(error.is_none(), "a ':' in the secret is fine");
}

/// A secret file in a directory of this test's own.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(name: &str, secret: &str) -> SecretFile {
        let dir = std::env::temp_dir().join(format!("entur-auth-rotation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = SecretFile(dir.join(name));
        file.write(secret);
        file
    }

    /// As Kubernetes updates a secret volume: the whole file at once, with a newline.
    fn write(&self, secret: &str) {
        let staging = self.0.with_extension("new");
        std::fs::write(&staging, format!("{secret}\n")).unwrap();
        std::fs::rename(staging, &self.0).unwrap();
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_rotated_secret_file_is_read_again_after_invalid_client() {
    let server = rotating_server().await;
    let file = SecretFile::new("picked-up", server.client_secret());
    let credentials = Credentials::with_secret(
        server.client_id(),
        ClientSecret::from_file(&file.0).unwrap(),
    );
    assert_eq!(
        credentials.client_secret().unwrap().file(),
        Some(file.0.as_path())
    );
    let source = builder(&server, credentials).build().unwrap();
    let mut api = client(&server, &source);
    assert_eq!(
        send(&mut api, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );

    // The secret is rotated: the server first, then the mounted file.
    server.set_client_secret("rotated-in-kubernetes");
    file.write("rotated-in-kubernetes");
    tokio::time::sleep(Duration::from_secs(80)).await;
    // The refresh was refused, the file read again, and the request sent again at once
    // with the new secret succeeded.
    assert_eq!(server.token_requests(), 3);
    assert_eq!(server.tokens_issued(), 2);
    assert!(source.status().last_error.is_none());
    assert_eq!(
        send(&mut api, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn entur_s_401_access_denied_also_reads_the_secret_file_again() {
    use entur_auth_test::Fault;
    let server = rotating_server().await;
    let file = SecretFile::new("auth0", server.client_secret());
    let credentials = Credentials::with_secret(
        server.client_id(),
        ClientSecret::from_file(&file.0).unwrap(),
    );
    let source = builder(&server, credentials).build().unwrap();
    source.prefetch().await.unwrap();
    // Auth0 (Entur) answers a wrong secret with 401 access_denied, not invalid_client.
    server.set_client_secret("rotated");
    server.push_fault(Fault::respond(
        401,
        &[("content-type", "application/json")],
        r#"{"error":"access_denied","error_description":"Unauthorized"}"#,
    ));
    file.write("rotated");
    tokio::time::sleep(Duration::from_secs(80)).await;
    assert_eq!(
        server.token_requests(),
        3,
        "refused, file read again, retried at once"
    );
    assert_eq!(server.tokens_issued(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_call_that_finds_a_rotated_secret_file_gets_a_token() {
    let server = rotating_server().await;
    let file = SecretFile::new("first-call", server.client_secret());
    let credentials = Credentials::with_secret(
        server.client_id(),
        ClientSecret::from_file(&file.0).unwrap(),
    );
    let source = builder(&server, credentials).build().unwrap();
    // Rotated after the source read the file and before its first token: the first token
    // request carries the old secret.
    server.set_client_secret("rotated-before-first-use");
    file.write("rotated-before-first-use");
    let mut api = client(&server, &source);
    assert_eq!(
        send(&mut api, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK,
        "the call that met the refusal is answered with a token fetched with the new secret"
    );
    assert_eq!(server.token_requests(), 2, "refused once, then sent again");
    assert_eq!(server.tokens_issued(), 1);
    assert!(source.status().last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_secret_file_waits_for_the_slow_schedule() {
    let server = rotating_server().await;
    let file = SecretFile::new("unchanged", server.client_secret());
    let credentials = Credentials::with_secret(
        server.client_id(),
        ClientSecret::from_file(&file.0).unwrap(),
    );
    let source = builder(&server, credentials).build().unwrap();
    source.prefetch().await.unwrap();
    // The server rotates, the file is not updated yet.
    server.set_client_secret("rotated");
    tokio::time::sleep(Duration::from_secs(80)).await;
    assert_eq!(server.token_requests(), 2, "one refresh, refused");
    // No hammering: the next attempt follows the slow schedule (30 s at first, of which
    // at most the few seconds since the refresh have passed).
    let retry_in = source.status().retry_in.unwrap();
    assert!(retry_in > Duration::from_secs(20), "{retry_in:?}");
    // The file arrives: the next scheduled attempt reads it again after its refusal.
    file.write("rotated");
    tokio::time::sleep(Duration::from_secs(1200)).await;
    assert!(server.tokens_issued() >= 2);
    assert!(source.status().last_error.is_none());
}

#[test]
fn config_remembers_the_secret_file() {
    let file = SecretFile::new("config", "from-a-file");
    let path = file.0.to_str().unwrap().to_owned();
    let config = Config::from_lookup(|name| match name {
        "ENTUR_CLIENT_ID" => Some("id".to_owned()),
        "ENTUR_CLIENT_SECRET_FILE" => Some(path.clone()),
        "ENTUR_ENVIRONMENT" => Some("dev".to_owned()),
        "ET_CLIENT_NAME" => Some("acme-app".to_owned()),
        _ => None,
    })
    .unwrap();
    let credentials = config.credentials().unwrap();
    let secret: &ClientSecret = credentials.client_secret().unwrap();
    assert_eq!(secret.expose(), "from-a-file");
    assert_eq!(secret.file(), Some(file.0.as_path()));
}
