//! One AgentToServer in, the answer out: streaming sessions (gRPC,
//! WebSocket) answer on their push queue, HTTP polls in the response. The
//! session rules themselves are in `session`; this file threads a message
//! through them, hands changed status to the writer and attaches commands.
//!
//! It must not decide where configs come from (`resolve`) or how sessions
//! are kept (`registry`).

use tokio::time::Instant;

use super::auth::Presented;
use super::commands::Outgoing;
use super::outbound::Outbound;
use super::registry::{Conn, Push, SharedCtx};
use super::{session, Fleet, FleetError, Transport};
use crate::domain::DomainError;
use crate::proto::opamp_msgs as pb;

impl Fleet {
    /// Handle one message of a streaming session; the answer goes out on the
    /// session's stream.
    pub async fn handle_stream(&self, conn: &Conn, msg: pb::AgentToServer) -> Result<(), FleetError> {
        let uid = msg.instance_uid.clone();
        let out = match self.process(conn, msg).await {
            Ok(x) => x,
            Err(FleetError::Session(e)) => {
                // Tell the agent why before closing (OpAMP error response).
                if let Some((_, Some(push))) = self.inner.sessions.get(&conn.collector_id) {
                    let refusal = session::refusal(uid, pb::ServerErrorResponseType::BadRequest, e.to_string());
                    let _ = push.send(Box::new(refusal)).await;
                }
                self.close(conn);
                return Err(FleetError::Session(e));
            }
            Err(e) => return Err(e),
        };
        if let Some(push) = &out.push {
            // The agent paces its own messages, so waiting for room here
            // only slows down that agent.
            if push.send(Box::new(out.reply)).await.is_err() {
                return Err(FleetError::Closed);
            }
            // A command travels alone (OpAMP), after the reply; it leaves
            // the store's queue only once it is on the stream.
            if let Some(command) = out.command {
                if push.send(Box::new(command.msg)).await.is_err() {
                    return Err(FleetError::Closed);
                }
                self.delivered(&conn.collector_id, &out.ctx, command.ids).await;
            }
        }
        if out.disconnect {
            self.close(conn);
        }
        Ok(())
    }

    /// Handle one OpAMP HTTP request: the session lives across requests and
    /// ends by liveness timeout or agent_disconnect. Every request of an
    /// agent on the enrollment-token path resumes it by its uid.
    ///
    /// On the token path a poll without a usable uid (empty or malformed)
    /// is only told a uid to adopt (`AgentIdentification`): nothing is
    /// enrolled, no use counted, no session opened. Polls share no
    /// connection, so enrolling the uid picked for one poll would enroll a
    /// new collector on every poll of an agent that ignores it; an agent
    /// that adopts it is enrolled on its next poll. (Streams enroll on the
    /// first message: the connection is the agent.)
    ///
    /// The answer is an `Outbound`: a config offered in it is the shared,
    /// once-encoded bytes every session of that config gets.
    pub async fn handle_poll(&self, presented: Presented, msg: pb::AgentToServer) -> Result<Outbound, FleetError> {
        if presented.is_enrollment_token() && session::valid_uid(&msg).is_none() {
            return Ok(Outbound::Message(pb::ServerToAgent {
                instance_uid: msg.instance_uid,
                capabilities: session::SERVER_CAPABILITIES,
                agent_identification: Some(pb::AgentIdentification {
                    new_instance_uid: uuid::Uuid::now_v7().as_bytes().to_vec(),
                }),
                ..Default::default()
            }));
        }
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
            None => {
                // Refuse a foreign uid before the session opens: a refused
                // agent is never shown connected.
                let uid = *uuid::Uuid::parse_str(&auth.collector.key)
                    .map_err(|_| DomainError::Refused("the collector id is not a UUID".into()))?
                    .as_bytes();
                session::check_uid(&auth.collector.key, &uid, auth.uid_assigned, &msg)?;
                self.open(auth, Transport::Http, None).await?
            }
        };
        let out = self.process(&conn, msg).await?;
        if out.disconnect {
            self.close(&conn);
        }
        // A command travels alone (OpAMP): instead of the reply, whose
        // content follows on the next poll.
        match out.command {
            Some(command) => {
                self.delivered(&conn.collector_id, &out.ctx, command.ids).await;
                Ok(Outbound::Message(command.msg))
            }
            None => Ok(out.reply),
        }
    }

    async fn process(&self, conn: &Conn, msg: pb::AgentToServer) -> Result<Answer, FleetError> {
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
        let mut g = ctx.lock().await;
        // No offer here: whether to offer the desired config is decided
        // below, after the message is applied (as `process` would), so that
        // the offer can carry the shared encoded bytes instead of a copy.
        let c = &mut *g;
        let processed = c.agent.process_offering(msg, None, c.desired.as_deref(), now)?;
        if processed.status_changed {
            let mut status = g.agent.status.clone();
            match (processed.effective_files, status.effective_config.as_mut()) {
                (Some(files), Some(e)) => {
                    e.files = files;
                    self.inner.writer.put(status);
                }
                _ => self.inner.writer.put_keeping_bodies(status),
            }
        } else {
            // Nothing to store, but the fleet list shows when it was seen.
            self.inner.index.seen(&conn.collector_id, now);
        }
        let mut reply = processed.reply;
        reply.connection_settings = self.connection_offer(&mut g).await;
        let command = self.command_for(&conn.collector_id, &mut g).await;
        // A poll answered with a command gets no reply (a command travels
        // alone): the config is offered on the next poll, not noted as sent.
        let offer = match (&command, &push) {
            (Some(_), None) => None,
            _ => g.desired.clone().filter(|d| g.agent.should_offer(d)),
        };
        drop(g);
        Ok(Answer {
            reply: Outbound::reply(reply, offer),
            command,
            disconnect: processed.disconnect,
            push,
            ctx,
        })
    }
}

