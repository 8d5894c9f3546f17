//! The access token: a prebuilt `Authorization` header value and the instants that drive
//! its refresh and expiry.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;

use crate::error::Error;

/// Identifies one issued token within a process, so that a rejection can invalidate exactly
/// the token that was sent and not a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(u64);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl TokenId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A bearer token ready to be sent.
///
/// It holds the whole `Authorization: Bearer …` value, built once and marked sensitive, so
/// that sending it is a reference-count increment. `Debug` never shows the token.
pub struct AccessToken {
    header: HeaderValue,
    id: TokenId,
    issued_at: Instant,
    refresh_at: Instant,
    usable_until: Instant,
    expires_at: Instant,
    /// Wall-clock instant the token request was sent: what a shared store records, since
    /// `Instant`s mean nothing to another process.
    issued_wall: SystemTime,
    scope: Option<String>,
    /// Fetched while the API was refusing tokens: the first accepted request with it ends
    /// the forced-refresh backoff. Read on the hot path (one relaxed load).
    probation: AtomicBool,
}

/// When to refresh and retire a token (DESIGN.md, "Token lifecycle").
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lifecycle {
    /// Fraction of the lifetime after which a refresh starts (default 0.75).
    pub(crate) refresh_at: f64,
    /// Largest random amount, as a fraction of the lifetime, by which the refresh is moved
    /// earlier (default 0.05), so that a fleet does not refresh in step.
    pub(crate) jitter: f64,
    /// Lifetime assumed when the server gives neither `expires_in` nor a JWT `exp`.
    pub(crate) default_lifetime: Duration,
}

/// Never refresh sooner than this after issue: no busy loop on tiny lifetimes.
const REFRESH_FLOOR: Duration = Duration::from_secs(1);
/// Lifetimes are capped at a year: a bigger `expires_in` is a server bug, not a reason to
/// overflow an `Instant`.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the token endpoint said about a token, before it becomes an [`AccessToken`].
pub(crate) struct Issued<'a> {
    pub(crate) access_token: &'a str,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) scope: Option<String>,
    /// When the token request was sent (monotonic and wall clock).
    pub(crate) sent_at: Instant,
    pub(crate) sent_wall: SystemTime,
}

impl AccessToken {
    /// Builds a token from the endpoint's answer: the lifetime is `expires_in` from when the
    /// request was sent, cross-checked with the JWT `exp` claim (the earlier deadline wins).
    /// `jitter_sample` is a number in `[0, 1)`.
    pub(crate) fn from_issued(
        issued: Issued<'_>,
        lifecycle: &Lifecycle,
        jitter_sample: f64,
    ) -> Result<Self, Error> {
        let ok = StatusCode::OK;
        let token = issued.access_token;
        let header = header_for(token)?;
        let claims = Claims::read(token);
        let by_exp = match claims.as_ref().and_then(|c| c.exp) {
            // An exp beyond what the clock can represent (2^63 s and up) limits nothing:
            // `expires_in` or the default lifetime decides, capped at a year.
            Some(exp) => match UNIX_EPOCH.checked_add(Duration::from_secs(exp)) {
                None => None,
                Some(exp) => match exp.duration_since(issued.sent_wall) {
                    Ok(left) if !left.is_zero() => Some(left),
                    _ => return Err(Error::invalid(
                        ok,
                        "the token's exp claim is already in the past: check this machine's clock",
                    )),
                },
            },
            None => None,
        };
        let lifetime = match (issued.expires_in, by_exp) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => lifecycle.default_lifetime,
        }
        .min(MAX_LIFETIME);

