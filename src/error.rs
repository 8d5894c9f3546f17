//! The one error type of this crate.
//!
//! Every failure to obtain a token is an [`Error`]. Services built by this crate fail with
//! [`BoxError`], as tower middleware does; use `downcast_ref::<entur_auth::Error>()` to
//! get the variant back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::config::ClientAuth;

/// The error type tower services use: what the inner service or this crate failed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a token could not be obtained, why the configuration was refused, or why the API
/// refused a request.
///
/// The variants separate what a caller can act on: [`Error::Rejected`] means the
/// credentials or the grant are wrong and waiting will not help; [`Error::Unavailable`]
/// and [`Error::Timeout`] are transient; [`Error::InvalidResponse`] means the token
/// endpoint answered something that is not a usable token; [`Error::Config`] means the
/// configuration is incomplete or unsafe. The last four come from the API's answers, through
/// [`ErrorForStatus`](crate::error_for_status::ErrorForStatus).
///
/// Neither `Display` nor `Debug` ever contains the client secret or a token. The error is
/// cheap to clone: every caller waiting on one failed fetch receives the same error.
///
/// # `Display` and `source()`
///
/// `Display` is the whole story in one line: what happened, where (the token endpoint's
/// host, for a network failure), why (the messages of the underlying transport error, each
/// once, repeats removed) and what to do. So [`source`](std::error::Error::source) returns
/// `None`: an error reporter that prints an error and then its sources (anyhow's `{:#}`,
/// eyre, a `tracing` field) shows each cause once, not once here and again below. The
/// transport error itself is still there, in `Unavailable`'s `cause`, and the failure behind
/// `NotReady` in its `last_error`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Error {
    /// The authorization server refused the credentials or the grant (RFC 6749 section 5.2):
    /// an OAuth2 error answer (in any status, 200 included), or a 400, 401 or 403 with an
    /// empty body or an HTTP authentication challenge.
    #[non_exhaustive]
    Rejected {
        /// The OAuth2 error code, e.g. [`OAuthErrorCode::InvalidClient`];
        /// [`OAuthErrorCode::Unspecified`] when the answer carried none.
        code: OAuthErrorCode,
        /// The server's `error_description`, shortened and with control characters removed.
        description: Option<String>,
        /// The HTTP status of the answer.
        status: StatusCode,
        /// The auth-scheme of the answer's `WWW-Authenticate` challenge (`Basic` when one of
        /// them is), if it had one: a server that answers `Basic` asks for HTTP Basic client
        /// authentication.
        challenge: Option<String>,
        /// How the refused request authenticated the client.
        client_auth: ClientAuth,
    },
    /// The token endpoint could not be reached or answered with a temporary failure
    /// (connection error, 5xx, 429, or the OAuth2 errors `temporarily_unavailable`,
    /// `server_error` and `slow_down` in any status).
    #[non_exhaustive]
    Unavailable {
        /// The HTTP status, when the server answered.
        status: Option<StatusCode>,
        /// How long the server asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
        /// The underlying transport error, when there was one.
        cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
        /// The OAuth2 error code, when the answer carried one.
        code: Option<OAuthErrorCode>,
        /// The server's `error_description`, shortened and with control characters removed.
        description: Option<String>,
        /// The token URL's host (and port, when the URL has one) that could not be reached,
        /// for a network failure. Never a user name or password.
        host: Option<String>,
    },
    /// The token endpoint, or more likely a gateway in front of it (a WAF, CDN or proxy),
    /// refused the request (400, 401 or 403) with something that is not an OAuth2 error: an
    /// HTML page, JSON without an `error` code, plain text. Not a verdict on the credentials:
    /// a blocked request, or a token URL that does not point at the token endpoint, is more
    /// likely. Retried on the slow schedule, like rejected credentials.
    #[non_exhaustive]
    NotOAuthRefusal {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// What the answer was, e.g. `an HTML page titled "Attention Required! | Cloudflare"`:
        /// shortened, with control characters and the client secret removed.
        answer: String,
        /// The answer's `Server` header (e.g. `cloudflare`, `awselb/2.0`), shortened.
        server: Option<String>,
    },
    /// The token endpoint did not answer within the fetch timeout.
    #[non_exhaustive]
    Timeout {
        /// The fetch timeout that elapsed.
        after: Duration,
    },
    /// [`TokenSource::ready`](crate::TokenSource::ready) waited its whole deadline without
    /// a token, through transient failures only (unreachable, timeouts, 5xx, 429), or while
    /// the first token request was still unanswered.
    #[non_exhaustive]
    NotReady {
        /// The deadline that passed.
        waited: Duration,
        /// The last transient failure, if an attempt failed by then.
        last_error: Option<Box<Error>>,
    },
    /// The token endpoint answered, but not with a usable token.
    #[non_exhaustive]
    InvalidResponse {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// What was wrong with it.
        reason: String,
    },
    /// The configuration is incomplete or unsafe (for example a plain `http://` token URL).
    #[non_exhaustive]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The API refused the token (401, gRPC `UNAUTHENTICATED`, or an Entur 408). From
    /// [`ErrorForStatus`](crate::error_for_status::ErrorForStatus). `refusal` says what was
    /// done about it: whether the token was dropped and a new one fetched, whether forced
    /// refreshes are backing off, and whether the request was replayed with the new token.
    #[non_exhaustive]
    Unauthorized {
        /// Whether it came as a gRPC status.
        grpc: bool,
        /// What [`EnturAuth`](crate::EnturAuth) and the replay did; `None` when no
        /// `EnturAuth` below saw the answer.
        refusal: Option<crate::layer::Refusal>,
    },
    /// The API accepted the token but it lacks the permission (403, gRPC
    /// `PERMISSION_DENIED`, or a 401 with `error="insufficient_scope"`). From
    /// [`ErrorForStatus`](crate::error_for_status::ErrorForStatus).
    #[non_exhaustive]
    PermissionDenied {
        /// Whether it came as a gRPC status.
        grpc: bool,
    },
    /// A request sent over plain `http://` was redirected (Entur redirects plain HTTP to
    /// HTTPS). The redirect was not followed. From
    /// [`ErrorForStatus`](crate::error_for_status::ErrorForStatus).
    #[non_exhaustive]
    InsecureRedirect {
        /// The redirect status.
        status: StatusCode,
        /// Where the API redirected to, without its query (which may hold credentials).
        location: Option<String>,
        /// Whether the request carried the bearer token (over plain HTTP).
        token_sent: bool,
    },
    /// The API answered 405: usually a request over plain HTTP to an HTTPS-only API.
    /// From [`ErrorForStatus`](crate::error_for_status::ErrorForStatus).
    MethodNotAllowed,
    /// [`EnturAuth`](crate::EnturAuth) refused to send the bearer token over plain
    /// `http://` to a host that is not loopback: the token would cross the network in
    /// cleartext. Nothing was sent.
    #[non_exhaustive]
    CleartextRefused {
        /// The request's host.
        host: String,
    },
    /// The background refresher is not running (its tokio runtime was shut down or stopped
    /// running it) and this caller could not take it over.
    #[non_exhaustive]
    RefresherStopped {
        /// Why, and what to do.
        reason: String,
    },
    /// A bug in entur-auth (or in a transport or store it called) was contained.
    #[non_exhaustive]
    Internal {
        /// What happened.
        reason: String,
    },
}

