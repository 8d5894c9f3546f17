//! A private CA made in the test, and the embedded server's token endpoint served over HTTPS
//! with a certificate from it, on 127.0.0.1.

#![allow(dead_code)]

use std::sync::Arc;

use entur_auth_test::TestServer;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and a certificate it signed for `127.0.0.1` and `localhost`, with its key (DER, and
/// PEM for servers that read files).
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub leaf: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub leaf_pem: String,
    pub key_pem: String,
}

pub fn private_ca() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Names of their own: rcgen gives both the same, and OpenSSL (redis-server, redis-cli)
    // takes a certificate whose issuer is its own subject for a self-signed one.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "entur-auth test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "entur-auth test server");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().to_vec(),
        leaf: leaf.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        leaf_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// Serves `server`'s token endpoint over HTTPS with `pki`'s certificate on a free port of
/// 127.0.0.1; returns the port (the token URL is `https://127.0.0.1:{port}/oauth/token`).
pub async fn https_token_endpoint(server: &TestServer, pki: &Pki) -> u16 {
    #[allow(deprecated)] // ring on purpose: see the `rustls` feature in ../Cargo.toml
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.leaf.clone()], pki.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let transport = server.token_transport();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let transport = transport.clone();
            tokio::spawn(async move {
                // A client that refuses our certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    tower::ServiceExt::oneshot(transport.clone(), req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}
