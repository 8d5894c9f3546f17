//! `Config` from the environment (through a lookup: no process variable is set) and from a
//! configuration file: every error message names the variable or field and says what to do;
//! a secret file is read as Kubernetes and Docker mount it; the source and layer it builds
//! work; a network failure names the host once; `Health` and `Status` print one line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use entur_auth::{BodyEncoding, Config, Environment, Error, Health, TokenEndpoint};
use entur_auth_test::{Fault, TestServer};
use http::StatusCode;
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};

const SECRET: &str = "s3cr3t-config-marker";

/// The variables a complete Entur configuration sets.
const ENTUR: &[(&str, &str)] = &[
    ("ENTUR_CLIENT_ID", "my-client"),
    ("ENTUR_CLIENT_SECRET", SECRET),
    ("ENTUR_ENVIRONMENT", "dev"),
    ("ET_CLIENT_NAME", "acme-ticketing"),
];

/// `base` with `changes` applied: `Some` sets, `None` unsets.
fn vars(base: &[(&str, &str)], changes: &[(&str, Option<&str>)]) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = base
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for (name, value) in changes {
        match value {
            Some(value) => vars.insert((*name).to_owned(), (*value).to_owned()),
            None => vars.remove(*name),
        };
    }
    vars
}

fn load(vars: HashMap<String, String>) -> Result<Config, Error> {
    Config::from_lookup(|name| vars.get(name).cloned())
}

/// The message `changes` to a complete Entur configuration fail with; checks it is a
/// configuration error that never shows the secret.
fn refused(changes: &[(&str, Option<&str>)]) -> String {
    let error = load(vars(ENTUR, changes)).expect_err("the configuration was accepted");
    assert!(error.kind() == entur_auth::ErrorKind::Config, "{error:?}");
    let text = error.report().to_string();
    assert!(!text.contains(SECRET), "{text}");
    assert!(!format!("{error:?}").contains(SECRET), "{error:?}");
    text
}

