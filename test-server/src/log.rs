//! The request log: every request the server received, in order, in a bounded ring buffer.

use std::collections::VecDeque;
use std::time::SystemTime;

use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, Response, StatusCode};
use serde_json::Value;

use crate::body::BodyInner;
use crate::{RecordedRequest, TestBody};

/// Default [`TestServerBuilder::request_log_capacity`].
///
/// [`TestServerBuilder::request_log_capacity`]: crate::TestServerBuilder::request_log_capacity
pub(super) const DEFAULT_LOG_CAPACITY: usize = 10_000;

/// One request in the [`TestServer`]'s log (see [`TestServer::requests_log`]).
///
/// Like [`RecordedRequest`], it holds what the client sent, credentials and tokens included,
/// and the derived `Debug` prints them.
///
/// [`TestServer`]: crate::TestServer
/// [`TestServer::requests_log`]: crate::TestServer::requests_log
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LoggedRequest {
    /// Position of the request among all the requests the server received, from 0; entries
    /// dropped from the log keep their numbers, so gaps show what was dropped.
    pub seq: u64,
    /// Which endpoint the request was for.
    pub kind: RequestKind,
    /// The request itself.
    pub request: RecordedRequest,
    /// When its body had been read, by Tokio's clock (so a paused clock controls it).
    pub received_at: tokio::time::Instant,
    /// When its body had been read, by this machine's wall clock (not the server's skewed
    /// one, see [`TestServerBuilder::issuer_clock_offset_secs`]).
    ///
    /// [`TestServerBuilder::issuer_clock_offset_secs`]: crate::TestServerBuilder::issuer_clock_offset_secs
    pub received_at_system: SystemTime,
    /// For an API request with a bearer token: the token, and what the server knew of it
    /// when the request arrived. `None` for other requests and for API requests without a
    /// bearer token.
    pub bearer: Option<BearerToken>,
    /// For a token request answered with a new token: that token's `jti`.
    pub issued_jti: Option<String>,
    /// How the request was answered.
    pub answer: Answer,
}

impl LoggedRequest {
    /// The status of the answer, if one was sent.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.answer {
            Answer::Sent { status, .. } => Some(*status),
            Answer::Pending | Answer::Refused => None,
        }
    }

    /// The `jti` of the token the request carried (API) or got (token endpoint), if it was
    /// issued by this server.
    pub fn jti(&self) -> Option<&str> {
        self.bearer
            .as_ref()
            .and_then(|bearer| bearer.jti.as_deref())
            .or(self.issued_jti.as_deref())
    }
}

/// Which endpoint of the [`TestServer`] a request was for.
///
/// [`TestServer`]: crate::TestServer
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestKind {
    /// The token endpoint, `/oauth/token`.
    Token,
    /// The protected API, `/api` and below.
    Api,
    /// The JWK Set, `/.well-known/jwks.json`.
    Jwks,
    /// The metadata, `/.well-known/openid-configuration` or
    /// `/.well-known/oauth-authorization-server`.
    Metadata,
    /// Any other path (answered with 404).
    NotFound,
}

/// The bearer token an API request carried, in [`LoggedRequest::bearer`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BearerToken {
    /// The token as sent.
    pub token: String,
    /// Its `jti`, if this server issued it.
    pub jti: Option<String>,
    /// What the server knew of it when the request arrived.
    pub state: TokenState,
}

/// What the server knew of a bearer token (see [`BearerToken::state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenState {
    /// Issued by this server, not revoked, not expired.
    Valid,
    /// Issued by this server and expired.
    Expired,
    /// Issued by this server and revoked ([`TestServer::revoke_all`]).
    ///
    /// [`TestServer::revoke_all`]: crate::TestServer::revoke_all
    Revoked,
    /// Not issued by this server.
    Unknown,
}

