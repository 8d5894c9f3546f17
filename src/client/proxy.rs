//! The default client's egress proxy: which one (from `HTTPS_PROXY`, `ALL_PROXY` and
//! `NO_PROXY`, or from the builder), decided once when the source is built, and the HTTP
//! `CONNECT` tunnel through it.
//!
//! TLS runs end to end inside the tunnel: the proxy sees the token endpoint's host and port,
//! never the client secret or the token. The proxy's own credentials (`user:password@` in its
//! URL) are sent as `Proxy-Authorization: Basic` and never shown: every message names the
//! proxy by `host:port` alone.
//!
//! hyper-util's [`Matcher`] reads the URLs and applies the `NO_PROXY` rules (curl's). The
//! `CONNECT` exchange is our own rather than hyper-util's `Tunnel`, which reports every
//! answer but 200 and 407 as one "unsuccessful": we name the status, because what to check
//! differs (the credentials for 401/407, the proxy's rules for 403, its upstream for 5xx).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::error::{sanitize, BoxError, Error};

/// The variables naming a proxy for `https://` URLs, in the order they are read.
const PROXY_VARIABLES: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
/// The variables holding the hosts that bypass it.
const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];
/// Largest `CONNECT` answer head read from the proxy.
const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// Reads one environment variable. Tests pass their own instead of changing the process's
/// environment, which parallel tests would race on.
pub(crate) type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The builder's proxy settings.
#[derive(Clone)]
pub(crate) struct ProxySettings {
    pub(crate) from_env: bool,
    pub(crate) explicit: Option<String>,
    pub(crate) no_proxy: Option<String>,
    pub(crate) env: Option<EnvLookup>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            from_env: true,
            explicit: None,
            no_proxy: None,
            env: None,
        }
    }
}

impl fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxySettings")
            .field("from_env", &self.from_env)
            .field("proxy", &self.explicit.as_deref().map(redact_userinfo))
            .field("no_proxy", &self.no_proxy)
            .finish_non_exhaustive()
    }
}

/// Where the proxy URL came from, to name it in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Variable(&'static str),
    Setting,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Variable(name) => f.write_str(name),
            Self::Setting => f.write_str("TokenSourceBuilder::proxy"),
        }
    }
}

