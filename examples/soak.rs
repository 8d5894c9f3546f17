//! Soak test: many concurrent workers sending authenticated requests through the full stack
//! for a while, then one JSON line of results.
//!
//! ```text
//! cargo run --release --example soak -- --workers 64 --duration-s 60
//! ```
//!
//! By default it runs the embedded authorization server and API over TCP on 127.0.0.1 with
//! 2-second tokens, so that the run crosses dozens of refreshes. Against a real server:
//!
//! ```text
//! MY_SECRET=… cargo run --release --example soak -- \
//!   --token-url https://partner.dev.entur.org/oauth/token --client-id … \
//!   --client-secret-env MY_SECRET --audience https://api.dev.entur.io --body json \
//!   --api-url https://api.dev.entur.io/<some partner API path>
//! ```
//!
//! The stack is the one the README recommends, without `ErrorForStatusLayer` so that a 401
//! that survives re-authentication is counted here as `unauthorized`:
//! `timeout(10 s) → EnturAuthLayer::with_replay() → hyper-util client`. With `--replicas N`
//! there are N token sources, each with its own stack and connection pool, as N processes
//! would have; with `--redis-url` they share one token through
//! [`RedisStore`](entur_auth::store::RedisStore) (`--features redis`). With `--stream-body`
//! the requests carry a streamed body, which cannot be replayed: a refused one still drops
//! the token, but comes back 401. With `--revoke-every-s` the embedded server revokes every
//! token it issued, periodically, so that re-authentication runs under load.
//!
//! `--private-key PATH` (with `--key-id`, `--jwt-bearer`) authenticates with a private key
//! instead of a secret, against the embedded server (given the key's public half) or your
//! own; `--client-cert PATH --client-key PATH` presents a client certificate (mutual TLS,
//! reloaded when the files change) to your own token endpoint.
//!
//! At the deadline no new request starts; the ones in flight get up to the request timeout
//! (10 s) more to finish and are counted like the others (and in `in_flight_at_deadline`);
//! one still unfinished after that counts as failed, with its elapsed time as latency.
//!
//! Latencies are closed-loop: each worker sends its next request only after the answer to
//! the previous one, so when the server is overloaded the workers slow down with it and the
//! latencies understate what clients sending at a fixed rate would see; `requests_per_s` is
//! the rate the workers achieved, not an offered rate. They are kept in a log-linear
//! histogram (buckets under 0.8 % wide, 1 µs to 134 s) per worker: bounded memory however
//! long the run. `max_us` is exact; the percentiles are their bucket's upper bound.
//!
//! Printed on stdout, one JSON object: `requests` = `ok` (2xx) + `failed` (errors, timeouts
//! and statuses other than 2xx and 401) + `unauthorized` (401 after the one replay with a new
//! token) + `unauthorized_not_replayable` (401 to a streamed request) +
//! `unauthorized_backing_off` (401 to the replay with the same token while forced refreshes
//! back off: with `--revoke-every-s` under 10 minutes, the revoker is an API that keeps
//! refusing new tokens, and the backoff bounds its token requests);
//! `in_flight_at_deadline`; `token_fetches` (token requests the embedded server received;
//! against another server, the sum of `fetch_attempts`); `fetch_attempts` (per token source,
//! from `TokenSource::status`); `p50_us`, `p90_us`, `p99_us`, `p999_us`, `max_us`;
//! `latency_model` (`"closed-loop"`); `requests_per_s`, `duration_s` (start to the last
//! answer), `drain_ms` (deadline to the last answer); and the settings.
//!
//! Exit status: 0 when at least one request succeeded and none failed or stayed
//! unauthorized (streamed requests refused, and refusals while forced refreshes back off,
//! are expected while `--revoke-every-s` revokes tokens, and do not count against it); 1
//! otherwise, or when the run could not start (the
//! embedded server, Redis or the first token fetch); 2 for bad flags or flag values.

use std::fmt;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use entur_auth::{
    BodyEncoding, BoxError, ClientAuth, Credentials, EnturAuthLayer, Invalidation, Refusal,
    ReplayOutcome, TokenEndpoint, TokenSource,
};
use entur_auth_test::TestServer;
use http::{Request, Response, StatusCode, Uri};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The limit on each request (both attempts and the wait for a new token), and the grace
/// given to requests still in flight at the deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames in a `--stream-body` request body, and the bytes of each.
const STREAM_FRAMES: usize = 4;
const STREAM_FRAME: &[u8] = &[b's'; 64];

const USAGE: &str = "\
usage: soak [flags]

Sends authenticated requests from concurrent workers for a while, then prints one JSON line
of results on stdout.

  --workers N               concurrent workers (default 64)
  --duration-s SECONDS      how long to start new requests (default 60); requests still in
                            flight then get up to the 10 s request timeout to finish, and
                            are counted (also in in_flight_at_deadline)
  --replicas N              token sources in this process, each with its own stack and
                            connection pool, as N processes would have; the workers are
                            spread across them (default 1, at most --workers)
  --redis-url URL           the replicas share one token through this Redis (RedisStore)
                            instead of each fetching its own; needs the redis feature:
                            cargo run --release --features redis --example soak -- ...
  --stream-body             POST a streamed body (4 chunks of 64 bytes) instead of a GET:
                            a refused request cannot be replayed (it still drops the token),
                            its 401 counts as unauthorized_not_replayable
  --revoke-every-s SECONDS  embedded server only: revoke every token it issued, every
                            SECONDS, so that re-authentication runs under load; the
                            resulting unauthorized_backing_off (and, with --stream-body,
                            unauthorized_not_replayable) are expected, and not failures

