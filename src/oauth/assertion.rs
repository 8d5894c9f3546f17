//! Signed JWT assertions: the client authentication of `private_key_jwt` (RFC 7523 section
//! 2.2, OpenID Connect Core section 9) and the JWT bearer grant (RFC 7523 section 2.1), for
//! clients that hold a private key instead of a shared secret.
//!
//! A fresh assertion is signed for every token request (a new `jti`, `iat` now, `exp` a
//! short while later): an assertion is never reused, so a server that remembers `jti`s never
//! refuses a retry, and an assertion kept by mistake expires within a minute.
//!
//! The key signs through the [`Signer`] trait: [`PrivateKey`] holds an RSA (RS256) or P-256
//! (ES256) key read from PEM and signs with `ring`; a key that never leaves a KMS or an HSM
//! implements [`Signer`] itself.
//!
//! ```
//! # #[cfg(feature = "private-key-jwt")]
//! # fn main() -> Result<(), entur_auth::Error> {
//! use entur_auth::assertion::PrivateKey;
//! use entur_auth::{Credentials, TokenEndpoint};
//!
//! # let pem = include_bytes!("../../tests/fixtures/test-only-client-rsa.key.pem");
//! let key = PrivateKey::from_pem(pem)?.key_id("2024-key-1");
//! let credentials = Credentials::private_key_jwt("my-client-id", key);
//! let endpoint = TokenEndpoint::new("https://auth.example.com/oauth2/token")?;
//! assert!(!format!("{credentials:?}").contains("PRIVATE KEY"));
//! # let _ = endpoint; Ok(()) }
//! # #[cfg(not(feature = "private-key-jwt"))]
//! # fn main() {}
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};

use crate::error::{BoxError, Error};

/// The `client_assertion_type` of `private_key_jwt` (RFC 7523 section 2.2).
pub(crate) const CLIENT_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The `grant_type` of the JWT bearer grant (RFC 7523 section 2.1).
pub(crate) const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A JWS signature algorithm (RFC 7518 section 3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA with P-256 and SHA-256; the signature is `r || s`, 64 bytes (RFC 7518
    /// section 3.4), not DER.
    Es256,
}

impl Algorithm {
    /// The `alg` header value: `RS256` or `ES256`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Signs the assertions of a token source: a private key of its own ([`PrivateKey`]) or one
/// held by a KMS or an HSM.
///
/// `sign` is called once per token request, on the background refresher, never on the
/// request path; it may take the time of a network call (the fetch timeout covers it).
///
/// ```
/// use entur_auth::assertion::{Algorithm, Signer, Transient};
/// use entur_auth::BoxError;
/// use futures_util::future::BoxFuture;
///
/// /// A key in a cloud KMS (the call is sketched).
/// struct KmsKey { key_name: String }
///
/// impl Signer for KmsKey {
///     fn algorithm(&self) -> Algorithm {
///         Algorithm::Es256
///     }
///     fn key_id(&self) -> Option<&str> {
///         Some(&self.key_name)
///     }
///     fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
///         Box::pin(async move {
///             // let signature = kms.asymmetric_sign(&self.key_name, sha256(message)).await
///             //     // A timeout or throttling passes: retried soon.
///             //     .map_err(|e| if e.is_retryable() { Transient::new(e).into() } else { e.into() })?;
///             // Ok(der_to_jose(signature)) // ES256 wants r || s
///             let _ = message;
///             Err(Transient::new("the KMS call is sketched").into())
///         })
///     }
/// }
/// ```
pub trait Signer: Send + Sync + 'static {
    /// The algorithm `sign` signs with, the assertion's `alg`.
    fn algorithm(&self) -> Algorithm;

    /// The key id, the assertion's `kid` header (how the server finds the key among those
    /// registered for the client), if the server needs one.
    fn key_id(&self) -> Option<&str>;

    /// The certificate chain of the key (DER, the key's own certificate first), sent as the
    /// assertion's `x5c` header (RFC 7515 section 4.1.6): how Maskinporten identifies a client
    /// by its business certificate (virksomhetssertifikat) instead of a registered `kid`.
    /// Default: none.
    fn certificate_chain(&self) -> &[Vec<u8>] {
        &[]
    }

    /// The JWS signature of `message` (the assertion's `header.payload`): for RS256 the
    /// RSASSA-PKCS1-v1_5 signature, for ES256 the 64 bytes `r || s`.
    ///
    /// An error fails this token request with [`ErrorKind::Signer`](crate::ErrorKind::Signer):
    /// retried on the fast schedule when it is (or wraps) a [`Transient`], a failure that
    /// passes (a KMS timeout, throttling, a network error), else on the slow schedule, as
    /// rejected credentials are. It is shown in logs and errors: never put key material in it.
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>>;
}

/// A [`Signer`] failure that passes: a KMS or HSM that timed out, throttled or could not be
/// reached. Return it (`Err(Transient::new(error).into())`) and the token request is retried
/// on the fast schedule, and [`TokenSource::ready`](crate::TokenSource::ready) waits through
/// it, as for an unreachable token endpoint; any other error from [`Signer::sign`] is
/// retried on the slow schedule only.
#[derive(Debug)]
pub struct Transient(BoxError);

impl Transient {
    /// Marks `cause` as a failure that passes.
    pub fn new(cause: impl Into<BoxError>) -> Self {
        Self(cause.into())
    }
}

impl fmt::Display for Transient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Transient {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// What an assertion says, apart from the times and the `jti`.
pub(crate) struct Claims<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) subject: Option<&'a str>,
    pub(crate) audience: &'a str,
    pub(crate) lifetime: Duration,
    pub(crate) extra: &'a [(String, Value)],
}

