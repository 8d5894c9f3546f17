//! A shared store with a key of its own: needed by credentials without a secret, and what
//! keeps replicas on the old and the new secret sharing through a rotation.
#![cfg(feature = "shared-store")]

use std::time::Duration;

use entur_auth::assertion::PrivateKey;
use entur_auth::store::MemoryStore;
use entur_auth::{Credentials, TokenSource};
use entur_auth_test::TestServer;
use serde_json::Value;

const RSA_KEY: &str = include_str!("fixtures/test-only-client-rsa.key.pem");
const RSA_PUB: &str = include_str!("fixtures/test-only-client-rsa.pub.pem");
const STORE_KEY: &[u8; 32] = b"fleet-store-key-0123456789abcdef";

async fn server() -> TestServer {
    TestServer::builder()
        .client_public_key_pem(RSA_PUB)
        .token_lifetime(Duration::from_secs(3600))
        .start()
        .await
        .unwrap()
}

fn replica(
    server: &TestServer,
    store: &MemoryStore,
    endpoint: entur_auth::TokenEndpoint,
    credentials: Credentials,
) -> entur_auth::TokenSourceBuilder {
    TokenSource::builder(endpoint, credentials)
        .allow_http_loopback(true)
        .transport(server.token_transport())
        .shared_store(store.clone())
}

fn key_credentials(server: &TestServer) -> Credentials {
    Credentials::private_key_jwt(
        server.client_id(),
        PrivateKey::from_pem(RSA_KEY.as_bytes()).unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn key_credentials_share_through_a_store_key_and_need_one() {
    let server = server().await;
    let store = MemoryStore::default();
    let error = replica(&server, &store, server.endpoint(), key_credentials(&server))
        .build()
        .unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Config);
    assert!(error.report().to_string().contains("store_key"), "{error}");
    let error = replica(&server, &store, server.endpoint(), key_credentials(&server))
        .store_key(b"too short")
        .build()
        .unwrap_err();
    assert!(error.report().to_string().contains("32 bytes"), "{error}");

    let replicas: Vec<TokenSource> = (0..3)
        .map(|_| {
            replica(&server, &store, server.endpoint(), key_credentials(&server))
                .store_key(STORE_KEY)
                .build()
                .unwrap()
        })
        .collect();
    for replica in &replicas {
        replica.prefetch().await.unwrap();
    }
    assert_eq!(server.token_requests(), 1, "the fleet shares one token");
    assert!(!format!("{:?}", replicas[0]).contains("fleet-store-key"));
}

#[tokio::test(start_paused = true)]
async fn replicas_on_old_and_new_secrets_share_with_a_store_key_and_not_without() {
    for (store_key, expected_requests) in [(Some(STORE_KEY), 1), (None, 2)] {
        let server = server().await;
        let store = MemoryStore::default();
        let build = |secret: &str| {
            let builder = replica(
                &server,
                &store,
                server.endpoint(),
                Credentials::new(server.client_id(), secret),
            );
            match store_key {
                Some(key) => builder.store_key(key),
                None => builder,
            }
            .build()
            .unwrap()
        };
        // A replica still on the old secret publishes a token...
        let old = build(server.client_secret());
        old.prefetch().await.unwrap();
        // ...then the secret is rotated, and a replica on the new one starts.
        server.set_client_secret("the-new-secret");
        let new = build("the-new-secret");
        new.prefetch().await.unwrap();
        assert_eq!(
            server.token_requests(),
            expected_requests,
            "store key {:?}",
            store_key.is_some()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn assertion_claims_are_part_of_the_store_key_name() {
    // Two Maskinporten-style sources that ask for different scopes in their assertions
    // must not share a token.
    let server = server().await;
    let store = MemoryStore::default();
    for scope in ["digdir:a", "digdir:b"] {
        let endpoint = server
            .endpoint()
            .assertion_claim("scope", Value::from(scope));
        replica(&server, &store, endpoint, key_credentials(&server))
            .store_key(STORE_KEY)
            .build()
            .unwrap()
            .prefetch()
            .await
            .unwrap();
    }
    assert_eq!(server.token_requests(), 2);
}
