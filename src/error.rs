//! The error of obtaining a token, and of configuring a source: one opaque [`Error`], as
//! hyper's and reqwest's are, with an [`ErrorKind`] to match on, methods for what a caller
//! acts on (`is_transient`, `is_credentials`, `status`, `oauth_code`, `retry_after`), the
//! cause behind it as its [`source`](std::error::Error::source), and what to do as its
//! [`hint`](Error::hint).
//!
//! What the API says about a request is not an [`Error`]: the middleware's own errors are
//! [`Refused`](crate::error_for_status::Refused) and
//! [`CleartextRefused`](crate::auth::CleartextRefused). Services built by this crate fail
//! with [`BoxError`], as tower middleware does; `downcast_ref` gives each back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// The error type tower services use: what the inner service or this crate failed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a token could not be obtained, or why the configuration was refused.
///
/// Match on [`kind`](Self::kind), or ask what a caller acts on:
/// [`is_credentials`](Self::is_credentials) (the credentials or the grant are wrong: waiting
/// will not help), [`is_transient`](Self::is_transient) (unreachable, overloaded, too slow:
/// retried with backoff).
///
/// `Display` says what happened in one line; [`source`](std::error::Error::source) is the
/// cause behind it (the transport's error, or the last failure before a startup deadline);
/// [`hint`](Self::hint) says what to do; [`report`](Self::report) writes all three, as this
/// crate's logs do. None of them ever contains the client secret or a token. The error is
/// cheap to clone: every caller waiting on one failed fetch receives the same error.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Kind>,
}

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The authorization server refused the credentials or the grant (RFC 6749 section 5.2):
    /// an OAuth2 error answer (in any status, 200 included), or a 400, 401 or 403 with an
    /// empty body or an HTTP authentication challenge. See [`Error::oauth_code`].
    Rejected,
    /// The token endpoint, or more likely a gateway in front of it (a WAF, CDN or proxy),
    /// refused the request (400, 401 or 403) with something that is not an OAuth2 error: an
    /// HTML page, JSON without an `error` code, plain text. Not a verdict on the
    /// credentials; retried on the slow schedule.
    Blocked,
    /// The token endpoint could not be reached or answered with a temporary failure
    /// (connection error, 5xx, 429, or the OAuth2 errors `temporarily_unavailable`,
    /// `server_error` and `slow_down` in any status).
    Unavailable,
    /// The token endpoint did not answer within the fetch timeout.
    Timeout,
    /// [`TokenSource::ready`](crate::TokenSource::ready) waited its whole deadline without
    /// a token, through transient failures only, or while the first token request was still
    /// unanswered. The last failure is the [`source`](std::error::Error::source).
    NotReady,
    /// The token endpoint answered, but not with a usable token.
    InvalidResponse,
    /// The configuration is incomplete or unsafe (for example a plain `http://` token URL).
    Config,
    /// The [`Signer`](crate::assertion::Signer) of the client assertion (a key in a KMS or an
    /// HSM) failed; its error is the [`source`](std::error::Error::source).
    /// [`is_transient`](Error::is_transient) when the signer said the failure passes (it
    /// returned an [`assertion::Transient`](crate::assertion::Transient)): retried on the
    /// fast schedule, and [`TokenSource::ready`](crate::TokenSource::ready) waits through
    /// it. Any other signer error is retried on the slow schedule.
    Signer,
    /// The background refresher is not running (its tokio runtime was shut down or stopped
    /// running it) and this caller could not take it over.
    Stopped,
    /// A bug in entur-auth (or in a transport or store it called) was contained.
    Internal,
}

/// What an [`Error`] holds, by kind. Crate-private: the public face is [`ErrorKind`] and the
/// accessors.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Rejected {
        code: OAuthErrorCode,
        description: Option<String>,
        status: StatusCode,
        /// The auth-scheme of the answer's `WWW-Authenticate` challenge (`Basic` when one of
        /// them is).
        challenge: Option<String>,
        /// What to do, given the code, the challenge and how the client authenticated.
        hint: &'static str,
    },
    Unavailable {
        status: Option<StatusCode>,
        retry_after: Option<Duration>,
        cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
        code: Option<OAuthErrorCode>,
        description: Option<String>,
        /// The token URL's host (and port) that could not be reached; never a password.
        host: Option<String>,
    },
    Blocked {
        status: StatusCode,
        /// What the answer was, shortened, without control characters or the secret.
        answer: String,
        /// The answer's `Server` header, shortened.
        server: Option<String>,
    },
    Timeout {
        after: Duration,
    },
    NotReady {
        waited: Duration,
        last_error: Option<Error>,
    },
    InvalidResponse {
        status: StatusCode,
        reason: String,
    },
    Config {
        reason: String,
    },
    Signer {
        /// Whether the signer said the failure passes.
        transient: bool,
        cause: Arc<dyn std::error::Error + Send + Sync>,
    },
    Stopped {
        reason: String,
    },
    Internal {
        reason: String,
    },
}