/// Signs a fresh assertion: `iat` now, `exp` after the lifetime, a random 128-bit `jti`.
///
/// # Errors
///
/// [`ErrorKind::Signer`](crate::ErrorKind::Signer) when the signer fails (transient when it said so),
/// [`ErrorKind::Config`](crate::ErrorKind::Config) when it returns a signature of the wrong shape. The
/// message never holds the assertion or the key.
pub(crate) async fn sign(signer: &dyn Signer, claims: &Claims<'_>) -> Result<String, Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let algorithm = signer.algorithm();
    let mut header = Map::new();
    header.insert("alg".into(), algorithm.as_str().into());
    header.insert("typ".into(), "JWT".into());
    if let Some(kid) = signer.key_id() {
        header.insert("kid".into(), kid.into());
    }
    let chain = signer.certificate_chain();
    if !chain.is_empty() {
        use base64::engine::general_purpose::STANDARD;
        let x5c: Vec<Value> = chain
            .iter()
            .map(|der| STANDARD.encode(der).into())
            .collect();
        header.insert("x5c".into(), Value::Array(x5c));
    }
    let mut payload = Map::new();
    payload.insert("iss".into(), claims.issuer.into());
    if let Some(subject) = claims.subject {
        payload.insert("sub".into(), subject.into());
    }
    payload.insert("aud".into(), claims.audience.into());
    payload.insert("iat".into(), now.into());
    payload.insert(
        "exp".into(),
        now.saturating_add(claims.lifetime.as_secs().max(1)).into(),
    );
    payload.insert("jti".into(), jti().into());
    for (name, value) in claims.extra {
        payload.insert(name.clone(), value.clone());
    }
    let mut jws = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
        URL_SAFE_NO_PAD.encode(Value::Object(payload).to_string()),
    );
    let signature = signer.sign(jws.as_bytes()).await.map_err(|cause| {
        let transient =
            std::iter::successors(Some(&*cause as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .any(|e| e.is::<Transient>());
        Error::signer(cause, transient)
    })?;
    if algorithm == Algorithm::Es256 && signature.len() != 64 {
        return Err(Error::config(format!(
            "the signer returned a {}-byte ES256 signature: JWS wants the 64 bytes r || s (RFC 7518 section 3.4), not DER",
            signature.len()
        )));
    }
    if signature.is_empty() {
        return Err(Error::config("the signer returned an empty signature"));
    }
    jws.push('.');
    jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(jws)
}

/// A random 128-bit `jti`, hex.
fn jti() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[cfg(feature = "private-key-jwt")]
pub use self::key::PrivateKey;

#[cfg(feature = "private-key-jwt")]
mod key {
    use std::fmt;
    use std::path::Path;

    use futures_util::future::BoxFuture;
    use ring::rand::SystemRandom;
    use ring::signature::{
        EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
    };
    use rustls_pki_types::pem::{self, PemObject};
    use rustls_pki_types::PrivateKeyDer;

    use super::{Algorithm, Signer};
    use crate::error::{BoxError, Error};

    /// A private key read from PEM that signs assertions: RSA (RS256, 2048 bits or more) or
    /// EC P-256 (ES256), in PKCS#8 (`BEGIN PRIVATE KEY`) or, for RSA, PKCS#1 (`BEGIN RSA
    /// PRIVATE KEY`). Signs with `ring`.
    ///
    /// Its `Debug` shows the algorithm and key id, never the key; no error ever quotes it.
    pub struct PrivateKey {
        key: Key,
        kid: Option<String>,
        chain: Vec<Vec<u8>>,
        rng: SystemRandom,
    }

    enum Key {
        Rsa(RsaKeyPair),
        Ec(EcdsaKeyPair),
    }

    impl fmt::Debug for PrivateKey {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("PrivateKey")
                .field("algorithm", &self.algorithm())
                .field("key_id", &self.kid)
                .field("certificates", &self.chain.len())
                .finish_non_exhaustive()
        }
    }

    impl PrivateKey {
        /// Reads the first private key in `pem`.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::Config`](crate::ErrorKind::Config) saying what is wrong: no private key in the text, an encrypted
        /// key, a key type or curve other than RSA and P-256, an RSA key shorter than 2048
        /// bits, an EC key in SEC1 form (convert it with `openssl pkcs8 -topk8 -nocrypt`).
        pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
            Self::parse(pem, "the private key")
        }

        /// Reads the first private key in the PEM file at `path`.
        ///
        /// # Errors
        ///
        /// As [`from_pem`](Self::from_pem), and when the file cannot be read.
        pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, Error> {
            let path = path.as_ref();
            let pem = std::fs::read(path).map_err(|e| {
                Error::config(format!(
                    "the private key file {} cannot be read ({}): check the path and its permissions",
                    path.display(),
                    e.kind()
                ))
            })?;
            Self::parse(&pem, &format!("the private key file {}", path.display()))
        }

        fn parse(pem: &[u8], what: &str) -> Result<Self, Error> {
            if String::from_utf8_lossy(pem).contains("ENCRYPTED PRIVATE KEY") {
                return Err(Error::config(format!(
                    "{what} is encrypted: give it unencrypted (openssl pkcs8 -topk8 -nocrypt), or sign with a Signer of your own"
                )));
            }
            let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
                Error::config(match e {
                    pem::Error::NoItemsFound => format!(
                        "{what} holds no PRIVATE KEY block: give a PEM RSA or P-256 private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)"
                    ),
                    _ => format!(
                        "{what} is not valid PEM (a broken BEGIN/END line or base64): give a PEM RSA or P-256 private key"
                    ),
                })
            })?;
            let rng = SystemRandom::new();
            let key = match der {
                PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der())
                    .map(Key::Rsa)
                    .map_err(|e| rsa_error(what, &e.to_string()))?,
                PrivateKeyDer::Pkcs8(der) => {
                    let der = der.secret_pkcs8_der();
                    if contains(der, RSA_ENCRYPTION) {
                        RsaKeyPair::from_pkcs8(der)
                            .map(Key::Rsa)
                            .map_err(|e| rsa_error(what, &e.to_string()))?
                    } else {
                        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                            .map(Key::Ec)
                            .map_err(|_| {
                                Error::config(format!(
                                    "{what} is neither an RSA key nor an EC key on P-256 (another curve, Ed25519, DSA…): use RSA (RS256) or P-256 (ES256), or sign with a Signer of your own"
                                ))
                            })?
                    }
                }
                PrivateKeyDer::Sec1(_) => {
                    return Err(Error::config(format!(
                        "{what} is an EC key in SEC1 form (BEGIN EC PRIVATE KEY): convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in key.pem`"
                    )))
                }
                _ => {
                    return Err(Error::config(format!(
                        "{what} is of a kind this crate cannot read: give a PKCS#8 PEM key"
                    )))
                }
            };
            Ok(Self {
                key,
                kid: None,
                chain: Vec::new(),
                rng,
            })
        }

        /// Sets the key id sent as the assertion's `kid` header: the id under which the
        /// public key is registered with the authorization server (Maskinporten requires
        /// one for registered keys).
        pub fn key_id(mut self, kid: impl Into<String>) -> Self {
            self.kid = Some(kid.into());
            self
        }

        /// Sends this certificate chain (PEM, the key's own certificate first, then any
        /// intermediates) as the assertion's `x5c` header: for Maskinporten with a business
        /// certificate (virksomhetssertifikat) instead of a registered key.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `pem` holds no `CERTIFICATE` block or broken PEM. That the
        /// certificate is this key's is not checked here: the server checks it.
        pub fn certificate_chain_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
            use rustls_pki_types::CertificateDer;
            let chain = CertificateDer::pem_slice_iter(pem)
                .map(|cert| cert.map(|cert| cert.to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    Error::config(
                        "the certificate chain is not valid PEM (a broken BEGIN/END line or base64)",
                    )
                })?;
            if chain.is_empty() {
                return Err(Error::config(
                    "the certificate chain holds no CERTIFICATE block: give the key's certificate (and intermediates) in PEM",
                ));
            }
            self.chain = chain;
            Ok(self)
        }

        /// The public key, as `ring` and JOSE want it: for RSA the DER `RSAPublicKey`
        /// (PKCS#1), for P-256 the uncompressed point.
        pub(crate) fn public_key_bytes(&self) -> &[u8] {
            match &self.key {
                Key::Rsa(key) => key.public_key().as_ref(),
                Key::Ec(key) => key.public_key().as_ref(),
            }
        }

        /// The public key as a PEM `PUBLIC KEY` (SPKI): what to register with the
        /// authorization server (or give to the embedded test server's
        /// `client_public_key_pem`).
        pub fn public_key_pem(&self) -> String {
            use base64::Engine as _;
            // AlgorithmIdentifier: rsaEncryption with NULL parameters, or id-ecPublicKey
            // with the prime256v1 curve.
            const RSA: &[u8] = &[
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
                0x00,
            ];
            const EC: &[u8] = &[
                0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
                0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
            ];
            let algorithm = match self.key {
                Key::Rsa(_) => RSA,
                Key::Ec(_) => EC,
            };
            let mut bits = vec![0u8];
            bits.extend_from_slice(self.public_key_bytes());
            let mut body = algorithm.to_vec();
            body.extend(der(0x03, &bits));
            let spki = der(0x30, &body);
            let base64 = base64::engine::general_purpose::STANDARD.encode(spki);
            let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
            for line in base64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(line).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END PUBLIC KEY-----\n");
            pem
        }
    }

    /// The DER of the rsaEncryption OID (1.2.840.113549.1.1.1), in a PKCS#8 key's algorithm.
    const RSA_ENCRYPTION: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    /// A DER element: `tag`, the length, `content`.
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    fn rsa_error(what: &str, reason: &str) -> Error {
        Error::config(format!(
            "{what} is not a usable RSA key ({reason}): RS256 needs an RSA key of 2048 bits or more"
        ))
    }

    impl Signer for PrivateKey {
        fn algorithm(&self) -> Algorithm {
            match self.key {
                Key::Rsa(_) => Algorithm::Rs256,
                Key::Ec(_) => Algorithm::Es256,
            }
        }

        fn key_id(&self) -> Option<&str> {
            self.kid.as_deref()
        }

        fn certificate_chain(&self) -> &[Vec<u8>] {
            &self.chain
        }

        fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
            let signature = match &self.key {
                Key::Rsa(key) => {
                    let mut signature = vec![0; key.public().modulus_len()];
                    key.sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature)
                        .map(|()| signature)
                        .map_err(|_| BoxError::from("RSA signing failed"))
                }
                Key::Ec(key) => key
                    .sign(&self.rng, message)
                    .map(|signature| signature.as_ref().to_vec())
                    .map_err(|_| BoxError::from("ECDSA signing failed")),
            };
            Box::pin(std::future::ready(signature))
        }
    }
}
