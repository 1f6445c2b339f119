//! OpAMP over WebSocket (`GET /v1/opamp` with an upgrade): binary frames,
//! each a varint header (0) followed by a protobuf message, both ways.

use std::future::Future;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use tokio::sync::mpsc;

use super::{bearer_token, Attempt, OpampState};
use crate::api::error::ApiError;
use crate::api::ratelimit::PeerAddr;
use crate::fleet::outbound::Outbound;
use crate::fleet::{Conn, Fleet, Presented, Transport};
use crate::proto::opamp_msgs as pb;

/// Each connection's read buffer. tungstenite's default, 128 KiB, is zeroed
/// before every read and so stays resident: measured with 3,000 collectors
/// over WebSocket, the server took 438 MiB against 139 MiB over gRPC. OpAMP
/// messages are small, and a larger one (an effective config) is read in
/// several reads into a buffer grown to fit its frame.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// OpAMP WebSocket transport (authenticated before the upgrade).
#[utoipa::path(get, path = "/v1/opamp", tag = "opamp",
    params(("Authorization" = String, Header, description = "Bearer <collector credential>")),
    responses((status = 101, description = "WebSocket upgrade; frames are a varint header 0 + opamp.proto messages"),
        (status = 400, content_type = "text/plain", description = "not a WebSocket upgrade request (a header is missing or wrong)"),
        (status = 401, description = "unknown or revoked credential"), (status = 403, description = "refused (expired or revoked enrollment token)"),
        (status = 426, content_type = "text/plain", description = "the connection cannot be upgraded"),
        (status = 429, description = "too many refused first contacts from this address; see `Retry-After`", headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "storage unavailable; try again")))]
pub async fn upgrade(
    State(s): State<OpampState>,
    peer: PeerAddr,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Refused before the upgrade, so agents see HTTP 429 + Retry-After.
    let attempt = match s.attempt(peer, &headers) {
        Ok(a) => a,
        Err(limited) => return limited.into_response(),
    };
    let bearer = bearer_token(&headers);
    let auth = match attempt.outcome(s.fleet.authenticate(bearer).await) {
        Ok(a) => a,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let fleet = s.fleet.clone();
    // axum spawns the session; tracking it lets `run` end it and wait.
    let tasks = s.fleet.tasks().clone();
    ws.max_message_size(s.max_request_bytes)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| tasks.track(serve(socket, fleet, auth, attempt)))
}

/// Split the OpAMP WebSocket header off a frame.
fn unframe(data: &[u8]) -> Option<&[u8]> {
    let mut buf = data;
    let header = prost::encoding::decode_varint(&mut buf).ok()?;
    (header == 0).then_some(buf)
}

pub fn frame(msg: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.encoded_len() + 1);
    prost::encoding::encode_varint(0, &mut out);
    msg.encode_raw(&mut out);
    out
}

/// The next AgentToServer on the socket (`None`: closed or malformed).
async fn next_message(socket: &mut WebSocket) -> Option<pb::AgentToServer> {
    loop {
        match socket.recv().await? {
            Ok(WsMessage::Binary(data)) => return unframe(&data).and_then(|b| pb::AgentToServer::decode(b).ok()),
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// Admit the agent (on the enrollment-token path by the uid of its first
/// message, which it must send first) and open its session; `None` when it
/// was refused (the refusal is sent) or went away.
async fn open(
    socket: &mut WebSocket,
    fleet: &Fleet,
    presented: Presented,
    attempt: Attempt,
) -> Option<(Conn, mpsc::Receiver<Box<Outbound>>)> {
    let mut first = None;
    let auth = match presented {
        Presented::Collector(auth) => auth,
        pending => {
            let msg = next_message(socket).await?;
            match attempt.outcome(fleet.admit(pending, &msg).await) {
                Ok(auth) => {
                    first = Some(msg);
                    auth
                }
                Err(e) => {
                    let refusal = ApiError::from(e);
                    // The server's own trouble: the agent should come back.
                    let kind = if refusal.status() == StatusCode::SERVICE_UNAVAILABLE {
                        pb::ServerErrorResponseType::Unavailable
                    } else {
                        pb::ServerErrorResponseType::BadRequest
                    };
                    let message = tonic::Status::from(refusal).message().to_string();
                    let refusal = crate::fleet::session::refusal(msg.instance_uid, kind, message);
                    let _ = socket.send(WsMessage::Binary(frame(&refusal).into())).await;
                    let _ = socket.send(WsMessage::Close(None)).await;
                    return None;
                }
            }
        }
    };
    let (conn, rx) = match fleet.open_stream(auth, Transport::WebSocket).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "Could not open a WebSocket session.");
            return None;
        }
    };
    if let Some(msg) = first {
        if fleet.handle_stream(&conn, msg).await.is_err() {
            fleet.close(&conn);
            return None;
        }
    }
    Some((conn, rx))
}

#[allow(clippy::manual_async_fn)] // the size, see above
fn serve(
    mut socket: WebSocket,
    fleet: Fleet,
    presented: Presented,
    attempt: Attempt,
) -> impl Future<Output = ()> + Send + 'static {
    // An `async` block, not an `async fn`: the fn would keep a second copy
    // of its arguments (the socket is the largest) for the whole session.
    async move {
        // Boxed: admission, the store reads of opening the session and the
        // first message run once, and unboxed their deepest await would size
        // this task, which lives as long as the collector is connected.
        let Some((conn, mut rx)) = Box::pin(open(&mut socket, &fleet, presented, attempt)).await else {
            return;
        };
        loop {
            tokio::select! {
                incoming = socket.recv() => {
                    let data = match incoming {
                        Some(Ok(WsMessage::Binary(data))) => data,
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                        Some(Ok(WsMessage::Text(_))) => {
                            tracing::debug!(collector_id = %conn.collector_id, "Text frame on an OpAMP WebSocket; closing.");
                            break;
                        }
                        _ => break,
                    };
                    let Some(msg) = unframe(&data).and_then(|b| pb::AgentToServer::decode(b).ok()) else {
                        tracing::debug!(collector_id = %conn.collector_id, "Malformed OpAMP WebSocket frame; closing.");
                        break;
                    };
                    // Boxed, as on gRPC: the idle task stays small.
                    if Box::pin(fleet.handle_stream(&conn, msg)).await.is_err() {
                        break;
                    }
                }
                outgoing = rx.recv() => {
                    match outgoing {
                        Some(msg) => {
                            if socket.send(WsMessage::Binary(frame(&msg).into())).await.is_err() {
                                break;
                            }
                        }
                        // The fleet closed the session (replaced, timed out, revoked).
                        None => break,
                    }
                }
            }
        }
        let _ = socket.send(WsMessage::Close(None)).await;
        fleet.close(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every collector connected over WebSocket holds one of these tasks:
    /// it stays small whatever opening the session awaits (928 bytes;
    /// 16,936 when the opening was not boxed and the `async fn` kept a
    /// second copy of the socket).
    #[test]
    fn an_idle_websocket_session_task_is_small() {
        fn size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = size(serve);
        assert!(size <= 1536, "{size} bytes per collector connected over WebSocket");
    }

    #[test]
    fn frames_round_trip_and_foreign_headers_are_refused() {
        let msg = pb::AgentToServer {
            sequence_num: 7,
            ..Default::default()
        };
        let framed = frame(&msg);
        assert_eq!(framed[0], 0);
        assert_eq!(pb::AgentToServer::decode(unframe(&framed).unwrap()).unwrap(), msg);
        assert!(unframe(&[1, 2, 3]).is_none());
    }
}
