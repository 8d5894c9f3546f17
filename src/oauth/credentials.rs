//! Who the client is: its id, and how it proves it (a secret, a private key, a certificate).

use std::fmt;
use std::io::Read as _;
use std::path::Path;

use super::ClientAuth;
use crate::error::{sanitize, Error};

/// The client secret. Its `Debug` and `Display` print `[redacted]`; the only way to read
/// it is [`expose`](Self::expose), so that every use is
/// explicit in the code.
///
/// A secret read from a file ([`from_file`](Self::from_file), `ENTUR_CLIENT_SECRET_FILE`)
/// remembers the file: when the token endpoint refuses the client (`invalid_client`,
/// `unauthorized_client`, or any 401, as Entur's server answers a wrong secret), the token
/// source reads it again, so that a rotated Kubernetes or Docker secret is picked up by
/// itself.
#[derive(Clone)]
pub struct ClientSecret {
    secret: Box<str>,
    file: Option<std::sync::Arc<std::path::Path>>,
}

impl ClientSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into().into_boxed_str(),
            file: None,
        }
    }

    /// Reads the secret from the file at `path` (its whole content but one trailing
    /// newline, as Kubernetes and Docker mount secrets), and remembers the file so that the
    /// token source reads it again after an `invalid_client`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the file cannot be read, is empty, larger than 64 KiB, not
    /// UTF-8, or holds more than one line.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        read_secret_file(path.as_ref(), "the client secret path")
    }

    /// The secret in clear. Do not log it.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// The file the secret was read from, if it was.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    pub(crate) fn with_file(mut self, path: &std::path::Path) -> Self {
        self.file = Some(std::sync::Arc::from(path));
        self
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret([redacted])")
    }
}

impl fmt::Display for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A client id and what proves it: a shared secret, a private key that signs assertions
/// (`private_key_jwt`, or the JWT bearer grant), or a TLS client certificate.
///
/// | constructor | token request | RFC |
/// |---|---|---|
/// | [`new`](Self::new), [`with_secret`](Self::with_secret) (a [`ClientSecret::from_file`]) | client credentials grant, the secret in the body or HTTP Basic ([`ClientAuth`]) | RFC 6749 section 2.3.1 |
/// | [`private_key_jwt`](Self::private_key_jwt) | client credentials grant, a signed `client_assertion` | RFC 7523 section 2.2 |
/// | [`jwt_bearer`](Self::jwt_bearer) | the JWT bearer grant: a signed `assertion` is the grant | RFC 7523 section 2.1 |
/// | [`tls_client_auth`](Self::tls_client_auth) | client credentials grant, `client_id` alone; the client certificate of the TLS connection authenticates | RFC 8705 section 2 |
///
/// Replace them on a running source with
/// [`TokenSource::set_credentials`](crate::TokenSource::set_credentials). `Debug` shows the
/// method, the client id and a key's id, never a secret or a key.
#[derive(Clone)]
pub struct Credentials {
    pub(crate) client_id: String,
    pub(crate) kind: CredentialKind,
}

/// What proves the client id.
#[derive(Clone)]
pub(crate) enum CredentialKind {
    Secret(ClientSecret),
    PrivateKeyJwt(std::sync::Arc<dyn crate::oauth::assertion::Signer>),
    JwtBearer(std::sync::Arc<dyn crate::oauth::assertion::Signer>),
    TlsClientAuth,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Credentials");
        s.field("client_id", &self.client_id);
        match &self.kind {
            CredentialKind::Secret(secret) => s.field("client_secret", secret),
            CredentialKind::PrivateKeyJwt(signer) | CredentialKind::JwtBearer(signer) => s
                .field("method", &self.method())
                .field("algorithm", &signer.algorithm())
                .field("key_id", &signer.key_id()),
            CredentialKind::TlsClientAuth => s.field("method", &self.method()),
        };
        s.finish()
    }
}

