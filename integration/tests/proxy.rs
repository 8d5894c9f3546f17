//! Egress through a real HTTP proxy: a `tinyproxy` started by the tests on 127.0.0.1, in front
//! of an HTTPS token endpoint whose certificate comes from a private CA made in the test.
//!
//! Without `tinyproxy` on the PATH the tests that need it are ignored (install it with
//! `apt-get install tinyproxy`); `.ci/run` installs it so CI always runs them.
//!
//! The proxy variables reach each source through `TokenSourceBuilder::proxy_env_lookup`, never
//! through the process environment, so these tests run in parallel without racing on it.
#![cfg(feature = "rustls")]

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/logs.rs"]
mod logs;
#[path = "support/pki.rs"]
mod pki;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use entur_auth::{TokenEndpoint, TokenSource, TokenSourceBuilder};
use entur_auth_test::TestServer;
use http::StatusCode;
use pki::{private_ca, Pki};

const USER: &str = "entur-proxy-user";
const PASSWORD: &str = "c0rrect-h0rse-7e1";
const WRONG_PASSWORD: &str = "wr0ng-b4ttery-3f9";

/// A tinyproxy of our own on a free loopback port, allowing CONNECT to `connect_port` only;
/// killed (and its files removed) on drop.
struct Tinyproxy {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Tinyproxy {
    fn start(connect_port: u16, basic_auth: Option<(&str, &str)>) -> Tinyproxy {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "entur-auth-tinyproxy-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("tinyproxy.log");
        let mut config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 16\nLogFile \"{}\"\nLogLevel Connect\nAllow 127.0.0.1\nConnectPort {connect_port}\n",
            log.display()
        );
        if let Some((user, password)) = basic_auth {
            config.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let config_path = dir.join("tinyproxy.conf");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy runs (apt-get install tinyproxy)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Tinyproxy { child, port, dir };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("tinyproxy exited ({status}) before listening on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("tinyproxy did not start on 127.0.0.1:{port}");
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("http://{}", self.address())
    }

    /// How many `CONNECT` requests for `target` the proxy logged.
    fn connects_to(&self, target: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.join("tinyproxy.log")).unwrap_or_default();
        let request = format!("CONNECT {target} HTTP/1.1");
        log.lines().filter(|line| line.contains(&request)).count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Endpoint {
    server: TestServer,
    pki: Pki,
    port: u16,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let server = server(Duration::from_secs(60)).await;
        let pki = private_ca();
        let port = pki::https_token_endpoint(&server, &pki).await;
        Endpoint { server, pki, port }
    }

    /// What the proxy is asked to CONNECT to.
    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A builder for this endpoint, trusting its CA, with `env` as the whole environment.
    fn builder(&self, env: &[(&str, &str)]) -> TokenSourceBuilder {
        let url = format!("https://{}/oauth/token", self.target());
        let endpoint = TokenEndpoint::new(&url)
            .unwrap()
            .audience(self.server.audience());
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TokenSource::builder(endpoint, self.server.credentials())
            .fetch_timeout(Duration::from_secs(5))
            .extra_root_certificate(self.pki.ca_pem.as_bytes())
            .proxy_env_lookup(move |name| env.get(name).cloned())
    }

    /// Sends one request to the embedded API with `source`'s token; the API's answer.
    async fn api_answer(&self, source: &TokenSource) -> StatusCode {
        let mut svc = client(&self.server, source);
        send(&mut svc, api_request(&self.server, "/departures"))
            .await
            .unwrap()
    }
}

#[tokio::test]
#[cfg_attr(
    not(has_tinyproxy),
    ignore = "tinyproxy not found: install it (apt-get install tinyproxy) to run this test"
)]
async fn token_requests_go_through_https_proxy_and_the_token_works() {
    let endpoint = Endpoint::start().await;
    let proxy = Tinyproxy::start(endpoint.port, None);
    let (logs, _guard) = logs::capture_trace();

    let source = endpoint
        .builder(&[("HTTPS_PROXY", &proxy.url())])
        .build()
        .unwrap();
    let logged = logs.text();
    assert!(
        logged.contains(&proxy.address()) && logged.contains("HTTPS_PROXY"),
        "the chosen proxy is logged when the source is built: {logged}"
    );
    source.prefetch().await.unwrap();
    assert_eq!(proxy.connects_to(&endpoint.target()), 1);
    assert_eq!(endpoint.server.token_requests(), 1);
    assert_eq!(endpoint.api_answer(&source).await, StatusCode::OK);

    // ALL_PROXY (lower case) is honoured too when HTTPS_PROXY is not set.
    let source = endpoint
        .builder(&[("all_proxy", &proxy.url())])
        .build()
        .unwrap();
    source.prefetch().await.unwrap();
    assert_eq!(proxy.connects_to(&endpoint.target()), 2);
    assert_eq!(endpoint.server.token_requests(), 2);
}