        let scope = issued.scope.or_else(|| claims.and_then(|c| c.scope));
        Self::assemble(
            header,
            issued.sent_at,
            issued.sent_wall,
            lifetime,
            scope,
            lifecycle,
            jitter_sample,
        )
    }

    /// Rebuilds a token another process obtained (from a shared store): `issued_wall` and
    /// `expires_wall` are wall-clock instants. Returns `None` when it is no longer usable.
    #[cfg_attr(not(feature = "shared-store"), allow(dead_code))]
    pub(crate) fn from_shared(
        token: &str,
        issued_wall: SystemTime,
        expires_wall: SystemTime,
        scope: Option<String>,
        lifecycle: &Lifecycle,
        jitter_sample: f64,
    ) -> Option<Self> {
        let header = header_for(token).ok()?;
        let lifetime = expires_wall
            .duration_since(issued_wall)
            .ok()?
            .min(MAX_LIFETIME);
        let age = SystemTime::now()
            .duration_since(issued_wall)
            .unwrap_or(Duration::ZERO);
        let now = Instant::now();
        let issued_at = now.checked_sub(age)?;
        let token = Self::assemble(
            header,
            issued_at,
            issued_wall,
            lifetime,
            scope,
            lifecycle,
            jitter_sample,
        )
        .ok()?;
        (now < token.usable_until).then_some(token)
    }

    fn assemble(
        header: HeaderValue,
        issued_at: Instant,
        issued_wall: SystemTime,
        lifetime: Duration,
        scope: Option<String>,
        lifecycle: &Lifecycle,
        jitter_sample: f64,
    ) -> Result<Self, Error> {
        if lifetime.is_zero() {
            return Err(Error::invalid(StatusCode::OK, "the token has no lifetime"));
        }
        let (refresh_at, usable_until) = lifecycle.schedule(lifetime, jitter_sample);
        Ok(Self {
            header,
            id: TokenId::next(),
            issued_at,
            refresh_at: issued_at + refresh_at,
            usable_until: issued_at + usable_until,
            expires_at: issued_at + lifetime,
            issued_wall,
            scope: scope.map(|s| crate::error::sanitize(&s, 1024)),
            probation: AtomicBool::new(false),
        })
    }

    /// The bearer token itself, without `Bearer `. Secret: never log it.
    #[cfg_attr(not(feature = "shared-store"), allow(dead_code))]
    pub(crate) fn secret(&self) -> &[u8] {
        &self.header.as_bytes()[7..]
    }

    /// Wall-clock instant the token request was sent.
    pub fn issued_wall(&self) -> SystemTime {
        self.issued_wall
    }

    /// The `Authorization` header value, `Bearer <token>`, marked sensitive.
    pub fn header_value(&self) -> &HeaderValue {
        &self.header
    }

    /// This token's identity, for [`TokenSource::invalidate`](crate::TokenSource::invalidate).
    pub fn id(&self) -> TokenId {
        self.id
    }

    /// When the request that obtained this token was sent.
    pub fn issued_at(&self) -> Instant {
        self.issued_at
    }

    /// When the background refresh of this token starts.
    pub fn refresh_at(&self) -> Instant {
        self.refresh_at
    }

    /// When this token stops being sent: its expiry less a safety margin of
    /// `min(30 s, 10 % of the lifetime)` for clock skew and transit time.
    pub fn usable_until(&self) -> Instant {
        self.usable_until
    }

    /// When the token expires: `expires_in` after the request was sent, or the JWT `exp`,
    /// whichever is earlier.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// Whether this token was fetched while the API was refusing tokens and no request has
    /// been accepted with it yet.
    #[inline]
    pub(crate) fn on_probation(&self) -> bool {
        self.probation.load(Ordering::Relaxed)
    }

    pub(crate) fn start_probation(&self) {
        self.probation.store(true, Ordering::Relaxed);
    }

    pub(crate) fn end_probation(&self) {
        self.probation.store(false, Ordering::Relaxed);
    }

    /// The granted scope, from the response or the JWT `scope` claim.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("id", &self.id)
            .field("token", &"[redacted]")
            .field("refresh_at", &self.refresh_at)
            .field("usable_until", &self.usable_until)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

impl Lifecycle {
    /// Offsets from issue of the refresh instant and of the end of use, for a lifetime.
    pub(crate) fn schedule(&self, lifetime: Duration, jitter_sample: f64) -> (Duration, Duration) {
        let margin = Duration::from_secs(30).min(lifetime / 10);
        let usable = lifetime - margin;
        let early = lifetime.mul_f64(self.jitter * jitter_sample.clamp(0.0, 1.0));
        let refresh = lifetime
            .mul_f64(self.refresh_at)
            .saturating_sub(early)
            .max(REFRESH_FLOOR);
        (refresh, usable)
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            refresh_at: 0.75,
            jitter: 0.05,
            default_lifetime: Duration::from_secs(300),
        }
    }
}

/// `Bearer <token>`, checked, built once and marked sensitive.
fn header_for(token: &str) -> Result<HeaderValue, Error> {
    if token.is_empty() {
        return Err(Error::invalid(StatusCode::OK, "access_token is empty"));
    }
    // RFC 6750 b64token, and what may stand in a header value: a hostile or broken server
    // (or store entry) cannot smuggle CR/LF or spaces into our requests.
    if !token.bytes().all(is_b64token_char) {
        return Err(Error::invalid(
            StatusCode::OK,
            "access_token has characters not allowed in a bearer token (RFC 6750)",
        ));
    }
    let mut value = BytesMut::with_capacity(7 + token.len());
    value.put_slice(b"Bearer ");
    value.put_slice(token.as_bytes());
    // `split` moves the buffer to bytes' shared (reference-counted) representation, so that
    // every clone per request is one atomic increment: no allocation on a first clone, no
    // check of which representation it is.
    let mut header = HeaderValue::from_maybe_shared(value.split().freeze())
        .map_err(|_| Error::invalid(StatusCode::OK, "access_token is not a valid header value"))?;
    header.set_sensitive(true);
    Ok(header)
}

fn is_b64token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// The claims this crate reads from a JWT payload. The signature is never checked: that is
/// the API's job; the client only needs to know when the token expires.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Claims {
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub(crate) exp: Option<u64>,
    #[serde(default)]
    pub(crate) scope: Option<String>,
}

