//! Delivering queued commands to the sessions held here. Only `restart`
//! exists in OpAMP; queued duplicates collapse into one.
//!
//! A command stays queued in the store until it was delivered: handed to a
//! live stream's send queue, or put into an HTTP poll's response. A full
//! push queue, a closed session or a failed store read leave it queued, and
//! the session's next report (or its next session) delivers it.
//!
//! It must not queue commands (the API does, through the domain) nor decide
//! when a session learns of one (`feed`, `messages`).

use super::registry::{Ctx, SharedCtx};
use super::session;
use super::Fleet;
use crate::proto::opamp_msgs as pb;

/// A command message on its way to a session, and the queued commands it
/// stands for (removed once it is delivered).
pub(super) struct Outgoing {
    pub msg: pb::ServerToAgent,
    pub ids: Vec<String>,
}

impl Fleet {
    /// The command a session should be sent now, if it has one it can take.
    /// Its commands are marked in flight so a concurrent change-feed event
    /// does not send them twice; `delivered` or `undelivered` settles them.
    pub(super) async fn command_for(&self, collector_id: &str, ctx: &mut Ctx) -> Option<Outgoing> {
        if !ctx.commands_pending || !ctx.agent.accepts_restart() {
            return None;
        }
        let commands = match self.inner.domain.pending_commands(collector_id).await {
            Ok(c) => c,
            Err(e) => {
                // Still pending: tried again on the next report.
                tracing::warn!(collector_id, error = %e, "Could not read pending commands.");
                return None;
            }
        };
        ctx.commands_pending = false;
        let ids: Vec<String> = commands
            .iter()
            .map(|c| c.id.clone())
            .filter(|id| !ctx.commands_in_flight.contains(id))
            .collect();
        if ids.is_empty() {
            return None;
        }
        if !commands.iter().any(|c| ids.contains(&c.id) && c.kind == "restart") {
            // Kinds this server cannot send are settled, not kept forever.
            tracing::warn!(collector_id, "Dropped queued commands of a kind OpAMP cannot carry.");
            self.remove_commands(collector_id, &ids).await;
            return None;
        }
        ctx.commands_in_flight.extend(ids.iter().cloned());
        let msg = pb::ServerToAgent {
            instance_uid: ctx.agent.uid.to_vec(),
            capabilities: session::SERVER_CAPABILITIES,
            command: Some(pb::ServerToAgentCommand {
                r#type: pb::CommandType::Restart as i32,
            }),
            ..Default::default()
        };
        Some(Outgoing { msg, ids })
    }

    /// The command went out: remove it from the queue and audit it.
    pub(super) async fn delivered(&self, collector_id: &str, ctx: &SharedCtx, ids: Vec<String>) {
        self.remove_commands(collector_id, &ids).await;
        ctx.lock().await.commands_in_flight.retain(|id| !ids.contains(id));
        self.inner
            .domain
            .audit_only(
                &crate::domain::Actor::System,
                "collector.restart",
                collector_id,
                "delivered",
                serde_json::Value::Null,
            )
            .await;
    }

    /// The command could not go out (push queue full): it stays queued and
    /// is offered again with the session's next report.
    pub(super) fn undelivered(ctx: &mut Ctx, ids: &[String]) {
        ctx.commands_in_flight.retain(|id| !ids.contains(id));
        ctx.commands_pending = true;
    }

    async fn remove_commands(&self, collector_id: &str, ids: &[String]) {
        if let Err(e) = self.inner.domain.commands_delivered(collector_id, ids).await {
            // Delivered but still queued: the collector may get it once more,
            // which for a restart beats losing it.
            tracing::warn!(collector_id, error = %e, "Could not remove delivered commands.");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::session::caps;
    use super::super::testing;
    use super::super::Transport;
    use super::*;
    use crate::domain::{Actor, Role};

    fn report(uid: &[u8], seq: u64) -> pb::AgentToServer {
        pb::AgentToServer {
            instance_uid: uid.to_vec(),
            sequence_num: seq,
            capabilities: caps::ACCEPTS_RESTART_COMMAND,
            ..Default::default()
        }
    }

    /// A restart that meets a full push queue stays queued in the store and
    /// goes out with the collector's next report.
    #[tokio::test]
    async fn a_command_meeting_a_full_push_queue_stays_queued_until_sent() {
        let f = testing::fleet().await;
        let auth = testing::collector(&f.store).await;
        let id = auth.collector.key.clone();
        let uid = *uuid::Uuid::parse_str(&id).unwrap().as_bytes();
        let (conn, mut rx) = f.fleet.open_stream(auth, Transport::Grpc).await.unwrap();
        // The collector stops reading: its replies fill the push queue.
        for seq in 1..=super::super::registry::PUSH_QUEUE as u64 {
            f.fleet.handle_stream(&conn, report(&uid, seq)).await.unwrap();
        }
        let admin = Actor::User {
            name: "admin".into(),
            role: Role::Admin,
        };
        f.fleet.domain().queue_command(&admin, &id, "restart").await.unwrap();

        // Barrier: the change-feed reaction holds the session lock from
        // marking commands pending to giving up on the full queue.
        let (ctx, _) = f.fleet.inner.sessions.get(&id).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !ctx.lock().await.commands_pending {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the command never reached the session"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let queued = f.fleet.domain().pending_commands(&id).await.unwrap();
        assert_eq!(queued.len(), 1, "the undelivered restart was removed from the store");

        // The collector reads again and reports: the restart follows the reply.
        while rx.try_recv().is_ok() {}
        f.fleet.handle_stream(&conn, report(&uid, 17)).await.unwrap();
        let reply = rx.recv().await.unwrap().into_message();
        assert!(reply.command.is_none());
        let command = rx
            .recv()
            .await
            .unwrap()
            .into_message()
            .command
            .expect("the restart was not sent");
        assert_eq!(command.r#type, pb::CommandType::Restart as i32);
        assert!(f.fleet.domain().pending_commands(&id).await.unwrap().is_empty());
    }
}