/// How a request was answered (see [`LoggedRequest::answer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// Not answered (yet): a [`Fault::Delay`] or [`ApiFault::Delay`] not over, or a hang.
    ///
    /// [`ApiFault::Delay`]: crate::ApiFault::Delay
    /// [`Fault::Delay`]: crate::Fault::Delay
    Pending,
    /// Refused without an answer ([`Fault::Refuse`]).
    ///
    /// [`Fault::Refuse`]: crate::Fault::Refuse
    Refused,
    /// An answer was sent (its head: a trickled body may still be on its way).
    #[non_exhaustive]
    Sent {
        /// The HTTP status.
        status: StatusCode,
        /// The `error` of the answer: the OAuth error code of a JSON body, or the `error`
        /// parameter of a `WWW-Authenticate` challenge.
        error: Option<String>,
        /// The gRPC status, from the headers or the trailers.
        grpc_status: Option<u32>,
        /// Whether an injected fault made the answer ([`Fault::Delay`],
        /// [`Fault::Trickle`] and [`ApiFault::Delay`] deliver the normal answer: they do not
        /// count).
        ///
        /// [`Fault::Delay`]: crate::Fault::Delay
        /// [`ApiFault::Delay`]: crate::ApiFault::Delay
        /// [`Fault::Trickle`]: crate::Fault::Trickle
        injected: bool,
        /// When the answer was sent, by Tokio's clock.
        at: tokio::time::Instant,
    },
}

/// The bounded log: the newest entries, up to the capacity.
pub(super) struct RequestLog {
    entries: VecDeque<LoggedRequest>,
    capacity: usize,
    next_seq: u64,
    dropped: u64,
}

impl RequestLog {
    pub(super) fn new(capacity: usize) -> RequestLog {
        RequestLog {
            entries: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            next_seq: 0,
            dropped: 0,
        }
    }

