//! Collector transports: thin adapters that move OpAMP messages between the
//! wire and `crate::fleet`. gRPC has its own listener; OpAMP over HTTP and
//! WebSocket share `/v1/opamp` on the web listener.

pub mod codec;
pub mod grpc;
pub mod opamp_http;
pub mod opamp_ws;

use crate::domain::DomainError;
use crate::fleet::FleetError;

/// How a refusal looks on each transport.
pub(crate) enum Refusal {
    Unauthenticated(String),
    Forbidden(String),
    BadRequest(String),
    Conflict(String),
    Unavailable(String),
}

impl From<&FleetError> for Refusal {
    fn from(e: &FleetError) -> Self {
        let msg = e.to_string();
        match e {
            FleetError::Domain(DomainError::Unauthenticated(_)) => Refusal::Unauthenticated(msg),
            FleetError::Domain(DomainError::Forbidden(_) | DomainError::Refused(_)) => Refusal::Forbidden(msg),
            FleetError::Domain(DomainError::Invalid { .. } | DomainError::PreconditionRequired) => {
                Refusal::BadRequest(msg)
            }
            FleetError::Domain(DomainError::AlreadyExists { .. } | DomainError::Conflict { .. }) => {
                Refusal::Conflict(msg)
            }
            FleetError::Domain(DomainError::NotFound { .. }) => Refusal::Forbidden(msg),
            FleetError::Session(_) => Refusal::Forbidden(msg),
            FleetError::Domain(DomainError::Storage(_)) | FleetError::Closed => Refusal::Unavailable(msg),
        }
    }
}