Without --token-url: the embedded OAuth2 server and API on 127.0.0.1, 2-second tokens.
Against your own servers (--token-url, --client-id, --client-secret-env and --api-url
together; the other flags also apply to the embedded server):
  --token-url URL           the token endpoint
  --client-id ID            the client id
  --client-secret-env NAME  the NAME of the environment variable holding the secret
  --audience AUD            audience sent on every token request
  --api-url URL             the API URL every worker sends to; without --token-url the
                            embedded server's tokens go to it (an API stub, a black hole)
  --body json|form          token request body encoding (default: form; json for the
                            embedded server)
  --auth body|basic         client authentication (default: body)
  --allow-http-loopback     allow plain http:// URLs to loopback hosts
  --extra-root-cert PATH    trust this PEM root certificate too (token endpoint and API)
  --private-key PATH        authenticate with this PEM private key (RSA or P-256) instead
                            of a secret: private_key_jwt (RFC 7523 2.2); the embedded
                            server is given its public half
  --key-id KID              the kid of --private-key's assertions
  --jwt-bearer              with --private-key: the JWT bearer grant (RFC 7523 2.1) instead
                            of private_key_jwt (Maskinporten's way)
  --client-cert PATH        with --token-url: present this PEM client certificate (mutual
  --client-key PATH         TLS, RFC 8705), reloaded when the files change; without a secret
                            or a key the client id alone is sent (tls_client_auth)
  -h, --help                this text

Latencies are closed-loop: each worker sends its next request only after the answer to the
previous one, so under overload they understate what clients sending at a fixed rate would
see, and requests_per_s is what the workers achieved, not an offered rate.

Exit status:
  0  at least one request succeeded, and none failed or stayed unauthorized
  1  a request failed (an error, a timeout, a status other than 2xx and 401), was still
     refused (401) after the replay, or was a streamed request refused without
     --revoke-every-s; or no request succeeded; or the run could not start (the embedded
     server, Redis or the first token fetch)
  2  bad flags or flag values";

/// Flags as given on the command line.
#[derive(Debug, Default)]
struct Args {
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret_env: Option<String>,
    audience: Option<String>,
    api_url: Option<String>,
    body: Option<BodyEncoding>,
    auth: Option<ClientAuth>,
    allow_http_loopback: bool,
    extra_root_cert: Option<String>,
    private_key: Option<String>,
    key_id: Option<String>,
    jwt_bearer: bool,
    client_cert: Option<String>,
    client_key: Option<String>,
    workers: usize,
    duration: Duration,
    replicas: usize,
    redis_url: Option<String>,
    stream_body: bool,
    revoke_every: Option<Duration>,
}

/// A bad command line: exit code 2.
#[derive(Debug)]
struct Usage(String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage(message: impl Into<String>) -> Usage {
    Usage(message.into())
}

/// A number of seconds above 0 and at most a week.
fn seconds(flag: &str, text: &str) -> Result<Duration, Usage> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 7.0 * 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(usage(format!(
            "{flag} {text:?}: give a number of seconds above 0 (at most a week)"
        ))),
    }
}

/// A whole number in `range`.
fn count(flag: &str, text: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize, Usage> {
    match text.parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(usage(format!(
            "{flag} {text:?}: give a whole number from {} to {}",
            range.start(),
            range.end()
        ))),
    }
}

