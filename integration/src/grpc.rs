//! A gRPC server that checks every call's bearer token with the embedded authorization
//! server: the server side of the tonic examples and tests.
//!
//! Whether a token is valid (issued by the authorization server, not revoked, not expired) is
//! known only to the authorization server, and asking it is asynchronous. A tonic interceptor
//! is synchronous, and filling it from the client's token source would make the server trust
//! the client's own view of its token and test nothing. So the check is a small async tower
//! middleware around the tonic server (`Server::builder().layer(..)`, tonic's way to do async
//! work per call). It asks the embedded server's protected API in-process, with the call's own
//! `Authorization` header, and answers a trailers-only `UNAUTHENTICATED` when that API refuses
//! it. Revocation is then real: `TestServer::revoke_all()`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use entur_auth_test::{ApiService, TestServer};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Empty};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::Status;
use tower::{Layer, Service, ServiceExt};

/// What the server saw of one call, and what it answered.
#[derive(Clone, Debug)]
pub struct Call {
    /// 1 for the first call that reached the server.
    pub number: usize,
    /// The call's `authorization` metadata.
    pub authorization: Option<HeaderValue>,
    /// The call's `et-client-name` metadata.
    pub client_name: Option<HeaderValue>,
    /// The accepted token's `jti`, or why the call was refused.
    pub verdict: Result<String, String>,
}

/// Checks the bearer token of every call with the embedded authorization server; a
/// [`Layer`] for `tonic::transport::Server::builder().layer(..)`.
#[derive(Clone)]
pub struct BearerCheck {
    api: ApiService,
    api_url: Arc<str>,
    calls: Arc<Mutex<Vec<Call>>>,
    refuse_next: Arc<AtomicBool>,
    print: bool,
}

impl BearerCheck {
    /// A check against `server`'s protected API.
    pub fn new(server: &TestServer) -> Self {
        Self {
            api: server.api_service(),
            api_url: server.api_url().into(),
            calls: Arc::default(),
            refuse_next: Arc::default(),
            print: false,
        }
    }

    /// Prints one line per call: who called, and the verdict (for the examples).
    pub fn printing(mut self) -> Self {
        self.print = true;
        self
    }

    /// Every call that reached the server, in order.
    pub fn seen(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The `authorization` metadata of every call that reached the server, in order.
    pub fn authorizations(&self) -> Vec<Option<HeaderValue>> {
        self.seen()
            .into_iter()
            .map(|call| call.authorization)
            .collect()
    }

    /// How many calls reached the server.
    pub fn calls(&self) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Refuses the next call whatever its token, as a server that revoked it would.
    pub fn refuse_next(&self) {
        self.refuse_next.store(true, Ordering::SeqCst);
    }

    /// Serves tonic-health's `Health` service (every service `SERVING`) behind this check on
    /// a new port of 127.0.0.1, in a task of its own.
    pub async fn serve_health(&self) -> std::io::Result<SocketAddr> {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            Server::builder()
                .layer(self.clone())
                .add_service(health)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        Ok(addr)
    }

    /// The `jti` of the call's token if the authorization server accepts it, or why not.
    async fn verdict(&self, headers: &HeaderMap) -> Result<String, String> {
        if self.refuse_next.swap(false, Ordering::SeqCst) {
            return Err("revoked".to_owned());
        }
        let mut ask = http::Request::new(Empty::<Bytes>::new());
        *ask.uri_mut() = format!("{}/grpc-check", self.api_url)
            .parse()
            .map_err(|e| format!("the embedded API's URL: {e}"))?;
        if let Some(value) = headers.get(AUTHORIZATION) {
            ask.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        let answer = match self.api.clone().oneshot(ask).await {
            Ok(answer) => answer,
            Err(never) => match never {},
        };
        let accepted = answer.status() == StatusCode::OK;
        let body = answer.into_body().collect().await.map(|b| b.to_bytes());
        let json: serde_json::Value =
            serde_json::from_slice(&body.unwrap_or_default()).unwrap_or_default();
        let field = |name: &str| json[name].as_str().unwrap_or("?").to_owned();
        if accepted {
            Ok(field("jti"))
        } else {
            Err(field("error_description"))
        }
    }
}

impl<S> Layer<S> for BearerCheck {
    type Service = BearerChecked<S>;

    fn layer(&self, inner: S) -> BearerChecked<S> {
        BearerChecked {
            inner,
            check: self.clone(),
        }
    }
}

/// A service behind a [`BearerCheck`].
#[derive(Clone)]
pub struct BearerChecked<S> {
    inner: S,
    check: BearerCheck,
}

impl<S, B, ResB> Service<http::Request<B>> for BearerChecked<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The ready service goes into the future; this one keeps a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let check = self.check.clone();
        Box::pin(async move {
            let headers = request.headers();
            let verdict = check.verdict(headers).await;
            let call = {
                let mut calls = check.calls.lock().unwrap_or_else(|e| e.into_inner());
                let call = Call {
                    number: calls.len() + 1,
                    authorization: headers.get(AUTHORIZATION).cloned(),
                    client_name: headers.get("et-client-name").cloned(),
                    verdict,
                };
                calls.push(call.clone());
                call
            };
            if check.print {
                let from = call
                    .client_name
                    .as_ref()
                    .and_then(|name| name.to_str().ok())
                    .unwrap_or("-");
                match &call.verdict {
                    Ok(jti) => println!(
                        "  gRPC server: call {} from {from}, token jti {jti}: accepted",
                        call.number
                    ),
                    Err(reason) => println!(
                        "  gRPC server: call {} from {from}: UNAUTHENTICATED ({reason})",
                        call.number
                    ),
                }
            }
            match call.verdict {
                Ok(_) => inner.call(request).await,
                Err(reason) => Ok(Status::unauthenticated(reason).into_http()),
            }
        })
    }
}