/// What one message leads to.
struct Answer {
    reply: Outbound,
    /// A command to send after the reply.
    command: Option<Outgoing>,
    /// The agent said goodbye.
    disconnect: bool,
    push: Push,
    ctx: SharedCtx,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::super::auth::Authenticated;
    use super::super::session::caps;
    use super::super::testing;
    use super::*;
    use crate::domain::{Actor, ConfigAssignment, Role, DEFAULT_ASSIGNMENT};
    use crate::storage::{Expect, Op};

    /// An OpAMP HTTP poll answered with a command (which travels alone)
    /// gets the desired config on its next poll, as the shared encoded
    /// bytes (before, the config counted as sent with the command's answer
    /// and never went out).
    #[tokio::test]
    async fn a_poll_answered_with_a_command_gets_the_config_on_the_next_poll() {
        let f = testing::fleet().await;
        let default: ConfigAssignment = serde_json::from_value(serde_json::json!({
            "files": { "c.yaml": { "body": "receivers: {}" } },
            "updated_at": crate::clock::Timestamp(0),
            "updated_by": "t",
        }))
        .unwrap();
        f.store
            .commit(vec![Op::put(DEFAULT_ASSIGNMENT, &default, Expect::Absent).unwrap()])
            .await
            .unwrap();
        let auth = testing::collector(&f.store).await;
        let id = auth.collector.key.clone();
        let admin = Actor::User {
            name: "admin".into(),
            role: Role::Admin,
        };
        f.fleet.domain().queue_command(&admin, &id, "restart").await.unwrap();
        let uid = uuid::Uuid::parse_str(&id).unwrap().as_bytes().to_vec();
        let poll = |seq| pb::AgentToServer {
            instance_uid: uid.clone(),
            sequence_num: seq,
            capabilities: caps::ACCEPTS_RESTART_COMMAND | caps::ACCEPTS_REMOTE_CONFIG | caps::REPORTS_REMOTE_CONFIG,
            agent_description: Some(Default::default()),
            remote_config_status: Some(Default::default()),
            ..Default::default()
        };
        let again = |a: &Authenticated| {
            Presented::Collector(Authenticated {
                collector: a.collector.clone(),
                credential_id: String::new(),
                uid_assigned: false,
                enrollment_token: None,
            })
        };

        let first = f.fleet.handle_poll(again(&auth), poll(1)).await.unwrap().into_message();
        assert!(first.command.is_some(), "the restart is answered first");
        assert!(first.remote_config.is_none(), "a command travels alone");

        let second = f.fleet.handle_poll(again(&auth), poll(2)).await.unwrap();
        assert!(
            matches!(second, Outbound::Reply { .. }),
            "the offer shares the encoded config"
        );
        let decoded = pb::ServerToAgent::decode(second.encode_to_vec().as_slice()).unwrap();
        let offered = decoded.remote_config.expect("the config is offered on the next poll");
        assert_eq!(offered.config.unwrap().config_map["c.yaml"].body, b"receivers: {}");
        assert!(decoded.command.is_none());
    }
}
