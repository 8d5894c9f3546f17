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
//! `timeout(10 s) → EnturAuthLayer::with_replay() → hyper-util client`.
//!
//! Printed on stdout, one JSON object: `requests`, `ok` (2xx), `failed` (errors and other
//! statuses), `unauthorized` (401 after the one replay), `token_fetches`, `p50_us`, `p99_us`
//! and a few more. Exit code 0 only if `failed` and `unauthorized` are both 0; 1 otherwise;
//! 2 for bad flags.

use std::fmt;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use entur_auth::testing::TestServer;
use entur_auth::{
    BodyEncoding, BoxError, ClientAuth, Credentials, EnturAuthLayer, TokenEndpoint, TokenSource,
};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

const USAGE: &str = "\
usage: soak [flags]

  --workers N               concurrent workers (default 64)
  --duration-s SECONDS      how long to run (default 60)

Without --token-url: the embedded OAuth2 server and API on 127.0.0.1, 2-second tokens.
Against your own servers (--token-url, --client-id, --client-secret-env and --api-url
together; the other flags also apply to the embedded server):
  --token-url URL           the token endpoint
  --client-id ID            the client id
  --client-secret-env NAME  the NAME of the environment variable holding the secret
  --audience AUD            audience sent on every token request
  --api-url URL             the API URL every worker GETs
  --body json|form          token request body encoding (default: form; json for the
                            embedded server)
  --auth body|basic         client authentication (default: body)
  --allow-http-loopback     allow plain http:// URLs to loopback hosts
  --extra-root-cert PATH    trust this PEM root certificate too (token endpoint and API)
  -h, --help                this text";

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
    workers: usize,
    duration: Duration,
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

impl Args {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Self>, Usage> {
        let mut parsed = Args {
            workers: 64,
            duration: Duration::from_secs(60),
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
                "--allow-http-loopback" => match inline {
                    None => parsed.allow_http_loopback = true,
                    Some(_) => return Err(usage("--allow-http-loopback takes no value")),
                },
                "--extra-root-cert" => parsed.extra_root_cert = Some(value("a PEM file")?),
                "--workers" => {
                    let text = value("a number")?;
                    parsed.workers = match text.parse::<usize>() {
                        Ok(n) if (1..=100_000).contains(&n) => n,
                        _ => {
                            return Err(usage(format!(
                                "--workers {text:?}: give a whole number from 1 to 100000"
                            )))
                        }
                    };
                }
                "--duration-s" => {
                    let text = value("seconds")?;
                    parsed.duration = match text.parse::<f64>() {
                        Ok(s) if s > 0.0 && s <= 7.0 * 86_400.0 => Duration::from_secs_f64(s),
                        _ => {
                            return Err(usage(format!(
                                "--duration-s {text:?}: give a number of seconds above 0 (at most a week)"
                            )))
                        }
                    };
                }
                other => return Err(usage(format!("unknown flag {other:?}"))),
            }
        }
        let external = [
            ("--client-id", parsed.client_id.is_some()),
            ("--client-secret-env", parsed.client_secret_env.is_some()),
            ("--api-url", parsed.api_url.is_some()),
        ];
        if parsed.token_url.is_some() {
            if let Some((flag, _)) = external.iter().find(|(_, given)| !given) {
                return Err(usage(format!("--token-url also needs {flag}")));
            }
        } else if parsed.api_url.is_some() {
            return Err(usage(
                "--api-url needs --token-url (and --client-id, --client-secret-env): \
                 the embedded API accepts only the embedded server's tokens",
            ));
        }
        Ok(Some(parsed))
    }
}

/// What the workers saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    unauthorized: u64,
    latencies_us: Vec<u64>,
    /// The first few distinct failure messages, for stderr.
    failures: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.unauthorized += other.unauthorized;
        self.latencies_us.extend(other.latencies_us);
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

