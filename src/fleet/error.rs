//! What can go wrong in the fleet. Mapped to HTTP problem+json and to
//! `tonic::Status` in one place (`crate::api::error`), which keeps storage
//! internals out of what collectors and users see.

use super::session::SessionError;
use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session was replaced by a newer connection, timed out, or the
    /// collector was deregistered or its credential revoked.
    #[error("the session is closed")]
    Closed,
}