#[tokio::test]
#[cfg_attr(
    not(has_tinyproxy),
    ignore = "tinyproxy not found: install it (apt-get install tinyproxy) to run this test"
)]
async fn no_proxy_matching_the_host_and_proxy_from_env_false_bypass_the_proxy() {
    let endpoint = Endpoint::start().await;
    let proxy = Tinyproxy::start(endpoint.port, None);
    let url = proxy.url();

    for no_proxy in [
        ("NO_PROXY", "localhost,127.0.0.1"),
        ("no_proxy", "127.0.0.0/8"),
    ] {
        let source = endpoint
            .builder(&[("HTTPS_PROXY", &url), no_proxy])
            .build()
            .unwrap();
        source.prefetch().await.unwrap();
        assert_eq!(endpoint.api_answer(&source).await, StatusCode::OK);
    }
    let off = endpoint
        .builder(&[("HTTPS_PROXY", &url)])
        .proxy_from_env(false)
        .build()
        .unwrap();
    off.prefetch().await.unwrap();
    assert_eq!(endpoint.server.token_requests(), 3);
    assert_eq!(
        proxy.connects_to(&endpoint.target()),
        0,
        "nothing went through the proxy"
    );

    // The same proxy, with NO_PROXY naming another host, is used: the checks above can fail.
    let used = endpoint
        .builder(&[("HTTPS_PROXY", &url), ("NO_PROXY", "localhost,10.0.0.1")])
        .build()
        .unwrap();
    used.prefetch().await.unwrap();
    assert_eq!(proxy.connects_to(&endpoint.target()), 1);
}

#[tokio::test]
#[cfg_attr(
    not(has_tinyproxy),
    ignore = "tinyproxy not found: install it (apt-get install tinyproxy) to run this test"
)]
async fn proxy_credentials_are_sent_and_wrong_ones_are_a_clear_error_without_them() {
    let endpoint = Endpoint::start().await;
    let proxy = Tinyproxy::start(endpoint.port, Some((USER, PASSWORD)));
    let (logs, _guard) = logs::capture_trace();

    // Right credentials, set on the builder: the environment's proxy is not read.
    let builder = endpoint
        .builder(&[("HTTPS_PROXY", "http://127.0.0.1:9")])
        .proxy(format!("http://{USER}:{PASSWORD}@{}", proxy.address()));
    let shown = format!("{builder:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains(&proxy.address()), "{shown}");
    let source = builder.build().unwrap();
    source.prefetch().await.unwrap();
    assert_eq!(endpoint.api_answer(&source).await, StatusCode::OK);
    assert_eq!(proxy.connects_to(&endpoint.target()), 1);

    // A wrong password (tinyproxy answers 401): a configuration error naming the proxy and
    // where it came from, never the password.
    let wrong = format!("http://{USER}:{WRONG_PASSWORD}@{}", proxy.address());
    let source = endpoint
        .builder(&[("HTTPS_PROXY", &wrong)])
        .build()
        .unwrap();
    let error = source.prefetch().await.unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Config, "{error:?}");
    assert!(!error.is_transient());
    let text = error.report().to_string();
    assert!(text.contains(&proxy.address()), "{text}");
    assert!(text.contains("HTTPS_PROXY"), "{text}");
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(text.contains("401"), "{text}");

    // No credentials: the proxy's 407 says it wants some.
    let source = endpoint
        .builder(&[("HTTPS_PROXY", &proxy.url())])
        .build()
        .unwrap();
    let missing = source.prefetch().await.unwrap_err();
    assert!(
        missing.kind() == entur_auth::ErrorKind::Config,
        "{missing:?}"
    );
    assert!(missing.to_string().contains("407"), "{missing}");
    assert!(
        missing.to_string().contains("requires credentials"),
        "{missing}"
    );
    assert_eq!(proxy.connects_to(&endpoint.target()), 3);
    assert_eq!(
        endpoint.server.token_requests(),
        1,
        "refused tunnels carry nothing"
    );

    let logged = logs.text();
    for secret in [PASSWORD, WRONG_PASSWORD] {
        for (what, text) in [
            ("error", error.report().to_string()),
            ("error debug", format!("{error:?}")),
            ("logs", logged.clone()),
        ] {
            assert!(!text.contains(secret), "{what} holds a password: {text}");
        }
    }
    assert!(logged.contains(&proxy.address()), "{logged}");
}