#[track_caller]
fn says(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(content: &[u8]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "entur-auth-config-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, content).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The secret a complete configuration reads from `file` instead of `ENTUR_CLIENT_SECRET`.
fn secret_from_file(path: &str) -> Result<String, Error> {
    let config = load(vars(
        ENTUR,
        &[
            ("ENTUR_CLIENT_SECRET", None),
            ("ENTUR_CLIENT_SECRET_FILE", Some(path)),
        ],
    ))?;
    Ok(config
        .credentials()?
        .client_secret()
        .unwrap()
        .expose()
        .to_owned())
}

fn file_refused(content: &[u8]) -> String {
    let file = TempFile::new(content);
    let text = secret_from_file(file.path()).unwrap_err().to_string();
    says(
        &text,
        &["ENTUR_CLIENT_SECRET_FILE names the file", file.path()],
    );
    text
}

// --- What a complete configuration gives ---

#[test]
fn entur_environment_gives_the_preset_endpoint_and_the_client_name() {
    let config = load(vars(ENTUR, &[])).unwrap();
    assert_eq!(config.client_id(), "my-client");
    assert_eq!(config.environment(), Some(Environment::Dev));
    assert_eq!(config.endpoint(), &TokenEndpoint::entur(Environment::Dev));
    assert_eq!(config.client_name().unwrap().to_string(), "acme-ticketing");
    assert_eq!(
        config
            .credentials()
            .unwrap()
            .client_secret()
            .unwrap()
            .expose(),
        SECRET
    );
    assert!(!format!("{config:?}").contains(SECRET), "{config:?}");
}

#[test]
fn values_are_trimmed_and_environments_take_common_spellings() {
    let config = load(vars(
        ENTUR,
        &[
            ("ENTUR_ENVIRONMENT", Some(" Production\n")),
            ("ENTUR_CLIENT_ID", Some(" my-client ")),
        ],
    ))
    .unwrap();
    assert_eq!(config.environment(), Some(Environment::Production));
    assert_eq!(config.client_id(), "my-client");
}

#[test]
fn audience_and_token_url_override_the_environment() {
    let config = load(vars(
        ENTUR,
        &[
            (
                "ENTUR_TOKEN_URL",
                Some("https://internal.dev.entur.org/oauth/token"),
            ),
            ("ENTUR_AUDIENCE", Some("https://api.example.com")),
        ],
    ))
    .unwrap();
    // A custom token URL keeps Entur's JSON body and its meaning of 408.
    let expected = TokenEndpoint::new("https://internal.dev.entur.org/oauth/token")
        .unwrap()
        .audience("https://api.example.com")
        .encoding(BodyEncoding::Json)
        .reauth_on_408(true);
    assert_eq!(config.endpoint(), &expected);
}

#[test]
fn a_custom_token_url_takes_the_environments_audience_unless_told() {
    let config = load(vars(
        ENTUR,
        &[("ENTUR_TOKEN_URL", Some("https://gateway.example.com/token"))],
    ))
    .unwrap();
    let expected = TokenEndpoint::new("https://gateway.example.com/token")
        .unwrap()
        .audience("https://api.dev.entur.io")
        .encoding(BodyEncoding::Json)
        .reauth_on_408(true);
    assert_eq!(config.endpoint(), &expected);
}

#[test]
fn token_body_form_switches_the_encoding() {
    for (value, encoding) in [("form", BodyEncoding::Form), ("JSON", BodyEncoding::Json)] {
        let config = load(vars(ENTUR, &[("ENTUR_TOKEN_BODY", Some(value))])).unwrap();
        assert_eq!(
            config.endpoint(),
            &TokenEndpoint::entur(Environment::Dev).encoding(encoding),
            "{value}"
        );
    }
}

#[test]
fn a_token_url_without_environment_needs_no_client_name_nor_audience() {
    let config = load(vars(
        ENTUR,
        &[
            ("ENTUR_ENVIRONMENT", None),
            ("ET_CLIENT_NAME", None),
            (
                "ENTUR_TOKEN_URL",
                Some("https://auth.example.com/oauth2/token"),
            ),
        ],
    ))
    .unwrap();
    assert_eq!(config.environment(), None);
    assert_eq!(
        config.endpoint(),
        // No audience; Entur's JSON body and meaning of 408, as for every token URL here.
        &TokenEndpoint::new("https://auth.example.com/oauth2/token")
            .unwrap()
            .encoding(BodyEncoding::Json)
            .reauth_on_408(true)
    );
    assert!(config.client_name().is_none());
}

#[test]
fn plain_http_is_accepted_for_loopback_token_urls() {
    for url in [
        "http://127.0.0.1:8080/oauth/token",
        "http://localhost/token",
        "http://[::1]:9000/token",
    ] {
        let config = load(vars(ENTUR, &[("ENTUR_TOKEN_URL", Some(url))])).unwrap();
        assert_eq!(config.endpoint().url().scheme_str(), Some("http"), "{url}");
    }
}

// --- The secret file ---

#[test]
fn a_secret_file_loses_one_trailing_newline() {
    for (content, secret) in [
        (&b"abc-123"[..], "abc-123"),
        (b"abc-123\n", "abc-123"),
        (b"abc-123\r\n", "abc-123"),
        (b"with inner space", "with inner space"),
    ] {
        let file = TempFile::new(content);
        assert_eq!(secret_from_file(file.path()).unwrap(), secret);
    }
}

#[test]
fn a_config_with_a_secret_file_never_shows_it() {
    let file = TempFile::new(format!("{SECRET}\n").as_bytes());
    let config = load(vars(
        ENTUR,
        &[
            ("ENTUR_CLIENT_SECRET", None),
            ("ENTUR_CLIENT_SECRET_FILE", Some(file.path())),
        ],
    ))
    .unwrap();
    assert!(!format!("{config:?}").contains(SECRET));
    assert!(!format!("{:?}", config.credentials().unwrap()).contains(SECRET));
}

// --- One test per error message: the environment ---

#[test]
fn client_id_not_set() {
    let text = refused(&[("ENTUR_CLIENT_ID", None)]);
    says(
        &text,
        &[
            "ENTUR_CLIENT_ID is not set",
            "set it to the client id Entur issued",
        ],
    );
}

#[test]
fn client_id_empty() {
    let text = refused(&[("ENTUR_CLIENT_ID", Some("  "))]);
    says(&text, &["ENTUR_CLIENT_ID is set but empty", "client id"]);
}

#[test]
fn no_client_secret() {
    let text = refused(&[("ENTUR_CLIENT_SECRET", None)]);
    says(
        &text,
        &[
            "no client secret",
            "set ENTUR_CLIENT_SECRET",
            "or ENTUR_CLIENT_SECRET_FILE to the path of a file",
        ],
    );
}

#[test]
fn client_secret_empty_is_not_reported_as_unset() {
    let text = refused(&[("ENTUR_CLIENT_SECRET", Some(""))]);
    says(
        &text,
        &[
            "ENTUR_CLIENT_SECRET is set but empty",
            "ENTUR_CLIENT_SECRET_FILE",
        ],
    );
    assert!(!text.contains("not set"), "{text}");
}

#[test]
fn both_secret_variables_set() {
    let file = TempFile::new(b"other");
    let text = refused(&[("ENTUR_CLIENT_SECRET_FILE", Some(file.path()))]);
    says(
        &text,
        &[
            "both ENTUR_CLIENT_SECRET and ENTUR_CLIENT_SECRET_FILE are set",
            "set only one",
        ],
    );
}

#[test]
fn secret_file_variable_empty() {
    let text = refused(&[
        ("ENTUR_CLIENT_SECRET", None),
        ("ENTUR_CLIENT_SECRET_FILE", Some("")),
    ]);
    says(
        &text,
        &[
            "ENTUR_CLIENT_SECRET_FILE is set but empty",
            "path of the file",
        ],
    );
}

#[test]
fn secret_file_missing() {
    let missing = std::env::temp_dir().join("entur-auth-config-no-such-file");
    let text = secret_from_file(missing.to_str().unwrap())
        .unwrap_err()
        .to_string();
    says(
        &text,
        &[
            "ENTUR_CLIENT_SECRET_FILE names the file",
            "entur-auth-config-no-such-file",
            "which cannot be opened",
            "mounted there and readable",
        ],
    );
}

#[test]
fn secret_file_is_a_directory() {
    let dir = std::env::temp_dir();
    let text = secret_from_file(dir.to_str().unwrap())
        .unwrap_err()
        .to_string();
    says(
        &text,
        &["ENTUR_CLIENT_SECRET_FILE names the file", "cannot be"],
    );
}

#[test]
fn secret_file_empty() {
    for content in [&b""[..], b"\n", b"\r\n"] {
        let text = file_refused(content);
        says(
            &text,
            &["which is empty", "write the client secret into it"],
        );
    }
}

#[test]
fn secret_file_with_more_than_the_secret() {
    for content in [&b"abc\n\n"[..], b"abc\ndef", b" abc\n", b"abc \n"] {
        let text = file_refused(content);
        says(
            &text,
            &[
                "holds more than the secret",
                "write the secret alone, on one line",
            ],
        );
        assert!(!text.contains("abc"), "{text}");
    }
}

#[test]
fn secret_file_not_utf8() {
    let text = file_refused(&[0xff, 0xfe, b'\n']);
    says(&text, &["is not UTF-8 text"]);
}

#[test]
fn secret_file_too_large() {
    let text = file_refused(&vec![b'a'; 64 * 1024 + 1]);
    says(&text, &["larger than 64 KiB", "check the path"]);
}

#[test]
fn environment_not_set() {
    let text = refused(&[("ENTUR_ENVIRONMENT", None)]);
    says(
        &text,
        &[
            "ENTUR_ENVIRONMENT is not set",
            "dev, staging or production",
            "or set ENTUR_TOKEN_URL",
        ],
    );
}

#[test]
fn environment_empty() {
    let text = refused(&[("ENTUR_ENVIRONMENT", Some(""))]);
    says(
        &text,
        &[
            "ENTUR_ENVIRONMENT is set but empty",
            "dev, staging or production",
        ],
    );
}

#[test]
fn environment_unknown() {
    let text = refused(&[("ENTUR_ENVIRONMENT", Some("qa"))]);
    says(
        &text,
        &[
            "ENTUR_ENVIRONMENT is \"qa\"",
            "use dev, staging or production",
        ],
    );
}

#[test]
fn audience_empty() {
    let text = refused(&[("ENTUR_AUDIENCE", Some(""))]);
    says(
        &text,
        &[
            "ENTUR_AUDIENCE is set but empty",
            "leave it out to use ENTUR_ENVIRONMENT's",
        ],
    );
}

#[test]
fn audience_with_spaces() {
    let text = refused(&[("ENTUR_AUDIENCE", Some("https://a https://b"))]);
    says(
        &text,
        &["ENTUR_AUDIENCE is \"https://a https://b\"", "one URI"],
    );
}

#[test]
fn token_url_empty() {
    let text = refused(&[("ENTUR_TOKEN_URL", Some(" "))]);
    says(
        &text,
        &[
            "ENTUR_TOKEN_URL is set but empty",
            "Entur's partner token server for ENTUR_ENVIRONMENT",
        ],
    );
}

#[test]
fn token_url_not_absolute() {
    let text = refused(&[("ENTUR_TOKEN_URL", Some("/oauth/token"))]);
    says(
        &text,
        &[
            "ENTUR_TOKEN_URL is \"/oauth/token\"",
            "absolute https:// URL",
        ],
    );
}

#[test]
fn token_url_with_a_password() {
    let text = refused(&[(
        "ENTUR_TOKEN_URL",
        Some("https://user:hunter2@auth.example.com/token"),
    )]);
    says(&text, &["ENTUR_TOKEN_URL holds a user name or password"]);
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn token_url_over_plain_http_to_another_host() {
    let text = refused(&[("ENTUR_TOKEN_URL", Some("http://auth.example.com/token"))]);
    says(
        &text,
        &[
            "ENTUR_TOKEN_URL is \"http://auth.example.com/token\"",
            "cleartext",
            "use https://",
        ],
    );
}

#[test]
fn token_body_unknown() {
    let text = refused(&[("ENTUR_TOKEN_BODY", Some("xml"))]);
    says(
        &text,
        &["ENTUR_TOKEN_BODY is \"xml\"", "use json", "or form"],
    );
    let text = refused(&[("ENTUR_TOKEN_BODY", Some(""))]);
    says(&text, &["ENTUR_TOKEN_BODY is set but empty"]);
}

#[test]
fn client_name_not_set() {
    let text = refused(&[("ET_CLIENT_NAME", None)]);
    says(
        &text,
        &[
            "ET_CLIENT_NAME is not set",
            "<company>-<application>",
            "ET-Client-Name",
        ],
    );
}

#[test]
fn client_name_empty() {
    let text = refused(&[("ET_CLIENT_NAME", Some(""))]);
    says(
        &text,
        &["ET_CLIENT_NAME is set but empty", "acme-ticketing"],
    );
}

#[test]
fn client_name_malformed() {
    let text = refused(&[("ET_CLIENT_NAME", Some("acme ticketing"))]);
    says(
        &text,
        &[
            "ET_CLIENT_NAME is \"acme ticketing\"",
            "<company>-<application>",
        ],
    );
}

// --- A configuration file ---

#[cfg(feature = "serde")]
mod file {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        serde_json::from_str::<Config>(json).map_err(|e| {
            let text = e.to_string();
            assert!(!text.contains(SECRET), "{text}");
            text
        })
    }

    #[test]
    fn the_secret_comes_from_the_file_it_names() {
        let secret = TempFile::new(format!("{SECRET}\n").as_bytes());
        let json = serde_json::json!({
            "client_id": "my-client",
            "client_secret_file": secret.path(),
            "environment": "staging",
            "client_name": "acme-ticketing",
            "audience": "https://api.example.com",
            "token_body": "form",
        });
        let config = parse(&json.to_string()).unwrap();
        assert_eq!(config.environment(), Some(Environment::Staging));
        assert_eq!(
            config.endpoint(),
            &TokenEndpoint::entur(Environment::Staging)
                .audience("https://api.example.com")
                .encoding(BodyEncoding::Form)
        );
        assert!(!format!("{config:?}").contains(SECRET), "{config:?}");
        // Read when the credentials are made, so that a rotated file is picked up.
        assert_eq!(
            config
                .credentials()
                .unwrap()
                .client_secret()
                .unwrap()
                .expose(),
            SECRET
        );
        std::fs::write(&secret.0, "rotated\n").unwrap();
        assert_eq!(
            config
                .credentials()
                .unwrap()
                .client_secret()
                .unwrap()
                .expose(),
            "rotated"
        );
    }

    #[test]
    fn a_secret_in_the_file_is_refused_saying_why() {
        let text = parse(&format!(
            r#"{{"client_id": "my-client", "client_secret": "{SECRET}", "environment": "dev", "client_name": "acme-ticketing"}}"#
        ))
        .unwrap_err();
        says(
            &text,
            &[
                "`client_secret` is refused in a configuration file",
                "version control",
                "`client_secret_file`",
                "`client_secret_env`",
            ],
        );
    }

    #[test]
    fn both_secret_fields() {
        let text = parse(
            r#"{"client_id": "c", "client_secret_file": "/x", "client_secret_env": "X", "environment": "dev", "client_name": "acme-app"}"#,
        )
        .unwrap_err();
        says(
            &text,
            &["both `client_secret_file` and `client_secret_env` are set"],
        );
    }

    #[test]
    fn secret_file_field_empty() {
        let text = parse(
            r#"{"client_id": "c", "client_secret_file": "", "environment": "dev", "client_name": "acme-app"}"#,
        )
        .unwrap_err();
        says(&text, &["`client_secret_file` is set but empty"]);
    }

    #[test]
    fn secret_env_field_empty_or_malformed() {
        let text = parse(
            r#"{"client_id": "c", "client_secret_env": " ", "environment": "dev", "client_name": "acme-app"}"#,
        )
        .unwrap_err();
        says(&text, &["`client_secret_env` is set but empty"]);
        let text = parse(
            r#"{"client_id": "c", "client_secret_env": "A=B", "environment": "dev", "client_name": "acme-app"}"#,
        )
        .unwrap_err();
        says(
            &text,
            &[
                "`client_secret_env` is \"A=B\"",
                "the name of an environment variable",
            ],
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let text = parse(r#"{"environment": "dev", "client_name": "acme-app"}"#).unwrap_err();
        says(
            &text,
            &[
                "the configuration has no `client_id`",
                "client id Entur issued",
            ],
        );
        let text = parse(r#"{"client_id": "c", "client_secret_env": "X"}"#).unwrap_err();
        says(
            &text,
            &[
                "the configuration has no `environment`",
                "or set `token_url`",
            ],
        );
    }

    #[test]
    fn a_malformed_field_is_named() {
        let text = parse(
            r#"{"client_id": "c", "client_secret_env": "X", "environment": "qa", "client_name": "acme-app"}"#,
        )
        .unwrap_err();
        says(
            &text,
            &["`environment` is \"qa\"", "dev, staging or production"],
        );
    }

    #[test]
    fn a_misspelt_field_is_refused() {
        let text = parse(
            r#"{"client_id": "c", "client_secret_fiel": "/x", "environment": "dev", "client_name": "acme-app"}"#,
        )
        .unwrap_err();
        says(
            &text,
            &["unknown field `client_secret_fiel`", "`client_secret_file`"],
        );
        // The fields it lists are those a file takes: not `client_secret`, which is refused.
        assert!(!text.contains("`client_secret`"), "{text}");
    }

    #[test]
    fn a_secret_file_that_is_gone_at_build_is_named() {
        let config = parse(
            r#"{"client_id": "c", "client_secret_file": "/nonexistent/entur-secret", "environment": "dev", "client_name": "acme-app"}"#,
        )
        .unwrap();
        let text = config.credentials().unwrap_err().to_string();
        says(
            &text,
            &[
                "`client_secret_file` names the file \"/nonexistent/entur-secret\"",
                "cannot be opened",
            ],
        );
    }

    #[test]
    fn health_and_status_serialize_for_a_health_endpoint() {
        assert_eq!(
            serde_json::to_value(Health::Degraded).unwrap(),
            serde_json::json!("degraded")
        );
    }
}

// --- The source and layer it builds ---

/// The variables that point a configuration at the embedded server.
fn at(server: &TestServer) -> HashMap<String, String> {
    let token_url = server.token_url();
    vars(
        &[
            ("ENTUR_CLIENT_ID", server.client_id()),
            ("ENTUR_CLIENT_SECRET", server.client_secret()),
            ("ENTUR_TOKEN_URL", &token_url),
            ("ENTUR_AUDIENCE", server.audience()),
            ("ET_CLIENT_NAME", "acme-config-test"),
        ],
        &[],
    )
}

#[tokio::test]
async fn build_gives_a_source_and_a_layer_that_sends_the_client_name() {
    let server = TestServer::start().await.unwrap();
    let (source, layer) = load(at(&server)).unwrap().build().unwrap();
    assert_eq!(source.status().health, Health::Idle);
    source.ready(Duration::from_secs(10)).await.unwrap();

    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut api = ServiceBuilder::new()
        .layer(layer.with_replay())
        .service(http);
    let request = http::Request::get(format!("{}/departures", server.api_url()))
        .body(Full::default())
        .unwrap();
    let response = api.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = server.last_api_request().unwrap();
    assert_eq!(seen.headers["et-client-name"], "acme-config-test");
    assert_eq!(server.token_requests(), 1);
}

#[tokio::test]
async fn status_and_health_print_one_line_without_secrets() {
    let server = TestServer::builder()
        .token_lifetime(Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    let (source, _layer) = load(at(&server)).unwrap().build().unwrap();

    let idle = source.status();
    assert_eq!(idle.health.to_string(), "idle");
    let line = idle.to_string();
    says(
        &line,
        &[
            "idle: no token yet",
            "TokenSource::ready",
            "0 fetches, 0 failed",
        ],
    );

    source.ready(Duration::from_secs(10)).await.unwrap();
    let fresh = source.status();
    let line = fresh.to_string();
    assert!(line.starts_with("fresh: token #"), "{line}");
    says(&line, &["usable for", "refresh in", "1 fetch, 0 failed"]);
    let bearer = source
        .current()
        .unwrap()
        .header_value()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!line.contains(&bearer["Bearer ".len()..]), "{line}");
    assert!(!line.contains(server.client_secret()), "{line}");

    // The refresh fails: degraded, still serving, the error on the same line.
    server.set_sticky_fault(Some(Fault::status(StatusCode::SERVICE_UNAVAILABLE)));
    let degraded = wait_for(&source, Health::Degraded).await;
    let line = degraded.to_string();
    assert!(degraded.health.is_serving());
    assert!(!line.contains('\n'), "{line}");
    says(
        &line,
        &[
            "degraded: token #",
            "last error: token endpoint unavailable (answered 503",
            "retry in",
        ],
    );

    // The token is retired: failing, not serving.
    let failing = wait_for(&source, Health::Failing).await;
    assert!(!failing.health.is_serving());
    says(&failing.to_string(), &["failing: no token", "last error:"]);

    #[cfg(feature = "serde")]
    {
        let json = serde_json::to_value(&degraded).unwrap();
        assert_eq!(json["health"], "degraded");
        assert_eq!(json["serving"], true);
        assert_eq!(
            json["token"],
            degraded.token.unwrap().to_string()[1..]
                .parse::<u64>()
                .unwrap()
        );
        assert_eq!(json["fetch_attempts"], degraded.fetch_attempts);
        assert!(json["usable_for_ms"].is_u64(), "{json}");
        assert!(json["retry_in_ms"].is_u64(), "{json}");
        assert!(
            json["last_error"].as_str().unwrap().contains("503"),
            "{json}"
        );
        assert!(!json.to_string().contains(server.client_secret()), "{json}");
        let json = serde_json::to_value(&failing).unwrap();
        assert_eq!(json["health"], "failing");
        assert_eq!(json["serving"], false);
        assert!(json["token"].is_null(), "{json}");
    }
}

/// The first status in `health` with an error, within 10 s.
async fn wait_for(source: &entur_auth::TokenSource, health: Health) -> entur_auth::Status {
    for _ in 0..1000 {
        let status = source.status();
        if status.health == health && status.last_error.is_some() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never reached: {}", source.status());
}

// --- A network failure ---

/// What an error reporter prints: the error, then each source.
fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        text.push_str("\ncaused by: ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_named_by_host_and_its_cause_said_once() {
    // Bind a port, then free it: connecting to it is refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/oauth/token");
    let config = load(vars(
        &[
            ("ENTUR_CLIENT_ID", "my-client"),
            ("ENTUR_CLIENT_SECRET", SECRET),
            ("ENTUR_TOKEN_URL", &url),
        ],
        &[],
    ))
    .unwrap();
    let source = config.source_builder().unwrap().build().unwrap();

    let error = source.token().await.unwrap_err();
    assert!(
        error.kind() == entur_auth::ErrorKind::Unavailable
            && error.host() == Some(format!("127.0.0.1:{port}").as_str()),
        "{error:?}"
    );
    let text = report(&error);
    says(
        &text,
        &[&format!("token endpoint 127.0.0.1:{port} unreachable")],
    );
    let cause = "onnection refused"; // "Connection refused" (Linux), "connection refused"
    assert_eq!(text.matches(cause).count(), 1, "{text}");
    assert!(!text.contains(SECRET), "{text}");

    // The startup wait that gives up says it once too, with the host.
    let error = source.ready(Duration::from_millis(300)).await.unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::NotReady, "{error:?}");
    let text = report(&error);
    assert_eq!(text.matches(cause).count(), 1, "{text}");
    says(&text, &[&format!("127.0.0.1:{port}")]);
}
