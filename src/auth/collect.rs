//! Collecting request bodies, so that requests with streaming bodies can be replayed after a
//! refused token.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

/// Collects request bodies (up to a size limit) into [`Full<Bytes>`], so that requests with
/// streaming bodies — tonic's, or hyper's `Incoming` in a proxy — can be replayed after a
/// refused token. Put it outside the replay:
///
/// ```no_run
/// # use entur_auth::{EnturAuthLayer, TokenSource, replay::CollectBodyLayer};
/// # fn stack<S>(source: TokenSource, channel: S) {
/// let api = tower::ServiceBuilder::new()
///     .layer(CollectBodyLayer::new(64 * 1024))
///     .layer(EnturAuthLayer::new(source).with_replay())
///     // tonic: .map_request(|r: http::Request<http_body_util::Full<bytes::Bytes>>| r.map(tonic::body::Body::new))
///     .service(channel);
/// # let _ = api; }
/// ```
///
/// Without it, a refused streaming request still drops the token (the next request carries
/// a new one); only the replay of that one request is lost.
#[derive(Clone, Copy, Debug)]
pub struct CollectBodyLayer {
    max_bytes: usize,
}

impl CollectBodyLayer {
    /// Collects bodies of at most `max_bytes`; a larger body fails the request with an error
    /// saying so.
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl<S> tower_layer::Layer<S> for CollectBodyLayer {
    type Service = CollectBody<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CollectBody {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// Collects request bodies into [`Full<Bytes>`]; see [`CollectBodyLayer`].
#[derive(Clone, Debug)]
pub struct CollectBody<S> {
    inner: S,
    max_bytes: usize,
}

impl<S> CollectBody<S> {
    inner_accessors!(inner: S);
}

impl<S, B, ResB> tower_service::Service<Request<B>> for CollectBody<S>
where
    S: tower_service::Service<Request<Full<Bytes>>, Response = Response<ResB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Into<crate::BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<crate::BoxError>,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = crate::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, crate::BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        use http_body_util::BodyExt;
        // The ready service goes into the future; this one keeps a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max_bytes;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = http_body_util::Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| -> crate::BoxError {
                    if e.is::<http_body_util::LengthLimitError>() {
                        format!("request body larger than the {max}-byte replay buffer: raise CollectBodyLayer's limit").into()
                    } else {
                        e
                    }
                })?
                .to_bytes();
            inner
                .call(Request::from_parts(parts, Full::new(bytes)))
                .await
                .map_err(Into::into)
        })
    }
}
