//! Talking to the token endpoint: building the client credentials request, reading the
//! answer, and the pluggable transport it travels over.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, DATE, LOCATION, RETRY_AFTER, SERVER,
    USER_AGENT,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::error::{sanitize, BoxError, Error, Kind, OAuthErrorCode};
use crate::oauth::{
    AssertionSettings, BodyEncoding, ClientAuth, ClientSecret, CredentialKind, Credentials,
    TokenEndpoint,
};

/// The body type of token requests; a transport plugged in with
/// [`TokenSourceBuilder::transport`](crate::TokenSourceBuilder::transport) takes
/// `http::Request<TokenRequestBody>`.
pub type TokenRequestBody = Full<Bytes>;

/// An answer from the token endpoint, its body read up to the size cap.
pub(crate) struct RawResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// The type-erased transport the token source uses.
pub(crate) type Transport = BoxCloneSyncService<Request<TokenRequestBody>, RawResponse, BoxError>;

/// Erases any tower HTTP service into a [`Transport`] that reads at most `cap` body bytes.
/// A failure to reach the token endpoint (to connect, or to read the answer) becomes
/// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) naming the request's host.
pub(crate) fn erase<S, B>(service: S, cap: usize) -> Transport
where
    S: Service<Request<TokenRequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let service = tower::service_fn(move |request: Request<TokenRequestBody>| {
        let host = host_of(request.uri());
        // `oneshot` waits for this clone to be ready before calling it.
        let service = service.clone();
        async move {
            let response = service
                .oneshot(request)
                .await
                .map_err(|e| at_host(e.into(), &host))?;
            let (parts, body) = response.into_parts();
            let body = match Limited::new(body, cap).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(Error::invalid(
                        parts.status,
                        format!("the response body is larger than the {cap}-byte cap"),
                    )
                    .into())
                }
                Err(e) => return Err(at_host(e, &host)),
            };
            Ok(RawResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        }
    });
    BoxCloneSyncService::new(service)
}

