//! firedrill: backs PostgreSQL and Redis up into object storage and proves
//! every backup by restoring it into a throwaway database and checking it.
//!
//! Every decision point is a WebAssembly component plugin bound by a policy
//! file; see `docs/ARCHITECTURE.md` for the map of this crate.

pub mod agent;
pub mod api;
pub mod archive;
pub mod caps;
pub mod catalog;
pub mod config;
pub mod coord;
pub mod jobs;
pub mod launch;
#[cfg(test)]
mod layers;
pub mod notify;
pub mod runtime;
pub mod servers;
pub mod telemetry;
