//! Requests from components in the server's own process (the scheduler and the controller
//! manager of `berth server`), handed to the handlers without a network connection.
//!
//! Those components still talk to the API only through a Kubernetes client, as upstream's do;
//! only the transport differs. Over loopback every request and every watch event was encrypted,
//! framed as HTTP/2, sent through TCP and decoded again on both ends: about a fifth of the
//! server's CPU in `berth bench scheduler`, most of it on these components' connections.
//! Handlers run on the API server's runtime, as they would for a connection, so a busy component
//! cannot starve its own requests' handling by sharing threads with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full};

use crate::http::{Body, BodyError, BoxError, Server, handle};
use crate::tls::Identity;

/// A tower service answering requests with the server's handlers, as `identity`.
#[derive(Clone)]
pub struct InProcess {
    server: Arc<Server>,
    identity: Identity,
    user_agent: Option<HeaderValue>,
    runtime: tokio::runtime::Handle,
}

impl InProcess {
    /// Requests are authenticated as `identity` and handled on `runtime` (the API server's).
    /// `user_agent` stands in for a missing User-Agent header: it names the field manager of
    /// writes that give none, as a component's client would.
    pub fn new(server: Arc<Server>, identity: Identity, user_agent: Option<HeaderValue>, runtime: tokio::runtime::Handle) -> Self {
        Self { server, identity, user_agent, runtime }
    }
}

impl<B> tower_service::Service<Request<B>> for InProcess
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        if let Some(agent) = &self.user_agent
            && !parts.headers.contains_key(header::USER_AGENT)
        {
            parts.headers.insert(header::USER_AGENT, agent.clone());
        }
        let (server, identity, runtime) = (self.server.clone(), self.identity.clone(), self.runtime.clone());
        Box::pin(async move {
            // Clients send whole bodies (objects, patches, options); collecting one costs nothing
            // and gives the handlers a body they may share between threads.
            let body = body.collect().await.map_err(Into::into)?.to_bytes();
            let req = Request::from_parts(parts, Full::new(body).map_err(|never| -> BodyError { match never {} }).boxed());
            runtime.spawn(handle(server, req, Some(identity))).await.map_err(|e| -> BoxError { Box::new(e) })
        })
    }
}
