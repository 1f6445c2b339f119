//! What a session is sent: a ServerToAgent, or one carrying a remote config
//! whose AgentRemoteConfig was encoded once for every session it goes to.
//!
//! Protobuf fields concatenate, so such a message is the session's own
//! fields (instance_uid, capabilities, flags, ...) encoded per session,
//! followed by the shared bytes of field 3 (`remote_config`) that `Desired`
//! encodes once per distinct render. The gRPC endpoint's generated server
//! sends this type as its stream item (build.rs maps
//! `opamp.proto.ServerToAgent` to it there), the WebSocket transport frames
//! it the same way, and OpAMP HTTP answers a poll with its bytes; decoding
//! reads an ordinary ServerToAgent.
//!
//! It must not decide what is pushed (`push`).

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::desired::Desired;
use crate::proto::opamp_msgs as pb;

/// Field numbers of ServerToAgent (opamp.proto).
const INSTANCE_UID: u32 = 1;
const CAPABILITIES: u32 = 7;

/// Queued boxed (`Box<Outbound>`): a tokio channel allocates its slots in
/// blocks of 32 up front, so an unboxed ServerToAgent per slot would cost
/// every idle session tens of KiB. Since it is always queued boxed, the
/// message variant stays inline (one allocation per message, not two).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Message(pb::ServerToAgent),
    /// `ServerToAgent { instance_uid, capabilities, remote_config }` with
    /// the remote config's bytes shared.
    Config {
        instance_uid: [u8; 16],
        capabilities: u64,
        desired: Arc<Desired>,
    },
    /// A reply (its `remote_config` unset) that also offers `desired`, with
    /// the remote config's bytes shared.
    Reply {
        msg: pb::ServerToAgent,
        desired: Arc<Desired>,
    },
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound::Message(pb::ServerToAgent::default())
    }
}

impl From<pb::ServerToAgent> for Box<Outbound> {
    fn from(m: pb::ServerToAgent) -> Self {
        Box::new(Outbound::Message(m))
    }
}

impl From<Box<pb::ServerToAgent>> for Box<Outbound> {
    fn from(m: Box<pb::ServerToAgent>) -> Self {
        Box::new(Outbound::Message(*m))
    }
}

impl Outbound {
    /// `msg`, offering `desired` when there is one.
    pub fn reply(msg: pb::ServerToAgent, desired: Option<Arc<Desired>>) -> Self {
        match desired {
            Some(desired) => Outbound::Reply { msg, desired },
            None => Outbound::Message(msg),
        }
    }

    /// The same message as an ordinary ServerToAgent.
    pub fn into_message(self) -> pb::ServerToAgent {
        match self {
            Outbound::Message(m) => m,
            Outbound::Config {
                instance_uid,
                capabilities,
                desired,
            } => pb::ServerToAgent {
                instance_uid: instance_uid.to_vec(),
                capabilities,
                remote_config: Some(desired.to_proto()),
                ..Default::default()
            },
            Outbound::Reply { mut msg, desired } => {
                msg.remote_config = Some(desired.to_proto());
                msg
            }
        }
    }
}

impl Message for Outbound {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Outbound::Message(m) => m.encode_raw(buf),
            Outbound::Config {
                instance_uid,
                capabilities,
                desired,
            } => {
                // Field order as prost writes it (1, then 3, then 7) is not
                // required: a parser accepts fields in any order.
                encoding::encode_key(INSTANCE_UID, WireType::LengthDelimited, buf);
                encoding::encode_varint(instance_uid.len() as u64, buf);
                buf.put_slice(instance_uid);
                if *capabilities != 0 {
                    encoding::uint64::encode(CAPABILITIES, capabilities, buf);
                }
                buf.put_slice(desired.remote_config_field());
            }
            Outbound::Reply { msg, desired } => {
                msg.encode_raw(buf);
                buf.put_slice(desired.remote_config_field());
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if !matches!(self, Outbound::Message(_)) {
            *self = Outbound::Message(std::mem::take(self).into_message());
        }
        match self {
            Outbound::Message(m) => m.merge_field(tag, wire_type, buf, ctx),
            Outbound::Config { .. } | Outbound::Reply { .. } => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Outbound::Message(m) => m.encoded_len(),
            Outbound::Config {
                instance_uid,
                capabilities,
                desired,
            } => {
                encoding::key_len(INSTANCE_UID)
                    + 1
                    + instance_uid.len()
                    + if *capabilities != 0 {
                        encoding::uint64::encoded_len(CAPABILITIES, capabilities)
                    } else {
                        0
                    }
                    + desired.remote_config_field().len()
            }
            Outbound::Reply { msg, desired } => msg.encoded_len() + desired.remote_config_field().len(),
        }
    }

    fn clear(&mut self) {
        *self = Outbound::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared-bytes push decodes to exactly the message built the usual
    /// way, and its encoded length is the one tonic frames it with.
    #[test]
    fn a_shared_config_push_is_the_same_message_on_the_wire() {
        let desired = Arc::new(Desired::from_files(
            [(
                "collector.yaml".to_string(),
                (b"receivers: {otlp: {}}".to_vec(), "application/yaml".to_string()),
            )]
            .into(),
            "test".into(),
        ));
        let push = Outbound::Config {
            instance_uid: [7; 16],
            capabilities: 0x27,
            desired: desired.clone(),
        };
        let bytes = push.encode_to_vec();
        assert_eq!(bytes.len(), push.encoded_len());
        let decoded = pb::ServerToAgent::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, push.clone().into_message());
        assert_eq!(decoded.remote_config.unwrap().config_hash, desired.hash);
        // Decoding into an Outbound reads an ordinary message.
        let mut back = Outbound::default();
        back.merge(bytes.as_slice()).unwrap();
        assert_eq!(back.into_message(), push.into_message());

        // A reply with other fields set, offering the same config.
        let reply = Outbound::reply(
            pb::ServerToAgent {
                instance_uid: vec![7; 16],
                capabilities: 0x27,
                flags: 1,
                agent_identification: Some(pb::AgentIdentification {
                    new_instance_uid: vec![9; 16],
                }),
                ..Default::default()
            },
            Some(desired.clone()),
        );
        let bytes = reply.encode_to_vec();
        assert_eq!(bytes.len(), reply.encoded_len());
        let decoded = pb::ServerToAgent::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, reply.clone().into_message());
        assert_eq!(decoded.remote_config.unwrap().config_hash, desired.hash);
        assert_eq!(
            (decoded.flags, decoded.agent_identification.unwrap().new_instance_uid),
            (1, vec![9; 16])
        );
    }
}