impl Claims {
    /// Reads the payload of a JWT-shaped token; `None` for opaque tokens or unreadable
    /// payloads (an opaque token is fine: `expires_in` then decides the lifetime).
    pub(crate) fn read(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || payload.len() > 16 * 1024 {
            return None;
        }
        let payload = payload.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// `exp` as a JSON number of seconds; fractions are rounded down, negative or non-numeric
/// values make the claim absent rather than failing the whole token.
fn lenient_seconds<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            enc.encode(r#"{"alg":"RS256"}"#),
            enc.encode(payload)
        )
    }

    fn issue(token: &str, expires_in: Option<u64>) -> Result<AccessToken, Error> {
        let issued = Issued {
            access_token: token,
            expires_in: expires_in.map(Duration::from_secs),
            scope: None,
            sent_at: Instant::now(),
            sent_wall: SystemTime::now(),
        };
        AccessToken::from_issued(issued, &Lifecycle::default(), 0.0)
    }

    #[test]
    fn schedule_follows_the_design_defaults() {
        let l = Lifecycle::default();
        // 24 h token: refresh at 18 h, retire 30 s before expiry.
        let day = Duration::from_secs(86_400);
        let (refresh, usable) = l.schedule(day, 0.0);
        assert_eq!(refresh, Duration::from_secs(64_800));
        assert_eq!(usable, day - Duration::from_secs(30));
        // Full jitter moves the refresh 5 % earlier.
        let (refresh, _) = l.schedule(day, 1.0);
        assert_eq!(refresh, Duration::from_secs(60_480));
        // 10 s token: margin is 10 % (1 s), refresh at 7.5 s.
        let (refresh, usable) = l.schedule(Duration::from_secs(10), 0.0);
        assert_eq!(refresh, Duration::from_millis(7_500));
        assert_eq!(usable, Duration::from_secs(9));
        // Tiny lifetime: never refresh sooner than 1 s after issue.
        let (refresh, _) = l.schedule(Duration::from_millis(400), 0.5);
        assert_eq!(refresh, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn lifetime_is_the_earlier_of_expires_in_and_exp() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // exp says 100 s, expires_in says 3600 s: exp wins.
        let t = issue(&jwt(&format!(r#"{{"exp":{}}}"#, now + 100)), Some(3600)).unwrap();
        let life = t.expires_at() - t.issued_at();
        assert!(life <= Duration::from_secs(100) && life >= Duration::from_secs(98));
        // expires_in earlier than exp: expires_in wins.
        let t = issue(&jwt(&format!(r#"{{"exp":{}}}"#, now + 1000)), Some(60)).unwrap();
        assert_eq!(t.expires_at() - t.issued_at(), Duration::from_secs(60));
        // Neither: the default lifetime.
        let t = issue("opaque-token", None).unwrap();
        assert_eq!(t.expires_at() - t.issued_at(), Duration::from_secs(300));
        // Absurd expires_in is capped, not overflowed.
        let t = issue("opaque-token", Some(u64::MAX / 2)).unwrap();
        assert_eq!(t.expires_at() - t.issued_at(), MAX_LIFETIME);
    }

    #[test]
    fn expired_jwt_and_bad_characters_are_fetch_errors() {
        let err = issue(&jwt(r#"{"exp":1000}"#), Some(60)).unwrap_err();
        assert!(matches!(err, Error::InvalidResponse { .. }), "{err}");
        for bad in ["abc\r\nX-Evil: 1", "abc def", "abc\0", "tøken", ""] {
            let err = issue(bad, Some(60)).unwrap_err();
            assert!(matches!(err, Error::InvalidResponse { .. }), "{bad:?}");
        }
    }

    #[test]
    fn exp_beyond_the_clock_does_not_panic() {
        // Found by fuzzing: UNIX_EPOCH + 2^63 s overflows SystemTime.
        let t = issue(&jwt(r#"{"exp":9223372036854775808}"#), Some(60)).unwrap();
        assert_eq!(t.expires_at() - t.issued_at(), Duration::from_secs(60));
        let t = issue(&jwt(r#"{"exp":18446744073709551615}"#), None).unwrap();
        assert_eq!(t.expires_at() - t.issued_at(), Duration::from_secs(300));
    }

    #[test]
    fn header_is_sensitive_and_debug_hides_the_token() {
        let t = issue("tok-marker-123", Some(60)).unwrap();
        assert!(t.header_value().is_sensitive());
        assert_eq!(t.header_value(), "Bearer tok-marker-123");
        assert!(!format!("{t:?}").contains("tok-marker-123"));
        assert!(!format!("{:?}", t.header_value()).contains("tok-marker-123"));
    }

    #[test]
    fn claims_reader_tolerates_garbage() {
        assert!(Claims::read("a.b").is_none());
        assert!(Claims::read("a.!!!.c").is_none());
        assert!(Claims::read("a.b.c.d").is_none());
        let c = Claims::read(&jwt(r#"{"exp":"soon","scope":"a b"}"#)).unwrap();
        assert_eq!(c.exp, None);
        assert_eq!(c.scope.as_deref(), Some("a b"));
        let c = Claims::read(&jwt(r#"{"exp":-5}"#)).unwrap();
        assert_eq!(c.exp, None);
    }
}