impl From<Kind> for Error {
    fn from(kind: Kind) -> Self {
        Self {
            inner: Arc::new(kind),
        }
    }
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
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable), retried with backoff.
    TemporarilyUnavailable,
    /// `server_error`: the server failed; an [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable), retried with backoff.
    ServerError,
    /// `slow_down` (RFC 8628): asked to make requests less often; an [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable),
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
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable), retried with backoff, in whatever status they come.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::TemporarilyUnavailable | Self::ServerError | Self::SlowDown
        )
    }

    /// The code as the server spells it (also its `Display`).
    pub(crate) fn as_str(&self) -> &str {
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

    /// What to do about this code, whatever the client sent.
    pub(crate) fn advice(&self) -> &'static str {
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
}

impl fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Kind::Config {
            reason: reason.into(),
        }
        .into()
    }

    pub(crate) fn signer(cause: BoxError, transient: bool) -> Self {
        Kind::Signer {
            transient,
            cause: Arc::from(cause),
        }
        .into()
    }

    pub(crate) fn refresher_stopped(reason: impl Into<String>) -> Self {
        Kind::Stopped {
            reason: reason.into(),
        }
        .into()
    }

    pub(crate) fn internal(reason: impl Into<String>) -> Self {
        Kind::Internal {
            reason: reason.into(),
        }
        .into()
    }

    pub(crate) fn invalid(status: StatusCode, reason: impl Into<String>) -> Self {
        Kind::InvalidResponse {
            status,
            reason: reason.into(),
        }
        .into()
    }

    pub(crate) fn timeout(after: Duration) -> Self {
        Kind::Timeout { after }.into()
    }

    pub(crate) fn not_ready(waited: Duration, last_error: Option<Error>) -> Self {
        Kind::NotReady { waited, last_error }.into()
    }

    pub(crate) fn unavailable(
        status: Option<StatusCode>,
        retry_after: Option<Duration>,
        cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Kind::Unavailable {
            status,
            retry_after,
            cause,
            code: None,
            description: None,
            host: None,
        }
        .into()
    }

    /// A refusal of a client that sent its secret in the body, without a challenge.
    #[cfg(test)]
    pub(crate) fn rejected(
        code: OAuthErrorCode,
        description: Option<String>,
        status: StatusCode,
    ) -> Self {
        let hint = code.advice();
        Kind::Rejected {
            code,
            description,
            status,
            challenge: None,
            hint,
        }
        .into()
    }

    /// What this error holds.
    pub(crate) fn inner(&self) -> &Kind {
        &self.inner
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match *self.inner {
            Kind::Rejected { .. } => ErrorKind::Rejected,
            Kind::Blocked { .. } => ErrorKind::Blocked,
            Kind::Unavailable { .. } => ErrorKind::Unavailable,
            Kind::Timeout { .. } => ErrorKind::Timeout,
            Kind::NotReady { .. } => ErrorKind::NotReady,
            Kind::InvalidResponse { .. } => ErrorKind::InvalidResponse,
            Kind::Config { .. } => ErrorKind::Config,
            Kind::Signer { .. } => ErrorKind::Signer,
            Kind::Stopped { .. } => ErrorKind::Stopped,
            Kind::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// `true` when retrying soon may succeed: the token endpoint was unreachable, overloaded
    /// or too slow ([`ErrorKind::Unavailable`], [`ErrorKind::Timeout`], and
    /// [`ErrorKind::NotReady`], which is made of those), or the assertion's signer said its
    /// failure passes ([`ErrorKind::Signer`]). Rejected credentials, invalid answers,
    /// configuration errors and other signer failures are not; this crate retries them only
    /// on a slow schedule.
    pub fn is_transient(&self) -> bool {
        matches!(
            *self.inner,
            Kind::Unavailable { .. }
                | Kind::Timeout { .. }
                | Kind::NotReady { .. }
                | Kind::Signer {
                    transient: true,
                    ..
                }
        )
    }

    /// `true` when the authorization server refused the credentials or the grant
    /// ([`ErrorKind::Rejected`]): see [`oauth_code`](Self::oauth_code) and
    /// [`hint`](Self::hint).
    pub fn is_credentials(&self) -> bool {
        self.kind() == ErrorKind::Rejected
    }

    /// The HTTP status the token endpoint answered with, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match &*self.inner {
            Kind::Rejected { status, .. }
            | Kind::Blocked { status, .. }
            | Kind::InvalidResponse { status, .. } => Some(*status),
            Kind::Unavailable { status, .. } => *status,
            _ => None,
        }
    }

    /// The OAuth2 error code: for [`ErrorKind::Rejected`]
    /// ([`OAuthErrorCode::Unspecified`] when the answer carried none), and for
    /// [`ErrorKind::Unavailable`] when the answer carried one (`temporarily_unavailable`).
    pub fn oauth_code(&self) -> Option<&OAuthErrorCode> {
        match &*self.inner {
            Kind::Rejected { code, .. } => Some(code),
            Kind::Unavailable { code, .. } => code.as_ref(),
            _ => None,
        }
    }

    /// The server's `error_description`, shortened and with control characters removed.
    pub fn description(&self) -> Option<&str> {
        match &*self.inner {
            Kind::Rejected { description, .. } | Kind::Unavailable { description, .. } => {
                description.as_deref()
            }
            _ => None,
        }
    }

    /// The token URL's host (and port, when the URL has one) that could not be reached.
    /// Never a user name or password.
    pub fn host(&self) -> Option<&str> {
        match &*self.inner {
            Kind::Unavailable { host, .. } => host.as_deref(),
            Kind::NotReady {
                last_error: Some(last),
                ..
            } => last.host(),
            _ => None,
        }
    }

    /// How long the token endpoint asked us to wait, from its `Retry-After` header.
    pub fn retry_after(&self) -> Option<Duration> {
        match &*self.inner {
            Kind::Unavailable { retry_after, .. } => *retry_after,
            Kind::NotReady {
                last_error: Some(last),
                ..
            } => last.retry_after(),
            _ => None,
        }
    }

    /// What to do about it, when there is more to say than the message: the checks for a
    /// refused client, a blocked request, an unreachable or slow endpoint, an untrusted
    /// certificate. A configuration error's message already says what to change.
    pub fn hint(&self) -> Option<&'static str> {
        match &*self.inner {
            Kind::Rejected { hint, .. } => Some(hint),
            Kind::Blocked { .. } => Some(
                "a WAF, CDN, proxy or wrong URL is more likely than bad credentials: check the token URL, and whether a gateway in front of the token endpoint blocks requests from this host or client (it sees the User-Agent set with TokenEndpoint::user_agent); retrying on the slow schedule",
            ),
            Kind::Unavailable { cause, .. } => Some(
                match cause
                    .as_ref()
                    .is_some_and(|c| chain(c.as_ref()).contains("certificate"))
                {
                    true => "retrying with backoff; the token endpoint's TLS certificate was not accepted: if it comes from a private CA, add the CA with TokenSourceBuilder::extra_root_certificate",
                    false => "retrying with backoff: check network access to the token endpoint (DNS, firewall, proxy) if this persists",
                },
            ),
            Kind::Timeout { .. } => Some(
                "retrying with backoff: check network access to the token URL, or raise the fetch timeout",
            ),
            Kind::NotReady {
                last_error: Some(last),
                ..
            } => last.hint(),
            Kind::NotReady {
                last_error: None, ..
            } => Some(
                "check network access to the token URL, or give ready() a longer deadline than the fetch timeout",
            ),
            Kind::InvalidResponse { .. } => {
                Some("check that the token URL points at an OAuth2 token endpoint")
            }
            Kind::Signer { transient: true, .. } => Some(
                "retrying with backoff, and TokenSource::ready waits through it: check the signer (the KMS or HSM it calls) if this persists",
            ),
            Kind::Signer { transient: false, .. } => Some(
                "retrying on the slow schedule: check the signer (the key, or the KMS it calls); a failure that passes by itself (a timeout, throttling) should be returned as assertion::Transient, which is retried soon",
            ),
            Kind::Config { .. } | Kind::Stopped { .. } | Kind::Internal { .. } => None,
        }
    }

    /// The whole story in one line, as this crate's logs write it: the message, each cause
    /// once (repeats removed), and the hint.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