/// A proxy the token requests go through.
pub(crate) struct Proxy {
    /// `http://host:port/`, without credentials.
    uri: Uri,
    /// `host:port`, the only way the proxy is ever shown.
    address: String,
    /// `Basic ...`, marked sensitive.
    auth: Option<HeaderValue>,
    origin: Origin,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("address", &self.address)
            .field("origin", &self.origin)
            .field("credentials", &self.auth.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl ProxySettings {
    /// Decides, once, whether requests to `url` go through a proxy, and which.
    ///
    /// Plain `http://` token URLs (allowed for loopback hosts only) never do: the proxy would
    /// see the client secret, and it has nothing to add to a loopback connection.
    pub(crate) fn route(&self, url: &Uri) -> Result<Option<Proxy>, Error> {
        if url.scheme_str() != Some("https") {
            return Ok(None);
        }
        let lookup = |name: &str| {
            match &self.env {
                Some(lookup) => lookup(name),
                None => std::env::var(name).ok(),
            }
            .filter(|value| !value.trim().is_empty())
        };
        let (value, origin) = match &self.explicit {
            Some(value) => (value.clone(), Origin::Setting),
            None if self.from_env => {
                let found = PROXY_VARIABLES
                    .iter()
                    .find_map(|name| lookup(name).map(|value| (value, Origin::Variable(name))));
                match found {
                    Some(found) => found,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        // `no_proxy` replaces NO_PROXY; an explicit proxy ignores the environment altogether.
        let rules = match (&self.no_proxy, origin) {
            (Some(rules), _) => Some((rules.clone(), "TokenSourceBuilder::no_proxy")),
            (None, Origin::Setting) => None,
            (None, Origin::Variable(_)) => NO_PROXY_VARIABLES
                .iter()
                .find_map(|name| lookup(name).map(|rules| (rules, *name))),
        };
        if let Some((rules, from)) = rules {
            if bypasses(&rules, url) {
                tracing::debug!(
                    host = url.host().unwrap_or_default(),
                    no_proxy = from,
                    proxy_from = %origin,
                    "the token URL's host is exempt from the proxy: connecting directly"
                );
                return Ok(None);
            }
        }
        let proxy = parse(&value, origin)?;
        tracing::debug!(
            proxy = %proxy.address,
            from = %origin,
            authenticated = proxy.auth.is_some(),
            "token requests go through an HTTP proxy (CONNECT tunnel, TLS end to end)"
        );
        Ok(Some(proxy))
    }
}

/// Whether `NO_PROXY`-style `rules` exempt `url`'s host, by hyper-util's reading of them
/// (curl's: comma-separated hosts, domain suffixes, IP addresses and CIDR ranges, `*`).
fn bypasses(rules: &str, url: &Uri) -> bool {
    // The matcher needs a proxy to answer with; this one is never used.
    Matcher::builder()
        .https("http://0.0.0.0:9")
        .no(rules)
        .build()
        .intercept(url)
        .is_none()
}

/// Reads a proxy URL, refusing what the tunnel cannot use with a message that names where
/// it came from and shows it without its credentials.
fn parse(value: &str, origin: Origin) -> Result<Proxy, Error> {
    let value = value.trim();
    let bad = |what: &str| {
        Error::config(format!(
            "{origin} is not a usable proxy URL ({}): {what}",
            sanitize(&redact_userinfo(value), 200)
        ))
    };
    const FORM: &str = "write it as http://host:port, or http://user:password@host:port";
    let uri: Uri = value.parse().map_err(|_| bad(FORM))?;
    match uri.scheme_str() {
        None | Some("http") => {}
        Some("https") => return Err(bad(
            "TLS to the proxy itself (https://) is not supported: give it as http://host:port (the token request is TLS end to end inside the CONNECT tunnel all the same)",
        )),
        Some(other) => {
            return Err(bad(&format!(
                "{other}:// proxies are not supported: give an HTTP proxy that accepts CONNECT, as http://host:port"
            )))
        }
    }
    if uri.host().map_or(true, str::is_empty) {
        return Err(bad(&format!("it has no host; {FORM}")));
    }
    if uri.port_u16().is_none() {
        return Err(bad(
            "it has no port: write it as http://host:port (tools disagree on the default: curl uses 1080, Go 80)",
        ));
    }
    // hyper-util reads it (credentials percent-decoded into a Basic header); a URL it cannot
    // read would be dropped silently, so check it took this one.
    let intercept = Matcher::builder()
        .https(value)
        .build()
        .intercept(&Uri::from_static("https://token.invalid/"))
        .ok_or_else(|| bad(FORM))?;
    let address = match intercept.uri().authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => return Err(bad(FORM)),
    };
    Ok(Proxy {
        uri: intercept.uri().clone(),
        address,
        auth: intercept.basic_auth().cloned(),
        origin,
    })
}

/// `scheme://***@host:port` for `scheme://user:password@host:port`; unchanged without `@`.
/// Everything before the last `@` goes, so a password holding `@`, `/` or `:` never shows.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let start = match url.find("://") {
        Some(i) if i + 3 <= at => i + 3,
        _ => 0,
    };
    format!("{}***{}", &url[..start], &url[at..])
}

/// Connects to the proxy and opens a `CONNECT` tunnel to the destination; the TLS connector
/// wrapped around it then speaks TLS to the token endpoint through the tunnel.
#[derive(Clone)]
pub(crate) struct ProxyConnector {
    http: HttpConnector,
    proxy: Arc<Proxy>,
}

impl ProxyConnector {
    pub(crate) fn new(proxy: Proxy) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Self {
            http,
            proxy: Arc::new(proxy),
        }
    }
}

impl Service<Uri> for ProxyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.http.call(self.proxy.uri.clone());
        let proxy = Arc::clone(&self.proxy);
        Box::pin(async move {
            let io = connecting
                .await
                .map_err(|e| proxy.unreachable(&chain(&e)))?;
            let mut tcp = io.into_inner();
            proxy.tunnel(&mut tcp, &dst).await?;
            Ok(TokioIo::new(tcp))
        })
    }
}