    /// Logs a new request (its answer pending) and returns its sequence number.
    pub(super) fn push(
        &mut self,
        kind: RequestKind,
        request: RecordedRequest,
        bearer: Option<BearerToken>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.capacity == 0 {
            self.dropped += 1;
            return seq;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.entries.push_back(LoggedRequest {
            seq,
            kind,
            request,
            received_at: tokio::time::Instant::now(),
            received_at_system: SystemTime::now(),
            bearer,
            issued_jti: None,
            answer: Answer::Pending,
        });
        seq
    }

    /// Records how request `seq` was answered, if it is still in the log.
    pub(super) fn answered(&mut self, seq: u64, answer: Answer, issued_jti: Option<String>) {
        let Some(first) = self.entries.front().map(|entry| entry.seq) else {
            return;
        };
        let Some(index) = seq.checked_sub(first) else {
            return;
        };
        if let Some(entry) = usize::try_from(index)
            .ok()
            .and_then(|index| self.entries.get_mut(index))
        {
            debug_assert_eq!(entry.seq, seq);
            entry.answer = answer;
            entry.issued_jti = issued_jti;
        }
    }

    pub(super) fn entries(&self, kind: Option<RequestKind>) -> Vec<LoggedRequest> {
        self.entries
            .iter()
            .filter(|entry| kind.is_none_or(|kind| entry.kind == kind))
            .cloned()
            .collect()
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// What the log says of a response: status, error code, gRPC status.
pub(super) fn summarize(response: &Response<TestBody>, injected: bool) -> Answer {
    let headers = response.headers();
    let grpc_status = |headers: &HeaderMap| {
        headers
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u32>().ok())
    };
    let grpc = grpc_status(headers).or_else(|| match &response.body().inner {
        BodyInner::Trailers {
            trailers: Some(trailers),
            ..
        } => grpc_status(trailers),
        _ => None,
    });
    let challenge_error = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(challenge_error);
    let body_error = || match &response.body().inner {
        BodyInner::Full(Some(data)) => serde_json::from_slice::<Value>(data)
            .ok()
            .and_then(|json| json.get("error")?.as_str().map(str::to_owned)),
        _ => None,
    };
    Answer::Sent {
        status: response.status(),
        error: challenge_error.or_else(body_error),
        grpc_status: grpc,
        injected,
        at: tokio::time::Instant::now(),
    }
}

/// The `error` auth-param of the first challenge that carries one in a `WWW-Authenticate`
/// field value (RFC 6750 section 3: `Bearer realm="…", error="invalid_token"`).
///
/// Enough of RFC 9110 section 11.6.1 for what the server and its faults send: several
/// challenges in one value, parameters as tokens or quoted strings (with `\` escapes, and
/// commas or `error=` inside them), whitespace around `=`. A malformed element is skipped up
/// to the next comma outside a quoted string; a token68 (`Basic dXNlcg==`) is not a parameter.
pub(crate) fn challenge_error(value: &str) -> Option<String> {
    let b = value.as_bytes();
    let mut pos = 0;
    while pos < b.len() {
        if matches!(b[pos], b' ' | b'\t' | b',') {
            pos += 1;
            continue;
        }
        let start = pos;
        pos = token_end(b, pos);
        if pos == start {
            pos = skip_element(b, pos);
            continue;
        }
        let name = &value[start..pos];
        let eq = skip_whitespace(b, pos);
        if b.get(eq) != Some(&b'=') {
            // An auth-scheme: its token68 or first parameter follows.
            pos = eq;
            continue;
        }
        let value_start = skip_whitespace(b, eq + 1);
        let (param, end) = if b.get(value_start) == Some(&b'"') {
            // Unterminated: nothing after it can be read.
            quoted_string(value, value_start)?
        } else {
            let end = token_end(b, value_start);
            (value[value_start..end].to_owned(), end)
        };
        let after = skip_whitespace(b, end);
        if end == value_start || !matches!(b.get(after), None | Some(b',')) {
            // A token68 (`abc==`), or a value followed by something else.
            pos = skip_element(b, end);
            continue;
        }
        if name.eq_ignore_ascii_case("error") {
            return Some(param);
        }
        pos = after;
    }
    None
}

/// Where the token (RFC 9110 section 5.6.2) that starts at `pos` ends.
fn token_end(b: &[u8], mut pos: usize) -> usize {
    while b
        .get(pos)
        .is_some_and(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
    {
        pos += 1;
    }
    pos
}

fn skip_whitespace(b: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\t') = b.get(pos) {
        pos += 1;
    }
    pos
}

/// The quoted string that starts at `start` (on its `"`), unescaped, and the position after
/// its closing quote; `None` if it is not closed.
fn quoted_string(value: &str, start: usize) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = value[start + 1..].char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((out, start + 1 + at + 1)),
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

/// The position of the next comma that is not inside a quoted string (or the end).
fn skip_element(b: &[u8], mut pos: usize) -> usize {
    let mut quoted = false;
    while let Some(&c) = b.get(pos) {
        match c {
            b'"' => quoted = !quoted,
            b'\\' if quoted => pos += 1,
            b',' if !quoted => return pos,
            _ => {}
        }
        pos += 1;
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::challenge_error;

    #[test]
    fn challenge_error_reads_the_error_param() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"Bearer error="invalid_token""#, Some("invalid_token")),
            (r#"bearer ERROR = "invalid_token""#, Some("invalid_token")),
            (
                "Bearer error=insufficient_scope",
                Some("insufficient_scope"),
            ),
            (
                r#"Bearer realm="a, error=\"no\"", error_description="error=no", error="yes""#,
                Some("yes"),
            ),
            (
                r#"Basic realm="x", Bearer realm="y", error="invalid_token""#,
                Some("invalid_token"),
            ),
            (
                r#"Basic dXNlcg==, Bearer error="after_token68""#,
                Some("after_token68"),
            ),
            (
                r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Bearer error="e""#,
                Some("e"),
            ),
            (r#"Bearer error="a\"b\\c""#, Some(r#"a"b\c"#)),
            (r#", , Bearer  ,error="late""#, Some("late")),
            (r#"Bearer error="x" junk, error="y""#, Some("y")),
            (r#"Bearer ;;, error="after_junk""#, Some("after_junk")),
            ("Bearer", None),
            (r#"Bearer realm="entur-auth-testing""#, None),
            (r#"Bearer error="unterminated"#, None),
            (r#"Bearer error=, realm="x""#, None),
            ("", None),
        ];
        for (value, expected) in cases {
            assert_eq!(challenge_error(value).as_deref(), *expected, "{value}");
        }
    }
}
