//! `ET-Client-Name` on every stack built from a [`Config`]: the configured name belongs to the
//! token source, so the tower layer, the reqwest middleware, the tonic interceptor and the
//! layer over a tonic `Channel` all send it, each built from the source alone. Each call
//! reaches a server on 127.0.0.1 that records the header it received.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use entur_auth::reqwest::EnturAuthMiddleware;
use entur_auth::tonic::EnturAuthInterceptor;
use entur_auth::{ClientName, Config, EnturAuthLayer, TokenSource, ET_CLIENT_NAME};
use entur_auth_integration::grpc::BearerCheck;
use entur_auth_test::TestServer;
use http_body_util::Full;
use tonic::transport::Endpoint;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const NAME: &str = "acme-every-stack";

/// A source from the configuration a deployment gives: the variables `Config::from_env`
/// reads, pointed at the embedded server.
async fn configured(server: &TestServer) -> TokenSource {
    let vars: HashMap<&str, String> = HashMap::from([
        ("ENTUR_CLIENT_ID", server.client_id().to_owned()),
        ("ENTUR_CLIENT_SECRET", server.client_secret().to_owned()),
        ("ENTUR_TOKEN_URL", server.token_url()),
        ("ENTUR_AUDIENCE", server.audience().to_owned()),
        ("ET_CLIENT_NAME", NAME.to_owned()),
    ]);
    let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let source = config.source_builder().unwrap().build().unwrap();
    source.ready(Duration::from_secs(10)).await.unwrap();
    source
}

/// The `ET-Client-Name` the embedded API saw last.
fn seen_by_api(server: &TestServer) -> Option<String> {
    let seen = server.last_api_request().expect("the API was called");
    assert!(seen.headers.contains_key("authorization"));
    let name = seen.headers.get(ET_CLIENT_NAME)?;
    Some(name.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_tower_layer_sends_the_configured_name() {
    let server = TestServer::start().await.unwrap();
    let source = configured(&server).await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut api = EnturAuthLayer::new(source).layer(http);
    let request = http::Request::get(format!("{}/departures", server.api_url()))
        .body(Full::default())
        .unwrap();
    let response = api.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(seen_by_api(&server).as_deref(), Some(NAME));
}

#[tokio::test]
async fn the_reqwest_middleware_sends_the_configured_name() {
    let server = TestServer::start().await.unwrap();
    let source = configured(&server).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = reqwest_middleware::ClientBuilder::new(http)
        .with(EnturAuthMiddleware::new(source.clone()))
        .build();
    let response = api
        .get(format!("{}/departures", server.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(seen_by_api(&server).as_deref(), Some(NAME));

    // A layer's own name wins over the source's.
    let other = EnturAuthLayer::new(source).client_name(ClientName::new("acme-other").unwrap());
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(EnturAuthMiddleware::from(other))
        .build();
    api.get(format!("{}/departures", server.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(seen_by_api(&server).as_deref(), Some("acme-other"));
}

#[tokio::test]
async fn the_tonic_interceptor_sends_the_configured_name() {
    let server = TestServer::start().await.unwrap();
    let source = configured(&server).await;
    let check = BearerCheck::new(&server);
    let addr = check.serve_health().await.unwrap();
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = EnturAuthInterceptor::new(source);
    let mut client = HealthClient::with_interceptor(channel, auth.clone());
    auth.observe(client.check(HealthCheckRequest::default()).await)
        .unwrap();
    let seen = check.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].verdict.is_ok(), "{:?}", seen[0].verdict);
    assert_eq!(seen[0].client_name.as_ref().unwrap(), NAME);
}

#[tokio::test]
async fn the_layer_over_a_tonic_channel_sends_the_configured_name() {
    let server = TestServer::start().await.unwrap();
    let source = configured(&server).await;
    let check = BearerCheck::new(&server);
    let addr = check.serve_health().await.unwrap();
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let channel = endpoint.connect().await.unwrap();
    let stack = ServiceBuilder::new()
        .layer(EnturAuthLayer::new(source).origin(endpoint.uri().clone()))
        .service(channel);
    let mut client = HealthClient::new(stack);
    client.check(HealthCheckRequest::default()).await.unwrap();
    let seen = check.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].verdict.is_ok(), "{:?}", seen[0].verdict);
    assert_eq!(seen[0].client_name.as_ref().unwrap(), NAME);
}