impl Proxy {
    /// Sends `CONNECT host:port` and reads the answer; on a 2xx the stream is the tunnel.
    async fn tunnel<S>(&self, stream: &mut S, dst: &Uri) -> Result<(), Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let host = dst.host().unwrap_or_default();
        let target = format!("{host}:{}", dst.port_u16().unwrap_or(443));
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
        if let Some(auth) = &self.auth {
            request.extend_from_slice(b"Proxy-Authorization: ");
            request.extend_from_slice(auth.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        let broke = |e: std::io::Error| {
            self.unavailable(format!(
                "the connection to the proxy {} (from {}) failed during the CONNECT to {target} ({e}): check the proxy's logs",
                self.address, self.origin
            ))
        };
        stream.write_all(&request).await.map_err(broke)?;
        let mut answer = Vec::with_capacity(512);
        let mut chunk = [0u8; 512];
        let head = loop {
            let n = stream.read(&mut chunk).await.map_err(broke)?;
            if n == 0 {
                return Err(self.unavailable(format!(
                    "the proxy {} (from {}) closed the connection without answering the CONNECT to {target}: check the proxy's logs",
                    self.address, self.origin
                )));
            }
            answer.extend_from_slice(&chunk[..n]);
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if answer.len() > MAX_ANSWER_HEAD {
                return Err(self.garbled(&target));
            }
        };
        let Some((status, reason)) = status_line(&answer[..head]) else {
            return Err(self.garbled(&target));
        };
        match status {
            // The token endpoint does not speak first in TLS: bytes after the answer are not its.
            200..=299 if answer.len() == head => Ok(()),
            200..=299 => Err(self.garbled(&target)),
            _ => Err(self.refused(&target, status, &reason)),
        }
    }

    /// The proxy answered the `CONNECT` with something other than 2xx.
    fn refused(&self, target: &str, status: u16, reason: &str) -> Error {
        let (address, origin) = (&self.address, self.origin);
        let answered = format!("{status} {reason}");
        let answered = answered.trim_end();
        match status {
            // tinyproxy, among others, answers wrong credentials with 401.
            401 | 407 if self.auth.is_some() => Error::config(format!(
                "the proxy {address} (from {origin}) refused the credentials given for it ({answered}): check the user and password in {origin} (http://user:password@host:port, special characters percent-encoded)"
            )),
            401 | 407 => Error::config(format!(
                "the proxy {address} (from {origin}) requires credentials ({answered}): give them in {origin} as http://user:password@host:port"
            )),
            403 => Error::config(format!(
                "the proxy {address} (from {origin}) refused to open a tunnel to {target} ({answered}): check that its rules allow CONNECT to this host and port (squid: SSL_ports and http_access; tinyproxy: ConnectPort and Allow), or, if the host should be reached directly, list it in NO_PROXY"
            )),
            400..=499 => Error::config(format!(
                "the proxy {address} (from {origin}) answered the CONNECT to {target} with {answered}: check that {origin} names an HTTP proxy that accepts CONNECT"
            )),
            _ => self.unavailable(format!(
                "the proxy {address} (from {origin}) could not open a tunnel to {target} ({answered}): check the proxy's logs and that it can reach the token endpoint"
            )),
        }
    }

    fn unreachable(&self, cause: &str) -> Error {
        self.unavailable(format!(
            "could not connect to the proxy {} (from {}): {cause}; check that the proxy is running and that {} names it, or, if the token endpoint should be reached directly, list its host in NO_PROXY",
            self.address, self.origin, self.origin
        ))
    }

    fn garbled(&self, target: &str) -> Error {
        self.unavailable(format!(
            "the proxy {} (from {}) did not answer the CONNECT to {target} with a readable HTTP answer: check that {} names an HTTP proxy",
            self.address, self.origin, self.origin
        ))
    }

    fn unavailable(&self, message: String) -> Error {
        Error::unavailable(None, None, Some(Arc::new(ProxyFailure(message))))
    }
}

/// `(status, reason)` from the first line of `head`: `HTTP/1.1 407 Proxy Authentication Required`.
fn status_line(head: &[u8]) -> Option<(u16, String)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|s| (100..600).contains(s))?;
    Some((status, sanitize(parts.next().unwrap_or_default(), 60)))
}

/// A proxy failure, as the cause of [`Error::Unavailable`]: says what to check.
#[derive(Debug)]
struct ProxyFailure(String);

impl fmt::Display for ProxyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for ProxyFailure {}

/// The messages of an error chain, outermost first, repeats dropped.
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut messages = vec![error.to_string()];
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
        messages.push(current.to_string());
    }
    messages.dedup();
    messages.join(": ")
}

