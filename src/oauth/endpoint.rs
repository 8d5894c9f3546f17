//! What to authenticate against: Entur's and Maskinporten's presets, any OAuth2 token
//! endpoint, and the `ET-Client-Name` header.
//!
//! ```
//! use entur_auth::{ClientName, Credentials, Environment, TokenEndpoint};
//!
//! // Entur's partner token server for the dev environment (JSON body, as Entur documents).
//! let endpoint = TokenEndpoint::entur(Environment::Dev);
//! assert_eq!(endpoint.url().to_string(), "https://partner.dev.entur.org/oauth/token");
//! assert_eq!(Environment::Dev.audience(), "https://api.dev.entur.io"); // the token's audience
//!
//! // Any other OAuth2 server: form body (RFC 6749), secret sent with HTTP Basic.
//! let other = TokenEndpoint::new("https://auth.example.com/oauth2/token")?
//!     .scope("read write")
//!     .client_auth(entur_auth::ClientAuth::Basic);
//!
//! let credentials = Credentials::new("my-client-id", "my-client-secret");
//! assert!(!format!("{credentials:?}").contains("my-client-secret"));
//!
//! let name = ClientName::new("acme-ticketing")?;
//! # let _ = (other, name);
//! # Ok::<(), entur_auth::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use http::{HeaderValue, Uri};

use crate::error::Error;

/// One of Entur's environments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Environment {
    /// Development: test data.
    Dev,
    /// Staging: test data.
    Staging,
    /// Production.
    Production,
}

impl Environment {
    /// The audience of this environment's APIs, e.g. `https://api.dev.entur.io`.
    pub fn audience(self) -> &'static str {
        match self {
            Self::Dev => "https://api.dev.entur.io",
            Self::Staging => "https://api.staging.entur.io",
            Self::Production => "https://api.entur.io",
        }
    }

    /// The token URL of Entur's partner authorization server for this environment.
    pub(crate) fn partner_token_url(self) -> &'static str {
        match self {
            Self::Dev => "https://partner.dev.entur.org/oauth/token",
            Self::Staging => "https://partner.staging.entur.org/oauth/token",
            Self::Production => "https://partner.entur.org/oauth/token",
        }
    }

    /// The token URL of Entur's internal authorization server for this environment.
    pub(crate) fn internal_token_url(self) -> &'static str {
        match self {
            Self::Dev => "https://internal.dev.entur.org/oauth/token",
            Self::Staging => "https://internal.staging.entur.org/oauth/token",
            Self::Production => "https://internal.entur.org/oauth/token",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dev => "dev",
            Self::Staging => "staging",
            Self::Production => "production",
        })
    }
}

impl FromStr for Environment {
    type Err = Error;

    /// Parses `dev`, `staging` or `production` (also `development`, `stage`, `prod`), in any case.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dev" | "development" => Ok(Self::Dev),
            "staging" | "stage" => Ok(Self::Staging),
            "prod" | "production" => Ok(Self::Production),
            _ => Err(Error::config(format!(
                "unknown Entur environment {:?}: use dev, staging or production",
                crate::error::sanitize(s, 32)
            ))),
        }
    }
}

/// Whether `host` (as in a URI, IPv6 in brackets or not) is `localhost` or a loopback
/// address: `127.0.0.0/8` or `::1`.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How the token request's parameters are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyEncoding {
    /// A JSON object, as Entur's documentation shows. The default for Entur presets.
    Json,
    /// `application/x-www-form-urlencoded`, as RFC 6749 specifies. The default otherwise.
    #[default]
    Form,
}