/// `host[:port]` of a token URL, for messages: never the user name or password.
fn host_of(uri: &Uri) -> Option<String> {
    let host = uri.host()?;
    Some(match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// A transport failure as [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) at `host`; our own errors keep their
/// variant (a proxy's answer, the size cap) and gain the host if they are `Unavailable`.
fn at_host(error: BoxError, host: &Option<String>) -> BoxError {
    let error = match error.downcast::<Error>() {
        Ok(ours) => *ours,
        Err(other) => Error::unavailable(None, None, Some(Arc::from(other))),
    };
    Box::new(match error.inner() {
        Kind::Unavailable {
            status,
            retry_after,
            cause,
            code,
            description,
            host: None,
        } => Error::from(Kind::Unavailable {
            status: *status,
            retry_after: *retry_after,
            cause: cause.clone(),
            code: code.clone(),
            description: description.clone(),
            host: host.clone(),
        }),
        _ => error,
    })
}

/// The parts of a token request that do not depend on the credentials: built once; each
/// fetch adds the credentials (a fresh assertion for key-based ones).
#[derive(Clone)]
pub(crate) struct TokenRequest {
    url: Uri,
    client_auth: ClientAuth,
    user_agent: HeaderValue,
    encoding: BodyEncoding,
    /// audience, scope and extra parameters, in that order.
    params: Vec<(String, String)>,
    assertion: AssertionSettings,
}

/// The registered claims an assertion sets itself.
const REGISTERED_CLAIMS: [&str; 6] = ["iss", "sub", "aud", "iat", "exp", "jti"];

impl TokenRequest {
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the `User-Agent` is not a valid header value, or the assertion
    /// settings are out of range.
    pub(crate) fn new(endpoint: &TokenEndpoint) -> Result<Self, Error> {
        let user_agent = user_agent(endpoint.user_agent_value())?;
        let mut params = Vec::new();
        if let Some(audience) = endpoint.audience_value() {
            params.push(("audience".to_owned(), audience.to_owned()));
        }
        if let Some(scope) = endpoint.scope_value() {
            params.push(("scope".to_owned(), scope.to_owned()));
        }
        params.extend(endpoint.params().iter().cloned());
        let assertion = endpoint.assertion_settings().clone();
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&assertion.lifetime) {
            return Err(Error::config(format!(
                "assertion_lifetime is {:?}: it must be between 1 s and 10 minutes (a fresh assertion is signed for every token request; servers accept short ones: Maskinporten at most 120 s)",
                assertion.lifetime
            )));
        }
        if let Some((name, _)) = assertion
            .claims
            .iter()
            .find(|(name, _)| REGISTERED_CLAIMS.contains(&name.as_str()))
        {
            return Err(Error::config(format!(
                "assertion_claim {name:?} is set by the assertion itself: use TokenEndpoint::assertion_audience for aud, assertion_lifetime for exp, assertion_subject for sub"
            )));
        }
        Ok(Self {
            url: endpoint.url().clone(),
            client_auth: endpoint.client_auth_method(),
            user_agent,
            encoding: endpoint.body_encoding(),
            params,
            assertion,
        })
    }

    /// Whether `credentials` can be sent to this endpoint.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the credentials cannot be sent the configured way.
    pub(crate) fn check(&self, credentials: &Credentials) -> Result<(), Error> {
        match (&credentials.kind, self.client_auth) {
            (CredentialKind::Secret(_), ClientAuth::BasicUnencoded)
                if credentials.client_id().contains(':') =>
            {
                Err(Error::config(
                    "the client_id contains ':', which HTTP Basic without form-encoding (ClientAuth::BasicUnencoded) cannot carry: the server would split the id there; use ClientAuth::Basic or ClientAuth::Body",
                ))
            }
            (
                CredentialKind::Secret(_),
                method @ (ClientAuth::PrivateKeyJwt | ClientAuth::JwtBearer | ClientAuth::TlsClientAuth),
            ) => Err(Error::config(format!(
                "the token endpoint is set to ClientAuth::{method:?} but the credentials are a client secret: use Credentials::private_key_jwt, Credentials::jwt_bearer or Credentials::tls_client_auth, or ClientAuth::Body or Basic"
            ))),
            (CredentialKind::PrivateKeyJwt(signer) | CredentialKind::JwtBearer(signer), _) => {
                match self.assertion.maskinporten_rules {
                    Some(server) if signer.algorithm() != crate::oauth::assertion::Algorithm::Rs256 => {
                        Err(Error::config(format!(
                            "{server} accepts assertions signed with RSA only (RS256, RS384 or RS512), and this key signs {}: register an RSA key (or a business certificate) with {server} and use that",
                            signer.algorithm().as_str()
                        )))
                    }
                    Some(server)
                        if signer.key_id().is_none() && signer.certificate_chain().is_empty() =>
                    {
                        Err(Error::config(format!(
                            "{server} finds the client's key by the assertion's `kid` or its `x5c` certificate chain, and this key has neither: give it the key id registered with {server} (PrivateKey::key_id) or its business certificate (PrivateKey::certificate_chain_pem)"
                        )))
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn url(&self) -> &Uri {
        &self.url
    }

    /// How a request with `credentials` authenticates the client.
    pub(crate) fn client_auth(&self, credentials: &Credentials) -> ClientAuth {
        match credentials.kind {
            CredentialKind::Secret(_) => self.client_auth,
            _ => credentials.method(),
        }
    }

    /// The request for one fetch, and the text to keep out of any error (the secret, or
    /// the assertion signed for this request).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Signer`](crate::ErrorKind::Signer) when the signer fails,
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when its signature has the wrong shape.
    pub(crate) async fn build(
        &self,
        credentials: &Credentials,
    ) -> Result<(Request<TokenRequestBody>, String), Error> {
        let mut fields: Vec<(&str, &str)> = Vec::with_capacity(self.params.len() + 4);
        let mut basic = None;
        let assertion;
        let secret = match &credentials.kind {
            CredentialKind::Secret(secret) => {
                fields.push(("grant_type", "client_credentials"));
                match self.client_auth {
                    ClientAuth::Basic => basic = Some(basic_header(credentials, secret, true)),
                    ClientAuth::BasicUnencoded => {
                        basic = Some(basic_header(credentials, secret, false))
                    }
                    _ => {
                        fields.push(("client_id", credentials.client_id()));
                        fields.push(("client_secret", secret.expose()));
                    }
                }
                secret.expose().to_owned()
            }
            CredentialKind::PrivateKeyJwt(signer) => {
                assertion = self.sign(signer.as_ref(), credentials, true).await?;
                fields.push(("grant_type", "client_credentials"));
                fields.push(("client_id", credentials.client_id()));
                fields.push((
                    "client_assertion_type",
                    crate::oauth::assertion::CLIENT_ASSERTION_TYPE,
                ));
                fields.push(("client_assertion", &assertion));
                assertion.clone()
            }
            CredentialKind::JwtBearer(signer) => {
                assertion = self
                    .sign(signer.as_ref(), credentials, self.assertion.subject)
                    .await?;
                fields.push(("grant_type", crate::oauth::assertion::JWT_BEARER_GRANT));
                fields.push(("assertion", &assertion));
                assertion.clone()
            }
            CredentialKind::TlsClientAuth => {
                fields.push(("grant_type", "client_credentials"));
                fields.push(("client_id", credentials.client_id()));
                String::new()
            }
        };
        for (name, value) in &self.params {
            fields.push((name, value));
        }
        let (content_type, body) = match self.encoding {
            BodyEncoding::Json => {
                let map: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                    .collect();
                (
                    HeaderValue::from_static("application/json"),
                    serde_json::Value::Object(map).to_string(),
                )
            }
            BodyEncoding::Form => {
                let mut form = form_urlencoded::Serializer::new(String::new());
                for (k, v) in &fields {
                    form.append_pair(k, v);
                }
                (
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                    form.finish(),
                )
            }
        };
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, self.user_agent.clone());
        if let Some(basic) = basic {
            headers.insert(AUTHORIZATION, basic);
        }
        Ok((request, secret))
    }

    async fn sign(
        &self,
        signer: &dyn crate::oauth::assertion::Signer,
        credentials: &Credentials,
        subject: bool,
    ) -> Result<String, Error> {
        let url = self.url.to_string();
        let claims = crate::oauth::assertion::Claims {
            issuer: credentials.client_id(),
            subject: subject.then_some(credentials.client_id()),
            audience: self.assertion.audience.as_deref().unwrap_or(&url),
            lifetime: self.assertion.lifetime,
            extra: &self.assertion.claims,
        };
        crate::oauth::assertion::sign(signer, &claims).await
    }
}

/// A `User-Agent` value: printable ASCII (RFC 9110 allows no more in practice), not empty,
/// no spaces around it.
fn user_agent(value: &str) -> Result<HeaderValue, Error> {
    let printable = value.bytes().all(|b| (b' '..=b'~').contains(&b));
    if !printable || value.trim() != value || value.is_empty() {
        return Err(Error::config(format!(
            "user_agent {:?} is not a valid User-Agent header value: use printable ASCII, without line breaks or spaces around it, e.g. \"acme-ticketing/2.1 {}\"",
            crate::error::sanitize(value, 64),
            TokenEndpoint::DEFAULT_USER_AGENT
        )));
    }
    HeaderValue::from_str(value)
        .map_err(|_| Error::config("user_agent is not a valid header value"))
}

/// `Basic base64(id ":" secret)`. With `form_encode`, RFC 6749 section 2.3.1: both parts
/// form-urlencoded first; without, as they are (RFC 7617).
fn basic_header(
    credentials: &Credentials,
    secret: &ClientSecret,
    form_encode: bool,
) -> HeaderValue {
    let encode = |s: &str| {
        if form_encode {
            form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
        } else {
            s.to_owned()
        }
    };
    let pair = format!(
        "{}:{}",
        encode(credentials.client_id()),
        encode(secret.expose())
    );
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    let mut header = HeaderValue::from_str(&value).expect("base64 is a valid header value");
    header.set_sensitive(true);
    header
}

/// A successful answer from the token endpoint.
pub(crate) struct Granted {
    pub(crate) access_token: String,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) scope: Option<String>,
    /// The response's `Date` header: the token server's clock when it answered.
    pub(crate) server_date: Option<SystemTime>,
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<String>,
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Reads a token endpoint answer: a token, or the error it means. `secret` is removed from
/// any text the server sends back, in case a server echoes it; `client_auth`, how the
/// request authenticated the client, decides the advice a refusal comes with.
///
/// - 2xx: a token; an OAuth error body without `access_token` is that error, whatever the
///   status (some servers answer 200 with `{"error": …}`).
/// - 3xx: a configuration error; redirects are never followed.
/// - 408, 429, 5xx: [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable).
/// - Any other 4xx with an OAuth error body: [`ErrorKind::Rejected`](crate::ErrorKind::Rejected) with its code.
/// - `temporarily_unavailable`, `server_error` and `slow_down`, in any status:
///   [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable), retried with backoff: the server says "later", not "no".
/// - 400, 401, 403 without one: [`ErrorKind::Rejected`](crate::ErrorKind::Rejected) with no code when the body is empty or
///   the answer carries a `WWW-Authenticate` challenge (the server itself refusing), else
///   [`ErrorKind::Blocked`](crate::ErrorKind::Blocked) (an HTML page, other JSON, text: most likely a gateway).
pub(crate) fn read_response(
    response: &RawResponse,
    secret: &str,
    client_auth: ClientAuth,
) -> Result<Granted, Error> {
    let status = response.status;
    let body = json_text(&response.body);
    let oauth_error = |oauth: ErrorBody| {
        let retry_after = retry_after(&response.headers, SystemTime::now());
        oauth_error(response, oauth, secret, client_auth, retry_after)
    };
    if status.is_success() {
        let server_date = http_date(&response.headers);
        return read_success(status, body, server_date).map_err(|not_a_token| {
            match serde_json::from_slice::<ErrorBody>(body) {
                Ok(oauth) => oauth_error(oauth),
                Err(_) => not_a_token,
            }
        });
    }
    if status.is_redirection() {
        let location = response
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| sanitize(v, 200))
            .unwrap_or_else(|| "nowhere".into());
        return Err(Error::config(format!(
            "token endpoint answered {} redirecting to {location}: redirects are never followed with credentials; set the token URL to the final https:// URL",
            status.as_u16()
        )));
    }
    let oauth: Option<ErrorBody> = serde_json::from_slice(body).ok();
    match (status.as_u16(), oauth) {
        (429 | 408 | 500..=599, oauth) => {
            let retry_after = retry_after(&response.headers, SystemTime::now());
            let (code, description) = match oauth {
                Some(oauth) => (
                    Some(OAuthErrorCode::parse(&redact(&oauth.error, secret))),
                    description(&oauth, secret),
                ),
                None => (None, None),
            };
            Err(Kind::Unavailable {
                status: Some(status),
                retry_after,
                cause: None,
                code,
                description,
                host: None,
            }
            .into())
        }
        (400..=499, Some(oauth)) => Err(oauth_error(oauth)),
        (400 | 401 | 403, None) => {
            let challenge = challenge_scheme(&response.headers);
            if challenge.is_some() || body.is_empty() {
                let hint = advice(&OAuthErrorCode::Unspecified, challenge.as_deref(), client_auth);
                Err(Kind::Rejected {
                    code: OAuthErrorCode::Unspecified,
                    description: None,
                    status,
                    challenge,
                    hint,
                }
                .into())
            } else {
                Err(Kind::Blocked {
                    status,
                    answer: describe_answer(&response.headers, &response.body, secret),
                    server: response
                        .headers
                        .get(SERVER)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| sanitize(v, 64)),
                }
                .into())
            }
        }
        (404 | 405, None) => Err(Error::config(format!(
            "token endpoint answered {}: check the token URL (Entur: https://partner.<env>.entur.org/oauth/token)",
            status.as_u16()
        ))),
        _ => Err(Error::invalid(status, "unexpected status")),
    }
}

/// The error an OAuth error body means: [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) for the codes that say
/// "later", else [`ErrorKind::Rejected`](crate::ErrorKind::Rejected).
fn oauth_error(
    response: &RawResponse,
    oauth: ErrorBody,
    secret: &str,
    client_auth: ClientAuth,
    retry_after: Option<Duration>,
) -> Error {
    let code = OAuthErrorCode::parse(&redact(&oauth.error, secret));
    let description = description(&oauth, secret);
    if code.is_transient() {
        return Kind::Unavailable {
            status: Some(response.status),
            retry_after,
            cause: None,
            code: Some(code),
            description,
            host: None,
        }
        .into();
    }
    let challenge = challenge_scheme(&response.headers);
    let hint = advice(&code, challenge.as_deref(), client_auth);
    Kind::Rejected {
        code,
        description,
        status: response.status,
        challenge,
        hint,
    }
    .into()
}

fn description(oauth: &ErrorBody, secret: &str) -> Option<String> {
    oauth
        .error_description
        .as_deref()
        .map(|d| sanitize(&redact(d, secret), 300))
}

/// The auth-scheme of the answer's `WWW-Authenticate` challenges that matters: `Basic` when
/// one of them is, else the first.
fn challenge_scheme(headers: &HeaderMap) -> Option<String> {
    let mut first = None;
    for scheme in crate::oauth::challenge::schemes(headers) {
        if scheme.eq_ignore_ascii_case("basic") {
            return Some("Basic".to_owned());
        }
        first = first.or(Some(scheme));
    }
    first.map(|scheme| sanitize(scheme, 32))
}

/// What a refusal that is not an OAuth error was, in a few words for the error message: an
/// HTML page and its title, JSON or text and its first words. Shortened, on one line, with
/// the secret removed.
fn describe_answer(headers: &HeaderMap, body: &[u8], secret: &str) -> String {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| sanitize(v.trim(), 64).to_ascii_lowercase())
        .unwrap_or_default();
    let body = json_text(body);
    let text = String::from_utf8_lossy(body);
    let excerpt = |text: &str| {
        let words: Vec<&str> = text.split_whitespace().collect();
        sanitize(&redact(&words.join(" "), secret), 100)
    };
    let markup = text.starts_with('<');
    if content_type.contains("html") || (markup && !content_type.contains("xml")) {
        return match html_title(&text).map(excerpt) {
            Some(title) if !title.is_empty() => format!("an HTML page titled {title:?}"),
            _ => "an HTML page".to_owned(),
        };
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        return format!(
            "a JSON body without an OAuth error code ({})",
            excerpt(&text)
        );
    }
    match content_type.as_str() {
        "" => format!("a body that is not JSON ({})", excerpt(&text)),
        kind => format!("a {kind} body ({})", excerpt(&text)),
    }
}

/// The text of an HTML page's `<title>`, if it has one.
fn html_title(html: &str) -> Option<&str> {
    // ASCII lowercasing keeps every byte offset.
    let lower = html.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    html.get(start..end)
}

/// A 2xx answer as a token; `body` is its [`json_text`].
fn read_success(
    status: StatusCode,
    body: &[u8],
    server_date: Option<SystemTime>,
) -> Result<Granted, Error> {
    let parsed: SuccessBody = serde_json::from_slice(body)
        .map_err(|_| Error::invalid(status, "the body is not a JSON token response"))?;
    let access_token = parsed
        .access_token
        .ok_or_else(|| Error::invalid(status, "the response has no access_token"))?;
    if let Some(kind) = &parsed.token_type {
        check_token_type(status, kind)?;
    }
    Ok(Granted {
        access_token,
        expires_in: expires_in(status, parsed.expires_in)?,
        scope: parsed.scope,
        server_date,
    })
}

/// The JSON text of a body: without a leading UTF-8 byte-order mark, which some servers
/// (.NET-hosted ones) put first and RFC 8259 lets parsers ignore, nor the whitespace around
/// it.
fn json_text(body: &[u8]) -> &[u8] {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let body = body.trim_ascii_start();
    body.strip_prefix(BOM).unwrap_or(body).trim_ascii()
}

/// `expires_in`: a JSON number of seconds, or a string holding one (`"3600"`, as some servers
/// send it), of at least one second. Absent or `null`: `None`.
fn expires_in(
    status: StatusCode,
    value: Option<serde_json::Value>,
) -> Result<Option<Duration>, Error> {
    let seconds = match value {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Number(n)) => n,
        Some(serde_json::Value::String(text)) => {
            match serde_json::from_str::<serde_json::Number>(text.trim()) {
                Ok(n) => n,
                Err(_) => {
                    return Err(Error::invalid(
                        status,
                        format!(
                            "expires_in {:?} is not a number of seconds",
                            sanitize(&text, 32)
                        ),
                    ))
                }
            }
        }
        Some(_) => {
            return Err(Error::invalid(
                status,
                "expires_in is not a number of seconds",
            ))
        }
    };
    match seconds.as_f64() {
        Some(secs) if secs >= 1.0 => Ok(Some(Duration::from_secs_f64(secs.min(1e12)))),
        _ => Err(Error::invalid(
            status,
            format!("expires_in {seconds} is not a positive number of seconds"),
        )),
    }
}

/// The `Date` header (RFC 9110 section 6.6.1), when there is a valid one.
fn http_date(headers: &HeaderMap) -> Option<SystemTime> {
    let value = headers.get(DATE)?.to_str().ok()?;
    httpdate::parse_http_date(value.trim()).ok()
}

/// Token types whose tokens cannot be sent as `Authorization: Bearer`: they need a proof of
/// possession with every request (RFC 9449 DPoP, the MAC drafts), which this crate does not
/// make. Every other `token_type` is sent as a bearer: eBay answers `"Application Access
/// Token"` for tokens its APIs take as `Bearer`, and RFC 6749 section 7.1 leaves the type's
/// name to the server.
const PROOF_OF_POSSESSION_TYPES: [&str; 3] = ["dpop", "mac", "pop"];

fn check_token_type(status: StatusCode, kind: &str) -> Result<(), Error> {
    let kind = kind.trim();
    if PROOF_OF_POSSESSION_TYPES
        .iter()
        .any(|pop| kind.eq_ignore_ascii_case(pop))
    {
        return Err(Error::invalid(
            status,
            format!(
                "token_type is {:?}: such tokens need a proof of possession with every request, which entur-auth does not make; ask for bearer tokens (for DPoP, register the client without DPoP binding)",
                sanitize(kind, 32)
            ),
        ));
    }
    if !kind.eq_ignore_ascii_case("bearer") {
        tracing::debug!(token_type = %sanitize(kind, 32), "token_type is not Bearer; sending the token as a bearer, as the server's APIs expect");
    }
    Ok(())
}

/// `Retry-After` in seconds or as an HTTP date (RFC 9110 section 10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn redact(text: &str, secret: &str) -> String {
    if secret.len() >= 4 && text.contains(secret) {
        text.replace(secret, "[redacted]")
    } else {
        text.to_owned()
    }
}

