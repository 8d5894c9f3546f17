//! Which egress proxy the default client uses: from `HTTPS_PROXY`, `ALL_PROXY` and
//! `NO_PROXY`, or from the builder, decided once when the source is built. The tunnel through
//! it is [`super::tunnel`].
//!
//! TLS runs end to end inside the tunnel: the proxy sees the token endpoint's host and port,
//! never the client secret or the token. The proxy's own credentials (`user:password@` in its
//! URL) are sent as `Proxy-Authorization: Basic` and never shown: every message names the
//! proxy by `host:port` alone. hyper-util's [`Matcher`] reads the URLs (credentials
//! percent-decoded) and applies the `NO_PROXY` rules the way curl does.

use std::fmt;
use std::sync::Arc;

use http::{HeaderValue, Uri};
use hyper_util::client::proxy::matcher::Matcher;

use crate::error::{sanitize, Error};

/// The variables naming a proxy for `https://` URLs, in the order they are read.
const PROXY_VARIABLES: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
/// The variables holding the hosts that bypass it.
const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];

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

impl Origin {
    /// Where to list a host that should bypass this proxy.
    pub(super) fn exempt_with(self) -> &'static str {
        match self {
            Self::Variable(_) => "NO_PROXY",
            Self::Setting => "TokenSourceBuilder::no_proxy",
        }
    }
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
    pub(super) uri: Uri,
    /// `host:port`, the only way the proxy is ever shown.
    pub(super) address: String,
    /// `Basic ...`, marked sensitive.
    pub(super) auth: Option<HeaderValue>,
    pub(super) origin: Origin,
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
    // curl's `*` matches every host; hyper-util's matches host names but not IP addresses.
    if rules.split(',').any(|rule| rule.trim() == "*") {
        return true;
    }
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
pub(super) fn parse(value: &str, origin: Origin) -> Result<Proxy, Error> {
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
    if uri.host().is_none_or(str::is_empty) {
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
        type Vars<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Vars, (&str, &str)); 5] = [
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
        // `*` exempts every host, IP addresses included (as in curl).
        let s = settings(&[
            ("HTTPS_PROXY", "http://p:3128"),
            ("NO_PROXY", "localhost, *"),
        ]);
        assert!(s.route(&loopback).unwrap().is_none());
        // Host names match whatever their case.
        let s = settings(&[("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", "ENTUR.org")]);
        assert!(route(&s).is_none());
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
            assert!(
                error.kind() == crate::ErrorKind::Config,
                "{value}: {error:?}"
            );
            let text = error.report().to_string();
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
            error
                .report()
                .to_string()
                .contains("TokenSourceBuilder::proxy"),
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
}