impl Credentials {
    /// Credentials from a client id and a secret.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            kind: CredentialKind::Secret(ClientSecret::new(client_secret)),
        }
    }

    /// Credentials from a client id and a [`ClientSecret`] (one read with
    /// [`ClientSecret::from_file`] is read again after an `invalid_client`).
    pub fn with_secret(client_id: impl Into<String>, client_secret: ClientSecret) -> Self {
        Self {
            client_id: client_id.into(),
            kind: CredentialKind::Secret(client_secret),
        }
    }

    /// `private_key_jwt` client authentication (RFC 7523 section 2.2, OpenID Connect Core
    /// section 9): every token request of the client credentials grant carries a fresh
    /// assertion signed by `signer`, with `iss` and `sub` the client id, `aud` the token URL
    /// (or [`TokenEndpoint::assertion_audience`](crate::TokenEndpoint::assertion_audience)), a random `jti`, `iat` now and `exp` 60 s
    /// later ([`TokenEndpoint::assertion_lifetime`](crate::TokenEndpoint::assertion_lifetime)).
    pub fn private_key_jwt(
        client_id: impl Into<String>,
        signer: impl crate::oauth::assertion::Signer,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            kind: CredentialKind::PrivateKeyJwt(std::sync::Arc::new(signer)),
        }
    }

    /// The JWT bearer grant (RFC 7523 section 2.1): every token request is
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with a fresh `assertion`
    /// signed by `signer`, `iss` the client id, `sub` the client id too unless the endpoint
    /// says otherwise ([`TokenEndpoint::assertion_subject`](crate::TokenEndpoint::assertion_subject); Maskinporten refuses it), `aud`
    /// the token URL or [`TokenEndpoint::assertion_audience`](crate::TokenEndpoint::assertion_audience). No other client
    /// authentication is sent: the assertion is the proof. See
    /// [`TokenEndpoint::maskinporten`](crate::TokenEndpoint::maskinporten).
    pub fn jwt_bearer(
        client_id: impl Into<String>,
        signer: impl crate::oauth::assertion::Signer,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            kind: CredentialKind::JwtBearer(std::sync::Arc::new(signer)),
        }
    }

    /// Mutual TLS client authentication (RFC 8705 section 2): the token request carries the
    /// client id alone, and the TLS client certificate authenticates the client. Give the
    /// certificate to the default HTTPS client with
    /// [`TokenSourceBuilder::client_certificate_files`](crate::TokenSourceBuilder::client_certificate_files)
    /// (or use a [transport](crate::TokenSourceBuilder::transport) that presents one).
    pub fn tls_client_auth(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            kind: CredentialKind::TlsClientAuth,
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client secret, for credentials that have one.
    pub fn client_secret(&self) -> Option<&ClientSecret> {
        match &self.kind {
            CredentialKind::Secret(secret) => Some(secret),
            _ => None,
        }
    }

    /// How these credentials authenticate the client: for a secret, the endpoint's
    /// [`ClientAuth`] decides between the body and HTTP Basic; the other kinds decide alone.
    pub(crate) fn method(&self) -> ClientAuth {
        match &self.kind {
            CredentialKind::Secret(_) => ClientAuth::Body,
            CredentialKind::PrivateKeyJwt(_) => ClientAuth::PrivateKeyJwt,
            CredentialKind::JwtBearer(_) => ClientAuth::JwtBearer,
            CredentialKind::TlsClientAuth => ClientAuth::TlsClientAuth,
        }
    }
}

/// The largest secret file read: a client secret is a few dozen bytes.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The secret in the file at `path`, which `named` (a variable, a configuration field, "the
/// client secret path") named: the whole content but one trailing newline.
pub(crate) fn read_secret_file(path: &Path, named: &str) -> Result<ClientSecret, Error> {
    let fail = |what: &str| {
        Error::config(format!(
            "{named} names the file {:?}, {what}",
            sanitize(&path.display().to_string(), 200)
        ))
    };
    let file = std::fs::File::open(path).map_err(|e| {
        fail(&format!(
            "which cannot be opened ({e}): check the path, and that the secret is mounted there and readable by this process"
        ))
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            fail(&format!(
                "which cannot be read ({e}): name the file that holds the client secret"
            ))
        })?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(fail(
            "which is larger than 64 KiB: a client secret file holds the secret alone; check the path",
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| fail("which is not UTF-8 text: write the client secret into it as text"))?;
    let secret = match text.strip_suffix('\n') {
        Some(line) => line.strip_suffix('\r').unwrap_or(line),
        None => &text,
    };
    if secret.is_empty() {
        return Err(fail(
            "which is empty: write the client secret into it (one trailing newline is allowed)",
        ));
    }
    if secret.trim() != secret || secret.contains(['\n', '\r']) {
        return Err(fail(
            "which holds more than the secret (spaces around it, or more than one line): write the secret alone, on one line (one trailing newline is allowed)",
        ));
    }
    Ok(ClientSecret::new(secret).with_file(path))
}
