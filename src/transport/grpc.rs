//! The gRPC collector endpoint: unary Enroll and one bidirectional OpAMP
//! stream per collector, on its own listener (optionally TLS).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use axum::http::{HeaderMap, HeaderValue};

use super::FirstContactLimit;
use crate::api::error::ApiError;
use crate::api::ratelimit::ClientAddr;
use crate::config::IpNet;
use crate::domain::EnrollRequest;
use crate::fleet::outbound::Outbound;
use crate::fleet::session::uid_string;
use crate::fleet::{Conn, Fleet, FleetError, Transport};
use crate::proto::opamp_msgs as pb;
use crate::proto::server::collector_service_server::{CollectorService, CollectorServiceServer};
use crate::proto::server::{EnrollRequest as GrpcEnroll, EnrollResponse};

pub struct GrpcService {
    fleet: Fleet,
    first_contact: FirstContactLimit,
}

/// The tonic service, with the message size limit applied.
pub fn service(
    fleet: Fleet,
    max_message_bytes: usize,
    first_contact: FirstContactLimit,
) -> CollectorServiceServer<GrpcService> {
    CollectorServiceServer::new(GrpcService { fleet, first_contact }).max_decoding_message_size(max_message_bytes)
}

fn status(e: FleetError) -> Status {
    ApiError::from(e).into()
}

fn bearer<T>(req: &Request<T>) -> Option<&str> {
    super::bearer(req.metadata().get("authorization")?.to_str().ok()?)
}

/// The client address rate limits count: the TCP peer, or behind a trusted
/// proxy the `x-forwarded-for` metadata it added (as on the web listener).
fn client_addr<T>(req: &Request<T>, trusted: &[IpNet]) -> ClientAddr {
    let mut forwarded = HeaderMap::new();
    for v in req.metadata().get_all("x-forwarded-for").iter() {
        if let Ok(Ok(v)) = v.to_str().map(HeaderValue::from_str) {
            forwarded.append("x-forwarded-for", v);
        }
    }
    ClientAddr::resolve(req.remote_addr().map(|a| a.ip()), &forwarded, trusted)
}

type OutStream = Pin<Box<dyn Stream<Item = Result<Outbound, Status>> + Send>>;

#[tonic::async_trait]
impl CollectorService for GrpcService {
    async fn enroll(&self, req: Request<GrpcEnroll>) -> Result<Response<EnrollResponse>, Status> {
        let attempt = self
            .first_contact
            .enroll(client_addr(&req, &self.first_contact.trusted_proxies))?;
        let r = req.into_inner();
        let instance_uid = (!r.instance_uid.is_empty()).then(|| uid_string(&r.instance_uid));
        let name = (!r.name.is_empty()).then_some(r.name);
        let enrolled = self
            .fleet
            .domain()
            .enroll(EnrollRequest {
                token: r.token,
                instance_uid,
                name,
                labels: r.labels.into_iter().collect(),
            })
            .await
            .map_err(|e| {
                let e = FleetError::Domain(e);
                attempt.refused(&e);
                status(e)
            })?;
        let uid = uuid::Uuid::parse_str(&enrolled.collector_id)
            .map(|u| u.as_bytes().to_vec())
            .unwrap_or_default();
        Ok(Response::new(EnrollResponse {
            instance_uid: uid,
            credential: enrolled.credential,
            labels: enrolled.labels.into_iter().collect(),
        }))
    }

    type SessionStream = OutStream;

    async fn session(&self, req: Request<Streaming<pb::AgentToServer>>) -> Result<Response<OutStream>, Status> {
        // A verified client certificate (mTLS) names the collector too.
        let cert_collector = req
            .peer_certs()
            .and_then(|certs| certs.first().and_then(crate::tls::collector_id_of));
        let attempt = self
            .first_contact
            .admit(bearer(&req), |trusted| client_addr(&req, trusted))?;
        let auth = attempt
            .outcome(self.fleet.authenticate_with_cert(bearer(&req), cert_collector).await)
            .map_err(status)?;
        let mut inbound = req.into_inner();
        // An agent on the enrollment-token path is enrolled (or resumed) by
        // the uid of its first message: read it before opening the session.
        let (auth, first) = if auth.is_enrollment_token() {
            let msg = inbound
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("the stream ended before the first message"))?;
            (
                attempt.outcome(self.fleet.admit(auth, &msg).await).map_err(status)?,
                Some(msg),
            )
        } else {
            (
                self.fleet
                    .admit(auth, &pb::AgentToServer::default())
                    .await
                    .map_err(status)?,
                None,
            )
        };
        let (conn, rx) = self.fleet.open_stream(auth, Transport::Grpc).await.map_err(status)?;
        let fleet = self.fleet.clone();
        let conn = Arc::new(conn);
        if let Some(msg) = first {
            if let Err(e) = fleet.handle_stream(&conn, msg).await {
                fleet.close(&conn);
                return Err(status(e));
            }
        }
        // On the instance's tasks, so `run` ends the stream at a stop.
        self.fleet
            .tasks()
            .spawn("gRPC collector stream", read_stream(fleet, conn, inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|m| Ok(*m)))))
    }
}

/// A collector's messages, each handled in turn, until the collector closes
/// its side, the stream breaks, or the fleet closed the session (replaced,
/// timed out, revoked). Lives as long as the collector is connected, so
/// its size is memory per collector (see the test). An `async` block, not
/// an `async fn`: the fn would keep a second copy of its arguments.
#[allow(clippy::manual_async_fn)] // the size, see above
fn read_stream(
    fleet: Fleet,
    conn: Arc<Conn>,
    mut inbound: Streaming<pb::AgentToServer>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        loop {
            // Not `while let`: its scrutinee (the whole decoded message or
            // error) would stay alive, and sized into this task, across the
            // handler's await below.
            let msg = match inbound.message().await {
                Ok(Some(msg)) => msg,
                _ => break,
            };
            // Boxed: an unboxed message handler (store reads, credential
            // offers, commands) would make every idle session's task as
            // large as that handler's deepest await.
            if let Err(e) = Box::pin(fleet.handle_stream(&conn, msg)).await {
                tracing::debug!(collector_id = %conn.collector_id, error = %e, "gRPC session ended.");
                break;
            }
        }
        fleet.close(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connected collector holds one of these tasks: it stays small
    /// (280 bytes; 904 when a `while let` kept the decoded message alive
    /// across the handler, 528 as an `async fn`), whatever the handler awaits.
    #[test]
    fn an_idle_stream_task_is_small() {
        fn size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = size(read_stream);
        assert!(size <= 512, "{size} bytes per connected gRPC collector");
    }
}