impl Args {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Self>, Usage> {
        let mut parsed = Args {
            workers: 64,
            duration: Duration::from_secs(60),
            replicas: 1,
            ..Args::default()
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value)),
                _ => (arg.clone(), None),
            };
            let mut value = |what: &str| -> Result<String, Usage> {
                match inline {
                    Some(value) => Ok(value.to_owned()),
                    None => args
                        .next()
                        .ok_or_else(|| usage(format!("{name} needs a value ({what})"))),
                }
            };
            let no_value = |flag: &mut bool| match inline {
                None => {
                    *flag = true;
                    Ok(())
                }
                Some(_) => Err(usage(format!("{name} takes no value"))),
            };
            match name.as_str() {
                "-h" | "--help" => return Ok(None),
                "--token-url" => parsed.token_url = Some(value("a URL")?),
                "--client-id" => parsed.client_id = Some(value("a client id")?),
                "--client-secret-env" => {
                    parsed.client_secret_env = Some(value("an environment variable name")?)
                }
                "--audience" => parsed.audience = Some(value("an audience")?),
                "--api-url" => parsed.api_url = Some(value("a URL")?),
                "--body" => {
                    parsed.body = Some(match value("json or form")?.as_str() {
                        "json" => BodyEncoding::Json,
                        "form" => BodyEncoding::Form,
                        other => return Err(usage(format!("--body {other:?}: use json or form"))),
                    })
                }
                "--auth" => {
                    parsed.auth = Some(match value("body or basic")?.as_str() {
                        "body" => ClientAuth::Body,
                        "basic" => ClientAuth::Basic,
                        other => return Err(usage(format!("--auth {other:?}: use body or basic"))),
                    })
                }
                "--allow-http-loopback" => no_value(&mut parsed.allow_http_loopback)?,
                "--extra-root-cert" => parsed.extra_root_cert = Some(value("a PEM file")?),
                "--private-key" => parsed.private_key = Some(value("a PEM file")?),
                "--key-id" => parsed.key_id = Some(value("a key id")?),
                "--jwt-bearer" => no_value(&mut parsed.jwt_bearer)?,
                "--client-cert" => parsed.client_cert = Some(value("a PEM file")?),
                "--client-key" => parsed.client_key = Some(value("a PEM file")?),
                "--workers" => parsed.workers = count(&name, &value("a number")?, 1..=100_000)?,
                "--duration-s" => parsed.duration = seconds(&name, &value("seconds")?)?,
                "--replicas" => parsed.replicas = count(&name, &value("a number")?, 1..=1_000)?,
                "--redis-url" => {
                    // The URL may hold a password: it is never echoed.
                    let url = value("a redis:// URL")?;
                    if !cfg!(feature = "redis") {
                        return Err(usage(
                            "--redis-url needs the redis feature: \
                             cargo run --release --features redis --example soak -- ...",
                        ));
                    }
                    parsed.redis_url = Some(url);
                }
                "--stream-body" => no_value(&mut parsed.stream_body)?,
                "--revoke-every-s" => {
                    parsed.revoke_every = Some(seconds(&name, &value("seconds")?)?)
                }
                other => return Err(usage(format!("unknown flag {other:?}"))),
            }
        }
        if parsed.private_key.is_none() && (parsed.key_id.is_some() || parsed.jwt_bearer) {
            return Err(usage("--key-id and --jwt-bearer go with --private-key"));
        }
        if parsed.client_cert.is_some() != parsed.client_key.is_some() {
            return Err(usage("--client-cert and --client-key go together"));
        }
        if parsed.client_cert.is_some() && parsed.token_url.is_none() {
            return Err(usage(
                "--client-cert needs --token-url: the embedded server runs plain HTTP here \
                 (tests/mtls.rs runs it with mutual TLS)",
            ));
        }
        let keyed = parsed.private_key.is_some() || parsed.client_cert.is_some();
        let external = [
            ("--client-id", parsed.client_id.is_some()),
            (
                "--client-secret-env (or --private-key, or --client-cert)",
                parsed.client_secret_env.is_some() || keyed,
            ),
            ("--api-url", parsed.api_url.is_some()),
        ];
        if parsed.token_url.is_some() {
            if let Some((flag, _)) = external.iter().find(|(_, given)| !given) {
                return Err(usage(format!("--token-url also needs {flag}")));
            }
            if parsed.revoke_every.is_some() {
                return Err(usage(
                    "--revoke-every-s revokes the embedded server's tokens: \
                     drop it, or drop --token-url",
                ));
            }
        }
        if parsed.replicas > parsed.workers {
            return Err(usage(format!(
                "--replicas {} is more than --workers {}: every replica needs a worker",
                parsed.replicas, parsed.workers
            )));
        }
        Ok(Some(parsed))
    }
}

/// Latencies in microseconds, in bounded memory: a log-linear histogram.
///
/// Values below 128 µs have a bucket each; above, every power of two is split into 128
/// buckets, so a bucket is less than 0.8 % of its values wide. Values from 2^27 µs (134 s)
/// on share the last bucket. The maximum is kept exactly.
struct Histogram {
    counts: Box<[u64; Histogram::BUCKETS]>,
    total: u64,
    max: u64,
}

impl Histogram {
    /// log2 of the buckets per power of two.
    const SUB_BITS: u32 = 7;
    const SUB: usize = 1 << Self::SUB_BITS;
    /// Values below 2^TOP_BITS µs have a bucket of their own width.
    const TOP_BITS: u32 = 27;
    const BUCKETS: usize = Self::SUB * (1 + (Self::TOP_BITS - Self::SUB_BITS) as usize);

    fn new() -> Self {
        Self {
            counts: Box::new([0; Self::BUCKETS]),
            total: 0,
            max: 0,
        }
    }

