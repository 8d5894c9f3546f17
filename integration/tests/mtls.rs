//! Mutual TLS client authentication (RFC 8705 section 2) on the default HTTPS client, against
//! the embedded server in its mutual TLS mode on 127.0.0.1: a certificate from the test CA
//! gets a token; none, or one from another CA, is refused in the handshake; a certificate
//! rotated in its files is presented from the next token request on; broken files are
//! configuration errors that say what is wrong.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use entur_auth::{Credentials, TokenSource};
use entur_auth_test::TestServer;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A CA, and certificates it issues.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A certificate for `names` and its key, PEM.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Files in a directory of this test's own, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("entur-auth-mtls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// Writes `text` to `name`, with a modification time of its own (so that a rewrite is
    /// seen whatever the file system's time resolution).
    fn write(&self, name: &str, text: &str, stamp: u64) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + stamp))
            .unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Setup {
    server: TestServer,
    server_ca: Ca,
    client_ca: Ca,
}

async fn setup() -> Setup {
    let server_ca = Ca::new();
    let client_ca = Ca::new();
    let (cert, key) = server_ca.issue(&["127.0.0.1", "localhost"]);
    let server = TestServer::builder()
        .https(cert, key)
        .require_client_certificate(client_ca.cert.pem())
        .start()
        .await
        .unwrap();
    assert!(server.token_url().starts_with("https://127.0.0.1:"));
    Setup {
        server,
        server_ca,
        client_ca,
    }
}

fn builder(setup: &Setup) -> entur_auth::TokenSourceBuilder {
    TokenSource::builder(
        setup.server.endpoint(),
        Credentials::tls_client_auth(setup.server.client_id()),
    )
    .extra_root_certificate(setup.server_ca.cert.pem().as_bytes())
    .proxy_from_env(false)
    .fetch_timeout(Duration::from_secs(10))
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_certificate_from_the_client_ca_gets_a_token_with_the_client_id_alone() {
    let setup = setup().await;
    let dir = Dir::new("ok");
    let (cert, key) = setup.client_ca.issue(&["test-client"]);
    let source = builder(&setup)
        .client_certificate_files(dir.write("c.pem", &cert, 1), dir.write("k.pem", &key, 1))
        .build()
        .unwrap();
    source.prefetch().await.unwrap();
    assert_eq!(setup.server.tokens_issued(), 1);
    assert_eq!(
        setup.server.token_request_client_certificates(),
        [der_of(&cert)]
    );
    let request = setup.server.last_token_request().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["client_id"], "test-client");
    assert!(body.get("client_secret").is_none() && body.get("client_assertion").is_none());

    // The same from PEM in memory.
    let source = builder(&setup)
        .client_certificate_pem(cert.as_bytes(), key.as_bytes())
        .build()
        .unwrap();
    source.prefetch().await.unwrap();
    assert_eq!(setup.server.tokens_issued(), 2);
}

#[tokio::test]
async fn no_certificate_or_an_untrusted_one_is_refused_in_the_handshake() {
    let setup = setup().await;
    let error = builder(&setup)
        .build()
        .unwrap()
        .prefetch()
        .await
        .unwrap_err();
    assert!(
        error.kind() == entur_auth::ErrorKind::Unavailable,
        "{error:?}"
    );

    let stranger = Ca::new();
    let (cert, key) = stranger.issue(&["test-client"]);
    let error = builder(&setup)
        .client_certificate_pem(cert.as_bytes(), key.as_bytes())
        .build()
        .unwrap()
        .prefetch()
        .await
        .unwrap_err();
    assert!(
        error.kind() == entur_auth::ErrorKind::Unavailable,
        "{error:?}"
    );
    assert_eq!(setup.server.tls_handshakes_refused(), 2);
    assert_eq!(setup.server.token_requests(), 0, "nothing got through");
}

#[tokio::test]
async fn a_rotated_certificate_is_presented_from_the_next_token_request_on() {
    let setup = setup().await;
    let dir = Dir::new("rotate");
    let (cert_a, key_a) = setup.client_ca.issue(&["test-client"]);
    let (cert_b, key_b) = setup.client_ca.issue(&["test-client"]);
    let (cert_path, key_path) = (
        dir.write("c.pem", &cert_a, 1),
        dir.write("k.pem", &key_a, 1),
    );
    let source = builder(&setup)
        .client_certificate_files(&cert_path, &key_path)
        .min_reauth_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    source.prefetch().await.unwrap();

    // Half a rotation (the new certificate, the old key): not usable, the old pair stays.
    dir.write("c.pem", &cert_b, 2);
    let first = source.current().unwrap();
    source.invalidate(first.id());
    source.prefetch().await.unwrap();

    // The whole rotation.
    dir.write("k.pem", &key_b, 3);
    let second = source.current().unwrap();
    source.invalidate(second.id());
    source.prefetch().await.unwrap();
    let third = source.current().unwrap();
    assert_ne!(third.id(), second.id());

    assert_eq!(
        setup.server.token_request_client_certificates(),
        [der_of(&cert_a), der_of(&cert_a), der_of(&cert_b)],
        "the old pair until the new one is whole, then the new one"
    );
    assert_eq!(setup.server.tokens_issued(), 3);
}

#[tokio::test]
async fn unusable_certificate_files_are_configuration_errors_that_say_why() {
    let setup = setup().await;
    let dir = Dir::new("bad");
    let (cert, key) = setup.client_ca.issue(&["test-client"]);
    let (_, other_key) = setup.client_ca.issue(&["test-client"]);
    let cert_path = dir.write("c.pem", &cert, 1);
    let key_path = dir.write("k.pem", &key, 1);
    let cases = [
        (
            dir.0.join("missing.pem"),
            key_path.clone(),
            "missing.pem cannot be read",
        ),
        (
            dir.write("k-as-c.pem", &key, 1),
            key_path.clone(),
            "no CERTIFICATE block",
        ),
        (
            cert_path.clone(),
            dir.write("c-as-k.pem", &cert, 1),
            "no PRIVATE KEY block",
        ),
        (
            cert_path.clone(),
            dir.write("other.pem", &other_key, 1),
            "does not belong to the certificate",
        ),
        (
            dir.write(
                "junk.pem",
                "-----BEGIN CERTIFICATE-----\n@@\n-----END CERTIFICATE-----\n",
                1,
            ),
            key_path.clone(),
            "not valid PEM",
        ),
    ];
    for (cert, key, reason) in cases {
        let error = builder(&setup)
            .client_certificate_files(cert, key)
            .build()
            .unwrap_err();
        assert!(error.kind() == entur_auth::ErrorKind::Config, "{error:?}");
        let text = error.report().to_string();
        assert!(text.contains(reason), "{reason}: {text}");
        assert!(
            !text.contains("PRIVATE KEY-----"),
            "no key material: {text}"
        );
    }
    // A certificate for the default client only.
    let error = builder(&setup)
        .client_certificate_files(&cert_path, &key_path)
        .transport(setup.server.token_transport())
        .build()
        .unwrap_err();
    assert!(
        error.report().to_string().contains("transport of your own"),
        "{error}"
    );
}
