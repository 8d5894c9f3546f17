//! What the token endpoint sends back, as real servers send it: tokens outside RFC 6750's
//! `b64token`, bodies with a byte-order mark, OAuth errors in 200 answers, gateways that
//! answer with HTML, and the hints that client authentication mismatches deserve. Time is
//! tokio's paused clock; the endpoint is reached in-process.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use entur_auth_test::Fault;

fn json(status: u16, body: impl Into<String>) -> Fault {
    Fault::respond(
        status,
        &[("content-type", "application/json")],
        Bytes::from(body.into()),
    )
}

#[tokio::test(start_paused = true)]
async fn tokens_outside_b64token_that_fit_in_a_header_are_sent_as_issued() {
    for token in [
        // eBay's client-credentials ("application") tokens.
        "v^1.1#i^1#p^1#r^0#I^3#f^0#t^H4sIAAAAAAAAAOVYa2wUVRTebbeltRRjRBSMdjtoIJDZvTO7+5pk1m2h",
        // Salesforce's.
        "00D5g000004XXXX!AQ4AQMabcDEF.ghi_jkl",
        // Every other visible ASCII character.
        r#"!"$%&'()*,:;<>?@[\]`{|}"#,
    ] {
        let server = server(Duration::from_secs(60)).await;
        let body = serde_json::json!({
            "access_token": token, "token_type": "Bearer", "expires_in": 3600,
        });
        server.push_fault(json(200, body.to_string()));
        let source = source(&server);
        let issued = source
            .token()
            .await
            .unwrap_or_else(|e| panic!("{token}: {e}"));
        assert_eq!(
            issued.header_value().as_bytes(),
            format!("Bearer {token}").as_bytes()
        );
        // And it reaches the API byte for byte.
        let mut svc = client(&server, &source);
        let _ = send(&mut svc, api_request(&server, "/a")).await;
        let sent = server.last_api_request().unwrap();
        assert_eq!(
            sent.headers["authorization"].as_bytes(),
            format!("Bearer {token}").as_bytes()
        );
    }
}

/// Some .NET-hosted servers start their JSON with a UTF-8 byte-order mark.
#[tokio::test(start_paused = true)]
async fn json_bodies_starting_with_a_byte_order_mark_are_read() {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let server = server(Duration::from_secs(60)).await;
    let ok = [
        BOM,
        br#"{"access_token":"abc.def.ghi","token_type":"Bearer","expires_in":3600}"#,
        b"\r\n",
    ]
    .concat();
    server.push_fault(Fault::respond(
        200,
        &[("content-type", "application/json; charset=utf-8")],
        ok,
    ));
    let source = source(&server);
    let token = source.token().await.expect("the BOM is skipped");
    assert_eq!(token.header_value(), "Bearer abc.def.ghi");
    assert_eq!(
        token.expires_at() - token.issued_at(),
        Duration::from_secs(3600)
    );

    // The same for error bodies: the code is read, not "not a JSON token response".
    let server = common::server(Duration::from_secs(60)).await;
    let refused = [
        BOM,
        br#" {"error":"invalid_client","error_description":"no"}"#,
    ]
    .concat();
    server.push_fault(Fault::respond(
        401,
        &[("content-type", "application/json")],
        refused,
    ));
    let source = common::source(&server);
    let error = source.token().await.unwrap_err();
    assert_eq!(
        error.oauth_code(),
        Some(&entur_auth::OAuthErrorCode::InvalidClient),
        "{error}"
    );
}

/// WAF rule sets and CDNs block requests without a `User-Agent`.
#[tokio::test(start_paused = true)]
async fn token_requests_carry_a_user_agent() {
    let server = server(Duration::from_secs(60)).await;
    source(&server).prefetch().await.unwrap();
    let request = server.last_token_request().unwrap();
    assert_eq!(
        request.headers["user-agent"],
        concat!("entur-auth/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        entur_auth::TokenEndpoint::DEFAULT_USER_AGENT,
        concat!("entur-auth/", env!("CARGO_PKG_VERSION"))
    );

    let custom = format!(
        "acme-ticketing/2.1 {}",
        entur_auth::TokenEndpoint::DEFAULT_USER_AGENT
    );
    let source = entur_auth::TokenSource::builder(
        server.endpoint().user_agent(custom.clone()),
        server.credentials(),
    )
    .allow_http_loopback(true)
    .transport(server.token_transport())
    .build()
    .unwrap();
    source.prefetch().await.unwrap();
    assert_eq!(
        server.last_token_request().unwrap().headers["user-agent"],
        custom.as_str()
    );

    // Not a valid header value: a configuration error at build, not at the first fetch.
    let error = entur_auth::TokenSource::builder(
        server.endpoint().user_agent("acme\r\nX-Injected: 1"),
        server.credentials(),
    )
    .allow_http_loopback(true)
    .transport(server.token_transport())
    .build()
    .unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Config, "{error:?}");
    assert!(error.report().to_string().contains("User-Agent"), "{error}");
}