/// Hands our own error back from under the client's wrapping, so that it reaches the caller
/// as it was made (a 407 stays a configuration error, not "client error (Connect)").
pub(crate) fn surface(error: hyper_util::client::legacy::Error) -> BoxError {
    let mut cause = error.source();
    while let Some(current) = cause {
        if let Some(ours) = current.downcast_ref::<Error>() {
            return Box::new(ours.clone());
        }
        cause = current.source();
    }
    Box::new(error)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> ProxySettings {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxySettings {
            env: Some(Arc::new(move |name| vars.get(name).cloned())),
            ..Default::default()
        }
    }

    fn token_url() -> Uri {
        Uri::from_static("https://partner.entur.org/oauth/token")
    }

    fn route(settings: &ProxySettings) -> Option<Proxy> {
        settings.route(&token_url()).unwrap()
    }

    #[test]
    fn variables_are_read_in_order_and_http_proxy_is_not_used_for_https() {
        assert!(route(&settings(&[])).is_none());
        assert!(route(&settings(&[("HTTP_PROXY", "http://h:1")])).is_none());
        assert!(route(&settings(&[("http_proxy", "http://h:1")])).is_none());
        let cases: [(&[(&str, &str)], (&str, &str)); 5] = [
            (
                &[("HTTPS_PROXY", "http://a:1"), ("https_proxy", "http://b:2")],
                ("a:1", "HTTPS_PROXY"),
            ),
            (
                &[("https_proxy", "http://b:2"), ("ALL_PROXY", "http://c:3")],
                ("b:2", "https_proxy"),
            ),
            (
                &[("ALL_PROXY", "c:3"), ("all_proxy", "http://d:4")],
                ("c:3", "ALL_PROXY"),
            ),
            (&[("all_proxy", "http://d:4")], ("d:4", "all_proxy")),
            // An empty variable counts as unset.
            (
                &[("HTTPS_PROXY", " "), ("https_proxy", "http://b:2")],
                ("b:2", "https_proxy"),
            ),
        ];
        for (vars, expect) in cases {
            let proxy = route(&settings(vars)).expect("a proxy");
            assert_eq!(proxy.address, expect.0, "{vars:?}");
            assert_eq!(proxy.origin, Origin::Variable(expect.1), "{vars:?}");
            assert!(proxy.auth.is_none());
        }
    }

    #[test]
    fn no_proxy_rules_exempt_hosts_the_way_curl_does() {
        for rules in [
            "partner.entur.org",
            ".entur.org",
            "entur.org",
            "localhost, entur.org",
            "*",
        ] {
            let s = settings(&[("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", rules)]);
            assert!(route(&s).is_none(), "{rules}");
            let s = settings(&[("HTTPS_PROXY", "http://p:3128"), ("no_proxy", rules)]);
            assert!(route(&s).is_none(), "{rules}");
        }
        for rules in ["notentur.org", "entur.io", "127.0.0.1", "10.0.0.0/8"] {
            let s = settings(&[("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", rules)]);
            assert!(route(&s).is_some(), "{rules}");
        }
        // IP addresses and ranges, for a token URL by address.
        let s = settings(&[
            ("HTTPS_PROXY", "http://p:3128"),
            ("NO_PROXY", "127.0.0.0/8"),
        ]);
        let loopback = Uri::from_static("https://127.0.0.1:8443/oauth/token");
        assert!(s.route(&loopback).unwrap().is_none());
        // No implicit loopback exemption for https://, as in curl.
        let s = settings(&[("HTTPS_PROXY", "http://p:3128")]);
        assert!(s.route(&loopback).unwrap().is_some());
    }

    #[test]
    fn plain_http_token_urls_are_never_proxied() {
        let s = settings(&[
            ("HTTP_PROXY", "http://p:3128"),
            ("ALL_PROXY", "http://p:3128"),
            ("HTTPS_PROXY", "http://p:3128"),
        ]);
        let url = Uri::from_static("http://127.0.0.1:8080/oauth/token");
        assert!(s.route(&url).unwrap().is_none());
    }

    #[test]
    fn settings_override_the_environment() {
        let env = [
            ("HTTPS_PROXY", "http://env:1"),
            ("NO_PROXY", "partner.entur.org"),
        ];
        let off = ProxySettings {
            from_env: false,
            ..settings(&env)
        };
        assert!(route(&off).is_none());
        // An explicit proxy ignores the environment, NO_PROXY included.
        let explicit = ProxySettings {
            explicit: Some("http://set:2".into()),
            ..settings(&env)
        };
        let proxy = route(&explicit).unwrap();
        assert_eq!(
            (proxy.address.as_str(), proxy.origin),
            ("set:2", Origin::Setting)
        );
        let explicit_off = ProxySettings {
            from_env: false,
            ..explicit.clone()
        };
        assert!(route(&explicit_off).is_some());
        // no_proxy replaces NO_PROXY, for an explicit proxy or one from the environment.
        let exempt = ProxySettings {
            no_proxy: Some("entur.org".into()),
            ..explicit
        };
        assert!(route(&exempt).is_none());
        let replaced = ProxySettings {
            no_proxy: Some("example.com".into()),
            ..settings(&env)
        };
        assert!(route(&replaced).is_some());
    }

    #[test]
    fn credentials_become_a_basic_header_and_are_never_shown() {
        let s = settings(&[("HTTPS_PROXY", "http://us%40er:p%3Ass@proxy.internal:3128")]);
        let proxy = route(&s).unwrap();
        assert_eq!(proxy.address, "proxy.internal:3128");
        let auth = proxy.auth.as_ref().unwrap();
        assert!(auth.is_sensitive());
        // base64("us@er:p:ss")
        assert_eq!(auth, "Basic dXNAZXI6cDpzcw==");
        let shown = format!("{proxy:?}");
        assert!(
            !shown.contains("p%3Ass") && !shown.contains("dXNAZXI6"),
            "{shown}"
        );
        let settings = ProxySettings {
            explicit: Some("http://user:hunter22@proxy.internal:3128".into()),
            ..Default::default()
        };
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter22") && !shown.contains("user"),
            "{shown}"
        );
        assert!(shown.contains("http://***@proxy.internal:3128"), "{shown}");
    }

    #[test]
    fn unusable_urls_are_configuration_errors_naming_the_variable_not_the_password() {
        for (value, says) in [
            ("http://user:hunter22@proxy", "no port"),
            ("https://user:hunter22@proxy:3128", "https://"),
            ("socks5://user:hunter22@proxy:1080", "socks5://"),
            ("http://user:hunter22@", "http://host:port"),
            ("http://user:hunter22@pro xy:3128", "http://host:port"),
            ("http://user:hun/ter22@proxy:3128", "http://host:port"),
        ] {
            let error = settings(&[("https_proxy", value)])
                .route(&token_url())
                .unwrap_err();
            assert!(matches!(error, Error::Config { .. }), "{value}: {error:?}");
            let text = error.to_string();
            assert!(text.contains("https_proxy"), "{text}");
            assert!(text.contains(says), "{value}: {text}");
            assert!(
                !text.contains("hunter22") && !text.contains("hun/"),
                "{text}"
            );
            assert!(!format!("{error:?}").contains("hunter22"));
        }
        let error = ProxySettings {
            explicit: Some("ftp://proxy:21".into()),
            ..Default::default()
        }
        .route(&token_url())
        .unwrap_err();
        assert!(
            error.to_string().contains("TokenSourceBuilder::proxy"),
            "{error}"
        );
        // An unusable variable is not read when NO_PROXY exempts the host anyway (a SOCKS
        // proxy set for other tools, say).
        let s = settings(&[
            ("ALL_PROXY", "socks5://proxy:1080"),
            ("NO_PROXY", ".entur.org"),
        ]);
        assert!(route(&s).is_none());
    }

    #[test]
    fn redaction_drops_everything_before_the_last_at() {
        assert_eq!(redact_userinfo("http://proxy:3128"), "http://proxy:3128");
        assert_eq!(
            redact_userinfo("http://u:p@proxy:3128"),
            "http://***@proxy:3128"
        );
        assert_eq!(
            redact_userinfo("http://u:p@ss@proxy:1"),
            "http://***@proxy:1"
        );
        assert_eq!(redact_userinfo("u:p/x@proxy:1"), "***@proxy:1");
        assert_eq!(redact_userinfo("u:p://x@proxy:1"), "u:p://***@proxy:1");
    }

    fn proxy(auth: bool) -> Proxy {
        let value = if auth {
            "http://proxyuser:s3cr3t-pw@p:3128"
        } else {
            "http://p:3128"
        };
        parse(value, Origin::Variable("HTTPS_PROXY")).unwrap()
    }

    /// Runs the CONNECT exchange against a proxy that answers `answer`; returns what the
    /// proxy received and the outcome.
    async fn exchange(proxy: &Proxy, answer: &'static [u8]) -> (String, Result<(), Error>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move {
            let mut received = Vec::new();
            let mut buf = [0u8; 1024];
            while !received.ends_with(b"\r\n\r\n") {
                let n = server.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
            server.write_all(answer).await.unwrap();
            String::from_utf8(received).unwrap()
        });
        let dst = Uri::from_static("https://partner.entur.org/oauth/token");
        let outcome = proxy.tunnel(&mut client, &dst).await;
        (serve.await.unwrap(), outcome)
    }

    #[tokio::test]
    async fn connect_sends_the_target_and_credentials_and_accepts_2xx() {
        let (sent, outcome) =
            exchange(&proxy(true), b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        outcome.unwrap();
        assert!(
            sent.starts_with("CONNECT partner.entur.org:443 HTTP/1.1\r\n"),
            "{sent}"
        );
        assert!(sent.contains("Host: partner.entur.org:443\r\n"), "{sent}");
        assert!(
            sent.contains("Proxy-Authorization: Basic cHJveHl1c2VyOnMzY3IzdC1wdw==\r\n"),
            "{sent}"
        );
        let (sent, outcome) = exchange(&proxy(false), b"HTTP/1.0 200 OK\r\nX: y\r\n\r\n").await;
        outcome.unwrap();
        assert!(!sent.contains("Proxy-Authorization"), "{sent}");
    }

    #[tokio::test]
    async fn refusals_name_the_proxy_the_status_and_what_to_check() {
        let cases: [(bool, &'static [u8], bool, &str); 8] = [
            (
                false,
                b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n",
                true,
                "requires credentials",
            ),
            (
                true,
                b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n",
                true,
                "refused the credentials",
            ),
            (
                true,
                b"HTTP/1.0 401 Unauthorized\r\n\r\n",
                true,
                "refused the credentials",
            ),
            (
                false,
                b"HTTP/1.1 403 Access violation\r\n\r\n",
                true,
                "ConnectPort",
            ),
            (
                false,
                b"HTTP/1.1 405 Not Allowed\r\n\r\n",
                true,
                "accepts CONNECT",
            ),
            (
                false,
                b"HTTP/1.1 502 Bad Gateway\r\n\r\n",
                false,
                "502 Bad Gateway",
            ),
            (
                false,
                b"SSH-2.0-OpenSSH\r\n\r\n",
                false,
                "readable HTTP answer",
            ),
            (
                false,
                b"HTTP/1.1 200 OK\r\n\r\nearly",
                false,
                "readable HTTP answer",
            ),
        ];
        for (auth, answer, config, says) in cases {
            let (_, outcome) = exchange(&proxy(auth), answer).await;
            let error = outcome.unwrap_err();
            assert_eq!(matches!(error, Error::Config { .. }), config, "{error:?}");
            assert_eq!(error.is_transient(), !config, "{error:?}");
            let text = error.to_string();
            assert!(
                text.contains("p:3128") && text.contains("HTTPS_PROXY"),
                "{text}"
            );
            assert!(text.contains(says), "{text}");
            assert!(
                !text.contains("s3cr3t")
                    && !text.contains("proxyuser")
                    && !text.contains("cHJveHl1c2VyOnMzY3IzdC1wdw=="),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_proxy_that_hangs_up_is_unavailable() {
        let (mut client, server) = tokio::io::duplex(1024);
        drop(server);
        let dst = Uri::from_static("https://partner.entur.org/");
        let error = proxy(false).tunnel(&mut client, &dst).await.unwrap_err();
        assert!(error.is_transient(), "{error:?}");
        assert!(error.to_string().contains("p:3128"), "{error}");
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_line(b"HTTP/1.1 407 Proxy Auth\r\n\r\n"),
            Some((407, "Proxy Auth".into()))
        );
        assert_eq!(
            status_line(b"HTTP/1.0 200\r\n\r\n"),
            Some((200, String::new()))
        );
        assert_eq!(status_line(b"HTTP/2 200 OK\r\n\r\n"), None);
        assert_eq!(status_line(b"HTTP/1.1 2000 OK\r\n\r\n"), None);
        assert_eq!(status_line(b"HTTP/1.1 abc OK\r\n\r\n"), None);
    }
}