/// How the client authenticates to the token endpoint (RFC 6749 section 2.3.1).
///
/// For a client secret, set on the [`TokenEndpoint`]: `Body` or HTTP Basic. The other
/// methods come with their [`Credentials`](crate::Credentials) (and are what the refusals of
/// [`ErrorKind::Rejected`](crate::ErrorKind::Rejected) take into account).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the request body. The default; Entur (Auth0)
    /// accepts only this.
    #[default]
    Body,
    /// HTTP Basic: `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`, the
    /// id and secret form-urlencoded first, as RFC 6749 section 2.3.1 requires.
    Basic,
    /// HTTP Basic without that form-urlencoding: `Authorization: Basic base64(id ":"
    /// secret)`, the id and secret as they are (plain RFC 7617 Basic).
    ///
    /// RFC 6749 says the server URL-decodes what [`Basic`](Self::Basic) encodes; some servers
    /// do not, and then refuse correct credentials that contain characters form-encoding
    /// changes: anything but ASCII letters, digits and `-` `.` `_` `*` (so `+`, `/`, `=`,
    /// `:`, `%`, `!`, spaces, non-ASCII). Use this variant for such a server: when
    /// `invalid_client` comes back with `Basic` although the secret is right, and the id or
    /// secret has such characters. For credentials made only of the unchanged characters both
    /// variants send the same header, so it makes no difference there.
    ///
    /// A client id containing `:` cannot be sent this way (the first `:` separates id and
    /// secret): [`TokenSourceBuilder::build`](crate::TokenSourceBuilder::build) refuses it.
    BasicUnencoded,
    /// A signed client assertion (`private_key_jwt`, RFC 7523 section 2.2): chosen by
    /// [`Credentials::private_key_jwt`](crate::Credentials::private_key_jwt), not set on the endpoint.
    PrivateKeyJwt,
    /// No client authentication besides the grant's own signed assertion (the JWT bearer
    /// grant, RFC 7523 section 2.1): chosen by [`Credentials::jwt_bearer`](crate::Credentials::jwt_bearer).
    JwtBearer,
    /// The TLS client certificate (RFC 8705 section 2): chosen by
    /// [`Credentials::tls_client_auth`](crate::Credentials::tls_client_auth).
    TlsClientAuth,
}

/// Where and how to ask for tokens: the token URL, the audience, scope and any extra
/// parameters (sent on every fetch, refreshes included), the body encoding, the client
/// authentication method and the `User-Agent` of token requests.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEndpoint {
    url: Uri,
    audience: Option<String>,
    scope: Option<String>,
    params: Vec<(String, String)>,
    encoding: BodyEncoding,
    client_auth: ClientAuth,
    reauth_on_408: bool,
    user_agent: Option<String>,
    assertion: AssertionSettings,
}

/// How the assertions of key-based [`Credentials`](crate::Credentials) are made, beyond the key.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AssertionSettings {
    /// `aud`; `None`: the token URL.
    pub(crate) audience: Option<String>,
    pub(crate) lifetime: std::time::Duration,
    /// Whether the JWT bearer grant's assertion carries `sub` (the client id).
    pub(crate) subject: bool,
    /// More claims (Maskinporten's `scope` and `resource`).
    pub(crate) claims: Vec<(String, serde_json::Value)>,
    /// The server, by name, that accepts RSA signatures only (Maskinporten: RS256, RS384 and
    /// RS512) and finds the key by its `kid` or `x5c` header, so that an ES256 key, or a key
    /// with neither, is refused at `build()` with the reason.
    pub(crate) maskinporten_rules: Option<&'static str>,
}

impl Default for AssertionSettings {
    fn default() -> Self {
        Self {
            audience: None,
            lifetime: std::time::Duration::from_secs(60),
            subject: true,
            claims: Vec::new(),
            maskinporten_rules: None,
        }
    }
}

/// Why a token URL with `user:password@` is refused (the URL itself is not repeated).
pub(crate) const USERINFO: &str = "the token URL holds a user name or password (user:password@host): leave them out; give the client id and secret as Credentials, which are sent as the token endpoint asks";

/// Maskinporten's environments (Digdir, Norway's machine-to-machine authorization server):
/// see [`TokenEndpoint::maskinporten`](crate::TokenEndpoint::maskinporten).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskinportenEnvironment {
    /// The test environment, `test.maskinporten.no`.
    Test,
    /// Production, `maskinporten.no`.
    Production,
}

