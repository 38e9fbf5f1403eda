//! The plugin runtime: one engine, plugins loaded from policy files, calls
//! under limits.
//!
//! - `engine`: the `Engine` (pooling, epochs, fuel), the `Linker`, compilation.
//! - `cache`: compiled code on disk.
//! - `builtin`: the plugins embedded in the binary, the defaults of empty worlds.
//! - `policy`: policy files.
//! - `destination`: a notifier policy's destinations.
//! - `plugin`: a loaded plugin and the one place that instantiates it.
//! - `registry`: a policies directory as one all-or-nothing set.
//! - `reload`: the set in force, swapped whole on reload; the watcher.
//! - `signature`: signed plugins and the keys trusted to sign them.
//! - `worlds`: the six worlds and their typed export bindings.
//!
//! Invariants: a plugin never gets an import its policy does not grant (it is
//! refused at load); a call never shares a `Store` with another call; a trap,
//! timeout or out-of-memory is an error of that call, never of the agent.

pub mod builtin;
mod cache;
pub mod destination;
mod engine;
mod plugin;
pub mod policy;
mod registry;
mod reload;
pub mod signature;
pub mod worlds;

pub use builtin::Defaults;
pub use engine::{Compiled, Runtime, RuntimeOptions};
pub use plugin::{Plugin, PluginStats};
pub use policy::{Limits, Policy, PolicyError};
pub use registry::{LoadErrors, PluginSet};
pub use reload::{Policies, ReloadStats, WatchHandle};
pub use signature::{PluginTrust, Signed};
pub use worlds::World;

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error("not a loadable WebAssembly component: {0}")]
    NotAComponent(String),
}

/// Why one plugin call failed. The agent counts it and carries on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("plugin {plugin} ran past its deadline of {deadline:?} and was stopped; raise limits.deadline if the work is legitimate")]
    Timeout { plugin: String, deadline: Duration },
    #[error("plugin {plugin} needed more than its memory limit of {limit} bytes and was stopped; raise limits.memory if the work is legitimate")]
    OutOfMemory { plugin: String, limit: u64 },
    #[error("plugin {plugin} used up its fuel ({fuel}) and was stopped; raise limits.fuel if the work is legitimate")]
    OutOfFuel { plugin: String, fuel: u64 },
    #[error("plugin {plugin} crashed: {message}")]
    Trap { plugin: String, message: String },
    #[error(
        "plugin {plugin} returned {size} bytes, more than its limit of {limit} (limits.output)"
    )]
    OutputTooLarge {
        plugin: String,
        size: u64,
        limit: u64,
    },
    #[error("plugin {plugin} refused: {message}")]
    Refused { plugin: String, message: String },
    #[error("plugin {plugin} found no free instance before its deadline: {limit} calls were running; raise the deadline or lower the load")]
    Busy { plugin: String, limit: u32 },
    #[error("plugin {plugin} implements {world}, not the world this call needs")]
    WrongWorld { plugin: String, world: World },
}