    fn record(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    fn index(us: u64) -> usize {
        if us < Self::SUB as u64 {
            return us as usize;
        }
        let log2 = u64::BITS - 1 - us.leading_zeros();
        if log2 >= Self::TOP_BITS {
            return Self::BUCKETS - 1;
        }
        let shift = log2 - Self::SUB_BITS;
        // (us >> shift) is in [SUB, 2 * SUB): the 7 bits after the leading one.
        Self::SUB * (1 + shift as usize) + ((us >> shift) as usize - Self::SUB)
    }

    /// The largest value that falls into bucket `index`.
    fn upper(index: usize) -> u64 {
        if index < Self::SUB {
            return index as u64;
        }
        let shift = (index / Self::SUB - 1) as u32;
        let low = ((Self::SUB + index % Self::SUB) as u64) << shift;
        low + (1 << shift) - 1
    }

    fn merge(&mut self, other: &Histogram) {
        for (count, other) in self.counts.iter_mut().zip(other.counts.iter()) {
            *count += other;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The nearest-rank `q` quantile (the upper bound of its bucket, at most the maximum);
    /// `None` with no values.
    fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                // The last bucket has no upper bound but the maximum.
                if index == Self::BUCKETS - 1 {
                    return Some(self.max);
                }
                return Some(Self::upper(index).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// What the workers saw.
struct Tally {
    ok: u64,
    failed: u64,
    unauthorized: u64,
    unauthorized_not_replayable: u64,
    /// 401s to requests replayed with the same token while forced refreshes back off.
    unauthorized_backing_off: u64,
    in_flight_at_deadline: u64,
    latencies: Histogram,
    /// The first few distinct failure messages, for stderr.
    failures: Vec<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            failed: 0,
            unauthorized: 0,
            unauthorized_not_replayable: 0,
            unauthorized_backing_off: 0,
            in_flight_at_deadline: 0,
            latencies: Histogram::new(),
            failures: Vec::new(),
        }
    }

    fn requests(&self) -> u64 {
        self.ok
            + self.failed
            + self.unauthorized
            + self.unauthorized_not_replayable
            + self.unauthorized_backing_off
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.unauthorized += other.unauthorized;
        self.unauthorized_not_replayable += other.unauthorized_not_replayable;
        self.unauthorized_backing_off += other.unauthorized_backing_off;
        self.in_flight_at_deadline += other.in_flight_at_deadline;
        self.latencies.merge(&other.latencies);
        for failure in other.failures {
            self.note(failure);
        }
    }

    fn note(&mut self, failure: String) {
        if self.failures.len() < 8 && !self.failures.contains(&failure) {
            self.failures.push(failure);
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("soak: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(Failure::Usage(error)) => {
            eprintln!("soak: {error}");
            ExitCode::from(2)
        }
        Err(Failure::Run(error)) => {
            eprintln!("soak: {error}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// A flag's value is unusable (unreadable file, refused URL, missing variable): exit 2.
    Usage(Usage),
    /// Something went wrong while running: exit 1.
    Run(BoxError),
}

impl From<Usage> for Failure {
    fn from(usage: Usage) -> Self {
        Failure::Usage(usage)
    }
}

fn run_failure(message: String) -> Failure {
    Failure::Run(message.into())
}

/// The API connector: HTTPS, or plain HTTP for loopback.
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Everything the workers need, made before the clock starts.
struct Setup {
    server: Option<TestServer>,
    sources: Vec<TokenSource>,
    connector: Connector,
    api_uri: Uri,
}

/// What a run came to, before the report.
struct Outcome {
    tally: Tally,
    /// From the start to the last answer.
    elapsed: Duration,
    /// From the deadline to the last answer.
    drain: Duration,
    revocations: u64,
}

/// Runs the soak; `Ok(true)` if it passed (see the exit status in the usage).
async fn run(args: Args) -> Result<bool, Failure> {
    let setup = setup(&args).await?;
    let outcome = if args.stream_body {
        drive(&args, &setup, stream_request).await?
    } else {
        drive(&args, &setup, get_request).await?
    };
    let Outcome {
        tally,
        elapsed,
        drain,
        revocations,
    } = outcome;

    let fetch_attempts: Vec<u64> = setup
        .sources
        .iter()
        .map(|source| source.status().fetch_attempts)
        .collect();
    let token_fetches = match &setup.server {
        Some(server) => server.token_requests() as u64,
        None => fetch_attempts.iter().sum(),
    };
    let requests = tally.requests();
    let latency = |q| tally.latencies.quantile(q);
    let report = serde_json::json!({
        "requests": requests,
        "ok": tally.ok,
        "failed": tally.failed,
        "unauthorized": tally.unauthorized,
        "unauthorized_not_replayable": tally.unauthorized_not_replayable,
        "unauthorized_backing_off": tally.unauthorized_backing_off,
        "in_flight_at_deadline": tally.in_flight_at_deadline,
        "token_fetches": token_fetches,
        "fetch_attempts": fetch_attempts,
        "p50_us": latency(0.50),
        "p90_us": latency(0.90),
        "p99_us": latency(0.99),
        "p999_us": latency(0.999),
        "max_us": (tally.latencies.total > 0).then_some(tally.latencies.max),
        "latency_model": "closed-loop",
        "workers": args.workers,
        "replicas": args.replicas,
        "store": if args.redis_url.is_some() { "redis" } else { "none" },
        "body": if args.stream_body { "stream" } else { "full" },
        "revocations": revocations,
        "duration_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "drain_ms": (drain.as_secs_f64() * 1000.0).round(),
        "requests_per_s": (requests as f64 / elapsed.as_secs_f64()).round(),
        "server": if setup.server.is_some() { "embedded" } else { "external" },
        "credentials": match (&args.private_key, args.jwt_bearer, &args.client_cert, &args.client_secret_env) {
            (Some(_), true, _, _) => "jwt_bearer",
            (Some(_), false, _, _) => "private_key_jwt",
            (None, _, Some(_), None) if setup.server.is_none() => "tls_client_auth",
            _ => "secret",
        },
        "client_certificate": args.client_cert.is_some(),
    });
    println!("{report}");
    for failure in &tally.failures {
        eprintln!("soak: seen: {failure}");
    }

    let problems = problems(&tally, revocations);
    if problems.is_empty() {
        Ok(true)
    } else {
        eprintln!("soak: failed: {}", problems.join("; "));
        Ok(false)
    }
}

/// What makes a run fail: nothing succeeded, something failed, or a refusal survived the
/// replay. Empty when the run passed.
fn problems(tally: &Tally, revocations: u64) -> Vec<String> {
    // Streamed requests refused while tokens are being revoked cannot be replayed, and a
    // revoker that refuses new tokens more often than every 10 minutes is an API whose
    // refusals make forced refreshes back off: both expected.
    let refused_streams_expected = revocations > 0;
    let mut problems = Vec::new();
    if tally.ok == 0 {
        problems.push("no request succeeded".to_owned());
    }
    if tally.failed > 0 {
        problems.push(format!("{} request(s) failed", tally.failed));
    }
    if tally.unauthorized > 0 {
        problems.push(format!(
            "{} request(s) ended 401 Unauthorized (refused again after the replay with a new \
             token)",
            tally.unauthorized
        ));
    }
    if tally.unauthorized_backing_off > 0 && revocations == 0 {
        problems.push(format!(
            "{} request(s) ended 401 Unauthorized while forced refreshes back off",
            tally.unauthorized_backing_off
        ));
    }
    if tally.unauthorized_not_replayable > 0 && !refused_streams_expected {
        problems.push(format!(
            "{} streamed request(s) were refused (401) and could not be replayed",
            tally.unauthorized_not_replayable
        ));
    }
    problems
}

/// The embedded server (unless `--token-url`), the token sources (first token fetched) and
/// the API connector.
async fn setup(args: &Args) -> Result<Setup, Failure> {
    let extra_root = match &args.extra_root_cert {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| usage(format!("--extra-root-cert {path:?}: cannot read it ({e})")))?,
        ),
        None => None,
    };
    let secret = match &args.client_secret_env {
        Some(name) => Some(std::env::var(name).map_err(|_| {
            usage(format!(
                "--client-secret-env {name}: the environment variable {name} is not set (or not UTF-8)"
            ))
        })?),
        None => None,
    };

    let private_key = match &args.private_key {
        Some(path) => {
            let key = entur_auth::assertion::PrivateKey::from_pem_file(path)
                .map_err(|e| usage(format!("--private-key: {e}")))?;
            Some(match &args.key_id {
                Some(kid) => key.key_id(kid),
                None => key,
            })
        }
        None => None,
    };
    let public_key = private_key.as_ref().map(|key| key.public_key_pem());
    // The credentials for `id`: the key, else the secret, else the client certificate.
    let credentials_for = |id: String, secret: Option<String>| match private_key {
        Some(key) if args.jwt_bearer => Credentials::jwt_bearer(id, key),
        Some(key) => Credentials::private_key_jwt(id, key),
        None => match secret {
            Some(secret) => Credentials::new(id, secret),
            None => Credentials::tls_client_auth(id),
        },
    };

    // The embedded server (default), or the given endpoint.
    let (server, endpoint, credentials, api_url) = match &args.token_url {
        None => {
            let mut builder = TestServer::builder().token_lifetime(Duration::from_secs(2));
            if let Some(public_key) = public_key {
                builder = builder.client_public_key_pem(public_key);
            }
            if let Some(id) = &args.client_id {
                builder = builder.client_id(id);
            }
            if let Some(secret) = &secret {
                builder = builder.client_secret(secret);
            }
            if let Some(audience) = &args.audience {
                builder = builder.audience(audience);
            }
            let server = builder
                .start()
                .await
                .map_err(|e| run_failure(format!("cannot start the embedded server: {e}")))?;
            let mut endpoint = server.endpoint();
            if let Some(body) = args.body {
                endpoint = endpoint.encoding(body);
            }
            if let Some(auth) = args.auth {
                endpoint = endpoint.client_auth(auth);
            }
            let credentials = credentials_for(
                server.client_id().to_owned(),
                Some(server.client_secret().to_owned()),
            );
            let api_url = args.api_url.clone().unwrap_or_else(|| server.api_url());
            (Some(server), endpoint, credentials, api_url)
        }
        Some(url) => {
            let mut endpoint =
                TokenEndpoint::new(url).map_err(|e| usage(format!("--token-url {url:?}: {e}")))?;
            if let Some(audience) = &args.audience {
                endpoint = endpoint.audience(audience);
            }
            if let Some(body) = args.body {
                endpoint = endpoint.encoding(body);
            }
            if let Some(auth) = args.auth {
                endpoint = endpoint.client_auth(auth);
            }
            let id = args.client_id.clone().unwrap_or_default();
            let credentials = credentials_for(id, secret);
            (
                None,
                endpoint,
                credentials,
                args.api_url.clone().unwrap_or_default(),
            )
        }
    };
    let allow_http_loopback = server.is_some() || args.allow_http_loopback;
    let api_uri: Uri = api_url
        .parse()
        .map_err(|e| usage(format!("--api-url {api_url:?}: not a URL ({e})")))?;
    check_api_url(&api_uri, allow_http_loopback)?;

    #[cfg(feature = "redis")]
    if let Some(url) = &args.redis_url {
        check_redis(url).await?;
    }
    let mut sources = Vec::with_capacity(args.replicas);
    for _ in 0..args.replicas {
        let mut builder = TokenSource::builder(endpoint.clone(), credentials.clone())
            .allow_http_loopback(allow_http_loopback);
        if let Some(pem) = &extra_root {
            builder = builder.extra_root_certificate(pem);
        }
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            builder = builder.client_certificate_files(cert, key);
        }
        #[cfg(feature = "redis")]
        if let Some(url) = &args.redis_url {
            // A store (and connection) per replica, as separate processes would have.
            builder = builder.shared_store(redis_store(url)?);
        }
        sources.push(builder.build().map_err(|e| usage(e.to_string()))?);
    }

    // The first token before the clock starts, so that a wrong configuration fails at once.
    // One replica after the other: with a shared store, the later ones adopt the first's.
    for source in &sources {
        source
            .prefetch()
            .await
            .map_err(|e| run_failure(format!("the first token fetch failed: {e}")))?;
    }
    Ok(Setup {
        server,
        sources,
        connector: https_connector(extra_root.as_deref())?,
        api_uri,
    })
}

/// A Redis store for `--redis-url` (the URL may hold a password: it is never echoed).
#[cfg(feature = "redis")]
fn redis_store(url: &str) -> Result<entur_auth::store::RedisStore, Failure> {
    entur_auth::store::RedisStore::new(url).map_err(|e| usage(format!("--redis-url: {e}")).into())
}

/// Fails at once when the Redis of `--redis-url` does not answer: otherwise every replica
/// would quietly fetch for itself (the store is never a single point of failure), and the
/// run would measure something else than it says.
#[cfg(feature = "redis")]
async fn check_redis(url: &str) -> Result<(), Failure> {
    use entur_auth::store::TokenStore;
    let store = redis_store(url)?;
    match tokio::time::timeout(Duration::from_secs(2), store.get("entur-auth:soak:ping")).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(run_failure(format!(
            "--redis-url: Redis did not answer ({e}): start it, or fix the URL"
        ))),
        Err(_) => Err(run_failure(
            "--redis-url: Redis did not answer within 2 s: start it, or fix the URL".to_owned(),
        )),
    }
}

/// Runs the workers (and the revoker) over one stack per token source, with requests made
/// by `request`.
async fn drive<B>(
    args: &Args,
    setup: &Setup,
    request: fn(&Uri) -> Request<B>,
) -> Result<Outcome, Failure>
where
    B: http_body::Body + entur_auth::replay::ReplayBody + Send + Sync + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let replicas = setup.sources.len();
    let stacks: Vec<_> = setup
        .sources
        .iter()
        .enumerate()
        .map(|(replica, source)| {
            // The workers this replica serves: one idle connection each.
            let workers = (args.workers + replicas - 1 - replica) / replicas;
            let client = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(workers)
                .build::<_, B>(setup.connector.clone());
            ServiceBuilder::new()
                .timeout(REQUEST_TIMEOUT)
                .layer(EnturAuthLayer::new(source.clone()).with_replay())
                .service(client)
        })
        .collect();

    let started = Instant::now();
    let deadline = started + args.duration;
    let revoker = match (&setup.server, args.revoke_every) {
        (Some(server), Some(every)) => Some(tokio::spawn(revoke(
            server.clone(),
            started + every,
            every,
            deadline,
        ))),
        _ => None,
    };
    let uri = Arc::new(setup.api_uri.clone());
    let mut workers = tokio::task::JoinSet::new();
    for worker_index in 0..args.workers {
        let api = stacks[worker_index % replicas].clone();
        workers.spawn(worker(api, uri.clone(), request, deadline));
    }
    let mut tally = Tally::new();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(worker) => tally.merge(worker),
            Err(e) => return Err(run_failure(format!("a worker panicked: {e}"))),
        }
    }
    let finished = Instant::now();
    let revocations = match revoker {
        Some(revoker) => revoker
            .await
            .map_err(|e| run_failure(format!("the revoker panicked: {e}")))?,
        None => 0,
    };
    Ok(Outcome {
        tally,
        elapsed: finished - started,
        drain: finished.saturating_duration_since(deadline),
        revocations,
    })
}

