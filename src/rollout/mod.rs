//! Staged rollouts: a new config commit whose repository has a
//! `rollout.toml` reaches the fleet wave by wave, each wave gated on its
//! collectors applying the config, staying healthy and not failing more
//! exporter sends than before; a failed gate rolls that wave back.
//!
//! - `view`: what this instance knows of the stored rollout (the record
//!   and the snapshots of its commit and baseline), read by
//!   `crate::fleet::resolve` for every collector.
//! - `driver`: the background task `run` owns: follows the record into the
//!   view on every instance, and on the instance holding the lease starts,
//!   advances, halts and supersedes rollouts.
//!
//! The stored records and operator actions are in `crate::domain::rollout`;
//! the policy format in `crate::configstore::rollout`. This module must not
//! push configs itself: it tells the fleet to re-resolve.

mod driver;
mod view;

pub use driver::{Driver, LEASE_TTL};
pub use view::{Active, RolloutView};
