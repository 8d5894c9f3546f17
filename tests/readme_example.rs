//! The example "Testing your own code with the embedded server" of docs/testing.md (the guide
//! the README links to), run as a user's test runs; `the_readme_shows_this_example` keeps
//! docs/testing.md and this file the same.

// README example: begin
use std::time::Duration;

use bytes::Bytes;
use entur_auth::{BoxError, EnturAuthLayer, TokenSource};
use entur_auth_test::{ApiFault, Fault, TestServer, TokenState};
use http::StatusCode;
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Your code: asks the API for departures through the authenticated client.
async fn departures<S, B>(client: &mut S, api_url: &str) -> Result<StatusCode, BoxError>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>, Error = BoxError>,
{
    let request = http::Request::get(format!("{api_url}/departures")).body(Full::default())?;
    Ok(client.ready().await?.call(request).await?.status())
}

#[tokio::test(start_paused = true)]
async fn departures_survive_refused_tokens_and_outages() -> Result<(), BoxError> {
    let server = TestServer::start().await?;
    // Your stack, pointed at the server. `server.endpoint()` sends the audience, as
    // `TokenEndpoint::entur(..)` does: without it the server refuses, as Entur's does.
    let source = TokenSource::builder(server.endpoint(), server.credentials())
        .allow_http_loopback(true)
        .transport(server.token_transport()) // in-process: no socket, the paused clock rules
        .build()?;
    let mut client = ServiceBuilder::new()
        .layer(EnturAuthLayer::new(source).with_replay())
        .service(server.api_service()); // or a hyper client and `server.api_url()`
    let api = server.api_url();
    assert_eq!(departures(&mut client, &api).await?, StatusCode::OK);

    // The API refuses the token once: a new token, one replay, and your code sees a 200.
    server.push_api_fault(ApiFault::invalid_token());
    assert_eq!(departures(&mut client, &api).await?, StatusCode::OK);

    // The API is overloaded: the 429 is yours to handle.
    server.push_api_fault(ApiFault::too_many_requests(Some(2)));
    assert_eq!(
        departures(&mut client, &api).await?,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Ten seconds later (a token is refused and replaced at most every 5 s), every token is
    // revoked (a key rotation) while the token endpoint is down: your code gets an error (an
    // `entur_auth::Error` saying so), then recovers once the endpoint is back.
    tokio::time::sleep(Duration::from_secs(10)).await;
    server.revoke_all();
    server.set_sticky_fault(Some(Fault::status(StatusCode::SERVICE_UNAVAILABLE)));
    let error = departures(&mut client, &api).await.unwrap_err();
    assert!(
        error.downcast_ref::<entur_auth::Error>().is_some(),
        "{error}"
    );
    server.set_sticky_fault(None);
    tokio::time::sleep(Duration::from_secs(60)).await; // the source retries meanwhile
    assert_eq!(departures(&mut client, &api).await?, StatusCode::OK);

    // What the server saw, in order: which token each request carried, how it was answered.
    let seen: Vec<_> = server
        .api_requests_log()
        .iter()
        .map(|request| (request.status(), request.bearer.as_ref().map(|b| b.state)))
        .collect();
    let (ok, refused) = (Some(StatusCode::OK), Some(StatusCode::UNAUTHORIZED));
    let (valid, revoked) = (Some(TokenState::Valid), Some(TokenState::Revoked));
    assert_eq!(
        seen,
        [
            (ok, valid),
            (refused, valid), // the injected refusal
            (ok, valid),      // its replay, with the new token
            (Some(StatusCode::TOO_MANY_REQUESTS), valid),
            (refused, revoked),
            (ok, valid),
        ]
    );
    let token_requests = server.token_requests_log();
    assert!(token_requests
        .iter()
        .any(|request| request.status() == Some(StatusCode::SERVICE_UNAVAILABLE)));
    for request in &token_requests {
        let body = String::from_utf8_lossy(&request.request.body);
        assert!(
            body.contains(server.audience()),
            "every token request names the audience"
        );
    }
    Ok(())
}
// README example: end

/// The code block under "Testing your own code with the embedded server" in docs/testing.md
/// (the guide the README links to) is the example above, to the byte.
#[test]
fn the_readme_shows_this_example() {
    let readme = include_str!("../docs/testing.md");
    let this = include_str!("readme_example.rs");
    let example = this
        .split_once("// README example: begin\n")
        .and_then(|(_, rest)| rest.split_once("// README example: end\n"))
        .map(|(example, _)| example)
        .expect("the markers");
    let section = readme
        .split_once("## Testing your own code with the embedded server\n")
        .map(|(_, section)| section)
        .expect("the section in docs/testing.md");
    let block = section
        .split_once("```rust,no_run\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .map(|(block, _)| block)
        .expect("a rust,no_run block in the section");
    assert!(
        block == example,
        "docs/testing.md's example differs from tests/readme_example.rs: copy one onto the other"
    );
}