/// The `error` code of an OAuth2 error response (RFC 6749 section 5.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OAuthErrorCode {
    /// `invalid_client`: unknown client, wrong secret or unsupported authentication method.
    InvalidClient,
    /// `invalid_grant`: the grant is invalid; for Entur often a client id from the wrong domain.
    InvalidGrant,
    /// `unauthorized_client`: the client may not use this grant; for Entur often a changed secret.
    UnauthorizedClient,
    /// `access_denied`: the server refused, often because the audience is not allowed.
    AccessDenied,
    /// `invalid_scope`: the requested scope is unknown or not allowed.
    InvalidScope,
    /// `invalid_request`: a parameter is missing or malformed.
    InvalidRequest,
    /// `unsupported_grant_type`: the server does not offer the client credentials grant.
    UnsupportedGrantType,
    /// `temporarily_unavailable`: the server is overloaded or down for maintenance; an
    /// [`Error::Unavailable`], retried with backoff.
    TemporarilyUnavailable,
    /// `server_error`: the server failed; an [`Error::Unavailable`], retried with backoff.
    ServerError,
    /// `slow_down` (RFC 8628): asked to make requests less often; an [`Error::Unavailable`],
    /// retried with backoff.
    SlowDown,
    /// The server refused (400, 401 or 403) without a recognised error body.
    Unspecified,
    /// Another code, as the server sent it (shortened, control characters removed).
    Other(String),
}

