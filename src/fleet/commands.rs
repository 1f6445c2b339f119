//! Delivering queued commands to the sessions held here. Only `restart`
//! exists in OpAMP; queued duplicates collapse into one.
//!
//! It must not queue commands (the API does, through the domain) nor decide
//! when a session learns of one (`feed`, `messages`).

use super::registry::Ctx;
use super::session;
use super::Fleet;
use crate::proto::opamp_msgs as pb;

impl Fleet {
    /// The pending command for a session, if it has one it can take.
    pub(super) async fn take_command(&self, collector_id: &str, ctx: &mut Ctx) -> Option<pb::ServerToAgent> {
        if !ctx.commands_pending || !ctx.agent.accepts_restart() {
            return None;
        }
        ctx.commands_pending = false;
        let commands = match self.inner.domain.take_commands(collector_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Could not take pending commands.");
                return None;
            }
        };
        if !commands.iter().any(|c| c.kind == "restart") {
            return None;
        }
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
        Some(pb::ServerToAgent {
            instance_uid: ctx.agent.uid.to_vec(),
            capabilities: session::SERVER_CAPABILITIES,
            command: Some(pb::ServerToAgentCommand {
                r#type: pb::CommandType::Restart as i32,
            }),
            ..Default::default()
        })
    }
}
