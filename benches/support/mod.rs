//! What the hot-path benches share: the inner services, the request, a synchronous driver,
//! the hand-rolled `RwLock` + `format!` layer, and a token source with a fresh token.
#![allow(dead_code)]

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use entur_auth::{BoxError, TokenSource};
use entur_auth_test::TestServer;
use http::header::{ACCEPT, AUTHORIZATION, HOST};
use http::{HeaderValue, Request, Response, Uri};
use tokio::sync::RwLock;
use tower::{Layer, Service};

/// A ready service that answers at once with an empty response.
#[derive(Clone, Copy, Debug)]
pub struct Inner;

impl Service<Request<()>> for Inner {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        black_box(&request);
        ready(Ok(Response::new(())))
    }
}

/// Answers with the request's `Authorization` header, to check a stack before measuring it.
#[derive(Clone, Copy, Debug)]
pub struct Echo;

impl Service<Request<()>> for Echo {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let mut response = Response::new(());
        if let Some(value) = request.headers().get(AUTHORIZATION) {
            response.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        ready(Ok(response))
    }
}

/// Parsed once: the benches measure header work, not URI parsing.
pub static URI: LazyLock<Uri> =
    LazyLock::new(|| Uri::from_static("https://api.example.com/journey-planner/v3/graphql"));

/// The same request for every stack and every iteration.
pub fn request() -> Request<()> {
    let mut request = Request::new(());
    *request.uri_mut() = URI.clone();
    let headers = request.headers_mut();
    headers.insert(HOST, HeaderValue::from_static("api.example.com"));
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    request
}

/// A service the benches can send to: any HTTP service taking `Request<()>`, whatever its
/// response body type.
pub trait Responds: Service<Request<()>, Response = Response<<Self as Responds>::Body>> {
    type Body;
}

impl<S, B> Responds for S
where
    S: Service<Request<()>, Response = Response<B>>,
{
    type Body = B;
}

/// One request through `svc`: `poll_ready`, `call`, one poll of the response future.
pub fn send<S>(svc: &mut S, cx: &mut Context<'_>, request: Request<()>) -> S::Response
where
    S: Responds,
    S::Error: fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("the stack is not ready: {other:?}"),
    }
    match pin!(svc.call(request)).poll(cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(error)) => panic!("the stack failed: {error:?}"),
        Poll::Pending => panic!("the response future is pending"),
    }
}

/// The common hand-rolled bearer layer.
#[derive(Clone, Debug)]
pub struct RwLockAuthLayer {
    token: Arc<RwLock<String>>,
}

impl<S> Layer<S> for RwLockAuthLayer {
    type Service = RwLockAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RwLockAuth {
            inner,
            token: self.token.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RwLockAuth<S> {
    inner: S,
    token: Arc<RwLock<String>>,
}

impl<S, B> Service<Request<B>> for RwLockAuth<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let token = self.token.clone();
        Box::pin(async move {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.read().await))?;
            value.set_sensitive(true);
            request.headers_mut().insert(AUTHORIZATION, value);
            inner.call(request).await.map_err(Into::into)
        })
    }
}

/// A token source with a fresh token cached, the same token as a string, and the runtime
/// and server they live on.
pub struct Fixture {
    pub source: TokenSource,
    pub token: String,
    _server: TestServer,
    _runtime: tokio::runtime::Runtime,
}

impl Fixture {
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (server, source) = runtime.block_on(async {
            let server = TestServer::builder()
                .token_lifetime(Duration::from_secs(3600))
                .start()
                .await
                .expect("embedded server");
            let source = server.source_builder().build().expect("token source");
            source.prefetch().await.expect("token");
            (server, source)
        });
        let header = source.current().expect("a cached token");
        let token =
            header.header_value().to_str().expect("ASCII token")["Bearer ".len()..].to_owned();
        Self {
            source,
            token,
            _server: server,
            _runtime: runtime,
        }
    }

    /// A second source configured with a shared store, as a fleet replica would be. The store
    /// (a closed port) is never reached on the hot path; only the refresher would use it.
    #[cfg(feature = "redis")]
    pub fn shared_store_source(&self) -> TokenSource {
        self._runtime.block_on(async {
            let store = entur_auth::store::RedisStore::new("redis://127.0.0.1:1/").expect("url");
            let source = self
                ._server
                .source_builder()
                .shared_store(store)
                .build()
                .expect("token source");
            source.prefetch().await.expect("token");
            source
        })
    }

    pub fn static_header(&self) -> HeaderValue {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", self.token)).expect("valid header value");
        value.set_sensitive(true);
        value
    }

    pub fn rwlock(&self) -> RwLockAuthLayer {
        RwLockAuthLayer {
            token: Arc::new(RwLock::new(self.token.clone())),
        }
    }
}