impl OAuthErrorCode {
    pub(crate) fn parse(code: &str) -> Self {
        match code {
            "invalid_client" => Self::InvalidClient,
            "invalid_grant" => Self::InvalidGrant,
            "unauthorized_client" => Self::UnauthorizedClient,
            "access_denied" => Self::AccessDenied,
            "invalid_scope" => Self::InvalidScope,
            "invalid_request" => Self::InvalidRequest,
            "unsupported_grant_type" => Self::UnsupportedGrantType,
            "temporarily_unavailable" => Self::TemporarilyUnavailable,
            "server_error" => Self::ServerError,
            "slow_down" => Self::SlowDown,
            other => Self::Other(sanitize(other, 64)),
        }
    }

    /// Whether the code says "try again later" rather than "no": those answers are
    /// [`Error::Unavailable`], retried with backoff, in whatever status they come.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::TemporarilyUnavailable | Self::ServerError | Self::SlowDown
        )
    }

    /// The code as the server spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::AccessDenied => "access_denied",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidRequest => "invalid_request",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::ServerError => "server_error",
            Self::SlowDown => "slow_down",
            Self::Unspecified => "unspecified",
            Self::Other(code) => code,
        }
    }

    fn advice(&self) -> &'static str {
        match self {
            Self::InvalidClient => "check client_id and client_secret",
            Self::InvalidGrant => {
                "check that client_id belongs to this environment's domain and that the server allows the client credentials grant"
            }
            Self::UnauthorizedClient => {
                "the client_secret may have been changed: check it is the current one"
            }
            Self::AccessDenied => {
                "check that the audience matches the token server (Entur: the same environment for both)"
            }
            Self::InvalidScope => "check the requested scope",
            Self::InvalidRequest => {
                "check the request encoding (JSON or form) and client authentication (body or Basic) the server expects"
            }
            Self::UnsupportedGrantType => "this server does not offer the client credentials grant",
            Self::TemporarilyUnavailable | Self::ServerError | Self::SlowDown => {
                "the token endpoint asks to try again later; retrying with backoff"
            }
            Self::Unspecified => {
                "check client_id, client_secret and audience; if they are right, a gateway in front of the token endpoint may have refused the request"
            }
            Self::Other(_) => "check client_id, client_secret and audience",
        }
    }

    /// What to do about this code, given the answer's `WWW-Authenticate` auth-scheme and how
    /// the client authenticated: a server that answers `Basic` to a secret sent in the body
    /// wants HTTP Basic; one that refuses Basic credentials may not decode them as RFC 6749
    /// says, or may want them in the body.
    fn advice_for(&self, challenge: Option<&str>, client_auth: ClientAuth) -> &'static str {
        let asks_basic = challenge.is_some_and(|scheme| scheme.eq_ignore_ascii_case("basic"));
        let client_refused = asks_basic || matches!(self, Self::InvalidClient | Self::Unspecified);
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
            ClientAuth::JwtBearer if client_refused || matches!(self, Self::InvalidGrant) => {
                "check the client id (the assertion's iss), that the key registered for the client is this one (and its kid), the assertion audience (TokenEndpoint::assertion_audience: Maskinporten wants its issuer), the scope the client may ask for, and that this machine's clock is right (Maskinporten allows 10 s)"
            }
            ClientAuth::TlsClientAuth if client_refused => {
                "check client_id and that the TLS client certificate is the one registered for the client (TokenSourceBuilder::client_certificate_files), and that it has not expired"
            }
            _ => self.advice(),
        }
    }
}

