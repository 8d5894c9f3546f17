//! The OAuth2 protocol: what to authenticate against ([`TokenEndpoint`], Entur's and
//! Maskinporten's presets), who the client is ([`Credentials`](crate::Credentials)), the token request and its
//! answer, the assertions of key-based credentials ([`assertion`]), and the default HTTPS
//! client. Nothing here knows of token sources or middleware.

pub mod assertion;
pub(crate) mod challenge;
pub(crate) mod credentials;
pub(crate) mod endpoint;
pub(crate) mod exchange;
#[cfg(feature = "rustls")]
pub(crate) mod transport;

pub use self::credentials::{ClientSecret, Credentials};
pub use self::endpoint::{
    BodyEncoding, ClientAuth, ClientName, Environment, MaskinportenEnvironment, TokenEndpoint,
};
pub use self::exchange::TokenRequestBody;

pub(crate) use self::credentials::CredentialKind;
pub(crate) use self::endpoint::{is_loopback, AssertionSettings};
