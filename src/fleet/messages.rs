//! One AgentToServer in, the answer out: streaming sessions (gRPC,
//! WebSocket) answer on their push queue, HTTP polls in the response. The
//! session rules themselves are in `session`; this file threads a message
//! through them, hands changed status to the writer and attaches commands.
//!
//! It must not decide where configs come from (`resolve`) or how sessions
//! are kept (`registry`).

use tokio::time::Instant;

use super::auth::Presented;
use super::registry::{Conn, Push};
use super::{Fleet, FleetError, Transport};
use crate::proto::opamp_msgs as pb;

impl Fleet {
    /// Handle one message of a streaming session; the answer goes out on the
    /// session's stream.
    pub async fn handle_stream(&self, conn: &Conn, msg: pb::AgentToServer) -> Result<(), FleetError> {
        let uid = msg.instance_uid.clone();
        let (reply, push, disconnect) = match self.process(conn, msg).await {
            Ok(x) => x,
            Err(FleetError::Session(e)) => {
                // Tell the agent why before closing (OpAMP error response).
                if let Some((_, Some(push))) = self.inner.sessions.get(&conn.collector_id) {
                    let refusal = pb::ServerToAgent {
                        instance_uid: uid,
                        error_response: Some(pb::ServerErrorResponse {
                            r#type: pb::ServerErrorResponseType::BadRequest as i32,
                            error_message: e.to_string(),
                            details: None,
                        }),
                        ..Default::default()
                    };
                    let _ = push.send(refusal).await;
                }
                self.close(conn);
                return Err(FleetError::Session(e));
            }
            Err(e) => return Err(e),
        };
        if let (Some(push), Some(reply)) = (push, reply) {
            // The agent paces its own messages, so waiting for room here
            // only slows down that agent.
            if push.send(reply).await.is_err() {
                return Err(FleetError::Closed);
            }
        }
        if disconnect {
            self.close(conn);
        }
        Ok(())
    }

    /// Handle one OpAMP HTTP request: the session lives across requests and
    /// ends by liveness timeout or agent_disconnect. Every request of an
    /// agent on the enrollment-token path resumes it by its uid.
    pub async fn handle_poll(
        &self,
        presented: Presented,
        msg: pb::AgentToServer,
    ) -> Result<pb::ServerToAgent, FleetError> {
        let auth = self.admit(presented, &msg).await?;
        let existing = self
            .inner
            .sessions
            .lock()
            .get(&auth.collector.key)
            .filter(|e| e.transport == Transport::Http)
            .map(|e| e.epoch);
        let conn = match existing {
            Some(epoch) => Conn {
                collector_id: auth.collector.key.clone(),
                epoch,
            },
            None => self.open(auth, Transport::Http, None).await?,
        };
        let (reply, _, disconnect) = self.process(&conn, msg).await?;
        if disconnect {
            self.close(&conn);
        }
        Ok(reply.unwrap_or_default())
    }

    async fn process(
        &self,
        conn: &Conn,
        msg: pb::AgentToServer,
    ) -> Result<(Option<pb::ServerToAgent>, Push, bool), FleetError> {
        let (ctx, push) = {
            let mut sessions = self.inner.sessions.lock();
            let entry = sessions
                .get_mut(&conn.collector_id)
                .filter(|e| e.epoch == conn.epoch)
                .ok_or(FleetError::Closed)?;
            entry.last_seen = Instant::now();
            (entry.ctx.clone(), entry.push.clone())
        };
        let now = self.inner.domain.clock().now();
        let mut ctx = ctx.lock().await;
        let desired = ctx.desired.clone();
        let processed = ctx.agent.process(msg, desired.as_deref(), now)?;
        if processed.status_changed {
            self.inner.writer.put(ctx.agent.status.clone());
        }
        let mut reply = processed.reply;
        reply.connection_settings = self.connection_offer(&mut ctx).await;
        if let Some(command) = self.take_command(&conn.collector_id, &mut ctx).await {
            // A command travels alone (OpAMP): after the reply on a stream,
            // instead of it over HTTP (the rest follows on the next poll).
            match &push {
                Some(p) => {
                    let _ = p.try_send(command);
                }
                None => reply = command,
            }
        }
        Ok((Some(reply), push, processed.disconnect))
    }
}
