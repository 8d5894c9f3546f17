//! The request log: every request the server received, in order, in a bounded ring buffer.

use super::*;

/// Default [`TestServerBuilder::request_log_capacity`].
pub(super) const DEFAULT_LOG_CAPACITY: usize = 10_000;

/// One request in the [`TestServer`]'s log (see [`TestServer::requests_log`]).
///
/// Like [`RecordedRequest`], it holds what the client sent, credentials and tokens included,
/// and the derived `Debug` prints them.
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
    Revoked,
    /// Not issued by this server.
    Unknown,
}

/// How a request was answered (see [`LoggedRequest::answer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// Not answered (yet): a [`Fault::Delay`] or [`ApiFault::Delay`] not over, or a hang.
    Pending,
    /// Refused without an answer ([`Fault::Refuse`]).
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
    // The crate's own RFC 9110 challenge parser: quoted strings, several challenges a line.
    let challenge_error = headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(crate::oauth::challenge::parse)
        .find_map(|challenge| challenge.param("error").map(str::to_owned));
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