/// Turns a transport failure into an [`Error`]: our own errors (size cap) pass through.
pub(crate) fn transport_error(error: BoxError) -> Error {
    match error.downcast::<Error>() {
        Ok(ours) => *ours,
        Err(other) => Error::unavailable(None, None, Some(Arc::from(other))),
    }
}

/// What to do about this code, given the answer's `WWW-Authenticate` auth-scheme and how
/// the client authenticated: a server that answers `Basic` to a secret sent in the body
/// wants HTTP Basic; one that refuses Basic credentials may not decode them as RFC 6749
/// says, or may want them in the body.
fn advice(code: &OAuthErrorCode, challenge: Option<&str>, client_auth: ClientAuth) -> &'static str {
    let asks_basic = challenge.is_some_and(|scheme| scheme.eq_ignore_ascii_case("basic"));
    let client_refused = asks_basic
        || matches!(
            code,
            OAuthErrorCode::InvalidClient | OAuthErrorCode::Unspecified
        );
    match client_auth {
        ClientAuth::Body if asks_basic => {
            "the token endpoint asks for HTTP Basic client authentication (WWW-Authenticate: Basic) but this client sent its secret in the request body: set TokenEndpoint::client_auth(ClientAuth::Basic) (Amazon Cognito and Spring Authorization Server, for instance, refuse body secrets from clients registered for client_secret_basic); if it is still refused, check client_id and client_secret"
        }
        ClientAuth::Basic if client_refused => {
            "check client_id and client_secret; if they are right, the server may not URL-decode HTTP Basic credentials as RFC 6749 section 2.3.1 requires: when the id or secret has characters other than letters, digits and - . _ *, try ClientAuth::BasicUnencoded; or the server may want them in the body (ClientAuth::Body)"
        }
        ClientAuth::BasicUnencoded if client_refused => {
            "check client_id and client_secret; if they are right, the server may URL-decode HTTP Basic credentials as RFC 6749 section 2.3.1 says (ClientAuth::Basic), or want them in the body (ClientAuth::Body)"
        }
        ClientAuth::PrivateKeyJwt if client_refused => {
            "check client_id, that the public key registered for the client is this private key's (and its kid), the assertion audience the server expects (TokenEndpoint::assertion_audience: its token URL or issuer), and that this machine's clock is right"
        }
        ClientAuth::JwtBearer if client_refused || matches!(code, OAuthErrorCode::InvalidGrant) => {
            "check the client id (the assertion's iss), that the key registered for the client is this one (and its kid), the assertion audience (TokenEndpoint::assertion_audience: Maskinporten wants its issuer), the scope the client may ask for, and that this machine's clock is right (Maskinporten allows 10 s)"
        }
        ClientAuth::TlsClientAuth if client_refused => {
            "check client_id and that the TLS client certificate is the one registered for the client (TokenSourceBuilder::client_certificate_files), and that it has not expired"
        }
        _ => code.advice(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::Environment;

    fn raw(status: u16, body: &str) -> RawResponse {
        RawResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    /// A request and the credentials it is built with, as the source prepares them.
    struct Prepared(TokenRequest, Credentials);

    impl Prepared {
        /// The request for a secret (signing nothing, so ready at once).
        fn to_request(&self) -> Request<TokenRequestBody> {
            use futures_util::FutureExt as _;
            self.0
                .build(&self.1)
                .now_or_never()
                .expect("a secret needs no signing")
                .unwrap()
                .0
        }
    }

    impl TokenRequest {
        fn new_for(endpoint: &TokenEndpoint, credentials: &Credentials) -> Result<Prepared, Error> {
            let request = TokenRequest::new(endpoint)?;
            request.check(credentials)?;
            Ok(Prepared(request, credentials.clone()))
        }
    }

    /// The answer read for a client that sends its secret in the body.
    fn read_response(response: &RawResponse, secret: &str) -> Result<Granted, Error> {
        super::read_response(response, secret, ClientAuth::Body)
    }

    async fn body_of(req: Request<TokenRequestBody>) -> String {
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn entur_dev_request_is_the_documented_json_post() {
        let creds = Credentials::new("Q2xpZW50X0lE", "super secret");
        let req = TokenRequest::new_for(&TokenEndpoint::entur(Environment::Dev), &creds)
            .unwrap()
            .to_request();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(
            req.uri().to_string(),
            "https://partner.dev.entur.org/oauth/token"
        );
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            req.headers()[USER_AGENT],
            concat!("entur-auth/", env!("CARGO_PKG_VERSION"))
        );
        assert!(req.headers().get(AUTHORIZATION).is_none());
        let body: serde_json::Value = serde_json::from_str(&body_of(req).await).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "grant_type": "client_credentials",
                "client_id": "Q2xpZW50X0lE",
                "client_secret": "super secret",
                "audience": "https://api.dev.entur.io",
            })
        );
    }

    #[tokio::test]
    async fn form_request_carries_scope_and_extra_params() {
        let endpoint = TokenEndpoint::new("https://auth.example.com/token")
            .unwrap()
            .audience("aud 1")
            .scope("read write")
            .param("resource", "urn:x");
        let creds = Credentials::new("id", "a&b=c");
        let req = TokenRequest::new_for(&endpoint, &creds)
            .unwrap()
            .to_request();
        assert_eq!(
            req.headers()[CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        let body = body_of(req).await;
        let pairs: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let expect = [
            ("grant_type", "client_credentials"),
            ("client_id", "id"),
            ("client_secret", "a&b=c"),
            ("audience", "aud 1"),
            ("scope", "read write"),
            ("resource", "urn:x"),
        ];
        assert_eq!(pairs.len(), expect.len());
        for ((k, v), (ek, ev)) in pairs.iter().zip(expect) {
            assert_eq!((k.as_str(), v.as_str()), (ek, ev));
        }
    }

    #[tokio::test]
    async fn basic_auth_follows_rfc_6749_section_2_3_1() {
        let endpoint = TokenEndpoint::new("https://auth.example.com/token")
            .unwrap()
            .client_auth(ClientAuth::Basic);
        let creds = Credentials::new("my client", "p+ss:wörd");
        let req = TokenRequest::new_for(&endpoint, &creds)
            .unwrap()
            .to_request();
        let header = req.headers()[AUTHORIZATION].clone();
        assert!(header.is_sensitive());
        let encoded = header.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        // '+' → %2B, ':' → %3A, 'ö' → %C3%B6, ' ' → '+'.
        assert_eq!(decoded, b"my+client:p%2Bss%3Aw%C3%B6rd");
        let body = body_of(req).await;
        assert!(!body.contains("client_secret") && !body.contains("client_id"));
    }

    #[test]
    fn the_user_agent_is_configurable_and_checked() {
        let endpoint = TokenEndpoint::new("https://auth.example.com/token").unwrap();
        let creds = Credentials::new("id", "s");
        let ua = |value: &str| {
            TokenRequest::new_for(&endpoint.clone().user_agent(value), &creds)
                .map(|r| r.to_request().headers()[USER_AGENT].clone())
        };
        assert_eq!(
            ua("acme-ticketing/2.1 (+https://acme.example) entur-auth/0.1").unwrap(),
            "acme-ticketing/2.1 (+https://acme.example) entur-auth/0.1"
        );
        for bad in [
            "",
            " acme/1",
            "acme/1 ",
            "acme\r\nX-Evil: 1",
            "acme\t1",
            "äcme/1",
            "a\x7f",
        ] {
            let err = ua(bad).err().unwrap();
            assert!(err.kind() == crate::ErrorKind::Config, "{bad:?}");
            assert!(err.report().to_string().contains("User-Agent"), "{err}");
            assert!(!err.report().to_string().contains('\n'), "{err}");
        }
    }

    #[tokio::test]
    async fn basic_unencoded_sends_the_credentials_as_they_are() {
        let endpoint = TokenEndpoint::new("https://auth.example.com/token")
            .unwrap()
            .client_auth(ClientAuth::BasicUnencoded);
        let creds = Credentials::new("my client", "p+ss:w/rd=%41ö");
        let req = TokenRequest::new_for(&endpoint, &creds)
            .unwrap()
            .to_request();
        let header = req.headers()[AUTHORIZATION].clone();
        assert!(header.is_sensitive());
        let expect = base64::engine::general_purpose::STANDARD.encode("my client:p+ss:w/rd=%41ö");
        assert_eq!(header.to_str().unwrap(), format!("Basic {expect}"));
        let body = body_of(req).await;
        assert!(!body.contains("client_secret") && !body.contains("client_id"));
        // Credentials form-encoding leaves alone: the same header either way.
        let plain = Credentials::new("client-1.a_b*", "S3cret-._*");
        let header = |auth| {
            let endpoint = endpoint.clone().client_auth(auth);
            TokenRequest::new_for(&endpoint, &plain)
                .unwrap()
                .to_request()
                .headers()[AUTHORIZATION]
                .clone()
        };
        assert_eq!(
            header(ClientAuth::Basic),
            header(ClientAuth::BasicUnencoded)
        );
        // A ':' in the id would move the split: refused at build.
        let err = TokenRequest::new_for(&endpoint, &Credentials::new("a:b", "s"))
            .err()
            .unwrap();
        assert!(err.kind() == crate::ErrorKind::Config);
        assert!(
            err.report().to_string().contains("ClientAuth::Basic"),
            "{err}"
        );
    }

    #[test]
    fn success_bodies_are_read_strictly() {
        let ok = read_response(
            &raw(
                200,
                r#"{"access_token":"abc","token_type":"bearer","expires_in":86400}"#,
            ),
            "s",
        )
        .unwrap();
        assert_eq!(ok.access_token, "abc");
        assert_eq!(ok.expires_in, Some(Duration::from_secs(86400)));
        for (body, what) in [
            ("not json", "not a JSON"),
            (r#"{"token_type":"Bearer"}"#, "no access_token"),
            (
                r#"{"access_token":"a","token_type":"MAC"}"#,
                "proof of possession",
            ),
            (
                r#"{"access_token":"a","token_type":"DPoP"}"#,
                "proof of possession",
            ),
            (r#"{"access_token":"a","expires_in":0}"#, "expires_in"),
            (r#"{"access_token":"a","expires_in":-5}"#, "expires_in"),
            (
                r#"{"access_token":"a","expires_in":"abc"}"#,
                "expires_in \"abc\"",
            ),
            (r#"{"access_token":"a","expires_in":""}"#, "expires_in"),
            (
                r#"{"access_token":"a","expires_in":"0"}"#,
                "expires_in 0 is not a positive",
            ),
            (
                r#"{"access_token":"a","expires_in":"-5"}"#,
                "expires_in -5 is not a positive",
            ),
            (
                r#"{"access_token":"a","expires_in":"0.5"}"#,
                "not a positive",
            ),
            (r#"{"access_token":"a","expires_in":"inf"}"#, "not a number"),
            (
                r#"{"access_token":"a","expires_in":"3600s"}"#,
                "not a number",
            ),
            (
                r#"{"access_token":"a","expires_in":"[3600]"}"#,
                "not a number",
            ),
            (r#"{"access_token":"a","expires_in":true}"#, "not a number"),
            (
                r#"{"access_token":"a","expires_in":{"s":1}}"#,
                "not a number",
            ),
        ] {
            let err = read_response(&raw(200, body), "s").err().unwrap();
            assert!(err.kind() == crate::ErrorKind::InvalidResponse, "{body}");
            assert!(err.report().to_string().contains(what), "{body}: {err}");
        }
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        for prefix in ["\u{FEFF}", " \u{FEFF}", "\u{FEFF}\r\n ", "\n\t"] {
            let body = format!(r#"{prefix}{{"access_token":"abc","expires_in":60}}"#);
            let ok =
                read_response(&raw(200, &body), "s").unwrap_or_else(|e| panic!("{prefix:?}: {e}"));
            assert_eq!(ok.access_token, "abc");
            let body = format!("{prefix}{{\"error\":\"invalid_client\"}}\r\n");
            let err = read_response(&raw(401, &body), "s").err().unwrap();
            assert_eq!(
                err.oauth_code(),
                Some(&OAuthErrorCode::InvalidClient),
                "{prefix:?}"
            );
        }
        // Only one, and only at the start.
        let err = read_response(&raw(200, "\u{FEFF}\u{FEFF}{}"), "s")
            .err()
            .unwrap();
        assert!(err.report().to_string().contains("not a JSON"), "{err}");
    }

    #[test]
    fn expires_in_as_a_numeric_string_is_accepted() {
        for (value, secs) in [
            (r#""3600""#, 3600.0),
            (r#"" 3600 ""#, 3600.0),
            (r#""3600.5""#, 3600.5),
            (r#""1""#, 1.0),
            (r#""1e3""#, 1000.0),
            ("3600", 3600.0),
            ("null", -1.0),
        ] {
            let body = format!(r#"{{"access_token":"a","expires_in":{value}}}"#);
            let ok = read_response(&raw(200, &body), "s").unwrap();
            let expect = (secs > 0.0).then(|| Duration::from_secs_f64(secs));
            assert_eq!(ok.expires_in, expect, "{value}");
        }
    }

    #[test]
    fn the_date_header_reaches_granted() {
        let body = r#"{"access_token":"abc","expires_in":60}"#;
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut r = raw(200, body);
        r.headers.insert(
            DATE,
            HeaderValue::from_str(&httpdate::fmt_http_date(date)).unwrap(),
        );
        assert_eq!(read_response(&r, "s").unwrap().server_date, Some(date));
        // The obsolete formats RFC 9110 still asks recipients to accept.
        r.headers.insert(
            DATE,
            HeaderValue::from_static("Tuesday, 14-Nov-23 22:13:20 GMT"),
        );
        assert_eq!(read_response(&r, "s").unwrap().server_date, Some(date));
        for bad in ["yesterday", "", "1700000000"] {
            r.headers.insert(DATE, HeaderValue::from_static(bad));
            assert_eq!(read_response(&r, "s").unwrap().server_date, None, "{bad}");
        }
        assert_eq!(
            read_response(&raw(200, body), "s").unwrap().server_date,
            None
        );
    }

    #[test]
    fn error_bodies_map_to_matchable_errors() {
        for (code, expect) in [
            ("invalid_client", OAuthErrorCode::InvalidClient),
            ("invalid_grant", OAuthErrorCode::InvalidGrant),
            ("unauthorized_client", OAuthErrorCode::UnauthorizedClient),
            ("access_denied", OAuthErrorCode::AccessDenied),
        ] {
            let body = format!(r#"{{"error":"{code}","error_description":"no"}}"#);
            let err = read_response(&raw(401, &body), "s").err().unwrap();
            assert_eq!(err.oauth_code(), Some(&expect));
        }
        // No body: the server refused without saying why.
        let err = read_response(&raw(403, ""), "s").err().unwrap();
        assert_eq!(err.oauth_code(), Some(&OAuthErrorCode::Unspecified));
        assert!(
            err.report().to_string().contains("no OAuth error code"),
            "{err}"
        );
        let err = read_response(&raw(503, "{}"), "s").err().unwrap();
        assert!(err.is_transient());
        let err = read_response(&raw(404, ""), "s").err().unwrap();
        assert!(err.kind() == crate::ErrorKind::Config);
    }

    fn with_headers(mut r: RawResponse, headers: &[(&'static str, &'static str)]) -> RawResponse {
        for (name, value) in headers {
            r.headers.append(*name, HeaderValue::from_static(value));
        }
        r
    }

    #[test]
    fn oauth_errors_are_read_in_any_status() {
        // In a 200: the code, not "the response has no access_token".
        let body = r#"{"error":"invalid_client","error_description":"unknown client"}"#;
        let err = read_response(&raw(200, body), "s").err().unwrap();
        assert!(err.is_credentials(), "{err:?}");
        assert_eq!(err.oauth_code(), Some(&OAuthErrorCode::InvalidClient));
        assert_eq!(err.status(), Some(StatusCode::OK));
        assert_eq!(err.description(), Some("unknown client"));
        assert!(
            err.report()
                .to_string()
                .contains("200 invalid_client: unknown client"),
            "{err}"
        );
        for status in [200, 201, 400, 401] {
            let err = read_response(&raw(status, r#"{"error":"access_denied"}"#), "s")
                .err()
                .unwrap();
            assert_eq!(
                err.oauth_code(),
                Some(&OAuthErrorCode::AccessDenied),
                "{status}"
            );
            assert!(err.is_credentials());
        }
        // "Later", not "no": transient, whatever the status, with the code kept.
        for (status, code, expect) in [
            (
                200,
                "temporarily_unavailable",
                OAuthErrorCode::TemporarilyUnavailable,
            ),
            (400, "slow_down", OAuthErrorCode::SlowDown),
            (400, "server_error", OAuthErrorCode::ServerError),
            (
                503,
                "temporarily_unavailable",
                OAuthErrorCode::TemporarilyUnavailable,
            ),
        ] {
            let body = format!(r#"{{"error":"{code}","error_description":"maintenance"}}"#);
            let mut r = raw(status, &body);
            r.headers
                .insert(RETRY_AFTER, HeaderValue::from_static("60"));
            let err = read_response(&r, "s").err().unwrap();
            assert!(err.is_transient(), "{status} {code}: {err:?}");
            assert!(!err.is_credentials());
            assert_eq!(err.oauth_code(), Some(&expect));
            assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
            let text = err.report().to_string();
            assert!(
                text.contains(&format!("answered {status} {code}: maintenance")),
                "{text}"
            );
        }
        // A 2xx with a token and an error field: the token.
        let body = r#"{"access_token":"abc","error":"invalid_client"}"#;
        assert_eq!(
            read_response(&raw(200, body), "s").unwrap().access_token,
            "abc"
        );
        // `error` that is not a string is not an OAuth error body.
        let err = read_response(&raw(200, r#"{"error":{"code":1}}"#), "s")
            .err()
            .unwrap();
        assert!(
            err.report().to_string().contains("no access_token"),
            "{err}"
        );
    }

    #[test]
    fn refusals_that_are_not_oauth_errors_say_what_they_most_likely_are() {
        let page = "<!DOCTYPE html>\n<html><head><TITLE>Attention Required! | Cloudflare</TITLE></head><body>Sorry, you have been blocked</body></html>";
        let r = with_headers(
            raw(403, page),
            &[
                ("content-type", "text/html; charset=UTF-8"),
                ("server", "cloudflare"),
            ],
        );
        let err = read_response(&r, "s").err().unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Blocked, "{err:?}");
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
        let shown = err.report().to_string();
        assert!(
            shown.contains(
                r#"an HTML page titled "Attention Required! | Cloudflare" (Server: cloudflare)"#
            ),
            "{shown}"
        );
        assert!(!err.is_credentials() && !err.is_transient());
        assert_eq!(err.oauth_code(), None);
        let text = err.report().to_string();
        for says in [
            "(or a gateway in front of it) answered 403 with an HTML page",
            "not an OAuth error",
            "more likely than bad credentials",
            "Server: cloudflare",
        ] {
            assert!(text.contains(says), "{says}: {text}");
        }
        assert!(!text.contains("rejected the credentials"), "{text}");

        // Recognised without a content type, and without a title.
        let err = read_response(&raw(401, "  <html><body>Forbidden</body></html>"), "s")
            .err()
            .unwrap();
        assert!(
            err.report()
                .to_string()
                .contains("answered 401 with an HTML page,"),
            "{err}"
        );
        // JSON that is not an OAuth error (API gateways), and text.
        let r = with_headers(
            raw(403, r#"{"message":"Forbidden"}"#),
            &[("content-type", "application/json")],
        );
        let err = read_response(&r, "s").err().unwrap();
        assert!(err.kind() == crate::ErrorKind::Blocked, "{err:?}");
        assert!(
            err.report()
                .to_string()
                .contains(r#"a JSON body without an OAuth error code ({"message":"Forbidden"})"#),
            "{err}"
        );
        let r = with_headers(
            raw(400, "Request blocked.\r\nRef: 42 hunter22"),
            &[("content-type", "text/plain")],
        );
        let err = read_response(&r, "hunter22").err().unwrap();
        let text = err.report().to_string();
        assert!(
            text.contains("a text/plain body (Request blocked. Ref: 42 [redacted])"),
            "{text}"
        );
        assert!(!text.contains("hunter22"), "{text}");

        // A challenge says the server itself refused the client (a servlet container's
        // Basic authentication, with its HTML error page): rejected credentials.
        let r = with_headers(
            raw(401, "<html><title>401</title></html>"),
            &[
                ("content-type", "text/html"),
                ("www-authenticate", r#"Basic realm="oauth2/client""#),
            ],
        );
        let err = read_response(&r, "s").err().unwrap();
        assert_eq!(
            err.oauth_code(),
            Some(&OAuthErrorCode::Unspecified),
            "{err:?}"
        );
        assert!(
            matches!(err.inner(), Kind::Rejected { challenge: Some(c), .. } if c == "Basic"),
            "{err:?}"
        );
        // And so does an empty body.
        let err = read_response(&raw(401, " "), "s").err().unwrap();
        assert!(err.is_credentials(), "{err:?}");
    }

    #[test]
    fn client_authentication_mismatches_are_named() {
        let refusal = |challenge: Option<&'static str>, code: &str, auth: ClientAuth| {
            let body = format!(r#"{{"error":"{code}"}}"#);
            let mut r = raw(401, &body);
            if let Some(challenge) = challenge {
                r.headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            super::read_response(&r, "s", auth).err().unwrap()
        };
        // Cognito, Spring Authorization Server: the secret was sent in the body to a client
        // registered for client_secret_basic.
        let err = refusal(
            Some(r#"Basic realm="cognito""#),
            "invalid_client",
            ClientAuth::Body,
        );
        assert!(
            matches!(err.inner(), Kind::Rejected { challenge: Some(c), .. } if c == "Basic"),
            "{err:?}"
        );
        let text = err.report().to_string();
        assert!(text.contains("WWW-Authenticate: Basic"), "{text}");
        assert!(text.contains("client_auth(ClientAuth::Basic)"), "{text}");
        // Among other challenges, in any case.
        let err = refusal(
            Some(r#"Bearer realm="x", basic realm="y""#),
            "invalid_client",
            ClientAuth::Body,
        );
        assert!(
            err.report()
                .to_string()
                .contains("client_auth(ClientAuth::Basic)"),
            "{err}"
        );
        // Already Basic: the encoding, or the body.
        for challenge in [Some("Basic"), None] {
            let text = refusal(challenge, "invalid_client", ClientAuth::Basic)
                .report()
                .to_string();
            assert!(
                text.contains("ClientAuth::BasicUnencoded") && text.contains("ClientAuth::Body"),
                "{text}"
            );
        }
        let text = refusal(Some("Basic"), "invalid_client", ClientAuth::BasicUnencoded)
            .report()
            .to_string();
        assert!(
            text.contains("(ClientAuth::Basic)") && text.contains("ClientAuth::Body"),
            "{text}"
        );
        // No challenge, secret in the body: the plain advice.
        let text = refusal(None, "invalid_client", ClientAuth::Body)
            .report()
            .to_string();
        assert!(text.contains("check client_id and client_secret"), "{text}");
        assert!(!text.contains("ClientAuth"), "{text}");
        // Other codes keep their own advice when nothing points at client authentication.
        let text = refusal(None, "invalid_scope", ClientAuth::Basic)
            .report()
            .to_string();
        assert!(text.contains("check the requested scope"), "{text}");
    }

    #[test]
    fn echoed_secrets_are_redacted() {
        let body = r#"{"error":"invalid_client","error_description":"bad secret hunter22"}"#;
        let err = read_response(&raw(401, body), "hunter22").err().unwrap();
        assert!(!err.report().to_string().contains("hunter22"), "{err}");
        assert!(!format!("{err:?}").contains("hunter22"));
    }

    #[test]
    fn redirects_are_configuration_errors_naming_the_location() {
        let mut r = raw(301, "");
        r.headers.insert(
            LOCATION,
            HeaderValue::from_static("https://elsewhere.example/t"),
        );
        let err = read_response(&r, "s").err().unwrap();
        assert!(err.kind() == crate::ErrorKind::Config);
        assert!(err
            .report()
            .to_string()
            .contains("https://elsewhere.example/t"));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }
}