/// Revokes every token the server issued, at `first` and every `every` after, until the
/// deadline. Returns how many times.
async fn revoke(server: TestServer, first: Instant, every: Duration, deadline: Instant) -> u64 {
    let mut revocations = 0;
    let mut at = first;
    while at < deadline {
        tokio::time::sleep_until(at).await;
        server.revoke_all();
        revocations += 1;
        at += every;
    }
    revocations
}

/// The default request: a GET, with an empty body that can be replayed.
fn get_request(uri: &Uri) -> Request<Full<Bytes>> {
    Request::get(uri.clone())
        .body(Full::default())
        .expect("a GET with a valid URI is a valid request")
}

/// The `--stream-body` request: a POST whose body is a stream (sent chunked), which cannot
/// be replayed: `BoxBody` implements `ReplayBody` by returning `None`.
fn stream_request(uri: &Uri) -> Request<BoxBody<Bytes, BoxError>> {
    let frames = (0..STREAM_FRAMES).map(|_| Ok(Frame::data(Bytes::from_static(STREAM_FRAME))));
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .expect("a POST with a valid URI is a valid request")
}

/// One worker: requests back to back until the deadline. The one in flight at the deadline
/// gets up to [`REQUEST_TIMEOUT`] more; if it has not finished by then, it counts as failed.
async fn worker<S, B, ResB>(
    mut api: S,
    uri: Arc<Uri>,
    request: fn(&Uri) -> Request<B>,
    deadline: Instant,
) -> Tally
where
    S: Service<Request<B>, Response = Response<ResB>, Error = BoxError>,
    ResB: http_body::Body,
    ResB::Error: fmt::Display,
{
    let grace_ends = deadline + REQUEST_TIMEOUT;
    let mut tally = Tally::new();
    loop {
        let started = Instant::now();
        if started >= deadline {
            break;
        }
        let request = request(&uri);
        let attempt = async {
            let response = api.ready().await?.call(request).await?;
            let status = response.status();
            let refusal = response.extensions().get::<Refusal>().copied();
            // Read the body so that the connection goes back to the pool.
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the response body failed: {e}"))?;
            Ok::<_, BoxError>((status, refusal))
        };
        let outcome = tokio::time::timeout_at(grace_ends, attempt).await;
        let finished = Instant::now();
        tally.latencies.record(finished - started);
        if finished > deadline {
            tally.in_flight_at_deadline += 1;
        }
        match outcome {
            Ok(Ok((status, _))) if status.is_success() => tally.ok += 1,
            Ok(Ok((StatusCode::UNAUTHORIZED, refusal))) => match refusal {
                Some(refusal) if refusal.replay == ReplayOutcome::NotReplayable => {
                    tally.unauthorized_not_replayable += 1;
                    tally
                        .note("the API answered 401 to a streamed request (not replayable)".into());
                }
                Some(refusal)
                    if matches!(refusal.invalidation, Invalidation::RateLimited { .. }) =>
                {
                    tally.unauthorized_backing_off += 1;
                    tally.note(unauthorized(Some(&refusal)));
                }
                _ => {
                    tally.unauthorized += 1;
                    tally.note(unauthorized(refusal.as_ref()));
                }
            },
            Ok(Ok((status, _))) => {
                tally.failed += 1;
                tally.note(format!("the API answered {status}"));
            }
            Ok(Err(error)) => {
                tally.failed += 1;
                tally.note(error_chain(&*error));
            }
            Err(_) => {
                tally.failed += 1;
                tally.note(format!(
                    "a request was still unfinished {} s after the deadline; counted as failed",
                    REQUEST_TIMEOUT.as_secs()
                ));
            }
        }
    }
    tally
}