/// [`Error::report`]: the message, its causes and the hint, in one line.
#[derive(Debug)]
pub struct Report<'a>(&'a Error);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let error = self.0;
        write!(f, "{}", chain(error))?;
        match error.hint() {
            Some(hint) => write!(f, "; {hint}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.inner, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.inner {
            Kind::Rejected {
                code,
                description,
                status,
                challenge,
                ..
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
                f.write_str(")")
            }
            Kind::Blocked {
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
                f.write_str(", not an OAuth error")
            }
            Kind::Unavailable {
                status,
                retry_after,
                code,
                description,
                host,
                ..
            } => {
                f.write_str("token endpoint ")?;
                if let Some(host) = host {
                    write!(f, "{host} ")?;
                }
                match status {
                    Some(status) => {
                        write!(f, "unavailable (answered {}", status.as_u16())?;
                        if let Some(code) = code {
                            write!(f, " {code}")?;
                        }
                        if let Some(description) = description {
                            write!(f, ": {description}")?;
                        }
                        f.write_str(")")?;
                    }
                    None => f.write_str("unreachable")?,
                }
                match retry_after {
                    Some(wait) => write!(f, "; it asked to retry after {} s", wait.as_secs()),
                    None => Ok(()),
                }
            }
            Kind::Timeout { after } => write!(
                f,
                "token endpoint did not answer within {} ms",
                after.as_millis()
            ),
            Kind::NotReady { waited, last_error } => {
                write!(
                    f,
                    "no access token within the {} startup deadline of TokenSource::ready: ",
                    seconds(*waited)
                )?;
                f.write_str(match last_error {
                    Some(_) => "the token endpoint kept failing transiently",
                    None => "the first token request was still unanswered",
                })
            }
            Kind::InvalidResponse { status, reason } => write!(
                f,
                "token endpoint answered {} but not with a usable token: {reason}",
                status.as_u16()
            ),
            Kind::Config { reason } => write!(f, "invalid configuration: {reason}"),
            Kind::Signer { transient, .. } => f.write_str(match transient {
                true => "signing the client assertion failed for now",
                false => "signing the client assertion failed",
            }),
            Kind::Stopped { reason } => write!(f, "the token refresher is not running: {reason}"),
            Kind::Internal { reason } => write!(f, "internal error in entur-auth: {reason}"),
        }
    }
}

