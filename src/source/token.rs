//! The access token: a prebuilt `Authorization` header value and the instants that drive
//! its refresh and expiry.

use std::fmt;
use std::num::NonZeroU64;
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
pub struct TokenId(NonZeroU64);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl TokenId {
    pub(crate) fn get(self) -> u64 {
        self.0.get()
    }

    /// The id whose [`get`](Self::get) is `raw`; `None` for 0.
    pub(crate) fn from_raw(raw: u64) -> Option<Self> {
        NonZeroU64::new(raw).map(Self)
    }

    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        // Starts at 1 and would take centuries to wrap; `max(1)` keeps it non-zero anyway.
        let n = NEXT.fetch_add(1, Ordering::Relaxed).max(1);
        Self(NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN))
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
    #[cfg_attr(not(feature = "shared-store"), allow(dead_code))]
    issued_wall: SystemTime,
    scope: Option<String>,
    /// Fetched while the API was refusing tokens: its answers are read until one accepts it
    /// (the forced-refresh backoff can then end). Read on the hot path (one relaxed load).
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
    /// Lifetime assumed when the server gives neither `expires_in` nor a usable JWT `exp`.
    pub(crate) default_lifetime: Duration,
}

/// Never refresh sooner than this after issue (no busy loop on tiny lifetimes), unless the
/// token would be retired by then.
const REFRESH_FLOOR: Duration = Duration::from_secs(1);
/// Lifetimes are capped at a year: a bigger `expires_in` is a server bug, not a reason to
/// overflow an `Instant`.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// A difference between this machine's clock and the token issuer's beyond this is logged.
/// Generous: transit time and whole-second claims account for a few seconds.
const SKEW_WARNING: Duration = Duration::from_secs(60);

/// What the token endpoint said about a token, before it becomes an [`AccessToken`].
pub(crate) struct Issued<'a> {
    pub(crate) access_token: &'a str,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) scope: Option<String>,
    /// When the token request was sent (monotonic and wall clock).
    pub(crate) sent_at: Instant,
    pub(crate) sent_wall: SystemTime,
    /// The token response's `Date` header: the token server's clock when it answered.
    pub(crate) server_date: Option<SystemTime>,
}

/// Where a token's lifetime came from, in the order the rules are tried (DESIGN.md, "Token
/// lifecycle"). The first two need no agreement between clocks; the others compare `exp`
/// with a clock other than the one that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LifetimeBasis {
    /// `expires_in`, from when the request was sent (relative: no clock involved), shortened
    /// to the JWT's `exp − iat` when that is shorter.
    ExpiresIn,
    /// The JWT's `exp − iat`: both from the issuer's own clock.
    IssuerClaims,
    /// The JWT's `exp` against the token server's `Date` header.
    ServerDate,
    /// The JWT's `exp` against this machine's clock.
    LocalClock,
    /// Nothing to go by: the configured default lifetime.
    Default,
    /// The JWT's only clue, `exp`, is already past by this machine's clock: the default
    /// lifetime, and a warning.
    ExpPassed,
}