/// Runs the soak; `Ok(true)` if no request failed or was refused.
async fn run(args: Args) -> Result<bool, Failure> {
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

    // The embedded server (default), or the given endpoint.
    let (server, endpoint, credentials, api_url) = match &args.token_url {
        None => {
            let mut builder = TestServer::builder().token_lifetime(Duration::from_secs(2));
            if let Some(id) = &args.client_id {
                builder = builder.client_id(id);
            }
            if let Some(secret) = &secret {
                builder = builder.client_secret(secret);
            }
            if let Some(audience) = &args.audience {
                builder = builder.audience(audience);
            }
            let server = builder.start().await.map_err(|e| {
                Failure::Run(format!("cannot start the embedded server: {e}").into())
            })?;
            let mut endpoint = server.endpoint();
            if let Some(body) = args.body {
                endpoint = endpoint.encoding(body);
            }
            if let Some(auth) = args.auth {
                endpoint = endpoint.client_auth(auth);
            }
            let (credentials, api_url) = (server.credentials(), server.api_url());
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
            let credentials = Credentials::new(id, secret.unwrap_or_default());
            (
                None,
                endpoint,
                credentials,
                args.api_url.clone().unwrap_or_default(),
            )
        }
    };
    let api_uri: Uri = api_url
        .parse()
        .map_err(|e| usage(format!("--api-url {api_url:?}: not a URL ({e})")))?;
    check_api_url(&api_uri, server.is_some() || args.allow_http_loopback)?;

    let mut builder = TokenSource::builder(endpoint, credentials)
        .allow_http_loopback(server.is_some() || args.allow_http_loopback);
    if let Some(pem) = &extra_root {
        builder = builder.extra_root_certificate_pem(pem);
    }
    let source = builder.build().map_err(|e| usage(e.to_string()))?;

    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.workers)
        .build(https_connector(extra_root.as_deref())?);
    let api = ServiceBuilder::new()
        .timeout(Duration::from_secs(10))
        .layer(EnturAuthLayer::new(source.clone()).with_replay())
        .service(client);

    // The first token before the clock starts, so that a wrong configuration fails at once.
    source
        .prefetch()
        .await
        .map_err(|e| Failure::Run(format!("the first token fetch failed: {e}").into()))?;

    let started = Instant::now();
    let deadline = started + args.duration;
    let api_uri = Arc::new(api_uri);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.workers {
        workers.spawn(worker(api.clone(), api_uri.clone(), deadline));
    }
    let mut tally = Tally::default();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(worker) => tally.merge(worker),
            Err(e) => return Err(Failure::Run(format!("a worker panicked: {e}").into())),
        }
    }
    let elapsed = started.elapsed();

    let token_fetches = match &server {
        Some(server) => server.token_requests() as u64,
        None => source.status().fetch_attempts,
    };
    tally.latencies_us.sort_unstable();
    let requests = tally.ok + tally.failed + tally.unauthorized;
    let report = serde_json::json!({
        "requests": requests,
        "ok": tally.ok,
        "failed": tally.failed,
        "unauthorized": tally.unauthorized,
        "token_fetches": token_fetches,
        "p50_us": percentile(&tally.latencies_us, 0.50),
        "p99_us": percentile(&tally.latencies_us, 0.99),
        "max_us": tally.latencies_us.last().copied().unwrap_or(0),
        "workers": args.workers,
        "duration_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "requests_per_s": (requests as f64 / elapsed.as_secs_f64()).round(),
        "server": if server.is_some() { "embedded" } else { "external" },
    });
    println!("{report}");
    for failure in &tally.failures {
        eprintln!("soak: failure seen: {failure}");
    }
    Ok(tally.failed == 0 && tally.unauthorized == 0)
}

/// One worker: requests back to back until the deadline. A request still in flight at the
/// deadline is abandoned and not counted.
async fn worker<S, B>(mut api: S, uri: Arc<Uri>, deadline: Instant) -> Tally
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: fmt::Display,
{
    let mut tally = Tally {
        latencies_us: Vec::with_capacity(16 * 1024),
        ..Tally::default()
    };
    while Instant::now() < deadline {
        let request = http::Request::get(uri.as_ref().clone())
            .body(Full::default())
            .expect("a GET with a valid URI is a valid request");
        let started = Instant::now();
        let attempt = async {
            let response = api.ready().await?.call(request).await?;
            let status = response.status();
            // Read the body so that the connection goes back to the pool.
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the response body failed: {e}"))?;
            Ok::<_, BoxError>(status)
        };
        let outcome = match tokio::time::timeout_at(deadline, attempt).await {
            Err(_) => break,
            Ok(outcome) => outcome,
        };
        tally
            .latencies_us
            .push(started.elapsed().as_micros().try_into().unwrap_or(u64::MAX));
        match outcome {
            Ok(status) if status.is_success() => tally.ok += 1,
            Ok(StatusCode::UNAUTHORIZED) => {
                tally.unauthorized += 1;
                tally.note("the API answered 401 Unauthorized after re-authentication".into());
            }
            Ok(status) => {
                tally.failed += 1;
                tally.note(format!("the API answered {status}"));
            }
            Err(error) => {
                tally.failed += 1;
                tally.note(error_chain(&*error));
            }
        }
    }
    tally
}

/// The HTTPS (or, for loopback, plain HTTP) connector for the API: webpki roots and the
/// optional extra root.
fn https_connector(
    extra_root_pem: Option<&[u8]>,
) -> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Failure>
{
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
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Failure::Run(format!("TLS setup failed: {e}").into()))?
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

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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
