//! The TLS client certificate of mutual TLS client authentication (RFC 8705 section 2): a
//! certificate chain and its private key from PEM, read again when their files change, so
//! that a rotated certificate is presented from the next token request on, without a
//! restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::error::Error;

/// Where the client certificate comes from, as the builder was given it.
#[derive(Clone)]
pub(crate) enum IdentitySource {
    Pem { cert: Vec<u8>, key: Vec<u8> },
    Files { cert: PathBuf, key: PathBuf },
}

impl fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem { .. } => f.write_str("ClientCertificate(PEM)"),
            Self::Files { cert, key } => f
                .debug_struct("ClientCertificate")
                .field("cert_file", cert)
                .field("key_file", key)
                .finish(),
        }
    }
}

/// The resolver rustls asks for the client certificate at every handshake.
pub(crate) struct ClientIdentity {
    provider: Arc<CryptoProvider>,
    files: Option<(PathBuf, PathBuf)>,
    current: Mutex<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' modification times when they were read.
    stamp: Option<(SystemTime, SystemTime)>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Reads the certificate and key now.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the file (or PEM) and what is wrong with it.
    pub(crate) fn new(
        source: &IdentitySource,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let (files, loaded) = match source {
            IdentitySource::Pem { cert, key } => (
                None,
                Loaded {
                    key: certified(
                        cert,
                        key,
                        "the client certificate",
                        "its private key",
                        &provider,
                    )?,
                    stamp: None,
                },
            ),
            IdentitySource::Files { cert, key } => {
                let loaded = load_files(cert, key, &provider)?;
                (Some((cert.clone(), key.clone())), loaded)
            }
        };
        Ok(Self {
            provider,
            files,
            current: Mutex::new(loaded),
        })
    }

    /// The current certificate, read again first if its files changed. A change that
    /// cannot be read (a half-written file, a key that does not match yet) keeps the
    /// previous certificate and is logged; the next handshake tries again.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((cert, key)) = &self.files {
            let stamp = stamps(cert, key).ok();
            if stamp.is_some() && stamp != current.stamp {
                match load_files(cert, key, &self.provider) {
                    Ok(loaded) => {
                        tracing::info!(cert_file = %cert.display(), "client certificate reloaded");
                        *current = loaded;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "client certificate files changed but cannot be used yet; presenting the previous certificate");
                    }
                }
            }
        }
        current.key.clone()
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn stamps(cert: &Path, key: &Path) -> std::io::Result<(SystemTime, SystemTime)> {
    Ok((
        std::fs::metadata(cert)?.modified()?,
        std::fs::metadata(key)?.modified()?,
    ))
}

fn load_files(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, Error> {
    // The times first: a change while reading is seen at the next handshake.
    let stamp = stamps(cert, key).ok();
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            Error::config(format!(
                "the client {what} file {} cannot be read ({}): check the path and its permissions",
                path.display(),
                e.kind()
            ))
        })
    };
    let cert_pem = read(cert, "certificate")?;
    let key_pem = read(key, "key")?;
    let key = certified(
        &cert_pem,
        &key_pem,
        &format!("the client certificate file {}", cert.display()),
        &format!("the client key file {}", key.display()),
        provider,
    )?;
    Ok(Loaded { key, stamp })
}

/// The certificate chain in `cert` and the private key in `key`, checked to belong together.
fn certified(
    cert: &[u8],
    key: &[u8],
    cert_what: &str,
    key_what: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, Error> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_what, "CERTIFICATE", &e))?;
    if chain.is_empty() {
        return Err(Error::config(format!(
            "{cert_what} holds no CERTIFICATE block: give the client certificate (and its chain) in PEM"
        )));
    }
    let private =
        PrivateKeyDer::from_pem_slice(key).map_err(|e| pem_error(key_what, "PRIVATE KEY", &e))?;
    CertifiedKey::from_der(chain, private, provider)
        .map(Arc::new)
        .map_err(|e| {
            let reason = match e {
                rustls::Error::InconsistentKeys(_) => {
                    "does not belong to the certificate (another key pair): give the key the certificate was issued for".to_owned()
                }
                rustls::Error::InvalidCertificate(_) | rustls::Error::General(_) => format!(
                    "or the certificate cannot be used ({e}): give an X.509 certificate and its RSA, ECDSA or Ed25519 key"
                ),
                _ => format!("cannot be used ({e}): give an RSA, ECDSA or Ed25519 private key in PEM"),
            };
            Error::config(format!("{key_what} {reason}"))
        })
}

fn pem_error(what: &str, block: &str, error: &pem::Error) -> Error {
    Error::config(match error {
        pem::Error::NoItemsFound => {
            format!("{what} holds no {block} block: give it in PEM")
        }
        _ => format!("{what} is not valid PEM (a broken BEGIN/END line or base64)"),
    })
}