impl fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Self::Config {
            reason: reason.into(),
        }
    }

    pub(crate) fn refresher_stopped(reason: impl Into<String>) -> Self {
        Self::RefresherStopped {
            reason: reason.into(),
        }
    }

    pub(crate) fn internal(reason: impl Into<String>) -> Self {
        Self::Internal {
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(status: StatusCode, reason: impl Into<String>) -> Self {
        Self::InvalidResponse {
            status,
            reason: reason.into(),
        }
    }

    pub(crate) fn unavailable(
        status: Option<StatusCode>,
        retry_after: Option<Duration>,
        cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Unavailable {
            status,
            retry_after,
            cause,
            code: None,
            description: None,
            host: None,
        }
    }

    /// A refusal of a client that sent its secret in the body, without a challenge.
    #[cfg(test)]
    pub(crate) fn rejected(
        code: OAuthErrorCode,
        description: Option<String>,
        status: StatusCode,
    ) -> Self {
        Self::Rejected {
            code,
            description,
            status,
            challenge: None,
            client_auth: ClientAuth::Body,
        }
    }

    /// `true` when retrying soon may succeed: the token endpoint was unreachable, overloaded
    /// or too slow. Rejected credentials, invalid responses and configuration errors are not
    /// transient; this crate retries them only on a slow schedule.
    ///
    /// [`Error::NotReady`] is transient too: it is made of transient failures.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Timeout { .. } | Self::NotReady { .. }
        )
    }

    /// `true` when the authorization server refused the credentials or the grant.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }

    /// The OAuth2 error code, for [`Error::Rejected`], and for [`Error::Unavailable`] when
    /// the answer carried one (`temporarily_unavailable`, say).
    pub fn oauth_code(&self) -> Option<&OAuthErrorCode> {
        match self {
            Self::Rejected { code, .. } => Some(code),
            Self::Unavailable { code, .. } => code.as_ref(),
            _ => None,
        }
    }

    /// How long the token endpoint asked us to wait, from its `Retry-After` header.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            Self::NotReady {
                last_error: Some(last),
                ..
            } => last.retry_after(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected {
                code,
                description,
                status,
                challenge,
                client_auth,
            } => {
                write!(
                    f,
                    "token endpoint rejected the credentials ({}",
                    status.as_u16()
                )?;
                match code {
                    OAuthErrorCode::Unspecified => f.write_str(", no OAuth error code")?,
                    code => write!(f, " {code}")?,
                }
                if let Some(description) = description {
                    write!(f, ": {description}")?;
                }
                if let Some(scheme) = challenge {
                    write!(f, "; WWW-Authenticate: {scheme}")?;
                }
                write!(
                    f,
                    "): {}",
                    code.advice_for(challenge.as_deref(), *client_auth)
                )
            }
            Self::NotOAuthRefusal {
                status,
                answer,
                server,
            } => {
                write!(
                    f,
                    "the token endpoint (or a gateway in front of it) answered {} with {answer}",
                    status.as_u16()
                )?;
                if let Some(server) = server {
                    write!(f, " (Server: {server})")?;
                }
                f.write_str(
                    ", not an OAuth error: a WAF, CDN, proxy or wrong URL is more likely than bad credentials; check the token URL, and whether a gateway in front of the token endpoint blocks requests from this host or client (it sees the User-Agent set with TokenEndpoint::user_agent); retrying on the slow schedule",
                )
            }
            Self::Unavailable {
                status,
                retry_after,
                cause,
                code,
                description,
                host,
            } => {
                f.write_str("token endpoint ")?;
                if let Some(host) = host {
                    write!(f, "{host} ")?;
                }
                match status {
                    Some(status) => write!(f, "unavailable (answered {}", status.as_u16())?,
                    None => f.write_str("unreachable")?,
                }
                if status.is_some() {
                    if let Some(code) = code {
                        write!(f, " {code}")?;
                    }
                    if let Some(description) = description {
                        write!(f, ": {description}")?;
                    }
                    f.write_str(")")?;
                }
                let cause = cause.as_ref().map(|c| chain(c.as_ref()));
                if let Some(cause) = &cause {
                    write!(f, " ({cause})")?;
                }
                if let Some(wait) = retry_after {
                    write!(f, "; it asked to retry after {} s", wait.as_secs())?;
                }
                f.write_str("; retrying with backoff, the current token (if any) is still used: ")?;
                if cause.is_some_and(|c| c.contains("certificate")) {
                    f.write_str("the token endpoint's TLS certificate was not accepted; if it comes from a private CA, add the CA with TokenSourceBuilder::extra_root_certificate_pem")
                } else {
                    match host {
                        Some(host) => write!(f, "check network access to {host} (DNS, firewall, proxy) if this persists"),
                        None => f.write_str("check network access to the token URL if this persists"),
                    }
                }
            }
            Self::Timeout { after } => write!(
                f,
                "token endpoint did not answer within {} ms; retrying with backoff: check network access to the token URL, or raise the fetch timeout",
                after.as_millis()
            ),
            Self::NotReady { waited, last_error } => {
                write!(
                    f,
                    "no access token within the {} startup deadline of TokenSource::ready: ",
                    seconds(*waited)
                )?;
                match last_error {
                    Some(last) => write!(f, "the token endpoint kept failing transiently; the last attempt: {last}"),
                    None => f.write_str("the first token request was still unanswered; check network access to the token URL, or give ready() a longer deadline than the fetch timeout"),
                }
            }
            Self::InvalidResponse { status, reason } => write!(
                f,
                "token endpoint answered {} but not with a usable token: {reason}; check that the token URL points at an OAuth2 token endpoint",
                status.as_u16()
            ),
            Self::Config { reason } => write!(f, "invalid configuration: {reason}"),
            Self::Unauthorized { grpc, refusal } => unauthorized(f, *grpc, refusal.as_ref()),
            Self::PermissionDenied { grpc } => write!(
                f,
                "the API accepted the token but refused the request ({}): the client lacks the permission (scope) this endpoint needs; ask Entur to grant it or check the client is set up for this API",
                if *grpc { "gRPC PERMISSION_DENIED" } else { "403 Forbidden" }
            ),
            Self::InsecureRedirect {
                status,
                location,
                token_sent,
            } => {
                write!(
                    f,
                    "the API answered {} to a request over plain http://, redirecting to {}; the redirect was not followed: use https://",
                    status.as_u16(),
                    location.as_deref().unwrap_or("an unnamed location")
                )?;
                if *token_sent {
                    f.write_str(" (the bearer token was sent with the plain-http request: treat it as exposed)")
                } else {
                    f.write_str(" (no bearer token was sent)")
                }
            }
            Self::CleartextRefused { host } => write!(
                f,
                "refused to send the bearer token over plain http:// to {host}: it would cross the network in cleartext; use https://, or, if this host is reached over a network you trust (a sidecar, a mesh with mTLS), allow it with EnturAuthLayer::allow_plain_http(true) (reqwest: EnturAuthMiddleware::allow_plain_http(true))"
            ),
            Self::RefresherStopped { reason } => {
                write!(f, "the token refresher is not running: {reason}")
            }
            Self::Internal { reason } => write!(f, "internal error in entur-auth: {reason}"),
            Self::MethodNotAllowed => f.write_str(
                "the API answered 405 Method Not Allowed: this usually means the request went over plain http://, which Entur's APIs do not support; use https:// (or check the HTTP method)",
            ),
        }
    }
}