/// For servers that do not URL-decode Basic credentials: `base64(id ":" secret)` as is.
#[tokio::test(start_paused = true)]
async fn basic_unencoded_sends_the_raw_credentials() {
    use base64::Engine as _;
    let secret = "p+ss/w=rd:%41";
    let server = entur_auth_test::TestServer::builder()
        .client_secret(secret)
        .start()
        .await
        .unwrap();
    let source = entur_auth::TokenSource::builder(
        server
            .endpoint()
            .client_auth(entur_auth::ClientAuth::BasicUnencoded),
        server.credentials(),
    )
    .allow_http_loopback(true)
    .transport(server.token_transport())
    .build()
    .unwrap();
    // The embedded server follows RFC 6749 and decodes '+' to a space: it refuses.
    let error = source.prefetch().await.unwrap_err();
    let request = server.last_token_request().unwrap();
    let raw = base64::engine::general_purpose::STANDARD.encode(format!("test-client:{secret}"));
    assert_eq!(
        request.headers["authorization"],
        format!("Basic {raw}").as_str()
    );
    let body = String::from_utf8(request.body.to_vec()).unwrap();
    assert!(!body.contains("client_secret"), "{body}");
    // It answered invalid_client with a Basic challenge: the hint names the encoding.
    assert!(error.is_credentials(), "{error}");
    assert!(
        error.report().to_string().contains("(ClientAuth::Basic)"),
        "{error}"
    );
}

/// Amazon Cognito and Spring Authorization Server refuse a secret sent in the body by a
/// client registered for `client_secret_basic`, with `invalid_client` and a Basic challenge.
#[tokio::test(start_paused = true)]
async fn a_basic_challenge_to_a_body_secret_says_to_use_basic() {
    let server = server(Duration::from_secs(60)).await;
    server.push_fault(Fault::respond(
        400,
        &[
            ("content-type", "application/json"),
            ("www-authenticate", r#"Basic realm="cognito-idp""#),
        ],
        r#"{"error":"invalid_client"}"#,
    ));
    let error = source(&server).token().await.unwrap_err();
    assert!(error.is_credentials(), "{error:?}");
    let text = error.report().to_string();
    assert!(text.contains("WWW-Authenticate: Basic"), "{text}");
    assert!(
        text.contains("TokenEndpoint::client_auth(ClientAuth::Basic)"),
        "{text}"
    );
    assert!(!text.contains(server.client_secret()), "{text}");
    // And switching does fix it against a server that accepts Basic.
    let source = entur_auth::TokenSource::builder(
        server.endpoint().client_auth(entur_auth::ClientAuth::Basic),
        server.credentials(),
    )
    .allow_http_loopback(true)
    .transport(server.token_transport())
    .build()
    .unwrap();
    source.prefetch().await.unwrap();
}

/// Claims are read one by one with no cap on the payload but the response's: a 20 KiB
/// payload with a `scope` array and `exp` 60 s ahead, no `expires_in`: a ~60 s token.
#[tokio::test(start_paused = true)]
async fn a_large_jwt_without_expires_in_lives_until_its_exp() {
    use base64::Engine as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let roles: Vec<String> = (0..1700).map(|i| format!("role-{i:05}")).collect();
    let payload = serde_json::json!({
        "sub": "client@clients",
        "scope": ["read", "write"],
        "roles": roles,
        "exp": now + 60,
    })
    .to_string();
    assert!(payload.len() > 20 * 1024, "{}", payload.len());
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "{}.{}.c2ln",
        enc.encode(r#"{"alg":"RS256"}"#),
        enc.encode(&payload)
    );
    let server = server(Duration::from_secs(60)).await;
    let body = serde_json::json!({ "access_token": token, "token_type": "Bearer" });
    server.push_fault(json(200, body.to_string()));
    let token = source(&server).token().await.unwrap();
    let lifetime = token.expires_at() - token.issued_at();
    // exp is whole seconds on the wall clock: 59 to 60 s.
    assert!(
        (Duration::from_secs(59)..=Duration::from_secs(60)).contains(&lifetime),
        "{lifetime:?}"
    );
    assert_eq!(token.scope(), Some("read write"));
}