/// The cause behind the error: the transport's error for an unreachable endpoint, the last
/// failure for a missed startup deadline.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.inner {
            Kind::Unavailable {
                cause: Some(cause), ..
            } => Some(cause.as_ref()),
            Kind::NotReady {
                last_error: Some(last),
                ..
            } => Some(last),
            Kind::Signer { cause, .. } => Some(cause.as_ref()),
            _ => None,
        }
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
        let text = e.report().to_string();
        assert!(text.contains("invalid_client"), "{text}");
        assert!(text.contains("check client_id and client_secret"), "{text}");
        assert!(e.is_credentials() && !e.is_transient());

        let e = Error::unavailable(
            Some(StatusCode::SERVICE_UNAVAILABLE),
            Some(Duration::from_secs(7)),
            None,
        );
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.report().to_string().contains("503"), "{e}");
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
        let unreachable = Error::from(Kind::Unavailable {
            status: None,
            retry_after: None,
            cause: Some(Arc::new(refused())),
            code: None,
            description: None,
            host: Some("partner.dev.entur.org".into()),
        });
        // An error reporter: the message, then each source.
        let text = report(&unreachable);
        assert!(
            text.starts_with("token endpoint partner.dev.entur.org unreachable\ncaused by: client error (Connect)"),
            "{text}"
        );
        assert_eq!(text.matches("Connection refused").count(), 2, "{text}");
        // This crate's own one line: each cause once, then what to do.
        let line = unreachable.report().to_string();
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
        assert_eq!(line.matches("tcp connect error").count(), 1, "{line}");
        assert!(
            line.starts_with("token endpoint partner.dev.entur.org unreachable: client error (Connect): tcp connect error: Connection refused (os error 111); retrying with backoff"),
            "{line}"
        );
        assert!(line.contains("check network access"), "{line}");
        assert_eq!(unreachable.host(), Some("partner.dev.entur.org"));

        let not_ready = Error::not_ready(Duration::from_secs(30), Some(unreachable));
        let line = not_ready.report().to_string();
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
        assert!(line.contains("partner.dev.entur.org"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(not_ready.host(), Some("partner.dev.entur.org"));
        assert!(std::error::Error::source(&not_ready).is_some());
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