/// `source()` is `None`: `Display` already says everything, causes included (see
/// [`Error`]'s documentation).
impl std::error::Error for Error {}

/// Says what happened to a refused token and what to do, from the [`Refusal`] the auth layer
/// and the replay recorded.
///
/// [`Refusal`]: crate::layer::Refusal
fn unauthorized(
    f: &mut fmt::Formatter<'_>,
    grpc: bool,
    refusal: Option<&crate::layer::Refusal>,
) -> fmt::Result {
    use crate::classify::Reauth;
    use crate::layer::ReplayOutcome as Replay;
    use crate::source::Invalidation;

    let answer = match refusal.map(|r| r.reason) {
        Some(Reauth::SessionTimeout) => "408: the token expired during the session",
        _ if grpc => "gRPC UNAUTHENTICATED",
        _ => "401 Unauthorized",
    };
    write!(f, "the API refused the token ({answer})")?;
    let Some(refusal) = refusal else {
        return f.write_str(
            "; no EnturAuth layer below saw the answer, so the token was not dropped: build the stack with EnturAuthLayer::with_replay(), or put ErrorForStatusLayer outside EnturAuthLayer",
        );
    };
    const CHECK: &str = "the client_secret may have changed, or the token's audience is not this API's (Entur: the token server and the API must be the same environment)";
    match (refusal.invalidation, refusal.replay) {
        (Invalidation::RateLimited { retry_in }, replay) => write!(
            f,
            " right after a forced refresh: the API keeps refusing new tokens, so re-authentication backs off (next in {} s){}; {CHECK}",
            retry_in.as_secs().max(1),
            match replay {
                Replay::Replayed => " and the request, replayed with the same token, was refused again",
                _ => " and the request was not replayed",
            }
        ),
        (_, Replay::Replayed) => write!(
            f,
            " again after re-authenticating: the request was replayed with a new token and refused too; {CHECK}"
        ),
        (Invalidation::SourceGone, _) => f.write_str(
            "; the token source was dropped, so no new token is coming",
        ),
        (_, Replay::NotReplayable) => f.write_str(
            "; a new token is being fetched, but this request was not replayed because its body cannot be sent twice (a stream): send it again, or buffer bodies with BufferRequestLayer",
        ),
        _ => f.write_str(
            "; a new token is being fetched, but this request was not replayed (no replay layer around EnturAuth): send it again, or build the stack with EnturAuthLayer::with_replay()",
        ),
    }
}