/// Why a 401 came out of the stack, for stderr.
fn unauthorized(refusal: Option<&Refusal>) -> String {
    let Some(refusal) = refusal else {
        return "the API answered 401, which the auth layer did not take as a refusal".into();
    };
    match (refusal.replay, refusal.invalidation) {
        (_, Invalidation::RateLimited { .. }) => {
            "the API answered 401 while forced refreshes back off (the API refused new tokens \
             less than 10 minutes ago): replayed with the same token, refused again"
                .into()
        }
        (ReplayOutcome::Replayed, _) => {
            "the API answered 401 again to the replay with a new token".into()
        }
        (replay, invalidation) => {
            format!("the API answered 401 ({replay:?}, token source: {invalidation:?})")
        }
    }
}

/// The HTTPS (or, for loopback, plain HTTP) connector for the API: webpki roots and the
/// optional extra root.
fn https_connector(extra_root_pem: Option<&[u8]>) -> Result<Connector, Failure> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_root_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| usage(format!("--extra-root-cert: invalid PEM ({e})")))?;
            roots
                .add(cert)
                .map_err(|e| usage(format!("--extra-root-cert: certificate refused ({e})")))?;
            added += 1;
        }
        if added == 0 {
            return Err(usage("--extra-root-cert: no CERTIFICATE block in the file").into());
        }
    }
    #[allow(deprecated)] // ring on purpose: see the `rustls` feature in Cargo.toml
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| run_failure(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

/// A bearer token goes over plain HTTP only to a loopback host, and only when allowed.
fn check_api_url(uri: &Uri, allow_http_loopback: bool) -> Result<(), Usage> {
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback && allow_http_loopback {
                Ok(())
            } else if loopback {
                Err(usage(format!(
                    "--api-url {uri}: plain http:// needs --allow-http-loopback"
                )))
            } else {
                Err(usage(format!(
                    "--api-url {uri}: plain http:// is allowed for loopback hosts only; use https://"
                )))
            }
        }
        _ => Err(usage(format!("--api-url {uri}: give an https:// URL"))),
    }
}

