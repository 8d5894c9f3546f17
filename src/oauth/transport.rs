//! The default token endpoint client: hyper-util over rustls, with the webpki roots and any
//! extra roots the user adds, through an HTTP `CONNECT` proxy when the environment or the
//! builder names one (see [`proxy`] and [`tunnel`]). It follows no redirects (hyper-util's client never does).

mod identity;
mod proxy;
mod tunnel;

pub(crate) use identity::IdentitySource;
pub(crate) use proxy::{EnvLookup, ProxySettings};

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tower::ServiceExt;

use crate::error::Error;
use crate::oauth::exchange::{erase, TokenRequestBody, Transport};

/// Parses PEM text into certificates.
pub(crate) fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::config(format!("extra root certificate: invalid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(Error::config(
            "extra root certificate: no CERTIFICATE block found in the PEM text",
        ));
    }
    Ok(certs)
}

/// Builds the HTTPS client for `url`. `allow_http` also lets it speak plain HTTP (only ever
/// used for loopback token URLs, which the builder checks). The proxy, if any, is chosen here,
/// once.
pub(crate) fn https_transport(
    url: &http::Uri,
    extra_roots: &[CertificateDer<'static>],
    allow_http: bool,
    proxy: &ProxySettings,
    identity: Option<&IdentitySource>,
    cap: usize,
) -> Result<Transport, Error> {
    let route = proxy.route(url)?;
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots.add(cert.clone()).map_err(|e| {
            Error::config(format!(
                "extra root certificate was refused ({e}): give a CA certificate in DER or PEM form"
            ))
        })?;
    }
    #[allow(deprecated)] // ring on purpose: see the `rustls` feature in Cargo.toml
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let tls = match identity {
        None => tls.with_no_client_auth(),
        Some(identity) => {
            let mut tls = tls.with_client_cert_resolver(Arc::new(identity::ClientIdentity::new(
                identity, provider,
            )?));
            // A resumed session would carry the certificate of the session it resumes: a
            // full handshake presents the current one.
            tls.resumption = rustls::client::Resumption::disabled();
            tls
        }
    };
    let builder = HttpsConnectorBuilder::new().with_tls_config(tls);
    let mut client = Client::builder(TokioExecutor::new());
    client.pool_idle_timeout(Duration::from_secs(60));
    if identity.is_some() {
        // A new connection, so a new handshake, for every token request: a rotated client
        // certificate is presented from the next request on. Token requests are rare.
        client.pool_max_idle_per_host(0);
    }
    // Only https:// URLs are ever routed through a proxy: TLS inside the tunnel.
    let builder = match route {
        None if allow_http => builder.https_or_http(),
        _ => builder.https_only(),
    }
    .enable_http1()
    .enable_http2();
    if let Some(proxy) = route {
        let connector = builder.wrap_connector(tunnel::ProxyConnector::new(proxy));
        let client: Client<_, TokenRequestBody> = client.build(connector);
        return Ok(erase(client.map_err(tunnel::surface), cap));
    }
    let client: Client<_, TokenRequestBody> = client.build(builder.build());
    Ok(erase(client, cap))
}