impl MaskinportenEnvironment {
    /// The token URL: `https://test.maskinporten.no/token` or `https://maskinporten.no/token`.
    pub fn token_url(self) -> &'static str {
        match self {
            Self::Test => "https://test.maskinporten.no/token",
            Self::Production => "https://maskinporten.no/token",
        }
    }

    /// Maskinporten's issuer identifier, the `aud` of the grants:
    /// `https://test.maskinporten.no/` or `https://maskinporten.no/` (with the slash).
    pub fn issuer(self) -> &'static str {
        match self {
            Self::Test => "https://test.maskinporten.no/",
            Self::Production => "https://maskinporten.no/",
        }
    }
}

impl TokenEndpoint {
    /// The `User-Agent` token requests carry unless [`user_agent`](Self::user_agent) says
    /// otherwise: `entur-auth/<this crate's version>`.
    pub const DEFAULT_USER_AGENT: &'static str = concat!("entur-auth/", env!("CARGO_PKG_VERSION"));

    /// Entur's partner authorization server for `environment`, with its audience and a JSON
    /// body, as Entur documents.
    pub fn entur(environment: Environment) -> Self {
        Self::preset(environment.partner_token_url(), environment.audience())
    }

    /// Entur's internal authorization server for `environment` (same audiences as the
    /// partner servers).
    pub fn entur_internal(environment: Environment) -> Self {
        Self::preset(environment.internal_token_url(), environment.audience())
    }

    fn preset(url: &'static str, audience: &'static str) -> Self {
        Self {
            url: Uri::from_static(url),
            audience: Some(audience.to_owned()),
            scope: None,
            params: Vec::new(),
            encoding: BodyEncoding::Json,
            client_auth: ClientAuth::Body,
            reauth_on_408: true,
            user_agent: None,
            assertion: AssertionSettings::default(),
        }
    }

    /// Maskinporten's token endpoint, for [`Credentials::jwt_bearer`](crate::Credentials::jwt_bearer) with the client id
    /// and the key registered for the client (RS256; give the key its registered `kid` with
    /// [`PrivateKey::key_id`](crate::oauth::assertion::PrivateKey::key_id), or its business
    /// certificate with
    /// [`PrivateKey::certificate_chain_pem`](crate::oauth::assertion::PrivateKey::certificate_chain_pem),
    /// sent as `x5c`). `scope` is the
    /// whitespace-separated scopes to ask for; add [`maskinporten_resource`](Self::maskinporten_resource)
    /// for an audience-restricted token.
    ///
    /// What Digdir documents, and this preset does (read 2026-11 from
    /// <https://docs.digdir.no/docs/Maskinporten/maskinporten_protocol_token> and
    /// <https://docs.digdir.no/docs/Maskinporten/maskinporten_protocol_jwtgrant>):
    ///
    /// - `POST /token` with a form body holding only `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
    ///   and `assertion`; no other client authentication ("the client is implicitly
    ///   authenticated by the certificate in the JWT").
    /// - The assertion's `aud` is Maskinporten's issuer identifier, one value ("using the
    ///   token-endpoint url as audience is no longer valid"): production's is
    ///   `https://maskinporten.no/`, the test environment's `https://test.maskinporten.no/`
    ///   (the JWT grant page's examples use it as `aud`; it is the `issuer` of
    ///   <https://test.maskinporten.no/.well-known/oauth-authorization-server>).
    /// - Claims: `aud`, `iss` (the client id), `iat`, `exp` (at most 120 s after `iat`; this
    ///   preset uses 60 s), `jti` (an assertion cannot be reused), `scope` (required),
    ///   `resource` (optional). Any other claim is refused with `400` "Invalid assertion",
    ///   so no `sub` is sent.
    /// - Header: `alg` RS256 (RS384 and RS512 too; not ES256), and `kid` or `x5c`.
    ///   [`build`](crate::TokenSourceBuilder::build) refuses a key that signs ES256 or has
    ///   neither a key id nor a certificate chain, with the reason.
    /// - `iat` must be within 10 s of Maskinporten's clock: keep this machine's clock synced.
    ///
    /// ```
    /// use entur_auth::{MaskinportenEnvironment, TokenEndpoint};
    ///
    /// let endpoint = TokenEndpoint::maskinporten(MaskinportenEnvironment::Test, "digdir:dialogporten")
    ///     .maskinporten_resource("https://api.example.no");
    /// assert_eq!(endpoint.url(), "https://test.maskinporten.no/token");
    /// // The assertions' audience.
    /// assert_eq!(MaskinportenEnvironment::Test.issuer(), "https://test.maskinporten.no/");
    /// ```
    pub fn maskinporten(environment: MaskinportenEnvironment, scope: impl Into<String>) -> Self {
        let mut endpoint = Self::new(environment.token_url())
            .expect("the Maskinporten token URLs are valid")
            .assertion_audience(environment.issuer())
            .assertion_subject(false);
        endpoint.assertion.maskinporten_rules = Some("Maskinporten");
        endpoint
            .assertion
            .claims
            .push(("scope".to_owned(), serde_json::Value::String(scope.into())));
        endpoint
    }