#[tokio::test]
#[cfg_attr(
    not(has_tinyproxy),
    ignore = "tinyproxy not found: install it (apt-get install tinyproxy) to run this test"
)]
async fn a_proxy_refusing_the_port_is_a_clear_error() {
    let endpoint = Endpoint::start().await;
    // tinyproxy answers 403 to a CONNECT to a port it does not list.
    let proxy = Tinyproxy::start(free_port(), None);
    let source = endpoint
        .builder(&[("HTTPS_PROXY", &proxy.url())])
        .build()
        .unwrap();
    let error = source.prefetch().await.unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Config, "{error:?}");
    let text = error.report().to_string();
    assert!(text.contains(&proxy.address()), "{text}");
    assert!(text.contains("403"), "{text}");
    assert!(text.contains(&endpoint.target()), "{text}");
    assert!(text.contains("ConnectPort"), "{text}");
    assert_eq!(endpoint.server.token_requests(), 0);
}

#[tokio::test]
async fn a_dead_proxy_is_a_transient_error_naming_it() {
    let endpoint = Endpoint::start().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let source = endpoint
        .builder(&[("https_proxy", &format!("http://{USER}:{PASSWORD}@{dead}"))])
        .build()
        .unwrap();
    let error = source.prefetch().await.unwrap_err();
    assert!(
        (error.kind() == entur_auth::ErrorKind::Unavailable && error.status().is_none()),
        "{error:?}"
    );
    assert!(error.is_transient());
    let text = error.report().to_string();
    assert!(text.contains(&format!("proxy {dead}")), "{text}");
    assert!(text.contains("https_proxy"), "{text}");
    assert!(text.contains("check that the proxy is running"), "{text}");
    assert!(!text.contains(PASSWORD) && !format!("{error:?}").contains(PASSWORD));
    assert_eq!(endpoint.server.token_requests(), 0);
}

#[tokio::test]
async fn an_unusable_proxy_url_is_refused_at_build() {
    let endpoint = Endpoint::start().await;
    for (name, value) in [
        (
            "HTTPS_PROXY",
            format!("http://{USER}:{PASSWORD}@proxy.internal"),
        ),
        (
            "ALL_PROXY",
            format!("socks5://{USER}:{PASSWORD}@proxy:1080"),
        ),
    ] {
        let error = endpoint.builder(&[(name, &value)]).build().unwrap_err();
        assert!(error.kind() == entur_auth::ErrorKind::Config, "{error:?}");
        let text = error.report().to_string();
        assert!(text.contains(name), "{text}");
        assert!(!text.contains(PASSWORD), "{text}");
    }
    let error = endpoint
        .builder(&[])
        .proxy(format!("https://{USER}:{PASSWORD}@proxy:3128"))
        .build()
        .unwrap_err();
    let text = error.report().to_string();
    assert!(text.contains("TokenSourceBuilder::proxy"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}