/// An error and its causes, on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, Usage> {
        Args::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn histogram_buckets_are_contiguous_and_narrow() {
        let mut previous_upper = None;
        for index in 0..Histogram::BUCKETS {
            let upper = Histogram::upper(index);
            if let Some(previous) = previous_upper {
                assert!(upper > previous, "bucket {index} ends after the one before");
                let low = previous + 1;
                assert_eq!(
                    Histogram::index(low),
                    index,
                    "{low} µs opens bucket {index}"
                );
                assert!(
                    (upper - low) as f64 <= low as f64 / 128.0,
                    "bucket {index} ({low}..={upper}) is at most 1/128 of its values wide"
                );
            }
            assert_eq!(
                Histogram::index(upper),
                index,
                "{upper} µs closes bucket {index}"
            );
            previous_upper = Some(upper);
        }
        assert_eq!(Histogram::upper(Histogram::BUCKETS - 1), (1 << 27) - 1);
        assert_eq!(Histogram::index(1 << 27), Histogram::BUCKETS - 1);
        assert_eq!(Histogram::index(u64::MAX), Histogram::BUCKETS - 1);
    }

    #[test]
    fn histogram_quantiles_within_one_percent_and_max_exact() {
        let mut histogram = Histogram::new();
        assert_eq!(histogram.quantile(0.5), None);
        let mut other = Histogram::new();
        for us in 1..=100_000u64 {
            let target = if us % 2 == 0 {
                &mut histogram
            } else {
                &mut other
            };
            target.record(Duration::from_micros(us));
        }
        histogram.merge(&other);
        assert_eq!(histogram.total, 100_000);
        for (q, exact) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = histogram.quantile(q).unwrap() as f64;
            assert!(
                got >= exact && got <= exact * 1.01,
                "q{q}: {got} µs for {exact} µs"
            );
        }
        assert_eq!(histogram.quantile(1.0), Some(100_000));
        histogram.record(Duration::from_secs(3600));
        assert_eq!(histogram.max, 3_600_000_000, "the maximum is exact");
        assert_eq!(histogram.quantile(1.0), Some(3_600_000_000));
    }

    #[test]
    fn a_run_where_nothing_succeeded_fails() {
        // The observed bug: 0 requests, 0 ok, 0 failed, and exit 0.
        let nothing = Tally::new();
        assert_eq!(problems(&nothing, 0), ["no request succeeded"]);
        let mut fine = Tally::new();
        fine.ok = 10;
        assert!(problems(&fine, 0).is_empty());
        fine.failed = 1;
        assert_eq!(problems(&fine, 0), ["1 request(s) failed"]);
    }

    #[test]
    fn flags() {
        let args = parse(&["--workers", "8", "--replicas=4", "--stream-body"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (args.workers, args.replicas, args.stream_body),
            (8, 4, true)
        );
        assert!(parse(&["--help"]).unwrap().is_none());
        let error = |args: &[&str]| parse(args).expect_err("refused").to_string();
        assert!(error(&["--workers", "2", "--replicas", "3"]).contains("every replica"));
        assert!(error(&["--stream-body=yes"]).contains("takes no value"));
        assert!(error(&["--duration-s", "0"]).contains("above 0"));
        assert!(error(&[
            "--token-url",
            "https://auth.example/oauth/token",
            "--client-id",
            "c",
            "--client-secret-env",
            "S",
            "--api-url",
            "https://api.example/",
            "--revoke-every-s",
            "5"
        ])
        .contains("embedded server"));
        let keyed = parse(&["--private-key", "k.pem", "--key-id", "k1", "--jwt-bearer"])
            .unwrap()
            .unwrap();
        assert_eq!(keyed.private_key.as_deref(), Some("k.pem"));
        assert!(keyed.jwt_bearer);
        assert!(error(&["--jwt-bearer"]).contains("--private-key"));
        assert!(error(&["--client-cert", "c.pem"]).contains("go together"));
        assert!(error(&["--client-cert", "c.pem", "--client-key", "k.pem"]).contains("--token-url"));
        let mtls = parse(&[
            "--token-url",
            "https://auth.example/oauth/token",
            "--client-id",
            "c",
            "--client-cert",
            "c.pem",
            "--client-key",
            "k.pem",
            "--api-url",
            "https://api.example/",
        ]);
        assert!(
            mtls.unwrap().is_some(),
            "no secret needed with a certificate"
        );
        let redis = parse(&["--redis-url", "redis://:hunter2@127.0.0.1:6379/"]);
        if cfg!(feature = "redis") {
            assert!(redis.unwrap().unwrap().redis_url.is_some());
        } else {
            let message = redis.expect_err("refused").to_string();
            assert!(message.contains("--features redis"));
            assert!(!message.contains("hunter2"), "the URL is never echoed");
        }
    }
}