    /// Asks Maskinporten for a token restricted to the API `resource` (the assertion's
    /// `resource` claim, sent as an array as Maskinporten documents it; the value comes from
    /// the API's owner).
    pub fn maskinporten_resource(mut self, resource: impl Into<String>) -> Self {
        self.assertion.claims.retain(|(name, _)| name != "resource");
        self.assertion.claims.push((
            "resource".to_owned(),
            serde_json::Value::Array(vec![serde_json::Value::String(resource.into())]),
        ));
        self
    }

    /// The `aud` of the assertions signed for key-based [`Credentials`](crate::Credentials) (default: the token
    /// URL, as RFC 7523 section 3 and OpenID Connect Core section 9 allow). Some servers want
    /// their issuer identifier instead (Maskinporten, Okta's org server with some clients).
    pub fn assertion_audience(mut self, audience: impl Into<String>) -> Self {
        self.assertion.audience = Some(audience.into());
        self
    }

    /// How long each assertion is valid: `exp − iat`. Default 60 s; between 1 s and 10
    /// minutes ([`build`](crate::TokenSourceBuilder::build) refuses others). A fresh one is
    /// signed for every token request, so a short one costs nothing.
    pub fn assertion_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        self.assertion.lifetime = lifetime;
        self
    }

    /// Whether the JWT bearer grant's assertion carries `sub` (the client id). Default
    /// `true`, as RFC 7523 section 3 asks; Maskinporten refuses it. `private_key_jwt`
    /// assertions always carry it.
    pub fn assertion_subject(mut self, include: bool) -> Self {
        self.assertion.subject = include;
        self
    }

    /// Adds a claim to every assertion (replacing one of the same name); the registered
    /// claims `iss`, `sub`, `aud`, `iat`, `exp` and `jti` cannot be set this way
    /// ([`build`](crate::TokenSourceBuilder::build) refuses them).
    pub fn assertion_claim(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        let name = name.into();
        self.assertion.claims.retain(|(n, _)| *n != name);
        self.assertion.claims.push((name, value));
        self
    }

    pub(crate) fn assertion_settings(&self) -> &AssertionSettings {
        &self.assertion
    }

    /// Any OAuth2 token endpoint. The body is form-encoded (RFC 6749) unless
    /// [`encoding`](Self::encoding) says otherwise.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `url` is not an absolute `https://` or `http://` URL, or
    /// holds a user name or password (`user:password@host`; the message does not repeat
    /// it). Whether `http://` is allowed is decided when the [`TokenSource`](crate::TokenSource) is built.
    pub fn new(url: &str) -> Result<Self, Error> {
        let parsed: Uri = url.parse().map_err(|_| {
            Error::config(format!(
                "token URL {:?} is not a valid URL: use an absolute https:// URL",
                crate::error::sanitize(url, 200)
            ))
        })?;
        match (parsed.scheme_str(), parsed.host()) {
            (Some("https" | "http"), Some(_)) => {}
            _ => {
                return Err(Error::config(format!(
                    "token URL {:?} must be an absolute https:// URL with a host",
                    crate::error::sanitize(url, 200)
                )))
            }
        }
        if parsed.authority().is_some_and(|a| a.as_str().contains('@')) {
            // Not echoed: the part before '@' is a user name and password, which the URL
            // would otherwise show in Debug and in every token request's log line.
            return Err(Error::config(USERINFO));
        }
        Ok(Self {
            url: parsed,
            audience: None,
            scope: None,
            params: Vec::new(),
            encoding: BodyEncoding::Form,
            client_auth: ClientAuth::Body,
            reauth_on_408: false,
            user_agent: None,
            assertion: AssertionSettings::default(),
        })
    }

    /// Sets the `audience` parameter (Auth0 and Entur need it; it decides the token's `aud`).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Sets the `scope` parameter.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Adds an extra parameter sent with every token request (e.g. `resource`).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Sets the body encoding.
    pub fn encoding(mut self, encoding: BodyEncoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Sets how the client authenticates.
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// Sets the `User-Agent` header of token requests (default
    /// [`DEFAULT_USER_AGENT`](Self::DEFAULT_USER_AGENT), `entur-auth/<version>`). It replaces
    /// the whole value; to keep ours, append it:
    /// `format!("acme-ticketing/2.1 {}", TokenEndpoint::DEFAULT_USER_AGENT)`.
    ///
    /// Token requests always carry one, because WAF rule sets and CDNs in front of token
    /// endpoints block requests without it (the block comes back as a 403 page, not as an
    /// OAuth error). Set your own when a gateway allows only known agents, or to tell your
    /// services apart in the authorization server's logs. Only token requests carry it;
    /// requests to the API keep whatever your client sends.
    ///
    /// The value must be printable ASCII without leading or trailing spaces: otherwise
    /// [`TokenSourceBuilder::build`](crate::TokenSourceBuilder::build) fails with
    /// [`ErrorKind::Config`](crate::ErrorKind::Config).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// The `User-Agent` of token requests; see [`user_agent`](Self::user_agent).
    pub(crate) fn user_agent_value(&self) -> &str {
        self.user_agent
            .as_deref()
            .unwrap_or(Self::DEFAULT_USER_AGENT)
    }

    /// Whether an API's `408 Request Timeout` means that the token expired, so that the
    /// token is dropped and (with a replay layer) the request replayed with a new one.
    ///
    /// Entur documents 408 as "the access token has expired while the session was ongoing",
    /// so the Entur presets say `true`. Elsewhere a 408 is usually a proxy's plain timeout,
    /// which a new token cannot fix, so [`TokenEndpoint::new`](crate::TokenEndpoint::new) says `false` and leaves 408 to
    /// your own retry policy; opt in here if your API uses 408 as Entur does.
    pub fn reauth_on_408(mut self, expired: bool) -> Self {
        self.reauth_on_408 = expired;
        self
    }

    /// Whether a 408 from the API means the token expired; see
    /// [`reauth_on_408`](Self::reauth_on_408).
    pub(crate) fn reauths_on_408(&self) -> bool {
        self.reauth_on_408
    }

    /// The token URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The audience, if one is sent.
    pub(crate) fn audience_value(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// The scope, if one is sent.
    pub(crate) fn scope_value(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The extra parameters.
    pub(crate) fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The body encoding.
    pub(crate) fn body_encoding(&self) -> BodyEncoding {
        self.encoding
    }

    /// The client authentication method.
    pub(crate) fn client_auth_method(&self) -> ClientAuth {
        self.client_auth
    }
}

/// The value of Entur's `ET-Client-Name` header: `<company>-<application>`.
///
/// Entur asks every client to send it; requests without it may be rate limited or blocked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientName(HeaderValue);

impl ClientName {
    /// Validates a client name: ASCII letters, digits, `-`, `_` and `.`, with a `-` between
    /// the company and the application (e.g. `acme-ticketing`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) saying what the name must look like.
    pub fn new(name: &str) -> Result<Self, Error> {
        let valid_chars = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        let has_parts = name
            .split_once('-')
            .is_some_and(|(company, app)| !company.is_empty() && !app.is_empty());
        if !(valid_chars && has_parts) {
            return Err(Error::config(format!(
                "ET-Client-Name {:?} is not of the form <company>-<application> (ASCII letters, digits, '-', '_', '.'), e.g. \"acme-ticketing\"",
                crate::error::sanitize(name, 64)
            )));
        }
        HeaderValue::from_str(name)
            .map(Self)
            .map_err(|_| Error::config("ET-Client-Name is not a valid header value"))
    }

    /// The header value.
    pub(crate) fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Built from a `&str` of visible ASCII.
        f.write_str(self.0.to_str().unwrap_or_default())
    }
}

impl FromStr for ClientName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::*;

    #[test]
    fn presets_match_entur() {
        let cases = [
            (
                Environment::Dev,
                "https://partner.dev.entur.org/oauth/token",
                "https://internal.dev.entur.org/oauth/token",
                "https://api.dev.entur.io",
            ),
            (
                Environment::Staging,
                "https://partner.staging.entur.org/oauth/token",
                "https://internal.staging.entur.org/oauth/token",
                "https://api.staging.entur.io",
            ),
            (
                Environment::Production,
                "https://partner.entur.org/oauth/token",
                "https://internal.entur.org/oauth/token",
                "https://api.entur.io",
            ),
        ];
        for (env, partner, internal, audience) in cases {
            let p = TokenEndpoint::entur(env);
            assert_eq!(p.url().to_string(), partner);
            assert_eq!(p.audience_value(), Some(audience));
            assert_eq!(p.body_encoding(), BodyEncoding::Json);
            assert_eq!(p.client_auth_method(), ClientAuth::Body);
            let i = TokenEndpoint::entur_internal(env);
            assert_eq!(i.url().to_string(), internal);
            assert_eq!(i.audience_value(), Some(audience));
        }
    }

    #[test]
    fn environment_parses_common_spellings() {
        assert_eq!("DEV".parse::<Environment>().unwrap(), Environment::Dev);
        assert_eq!(
            "stage".parse::<Environment>().unwrap(),
            Environment::Staging
        );
        assert_eq!(
            " prod ".parse::<Environment>().unwrap(),
            Environment::Production
        );
        let err = "qa".parse::<Environment>().unwrap_err();
        assert!(err
            .report()
            .to_string()
            .contains("dev, staging or production"));
    }

    #[test]
    fn custom_endpoint_rejects_relative_and_odd_urls() {
        for bad in ["/oauth/token", "ftp://x/y", "not a url", ""] {
            let err = TokenEndpoint::new(bad).unwrap_err();
            assert!(err.kind() == crate::ErrorKind::Config, "{bad}: {err}");
        }
        let ok = TokenEndpoint::new("https://auth.example.com/token").unwrap();
        // user:password@ is refused, and the message does not repeat the password.
        for url in [
            "https://user:pw-marker@auth.example.com/token",
            "http://pw-marker@127.0.0.1:1/t",
        ] {
            let err = TokenEndpoint::new(url).unwrap_err();
            assert!(err.kind() == crate::ErrorKind::Config, "{url}: {err}");
            let text = format!("{err} {err:?} {}", err.report());
            assert!(text.contains("user name or password"), "{text}");
            assert!(!text.contains("pw-marker"), "{text}");
        }
        assert_eq!(ok.body_encoding(), BodyEncoding::Form);
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Credentials::new("id-1", "s3cr3t-marker");
        assert!(!format!("{c:?}").contains("s3cr3t-marker"));
        assert!(!format!("{}", c.client_secret().unwrap()).contains("s3cr3t-marker"));
        assert_eq!(c.client_secret().unwrap().expose(), "s3cr3t-marker");
    }

    #[test]
    fn client_names_are_validated() {
        assert!(ClientName::new("acme-ticketing").is_ok());
        assert!(ClientName::new("acme.no-app_v2").is_ok());
        for bad in [
            "",
            "acme",
            "-app",
            "acme-",
            "acme app-x",
            "acme-æ",
            "a\r\n-b",
        ] {
            let err = ClientName::new(bad).unwrap_err();
            assert!(
                err.report().to_string().contains("<company>-<application>"),
                "{bad}"
            );
        }
    }
}
