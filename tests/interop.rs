//! The interop matrix: the token responses and errors of real authorization servers, in the
//! shapes their public documentation shows, served by the embedded server
//! (`Fault::Respond`) and read by a token source. Each case cites where its shape comes from.
//!
//! What each case checks: that a success gives a usable `Authorization: Bearer <token>` with
//! the lifetime the server meant (or the configured default when it sends none), and that
//! an error gives the typed error a user can act on (the OAuth code, transient or not, and
//! advice that points at the real cause). The README's "Works with" table summarises it.

mod common;

use std::time::Duration;

use base64::Engine as _;
use entur_auth::{Error, OAuthErrorCode, TokenSource};
use entur_auth_test::{Fault, TestServer};

const JSON: (&str, &str) = ("content-type", "application/json;charset=UTF-8");

/// A JWT-shaped token with these claims (the signature is never checked by a client).
fn jwt(claims: &str) -> String {
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2lnbmF0dXJl",
        enc.encode(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#),
        enc.encode(claims)
    )
}

async fn source(server: &TestServer) -> TokenSource {
    server
        .source_builder()
        .default_lifetime(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// Serves `fault` to one token request; returns the token's header value and lifetime.
async fn token_from(fault: Fault) -> Result<(String, Duration), Error> {
    let server = common::server(Duration::from_secs(3600)).await;
    server.push_fault(fault);
    let source = source(&server).await;
    let token = source.token().await?;
    let header = token.header_value().to_str().unwrap().to_owned();
    Ok((header, token.expires_at() - token.issued_at()))
}

async fn error_from(fault: Fault) -> Error {
    token_from(fault).await.expect_err("an error")
}

fn assert_rejected(error: &Error, code: OAuthErrorCode) {
    assert_eq!(error.oauth_code(), Some(&code), "{error:?}");
    assert!(!error.is_transient(), "{error:?}");
}

/// Auth0 (Entur's authorization server), client credentials:
/// https://auth0.com/docs/get-started/authentication-and-authorization-flow/client-credentials-flow/call-your-api-using-the-client-credentials-flow
/// and its token endpoint errors: https://auth0.com/docs/api/authentication#client-credentials-flow
#[tokio::test(start_paused = true)]
async fn auth0() {
    let token = jwt(
        r#"{"iss":"https://partner.entur.org/","sub":"abc@clients","aud":"https://api.entur.io","iat":1700000000,"exp":1700086400,"https://entur.io/organisationID":1}"#,
    );
    let body = format!(
        r#"{{"access_token":"{token}","scope":"read:departures","expires_in":86400,"token_type":"Bearer"}}"#
    );
    let (header, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(header, format!("Bearer {token}"));
    assert_eq!(lifetime, Duration::from_secs(86400));

    let wrong_secret = r#"{"error":"access_denied","error_description":"Unauthorized"}"#;
    let error = error_from(Fault::respond(401, &[JSON], wrong_secret)).await;
    assert_rejected(&error, OAuthErrorCode::AccessDenied);

    let wrong_audience = r#"{"error":"access_denied","error_description":"Service not enabled within domain: https://api.example.com"}"#;
    let error = error_from(Fault::respond(403, &[JSON], wrong_audience)).await;
    assert_rejected(&error, OAuthErrorCode::AccessDenied);
    assert!(
        error.report().to_string().contains("Service not enabled"),
        "{error}"
    );

    let limited =
        r#"{"error":"too_many_requests","error_description":"Global limit has been reached"}"#;
    let error = error_from(Fault::respond(
        429,
        &[
            JSON,
            ("x-ratelimit-limit", "30"),
            ("x-ratelimit-remaining", "0"),
            ("retry-after", "7"),
        ],
        limited,
    ))
    .await;
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
}

/// Microsoft Entra ID, v1 endpoint: `expires_in` and friends as strings.
/// https://learn.microsoft.com/en-us/previous-versions/azure/active-directory/azuread-dev/v1-oauth2-client-creds-grant-flow
#[tokio::test(start_paused = true)]
async fn entra_id_v1() {
    let token = jwt(
        r#"{"aud":"https://graph.microsoft.com","iat":1700000000,"nbf":1700000000,"exp":1700003899}"#,
    );
    let body = format!(
        r#"{{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","expires_on":"1700003599","not_before":"1700000000","resource":"https://graph.microsoft.com","access_token":"{token}"}}"#
    );
    let (_, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(3599));
}

/// Microsoft Entra ID, v2 endpoint, and its `AADSTS` errors.
/// https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow
#[tokio::test(start_paused = true)]
async fn entra_id_v2() {
    let token = jwt(r#"{"aud":"api://example","iat":1700000000,"exp":1700003899}"#);
    let body = format!(
        r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"{token}"}}"#
    );
    let (_, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(3599));

    let bad_secret = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.","error_codes":[7000215],"timestamp":"2026-11-28 10:00:00Z","trace_id":"0000aaaa-11bb-cccc-dd22-eeeeee333333","correlation_id":"aaaa0000-bb11-2222-33cc-444444dddddd","error_uri":"https://login.microsoftonline.com/error?code=7000215"}"#;
    let error = error_from(Fault::respond(401, &[JSON], bad_secret)).await;
    assert_rejected(&error, OAuthErrorCode::InvalidClient);
    assert!(
        error.report().to_string().contains("AADSTS7000215"),
        "{error}"
    );

    let bad_scope = r#"{"error":"invalid_scope","error_description":"AADSTS1002012: The provided value for scope api://example is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).","error_codes":[1002012]}"#;
    let error = error_from(Fault::respond(400, &[JSON], bad_scope)).await;
    assert_rejected(&error, OAuthErrorCode::InvalidScope);
}

/// Keycloak, service account (client credentials) tokens.
/// https://www.keycloak.org/docs/latest/server_admin/#_service_accounts
#[tokio::test(start_paused = true)]
async fn keycloak() {
    let token = jwt(
        r#"{"iss":"https://kc.example/realms/r","iat":1700000000,"exp":1700000300,"scope":"profile email","azp":"svc"}"#,
    );
    let body = format!(
        r#"{{"access_token":"{token}","expires_in":300,"refresh_expires_in":0,"token_type":"Bearer","not-before-policy":0,"scope":"profile email"}}"#
    );
    let (_, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(300));

    let bad_secret = r#"{"error":"unauthorized_client","error_description":"Invalid client or Invalid client credentials"}"#;
    let error = error_from(Fault::respond(401, &[JSON], bad_secret)).await;
    assert_rejected(&error, OAuthErrorCode::UnauthorizedClient);
}

/// Okta, client credentials with a custom authorization server.
/// https://developer.okta.com/docs/guides/implement-grant-type/clientcreds/main/
#[tokio::test(start_paused = true)]
async fn okta() {
    let token = jwt(
        r#"{"ver":1,"iss":"https://example.okta.com/oauth2/default","iat":1700000000,"exp":1700003600,"scp":["customScope"],"cid":"0oa"}"#,
    );
    let body = format!(
        r#"{{"token_type":"Bearer","expires_in":3600,"access_token":"{token}","scope":"customScope"}}"#
    );
    let (_, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(3600));

    let bad_secret = r#"{"error":"invalid_client","error_description":"The client secret supplied for a confidential client is invalid."}"#;
    let error = error_from(Fault::respond(401, &[JSON], bad_secret)).await;
    assert_rejected(&error, OAuthErrorCode::InvalidClient);

    let no_scope = r#"{"error":"invalid_scope","error_description":"The authorization server resource does not have any configured default scopes, 'scope' must be provided."}"#;
    let error = error_from(Fault::respond(400, &[JSON], no_scope)).await;
    assert_rejected(&error, OAuthErrorCode::InvalidScope);
}

/// Amazon Cognito, the token endpoint; a client registered for `client_secret_basic`
/// refuses a secret sent in the body.
/// https://docs.aws.amazon.com/cognito/latest/developerguide/token-endpoint.html
#[tokio::test(start_paused = true)]
async fn cognito() {
    let token = jwt(
        r#"{"token_use":"access","scope":"api/read","iat":1700000000,"exp":1700003600,"client_id":"abc"}"#,
    );
    let body = format!(r#"{{"access_token":"{token}","expires_in":3600,"token_type":"Bearer"}}"#);
    let (_, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(3600));

    let error = error_from(Fault::respond(
        400,
        &[JSON, ("www-authenticate", r#"Basic realm="cognito""#)],
        r#"{"error":"invalid_client"}"#,
    ))
    .await;
    assert_rejected(&error, OAuthErrorCode::InvalidClient);
    assert!(
        error.report().to_string().contains("ClientAuth::Basic"),
        "the advice says to switch to Basic: {error}"
    );
}

/// Google's token endpoint (service accounts; opaque `ya29.` tokens).
/// https://developers.google.com/identity/protocols/oauth2/service-account#httprest
#[tokio::test(start_paused = true)]
async fn google() {
    let token = "ya29.c.c0ASRK0GZ-Ab_cdEf12.ghIJ-kl_3mNoPqrSTUvw";
    let body = format!(r#"{{"access_token":"{token}","expires_in":3599,"token_type":"Bearer"}}"#);
    let (header, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(header, format!("Bearer {token}"));
    assert_eq!(lifetime, Duration::from_secs(3599));

    let error = error_from(Fault::respond(
        400,
        &[JSON],
        r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
    ))
    .await;
    assert_rejected(&error, OAuthErrorCode::InvalidGrant);
}

/// Ory Hydra: `token_type` in lower case, an empty `scope`, opaque `ory_at_` tokens.
/// https://www.ory.sh/docs/oauth2-oidc/client-credentials
#[tokio::test(start_paused = true)]
async fn ory_hydra() {
    let token = "ory_at_Zm9vYmFy.YmF6cXV4";
    let body = format!(
        r#"{{"access_token":"{token}","expires_in":3599,"scope":"","token_type":"bearer"}}"#
    );
    let (header, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(header, format!("Bearer {token}"));
    assert_eq!(lifetime, Duration::from_secs(3599));

    let wrong_method = r#"{"error":"invalid_client","error_description":"Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method). The OAuth 2.0 Client supports client authentication method 'client_secret_basic', but method 'client_secret_post' was requested."}"#;
    let error = error_from(Fault::respond(401, &[JSON], wrong_method)).await;
    assert_rejected(&error, OAuthErrorCode::InvalidClient);
    assert!(
        error.report().to_string().contains("client_secret_basic"),
        "{error}"
    );
}

/// Spring Authorization Server: `scope` as an array in the JWT; `invalid_client` with a
/// `Basic` challenge for a client registered for `client_secret_basic`.
/// https://docs.spring.io/spring-authorization-server/reference/protocol-endpoints.html#oauth2-token-endpoint
#[tokio::test(start_paused = true)]
async fn spring_authorization_server() {
    let token = jwt(
        r#"{"sub":"svc","aud":"svc","nbf":1700000000,"scope":["message.read","message.write"],"iss":"http://localhost:9000","exp":1700000299,"iat":1700000000}"#,
    );
    let body = format!(
        r#"{{"access_token":"{token}","scope":"message.read message.write","token_type":"Bearer","expires_in":299}}"#
    );
    let (_, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(299));

    // Without `expires_in`, the JWT's exp − iat decides, whatever type `scope` has.
    let body = format!(r#"{{"access_token":"{token}","token_type":"Bearer"}}"#);
    let (_, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(299));

    let error = error_from(Fault::respond(
        401,
        &[JSON, ("www-authenticate", "Basic")],
        r#"{"error":"invalid_client"}"#,
    ))
    .await;
    assert_rejected(&error, OAuthErrorCode::InvalidClient);
    assert!(
        error.report().to_string().contains("ClientAuth::Basic"),
        "{error}"
    );
}

/// eBay, application access tokens: characters outside RFC 6750's `b64token` (`^`, `#`),
/// and a `token_type` that is not `Bearer` although the token is sent as one.
/// https://developer.ebay.com/api-docs/static/oauth-client-credentials-grant.html
#[tokio::test(start_paused = true)]
async fn ebay() {
    let token = "v^1.1#i^1#p^1#r^0#I^3#f^0#t^H4sIAAAAAAAAAOVYa2wUVRT+Zmq7==";
    let body = format!(
        r#"{{"access_token":"{token}","expires_in":7200,"token_type":"Application Access Token"}}"#
    );
    let (header, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(header, format!("Bearer {token}"));
    assert_eq!(lifetime, Duration::from_secs(7200));

    let error = error_from(Fault::respond(
        401,
        &[JSON],
        r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
    ))
    .await;
    assert_rejected(&error, OAuthErrorCode::InvalidClient);
}

/// Salesforce: `!` in the token, no `expires_in` and an opaque token (the configured
/// default lifetime decides), `issued_at` in milliseconds as a string.
/// https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_client_credentials_flow.htm
#[tokio::test(start_paused = true)]
async fn salesforce() {
    let token = "00D5g000004XXXX!AQ4AQMabc.def_ghi";
    let body = format!(
        r#"{{"access_token":"{token}","signature":"c2lnbmF0dXJl=","scope":"api","instance_url":"https://example.my.salesforce.com","id":"https://login.salesforce.com/id/00D5g000004XXXXEAA/0055g00000AbCdEAAV","token_type":"Bearer","issued_at":"1700000000000"}}"#
    );
    let (header, lifetime) = token_from(Fault::respond(200, &[JSON], body.clone()))
        .await
        .unwrap();
    assert_eq!(header, format!("Bearer {token}"));
    assert_eq!(lifetime, Duration::from_secs(600), "the configured default");

    let error = error_from(Fault::respond(
        400,
        &[JSON],
        r#"{"error":"invalid_grant","error_description":"no client credentials user enabled"}"#,
    ))
    .await;
    assert_rejected(&error, OAuthErrorCode::InvalidGrant);
    assert!(
        error
            .report()
            .to_string()
            .contains("no client credentials user"),
        "{error}"
    );
}