/// A duration for a message: whole seconds when it is whole ("30 s"), else milliseconds.
fn seconds(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// The messages of an error chain, outermost first, each once: a message that an outer one
/// already contains (hyper's and hyper-util's errors repeat their cause's text, and an
/// `io::Error` wraps another error's message) is left out. For a TLS or connection failure
/// this ends with the part that says what went wrong ("invalid peer certificate:
/// UnknownIssuer", "Connection refused").
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut messages = vec![error.to_string()];
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
        let message = current.to_string();
        if message.is_empty() || messages.iter().any(|m| m.contains(&message)) {
            continue;
        }
        match messages.last_mut() {
            // The inner one repeats the outer one and says more: keep only the inner one.
            Some(last) if message.contains(last.as_str()) => *last = message,
            _ => messages.push(message),
        }
    }
    messages.join(": ")
}

/// Shortens text from a server to `max` characters and removes control characters, so that
/// an error message stays one readable line.
pub(crate) fn sanitize(text: &str, max: usize) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(max).collect();
    if text.chars().filter(|c| !c.is_control()).count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_kept() {
        for code in [
            "invalid_client",
            "invalid_grant",
            "unauthorized_client",
            "access_denied",
            "invalid_scope",
            "invalid_request",
            "unsupported_grant_type",
            "temporarily_unavailable",
            "server_error",
            "slow_down",
        ] {
            let parsed = OAuthErrorCode::parse(code);
            assert!(!matches!(parsed, OAuthErrorCode::Other(_)), "{code}");
            assert_eq!(parsed.as_str(), code);
        }
        assert_eq!(
            OAuthErrorCode::parse("slow_down\n"),
            OAuthErrorCode::Other("slow_down".into())
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = Error::rejected(
            OAuthErrorCode::InvalidClient,
            None,
            StatusCode::UNAUTHORIZED,
        );
        let text = e.to_string();
        assert!(text.contains("invalid_client"), "{text}");
        assert!(text.contains("check client_id and client_secret"), "{text}");
        assert!(e.is_rejected() && !e.is_transient());

        let e = Error::unavailable(
            Some(StatusCode::SERVICE_UNAVAILABLE),
            Some(Duration::from_secs(7)),
            None,
        );
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.to_string().contains("503"), "{e}");
    }

    /// An error with a message and a source, as transports nest them.
    #[derive(Debug)]
    struct Nested(&'static str, Option<Box<Nested>>);

    impl fmt::Display for Nested {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Nested {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    /// hyper-util's shape: an outer message, one that repeats the cause, the cause.
    fn refused() -> Nested {
        Nested(
            "client error (Connect)",
            Some(Box::new(Nested(
                "tcp connect error: Connection refused (os error 111)",
                Some(Box::new(Nested("Connection refused (os error 111)", None))),
            ))),
        )
    }

    /// What an error reporter prints: the error, then each source.
    fn report(error: &(dyn std::error::Error + 'static)) -> String {
        let mut text = error.to_string();
        let mut next = error.source();
        while let Some(e) = next {
            text.push_str("\ncaused by: ");
            text.push_str(&e.to_string());
            next = e.source();
        }
        text
    }

    #[test]
    fn a_rendered_chain_says_the_cause_once() {
        let unreachable = Error::Unavailable {
            status: None,
            retry_after: None,
            cause: Some(Arc::new(refused())),
            code: None,
            description: None,
            host: Some("partner.dev.entur.org".into()),
        };
        let text = report(&unreachable);
        assert_eq!(text.matches("Connection refused").count(), 1, "{text}");
        assert_eq!(text.matches("tcp connect error").count(), 1, "{text}");
        assert!(
            text.starts_with("token endpoint partner.dev.entur.org unreachable (client error (Connect): tcp connect error: Connection refused (os error 111))"),
            "{text}"
        );
        assert!(
            text.contains("check network access to partner.dev.entur.org"),
            "{text}"
        );

        let not_ready = Error::NotReady {
            waited: Duration::from_secs(30),
            last_error: Some(Box::new(unreachable)),
        };
        let text = report(&not_ready);
        assert_eq!(text.matches("Connection refused").count(), 1, "{text}");
        assert!(text.contains("partner.dev.entur.org"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn chain_drops_repeats_either_way_round() {
        // The outer message repeats the inner one.
        let e = Nested(
            "error trying to connect: dns error: no such host",
            Some(Box::new(Nested(
                "dns error: no such host",
                Some(Box::new(Nested("no such host", None))),
            ))),
        );
        assert_eq!(
            chain(&e),
            "error trying to connect: dns error: no such host"
        );
        // The inner message repeats the outer one and says more.
        let e = Nested(
            "tcp connect error",
            Some(Box::new(Nested("tcp connect error: timed out", None))),
        );
        assert_eq!(chain(&e), "tcp connect error: timed out");
        // Distinct messages are all kept, in order.
        assert_eq!(
            chain(&refused()),
            "client error (Connect): tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn sanitize_strips_control_characters_and_shortens() {
        assert_eq!(sanitize("a\r\nb", 10), "ab");
        assert_eq!(sanitize("abcdef", 3), "abc…");
    }
}
