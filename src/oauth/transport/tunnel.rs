//! The HTTP `CONNECT` tunnel through the egress proxy that [`super::proxy`] chose. The TLS
//! connector wrapped around it speaks TLS to the token endpoint inside the tunnel.
//!
//! This exchange is our own rather than hyper-util's `Tunnel`, which reports every answer but
//! 200 and 407 as one "unsuccessful": we name the status, because what to check differs (the
//! credentials for 401 and 407 — tinyproxy answers wrong ones with 401 —, the proxy's rules
//! for 403, its own upstream for 5xx).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use super::proxy::Proxy;
use crate::error::{sanitize, BoxError, Error};

/// Largest `CONNECT` answer head read from the proxy.
const MAX_ANSWER_HEAD: usize = 8 * 1024;

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
                "the proxy {address} (from {origin}) refused to open a tunnel to {target} ({answered}): check that its rules allow CONNECT to this host and port (squid: SSL_ports and http_access; tinyproxy: ConnectPort and Allow), or, if the host should be reached directly, list it in {}",
                origin.exempt_with()
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
            "could not connect to the proxy {} (from {}): {cause}; check that the proxy is running and that {} names it, or, if the token endpoint should be reached directly, list its host in {}",
            self.address,
            self.origin,
            self.origin,
            self.origin.exempt_with()
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

/// A proxy failure, as the cause of [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable): says what to check.
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
    use super::super::proxy::{parse, Origin};
    use super::*;

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
        exchange_to(proxy, "https://partner.entur.org/oauth/token", answer).await
    }

    async fn exchange_to(
        proxy: &Proxy,
        dst: &'static str,
        answer: &'static [u8],
    ) -> (String, Result<(), Error>) {
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
        let outcome = proxy.tunnel(&mut client, &Uri::from_static(dst)).await;
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
        // An explicit port, and an IPv6 address in brackets (authority form).
        let (sent, outcome) = exchange_to(
            &proxy(false),
            "https://[::1]:8443/t",
            b"HTTP/1.1 200 OK\r\n\r\n",
        )
        .await;
        outcome.unwrap();
        assert!(
            sent.starts_with("CONNECT [::1]:8443 HTTP/1.1\r\n"),
            "{sent}"
        );
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
            assert_eq!(
                error.kind() == crate::ErrorKind::Config,
                config,
                "{error:?}"
            );
            assert_eq!(error.is_transient(), !config, "{error:?}");
            let text = error.report().to_string();
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
        assert!(error.report().to_string().contains("p:3128"), "{error}");
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
