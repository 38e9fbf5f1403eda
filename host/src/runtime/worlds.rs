//! The six worlds: their names, and the typed bindings of each plugin kind's
//! exports. Imports are mapped onto the host bindings in `caps`, so every
//! world shares one implementation of each capability.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! world_bindings {
    ($module:ident, $world:literal, { $($with:tt)* }) => {
        pub mod $module {
            wasmtime::component::bindgen!({
                path: "../wit",
                world: $world,
                with: { "wasi": crate::caps::bindings::wasi, $($with)* },
            });
        }
    };
}

world_bindings!(dump_planner, "firedrill:plugin/dump-planner", { "firedrill:plugin": crate::caps::bindings::firedrill::plugin });
world_bindings!(verifier, "firedrill:plugin/verifier", { "firedrill:plugin": crate::caps::bindings::firedrill::plugin });
world_bindings!(retention, "firedrill:plugin/retention", { "firedrill:plugin": crate::caps::bindings::firedrill::plugin });
world_bindings!(authorizer, "firedrill:plugin/authorizer", { "firedrill:plugin": crate::caps::bindings::firedrill::plugin });
world_bindings!(redactor, "firedrill:plugin/redactor", {});
world_bindings!(notifier, "firedrill:plugin/notifier", { "firedrill:plugin": crate::caps::bindings::firedrill::plugin });

/// A decision point, named as in a policy's `world = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    DumpPlanner,
    Verifier,
    Retention,
    Authorizer,
    Redactor,
    Notifier,
}

impl World {
    pub const ALL: [World; 6] = [
        World::DumpPlanner,
        World::Verifier,
        World::Retention,
        World::Authorizer,
        World::Redactor,
        World::Notifier,
    ];

    pub fn name(self) -> &'static str {
        match self {
            World::DumpPlanner => "dump-planner",
            World::Verifier => "verifier",
            World::Retention => "retention",
            World::Authorizer => "authorizer",
            World::Redactor => "redactor",
            World::Notifier => "notifier",
        }
    }

    pub fn parse(name: &str) -> Option<World> {
        World::ALL.into_iter().find(|w| w.name() == name)
    }

    /// The world whose exports are exactly these function names.
    pub fn by_exports(exports: &[String]) -> Option<World> {
        let mut names: Vec<&str> = exports.iter().map(String::as_str).collect();
        names.sort_unstable();
        Some(match names.as_slice() {
            ["plan", "transform"] => World::DumpPlanner,
            ["verify"] => World::Verifier,
            ["plan"] => World::Retention,
            ["authorize"] => World::Authorizer,
            ["redact"] => World::Redactor,
            ["notify"] => World::Notifier,
            _ => return None,
        })
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "firedrill:plugin/{}@0.1.0", self.name())
    }
}

/// A component type-checked against its world, ready to instantiate.
pub(crate) enum WorldPre {
    DumpPlanner(dump_planner::DumpPlannerPre<crate::caps::CapState>),
    Verifier(verifier::VerifierPre<crate::caps::CapState>),
    Retention(retention::RetentionPre<crate::caps::CapState>),
    Authorizer(authorizer::AuthorizerPre<crate::caps::CapState>),
    Redactor(redactor::RedactorPre<crate::caps::CapState>),
    Notifier(notifier::NotifierPre<crate::caps::CapState>),
}

impl WorldPre {
    pub(crate) fn new(
        world: World,
        pre: wasmtime::component::InstancePre<crate::caps::CapState>,
    ) -> wasmtime::Result<WorldPre> {
        Ok(match world {
            World::DumpPlanner => WorldPre::DumpPlanner(dump_planner::DumpPlannerPre::new(pre)?),
            World::Verifier => WorldPre::Verifier(verifier::VerifierPre::new(pre)?),
            World::Retention => WorldPre::Retention(retention::RetentionPre::new(pre)?),
            World::Authorizer => WorldPre::Authorizer(authorizer::AuthorizerPre::new(pre)?),
            World::Redactor => WorldPre::Redactor(redactor::RedactorPre::new(pre)?),
            World::Notifier => WorldPre::Notifier(notifier::NotifierPre::new(pre)?),
        })
    }
}

/// Links `component` and checks its exports against `world`, as loading a
/// policy would (imports must still be granted by a policy).
pub fn check_world(
    runtime: &super::Runtime,
    world: World,
    component: &wasmtime::component::Component,
) -> Result<(), String> {
    runtime.prepare(world, component).map(drop)
}

/// Telemetry's second redaction stage: it sits below the plugin host, so it
/// calls the redactor plugin through its own trait, implemented here.
impl crate::telemetry::redact::PluginRedactor for super::Plugin {
    fn name(&self) -> &str {
        super::Plugin::name(self)
    }

    fn redact(&self, lines: &[String]) -> Result<Vec<String>, String> {
        super::Plugin::redact(self, &crate::caps::CallContext::default(), lines)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_exports_identify_worlds() {
        for w in World::ALL {
            assert_eq!(World::parse(w.name()), Some(w));
        }
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            World::by_exports(&names(&["transform", "plan"])),
            Some(World::DumpPlanner)
        );
        assert_eq!(World::by_exports(&names(&["plan"])), Some(World::Retention));
        assert_eq!(World::by_exports(&names(&["plan", "verify"])), None);
    }
}