impl AccessToken {
    /// Builds a token from the endpoint's answer. The lifetime comes from `expires_in`
    /// (bounded by the JWT's `exp − iat`), else `exp − iat`, else `exp` against the server's
    /// `Date`, else `exp` against this machine's clock, else the default lifetime: a clock
    /// that disagrees with the issuer's never fails a fetch (it is logged, see
    /// [`warn_about_skew`]). `jitter_sample` is a number in `[0, 1)`.
    pub(crate) fn from_issued(
        issued: Issued<'_>,
        lifecycle: &Lifecycle,
        jitter_sample: f64,
    ) -> Result<Self, Error> {
        let header = header_for(issued.access_token)?;
        let claims = Claims::read(issued.access_token).unwrap_or_default();
        warn_about_skew(issued.sent_wall, claims.iat_time(), issued.server_date);
        let (lifetime, basis) = token_lifetime(&issued, &claims, lifecycle.default_lifetime);
        if basis == LifetimeBasis::ExpPassed {
            tracing::warn!(
                default_lifetime_s = lifetime.as_secs_f64(),
                "the token's exp claim is already past by this machine's clock, and the answer \
                 gives nothing else to go by (no expires_in, no iat before exp): either the \
                 token server issued an expired token or this machine's clock is ahead. Using \
                 the default lifetime; check this machine's clock (NTP)"
            );
        }
        tracing::debug!(
            ?basis,
            lifetime_s = lifetime.as_secs_f64(),
            "token lifetime decided"
        );
        let scope = issued.scope.or(claims.scope);
        Self::assemble(
            header,
            issued.sent_at,
            issued.sent_wall,
            lifetime.min(MAX_LIFETIME),
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
            refresh_at: later(issued_at, refresh_at),
            usable_until: later(issued_at, usable_until),
            expires_at: later(issued_at, lifetime),
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

    /// Wall-clock instant the token request was sent (the shared store's ordering).
    #[cfg(feature = "shared-store")]
    pub(crate) fn issued_wall(&self) -> SystemTime {
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

    /// When the token expires: its lifetime after the request was sent (see
    /// [`TokenSourceBuilder::default_lifetime`](crate::TokenSourceBuilder::default_lifetime)
    /// and the crate's README for where the lifetime comes from).
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
    ///
    /// The token is retired one safety margin, `min(30 s, 10 % of the lifetime)`, before it
    /// expires, and the refresh starts at least one more margin before that, whatever
    /// `refresh_at` and the jitter say: callers never wait for a refresh that starts too late.
    /// The refresh is never sooner than [`REFRESH_FLOOR`] after issue, unless that would
    /// break the first rule (a token shorter than about 1.25 s).
    pub(crate) fn schedule(&self, lifetime: Duration, jitter_sample: f64) -> (Duration, Duration) {
        let margin = Duration::from_secs(30).min(lifetime / 10);
        let usable = lifetime - margin;
        let latest = usable.saturating_sub(margin);
        let earliest = REFRESH_FLOOR.min(latest);
        let early = fraction_of(lifetime, self.jitter * jitter_sample.clamp(0.0, 1.0));
        let refresh = fraction_of(lifetime, self.refresh_at)
            .saturating_sub(early)
            .clamp(earliest, latest);
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

/// `fraction` of `duration`, for a fraction in `[0, 1]` (anything else is brought into it):
/// never a panic, whatever was configured.
fn fraction_of(duration: Duration, fraction: f64) -> Duration {
    if fraction >= 1.0 {
        duration
    } else if fraction > 0.0 {
        Duration::try_from_secs_f64(duration.as_secs_f64() * fraction)
            .map_or(duration, |part| part.min(duration))
    } else {
        // Zero, negative or NaN.
        Duration::ZERO
    }
}

/// `at + offset`, or the furthest instant short of it that the clock can represent: no
/// lifetime, configured or received, can panic. (`Instant` overflows only near its own
/// limits, in practice never; halving reaches `at + 0` in at most 94 steps.)
fn later(at: Instant, mut offset: Duration) -> Instant {
    loop {
        if let Some(instant) = at.checked_add(offset) {
            return instant;
        }
        offset /= 2;
    }
}

/// The lifetime of a fetched token and where it came from (see [`LifetimeBasis`]), before
/// the one-year cap.
fn token_lifetime(
    issued: &Issued<'_>,
    claims: &Claims,
    default_lifetime: Duration,
) -> (Duration, LifetimeBasis) {
    let by_issuer = claims.issuer_lifetime();
    if let Some(expires_in) = issued.expires_in {
        return match by_issuer {
            Some(by_issuer) if by_issuer < expires_in => (by_issuer, LifetimeBasis::IssuerClaims),
            _ => (expires_in, LifetimeBasis::ExpiresIn),
        };
    }
    if let Some(by_issuer) = by_issuer {
        return (by_issuer, LifetimeBasis::IssuerClaims);
    }
    let Some(exp) = claims.exp_time() else {
        return (default_lifetime, LifetimeBasis::Default);
    };
    if let Some(left) = issued.server_date.and_then(|date| time_left(exp, date)) {
        return (left, LifetimeBasis::ServerDate);
    }
    match time_left(exp, issued.sent_wall) {
        Some(left) => (left, LifetimeBasis::LocalClock),
        None => (default_lifetime, LifetimeBasis::ExpPassed),
    }
}

/// How long from `now` until `deadline`, when that is in the future.
fn time_left(deadline: SystemTime, now: SystemTime) -> Option<Duration> {
    deadline
        .duration_since(now)
        .ok()
        .filter(|left| !left.is_zero())
}

/// Logs, once per fetch, a difference of more than [`SKEW_WARNING`] between this machine's
/// clock when the request was sent and the issuer's when it answered: its `iat` claim, else
/// the response's `Date`. Lifetimes never depend on it; other time checks may.
fn warn_about_skew(
    sent_wall: SystemTime,
    iat: Option<SystemTime>,
    server_date: Option<SystemTime>,
) {
    let Some(skew) = clock_skew_secs(sent_wall, iat.or(server_date)) else {
        return;
    };
    if skew.unsigned_abs() <= SKEW_WARNING.as_secs() {
        return;
    }
    let (by, direction) = (
        skew.unsigned_abs(),
        if skew > 0 { "ahead of" } else { "behind" },
    );
    tracing::warn!(
        clock_skew_s = skew,
        "this machine's clock is about {by} s {direction} the token issuer's (its iat claim \
         or Date header). Token refresh is unaffected: lifetimes come from expires_in and the \
         token's exp - iat, which need no agreement between clocks. Anything else that \
         compares this machine's time with other machines' (certificate validity, signed \
         timestamps, log correlation) is off by as much: check NTP on this machine"
    );
}

/// This machine's clock minus the issuer's, in whole seconds (positive: this machine is
/// ahead).
fn clock_skew_secs(local: SystemTime, issuer: Option<SystemTime>) -> Option<i64> {
    let issuer = issuer?;
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    Some(match local.duration_since(issuer) {
        Ok(ahead) => secs(ahead),
        Err(behind) => -secs(behind.duration()),
    })
}

/// `Bearer <token>`, checked, built once and marked sensitive.
///
/// Any token that can stand in a header value as one word is accepted: visible ASCII,
/// `0x21`–`0x7E`. That is wider than RFC 6750's `b64token` (letters, digits and
/// `-._~+/=`), because real servers issue tokens outside it: eBay's carry `^` and `#`
/// (`v^1.1#i^1#p^1#…`), Salesforce's `!` (`00D…!AQ4…`), and an API that accepts them
/// expects them back byte for byte. Refused: spaces (not legal inside a bearer token, and
/// a space would split the header into more than `Bearer <token>`), tabs and other control
/// characters, CR and LF (header injection from a hostile or broken server, or store
/// entry), DEL, and non-ASCII.
fn header_for(token: &str) -> Result<HeaderValue, Error> {
    if token.is_empty() {
        return Err(Error::invalid(StatusCode::OK, "access_token is empty"));
    }
    if let Some(bad) = token.bytes().find(|b| !is_token_char(*b)) {
        let what = match bad {
            b' ' => "a space",
            b'\r' | b'\n' => "a line break (CR or LF)",
            0x80.. => "a non-ASCII character",
            _ => "a control character",
        };
        return Err(Error::invalid(
            StatusCode::OK,
            format!(
                "access_token has {what}, which is not allowed in a bearer token header (only visible ASCII, 0x21-0x7E, is sent)"
            ),
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

/// Visible ASCII: what a bearer token may be made of here (see [`header_for`]).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_graphic()
}

/// The claims this crate reads from a JWT payload. The signature is never checked: that is
/// the API's job; the client only needs to know when the token expires.
///
/// Each claim is read on its own: one of an unexpected type (Spring Authorization Server's
/// `scope` array, a string `iat`) is absent, and the others are still read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Claims {
    /// Expiry, seconds since the Unix epoch on the issuer's clock (fractions dropped).
    pub(crate) exp: Option<u64>,
    /// Issue time, seconds since the Unix epoch on the issuer's clock (fractions dropped).
    pub(crate) iat: Option<u64>,
    /// Granted scope: a space-separated string, or an array of strings joined with spaces.
    pub(crate) scope: Option<String>,
}

impl Claims {
    /// Reads the payload of a JWT-shaped token; `None` for opaque tokens or payloads that are
    /// not a JSON object (an opaque token is fine: `expires_in` then decides the lifetime).
    /// The payload's size is bounded by the response size cap.
    pub(crate) fn read(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let payload = payload.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The token's lifetime by the issuer's own clock, `exp − iat`, when both are there and
    /// `exp` is the later.
    fn issuer_lifetime(&self) -> Option<Duration> {
        let secs = self.exp?.checked_sub(self.iat?)?;
        (secs > 0).then(|| Duration::from_secs(secs))
    }

    /// `exp` as a wall-clock instant; `None` beyond what the clock can represent (2^63 s and
    /// up), which limits nothing.
    fn exp_time(&self) -> Option<SystemTime> {
        UNIX_EPOCH.checked_add(Duration::from_secs(self.exp?))
    }

    /// `iat` as a wall-clock instant.
    fn iat_time(&self) -> Option<SystemTime> {
        UNIX_EPOCH.checked_add(Duration::from_secs(self.iat?))
    }
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ClaimsVisitor)
    }
}

/// The claims this crate reads; any other is skipped unparsed.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ClaimName {
    Exp,
    Iat,
    Scope,
    #[serde(other)]
    Other,
}

/// Reads a claims object one claim at a time, each as a `serde_json::Value` that is then
/// interpreted leniently. A repeated claim: the last one counts, as with `serde_json::Value`.
struct ClaimsVisitor;

impl<'de> serde::de::Visitor<'de> for ClaimsVisitor {
    type Value = Claims;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of JWT claims")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
        let mut claims = Claims::default();
        while let Some(name) = map.next_key::<ClaimName>()? {
            match name {
                ClaimName::Exp => claims.exp = seconds(map.next_value()?),
                ClaimName::Iat => claims.iat = seconds(map.next_value()?),
                ClaimName::Scope => claims.scope = scope(map.next_value()?),
                ClaimName::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(claims)
    }
}

/// A NumericDate claim (RFC 7519): a JSON number of seconds, integer or float; fractions are
/// dropped. Negative or non-numeric: absent.
fn seconds(value: serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

/// The `scope` claim: a space-separated string (RFC 8693), or an array of strings (Spring
/// Authorization Server), joined with spaces. Anything else: absent.
fn scope(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(scope) => Some(scope),
        serde_json::Value::Array(items) => items
            .iter()
            .map(serde_json::Value::as_str)
            .collect::<Option<Vec<_>>>()
            .map(|scopes| scopes.join(" ")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// This machine's clock when the test requests are "sent": a fixed instant, so that every
    /// skew is exact.
    const T: u64 = 1_700_000_000;
    const HOUR: u64 = 3600;

    fn wall(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn jwt(payload: &str) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            enc.encode(r#"{"alg":"RS256"}"#),
            enc.encode(payload)
        )
    }

    /// A token the issuer stamped `iat` and `exp` (seconds since the epoch on its clock).
    fn jwt_iat_exp(iat: u64, exp: u64) -> String {
        jwt(&format!(r#"{{"iat":{iat},"exp":{exp}}}"#))
    }

    /// The answer to a token request sent at `T` by this machine's clock.
    fn issued(token: &str, expires_in: Option<u64>, server_date: Option<u64>) -> Issued<'_> {
        Issued {
            access_token: token,
            expires_in: expires_in.map(Duration::from_secs),
            scope: None,
            sent_at: Instant::now(),
            sent_wall: wall(T),
            server_date: server_date.map(wall),
        }
    }

    /// Builds a token as the refresher does, the request sent at `T` by this machine's clock.
    fn issue_with(
        token: &str,
        expires_in: Option<u64>,
        server_date: Option<u64>,
    ) -> Result<AccessToken, Error> {
        let issued = issued(token, expires_in, server_date);
        AccessToken::from_issued(issued, &Lifecycle::default(), 0.0)
    }

    fn issue(token: &str, expires_in: Option<u64>) -> Result<AccessToken, Error> {
        issue_with(token, expires_in, None)
    }

    fn lifetime(token: &AccessToken) -> Duration {
        token.expires_at() - token.issued_at()
    }

    /// The lifetime rule alone: `(lifetime in s, basis)`.
    fn rule(
        token: &str,
        expires_in: Option<u64>,
        server_date: Option<u64>,
    ) -> (u64, LifetimeBasis) {
        let issued = issued(token, expires_in, server_date);
        let claims = Claims::read(token).unwrap_or_default();
        let (lifetime, basis) = token_lifetime(&issued, &claims, Duration::from_secs(300));
        (lifetime.as_secs(), basis)
    }

    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` with every event logged to a string, which is returned with `f`'s result.
    fn logged<R>(f: impl FnOnce() -> R) -> (R, String) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        (result, text)
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
        // 2 s token: refresh at 1.5 s would be 1 margin (200 ms) before retirement at
        // 1.8 s: kept, and the jitter cannot take it under the 1 s floor.
        let (refresh, usable) = l.schedule(Duration::from_secs(2), 0.0);
        assert_eq!(
            (refresh, usable),
            (Duration::from_millis(1_500), Duration::from_millis(1_800))
        );
        let jittery = Lifecycle {
            jitter: 0.25,
            refresh_at: 0.5,
            ..l
        };
        let (refresh, _) = jittery.schedule(Duration::from_secs(2), 1.0);
        assert_eq!(refresh, REFRESH_FLOOR);
    }

    #[test]
    fn refresh_starts_a_margin_before_retirement_whatever_refresh_at_says() {
        // refresh_at 0.95 with 60 s tokens: 57 s would be after retirement at 54 s, so that
        // callers would block on a fetch every cycle. It starts at 48 s, a margin before.
        let late = Lifecycle {
            refresh_at: 0.95,
            ..Lifecycle::default()
        };
        let minute = Duration::from_secs(60);
        let (refresh, usable) = late.schedule(minute, 0.0);
        assert_eq!(usable, Duration::from_secs(54));
        assert_eq!(refresh, Duration::from_secs(48));
        // 24 h: 0.95 is 22.8 h, well before retirement: kept.
        let (refresh, _) = late.schedule(Duration::from_secs(86_400), 0.0);
        assert_eq!(refresh, Duration::from_secs(82_080));
        // Tiny lifetimes: the 1 s floor never pushes the refresh past retirement.
        for (lifetime, expect) in [(1_000_000, 800_000), (400_000, 320_000), (1_000, 800)] {
            let lifetime = Duration::from_micros(lifetime);
            for sample in [0.0, 0.5, 0.999] {
                for l in [Lifecycle::default(), late] {
                    let (refresh, usable) = l.schedule(lifetime, sample);
                    assert!(refresh <= usable, "{lifetime:?}: {refresh:?} > {usable:?}");
                    assert_eq!(refresh, Duration::from_micros(expect), "{lifetime:?}");
                }
            }
        }
        // And over a sweep of lifetimes and settings.
        for ms in (1..5_000)
            .step_by(7)
            .chain([59_999, 60_000, 300_001, 86_400_000])
        {
            let lifetime = Duration::from_millis(ms);
            let margin = Duration::from_secs(30).min(lifetime / 10);
            for refresh_at in [0.1, 0.5, 0.75, 0.9, 0.95] {
                for jitter in [0.0, 0.05, 0.25] {
                    let l = Lifecycle {
                        refresh_at,
                        jitter,
                        ..Lifecycle::default()
                    };
                    let (refresh, usable) = l.schedule(lifetime, 0.7);
                    assert!(
                        refresh + margin <= usable,
                        "{lifetime:?} {refresh_at} {jitter}"
                    );
                    assert!(refresh >= REFRESH_FLOOR.min(usable - margin));
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn huge_values_do_not_panic() {
        let huge = Lifecycle {
            refresh_at: f64::MAX,
            jitter: f64::NAN,
            default_lifetime: Duration::MAX,
        };
        for lifetime in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
            MAX_LIFETIME,
        ] {
            for sample in [0.0, 1.0, f64::NAN, f64::INFINITY, -1.0] {
                let (refresh, usable) = huge.schedule(lifetime, sample);
                assert!(refresh <= usable && usable <= lifetime);
                let (refresh, usable) = Lifecycle::default().schedule(lifetime, sample);
                assert!(refresh <= usable && usable <= lifetime);
            }
        }
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let issued = Issued {
            access_token: "opaque",
            expires_in: Some(Duration::MAX),
            scope: None,
            sent_at: now,
            sent_wall: SystemTime::now(),
            server_date: Some(UNIX_EPOCH),
        };
        let t = AccessToken::from_issued(issued, &huge, 0.5).unwrap();
        assert_eq!(lifetime(&t), MAX_LIFETIME);
        let t = issue_with("opaque", None, None);
        assert_eq!(lifetime(&t.unwrap()), Duration::from_secs(300));
        // Absurd expires_in is capped, not overflowed.
        let t = issue("opaque-token", Some(u64::MAX / 2)).unwrap();
        assert_eq!(lifetime(&t), MAX_LIFETIME);
    }

    #[test]
    fn rule_a_expires_in_bounded_by_exp_minus_iat() {
        // expires_in alone.
        assert_eq!(
            rule("opaque", Some(HOUR), None),
            (HOUR, LifetimeBasis::ExpiresIn)
        );
        // exp − iat shorter: it wins, whatever the clocks say.
        let token = jwt_iat_exp(T - 2 * HOUR, T - 2 * HOUR + 600);
        assert_eq!(
            rule(&token, Some(HOUR), None),
            (600, LifetimeBasis::IssuerClaims)
        );
        // exp − iat longer: expires_in.
        let token = jwt_iat_exp(T + 2 * HOUR, T + 4 * HOUR);
        assert_eq!(rule(&token, Some(60), None), (60, LifetimeBasis::ExpiresIn));
        // exp without iat, even long past by every clock: expires_in, never an error.
        let token = jwt(&format!(r#"{{"exp":{}}}"#, T - 5 * HOUR));
        assert_eq!(
            rule(&token, Some(HOUR), Some(T)),
            (HOUR, LifetimeBasis::ExpiresIn)
        );
        assert_eq!(
            lifetime(&issue(&token, Some(HOUR)).unwrap()).as_secs(),
            HOUR
        );
        // exp not after iat: no cross-check.
        let token = jwt_iat_exp(T, T);
        assert_eq!(
            rule(&token, Some(HOUR), None),
            (HOUR, LifetimeBasis::ExpiresIn)
        );
    }

    #[test]
    fn rule_b_exp_minus_iat_without_expires_in() {
        let token = jwt_iat_exp(T - 7 * HOUR, T - 6 * HOUR);
        assert_eq!(
            rule(&token, None, Some(T)),
            (HOUR, LifetimeBasis::IssuerClaims)
        );
        let token = jwt_iat_exp(T + 7 * HOUR, T + 7 * HOUR + 90);
        assert_eq!(rule(&token, None, None), (90, LifetimeBasis::IssuerClaims));
    }

    #[test]
    fn rule_c_exp_against_the_servers_date() {
        // The server's clock is 2 h behind ours: by our clock exp is long past, by its own
        // Date the token has 30 min left.
        let token = jwt(&format!(r#"{{"exp":{}}}"#, T - 2 * HOUR + 1800));
        assert_eq!(
            rule(&token, None, Some(T - 2 * HOUR)),
            (1800, LifetimeBasis::ServerDate)
        );
        // The server's clock 2 h ahead: 30 min left, not 2.5 h.
        let token = jwt(&format!(r#"{{"exp":{}}}"#, T + 2 * HOUR + 1800));
        assert_eq!(
            rule(&token, None, Some(T + 2 * HOUR)),
            (1800, LifetimeBasis::ServerDate)
        );
    }

    #[test]
    fn rule_d_exp_against_this_machines_clock() {
        let token = jwt(&format!(r#"{{"exp":{}}}"#, T + 900));
        assert_eq!(rule(&token, None, None), (900, LifetimeBasis::LocalClock));
        // exp already past by the server's Date: the local clock is the last resort.
        assert_eq!(
            rule(&token, None, Some(T + HOUR)),
            (900, LifetimeBasis::LocalClock)
        );
        // iat after exp says nothing.
        let token = jwt_iat_exp(T + 1000, T + 900);
        assert_eq!(rule(&token, None, None), (900, LifetimeBasis::LocalClock));
    }

    #[test]
    fn rule_e_default_lifetime_and_an_exp_in_the_past_is_a_warning_not_an_error() {
        assert_eq!(rule("opaque", None, None), (300, LifetimeBasis::Default));
        assert_eq!(
            rule(&jwt(r#"{"sub":"x"}"#), None, Some(T)),
            (300, LifetimeBasis::Default)
        );
        let token = jwt(&format!(r#"{{"exp":{}}}"#, T - 10));
        assert_eq!(rule(&token, None, None), (300, LifetimeBasis::ExpPassed));
        assert_eq!(
            rule(&token, None, Some(T - 20)),
            (10, LifetimeBasis::ServerDate)
        );
        let (t, logs) = logged(|| issue(&token, None));
        assert_eq!(lifetime(&t.unwrap()), Duration::from_secs(300));
        assert_eq!(logs.matches("WARN").count(), 1, "{logs}");
        assert!(logs.contains("exp claim is already past"), "{logs}");
        assert!(logs.contains("NTP"), "{logs}");
        assert!(!logs.contains(&token), "{logs}");
    }

    #[test]
    fn a_local_clock_ahead_of_the_issuer_gives_the_full_lifetime() {
        // The bug: exp compared with this machine's clock won over expires_in. Two hours
        // ahead failed every fetch; 59 min ahead made a one-hour token last a minute.
        for ahead in [2 * HOUR, 59 * 60, 10 * 365 * 24 * HOUR] {
            let iat = T - ahead;
            let token = jwt_iat_exp(iat, iat + HOUR);
            for expires_in in [Some(HOUR), None] {
                let t = issue(&token, expires_in).unwrap();
                assert_eq!(lifetime(&t), Duration::from_secs(HOUR), "ahead {ahead} s");
            }
        }
        // Behind by as much: the same.
        let token = jwt_iat_exp(T + 2 * HOUR, T + 3 * HOUR);
        assert_eq!(
            lifetime(&issue(&token, Some(HOUR)).unwrap()).as_secs(),
            HOUR
        );
    }

    #[test]
    fn a_skew_over_a_minute_is_warned_once_per_fetch_without_the_token() {
        let token = jwt_iat_exp(T - 2 * HOUR, T - HOUR);
        let (t, logs) = logged(|| issue_with(&token, Some(HOUR), Some(T - 2 * HOUR)));
        assert_eq!(lifetime(&t.unwrap()).as_secs(), HOUR);
        assert_eq!(logs.matches("WARN").count(), 1, "{logs}");
        assert!(logs.contains("clock_skew_s=7200"), "{logs}");
        assert!(
            logs.contains("7200 s ahead of the token issuer's"),
            "{logs}"
        );
        assert!(
            logs.contains("refresh is unaffected") && logs.contains("NTP"),
            "{logs}"
        );
        assert!(!logs.contains(&token), "{logs}");
        // From the Date header when there is no iat; this machine behind.
        let (_, logs) = logged(|| issue_with("opaque", Some(HOUR), Some(T + 90)));
        assert!(
            logs.contains("clock_skew_s=-90") && logs.contains("90 s behind"),
            "{logs}"
        );
        // A minute or less (transit time, whole seconds): nothing.
        let token = jwt_iat_exp(T - 60, T + HOUR);
        let (_, logs) = logged(|| issue_with(&token, Some(HOUR), Some(T + 60)));
        assert!(!logs.contains("WARN"), "{logs}");
        // Nothing to compare with: nothing.
        let (_, logs) = logged(|| issue("opaque", Some(HOUR)));
        assert!(!logs.contains("WARN"), "{logs}");
    }

    #[test]
    fn bad_characters_are_fetch_errors() {
        for (bad, says) in [
            ("abc\r\nX-Evil: 1", "line break"),
            ("abc\n", "line break"),
            ("abc def", "a space"),
            (" abc", "a space"),
            ("abc\t", "control character"),
            ("abc\0", "control character"),
            ("abc\x7f", "control character"),
            ("tøken", "non-ASCII"),
            ("", "empty"),
        ] {
            let err = issue(bad, Some(60)).unwrap_err();
            assert!(err.kind() == crate::ErrorKind::InvalidResponse, "{bad:?}");
            let text = err.report().to_string();
            assert!(text.contains(says), "{bad:?}: {text}");
            assert!(bad.is_empty() || !text.contains(bad), "{text}");
        }
    }

    #[test]
    fn every_visible_ascii_token_is_sent_as_is() {
        for token in [
            // eBay (client credentials, "application access token").
            "v^1.1#i^1#p^1#r^0#I^3#f^0#t^H4sIAAAAAAAAAOVYa2wUVRTebbeltRRjRBSMdjtoIJDZvTO7+5pk1m2h",
            // Salesforce.
            "00D5g000004XXXX!AQ4AQM.abc_DEF-123",
            // Every visible ASCII character.
            "!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~",
        ] {
            let t = issue(token, Some(60)).unwrap_or_else(|e| panic!("{token}: {e}"));
            assert_eq!(t.header_value().as_bytes(), format!("Bearer {token}").as_bytes());
            assert_eq!(t.secret(), token.as_bytes());
        }
    }

    #[test]
    fn exp_beyond_the_clock_does_not_panic() {
        // Found by fuzzing: UNIX_EPOCH + 2^63 s overflows SystemTime.
        let t = issue(&jwt(r#"{"exp":9223372036854775808}"#), Some(60)).unwrap();
        assert_eq!(lifetime(&t), Duration::from_secs(60));
        let t = issue(&jwt(r#"{"exp":18446744073709551615}"#), None).unwrap();
        assert_eq!(lifetime(&t), Duration::from_secs(300));
        let token = jwt(r#"{"iat":0,"exp":18446744073709551615}"#);
        let t = issue_with(&token, None, Some(T)).unwrap();
        assert_eq!(lifetime(&t), MAX_LIFETIME);
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
        // Not an object.
        assert!(Claims::read(&jwt(r#"[1700000000,"a b"]"#)).is_none());
        assert!(Claims::read(&jwt("42")).is_none());
        let c = Claims::read(&jwt(r#"{"exp":"soon","scope":"a b"}"#)).unwrap();
        assert_eq!(c.exp, None);
        assert_eq!(c.scope.as_deref(), Some("a b"));
        let c = Claims::read(&jwt(r#"{"exp":-5,"iat":12.9}"#)).unwrap();
        assert_eq!((c.exp, c.iat), (None, Some(12)));
        // A repeated claim: the last one counts.
        let c = Claims::read(&jwt(r#"{"exp":1,"exp":2}"#)).unwrap();
        assert_eq!(c.exp, Some(2));
    }

    #[test]
    fn one_claim_of_an_unexpected_type_loses_only_that_claim() {
        let payload = r#"{"iat":"yesterday","exp":1700003600,"scope":{"a":1},"aud":["x",1]}"#;
        let c = Claims::read(&jwt(payload)).unwrap();
        assert_eq!(
            c,
            Claims {
                exp: Some(1_700_003_600),
                iat: None,
                scope: None
            }
        );
        let payload = r#"{"iat":1700000000,"exp":[1],"scope":"a","nested":{"exp":"x"}}"#;
        let c = Claims::read(&jwt(payload)).unwrap();
        assert_eq!(
            c,
            Claims {
                exp: None,
                iat: Some(1_700_000_000),
                scope: Some("a".into())
            }
        );
        // The lifetime still comes from the claims that were read.
        let token = jwt(&format!(r#"{{"iat":true,"exp":{},"scope":7}}"#, T + 900));
        assert_eq!(rule(&token, None, None), (900, LifetimeBasis::LocalClock));
    }

    #[test]
    fn scope_as_an_array_of_strings_is_joined_with_spaces() {
        // Spring Authorization Server.
        let token = jwt(&format!(
            r#"{{"sub":"c","scope":["read","write:all"],"iat":{T},"exp":{}}}"#,
            T + HOUR
        ));
        let c = Claims::read(&token).unwrap();
        assert_eq!(c.scope.as_deref(), Some("read write:all"));
        assert_eq!((c.iat, c.exp), (Some(T), Some(T + HOUR)));
        let t = issue(&token, None).unwrap();
        assert_eq!(t.scope(), Some("read write:all"));
        assert_eq!(lifetime(&t).as_secs(), HOUR);
        // Not all strings: absent.
        let c = Claims::read(&jwt(r#"{"scope":["read",2]}"#)).unwrap();
        assert_eq!(c.scope, None);
    }

    #[test]
    fn payloads_over_16_kib_are_read() {
        let padding = "x".repeat(40 * 1024);
        let token = jwt(&format!(
            r#"{{"pad":"{padding}","iat":{},"exp":{}}}"#,
            T - 2 * HOUR,
            T - HOUR
        ));
        assert!(token.len() > 50 * 1024);
        assert_eq!(
            rule(&token, None, None),
            (HOUR, LifetimeBasis::IssuerClaims)
        );
    }
}
