//! A loaded plugin: its policy, its compiled and type-checked component, and
//! the one place where an instance is built (`call`): a fresh `Store` per
//! call with the policy's limits, dropped when the call returns, so no state
//! leaks from one call to the next.

use super::engine::{Runtime, TICK};
use super::policy::{Policy, PolicyError};
use super::worlds::{World, WorldPre};
use super::CallError;
use crate::caps::types::{
    BackupInfo, CheckResult, DatabaseInfo, Decision, DrillContext, DumpPlan, Event, Message,
    RequestFacts, RetentionDecision, TableRef, Timestamp,
};
use crate::caps::{Call, CallContext, CapState, Import};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::{Store, Trap};

/// Counters since load; the agent exports them as metrics.
#[derive(Debug, Default)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub out_of_memory: AtomicU64,
    pub traps: AtomicU64,
}

pub struct Plugin {
    policy: Policy,
    name: Arc<str>,
    config: Arc<crate::caps::config::PluginConfig>,
    sha256: String,
    imports: Vec<String>,
    pre: WorldPre,
    runtime: Runtime,
    stats: PluginStats,
}

impl Plugin {
    /// Reads, verifies, compiles and links the policy's wasm. Every refusal
    /// names the policy file and the field to fix.
    pub fn load(runtime: &Runtime, policy: Policy) -> Result<Plugin, PolicyError> {
        // Before anything can run or fail: a `{ env = ... }` value the
        // plugin logs, or an error quotes, leaves the process scrubbed. On
        // every load, so a reload's new values are known too.
        crate::telemetry::redactor().add_known(policy.config.secrets().map(str::to_string));
        crate::telemetry::redactor()
            .add_known(policy.destinations.iter().flat_map(|(_, d)| d.secrets()));
        let file = policy.file.clone();
        let err = |field: &str, m: String| PolicyError::new(&file, Some(field), m);
        if policy.limits.memory > runtime.max_memory() {
            return Err(err(
                "limits.memory",
                format!(
                    "{} bytes is more than this agent allows a plugin ({})",
                    policy.limits.memory,
                    runtime.max_memory()
                ),
            ));
        }
        let (wasm, signed) = match super::builtin::wasm(&policy.wasm) {
            // Part of the binary: trusted as the binary is.
            Some(embedded) => (
                embedded.map_err(|m| err("wasm", m))?.to_vec(),
                super::signature::Signed::BuiltIn,
            ),
            None => {
                let wasm = std::fs::read(&policy.wasm).map_err(|e| {
                    err(
                        "wasm",
                        format!("cannot read {}: {e}", policy.wasm.display()),
                    )
                })?;
                // Before compiling: code from an untrusted signer is never even parsed.
                let signed = runtime
                    .inner
                    .options
                    .trust
                    .check(&policy.wasm, &wasm)
                    .map_err(|m| err("wasm", m))?;
                (wasm, signed)
            }
        };
        let compiled = runtime
            .compile(&wasm)
            .map_err(|e| err("wasm", format!("{}: {e}", policy.wasm.display())))?;
        if let Some(pin) = &policy.sha256 {
            if *pin != compiled.sha256 {
                return Err(err(
                    "sha256",
                    format!(
                        "{} has sha256 {}, the policy pins {pin}",
                        policy.wasm.display(),
                        compiled.sha256
                    ),
                ));
            }
        }
        let (imports, _) = runtime.describe(&compiled.component);
        for import in &imports {
            match Import::of(import) {
                None => {
                    return Err(err(
                        "wasm",
                        format!("imports `{import}`, which firedrill does not provide to plugins"),
                    ))
                }
                Some(cap) if !cap.granted_by(&policy.grants) => {
                    return Err(err(
                        "grants",
                        format!(
                            "the plugin imports `{import}` but the policy does not grant `{}`; add `{}` under [grants] if it should have it",
                            cap.grant_key().unwrap_or_default(),
                            cap.grant_example()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let pre = runtime
            .prepare(policy.world, &compiled.component)
            .map_err(|m| err("world", m))?;
        tracing::debug!(plugin = %policy.name, world = policy.world.name(), cached = compiled.from_cache, ms = compiled.compile_time.as_millis() as u64, signed = ?signed, "plugin loaded");
        // At zero from the load on: a counter's series that appears with
        // its first failure at 1 shows no increase, and an alert on
        // increase() would miss that failure.
        let m = crate::telemetry::metrics::global();
        let labels = [("plugin", policy.name.as_str())];
        m.declare(crate::telemetry::metrics::PLUGIN_CALLS, &labels);
        m.declare(crate::telemetry::metrics::PLUGIN_ERRORS, &labels);
        Ok(Plugin {
            name: policy.name.as_str().into(),
            config: Arc::new(policy.config.clone()),
            policy,
            sha256: compiled.sha256,
            imports,
            pre,
            runtime: runtime.clone(),
            stats: PluginStats::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn world(&self) -> World {
        self.policy.world
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// `name@sha256-prefix`: what manifests and reports record.
    pub fn version(&self) -> String {
        format!("{}@{}", self.name, &self.sha256[..12])
    }

    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// Runs `f` on a fresh instance under the policy's limits.
    fn call<R: Serialize>(
        &self,
        ctx: &CallContext,
        f: impl FnOnce(&WorldPre, &mut Store<CapState>) -> Option<wasmtime::Result<R>>,
    ) -> Result<R, CallError> {
        self.call_sized(ctx, output_size::<R>, f)
    }

    /// [`Plugin::call`] with the output measured by `size` (for results
    /// that are measured faster than as JSON).
    fn call_sized<R>(
        &self,
        ctx: &CallContext,
        size: fn(&R) -> u64,
        f: impl FnOnce(&WorldPre, &mut Store<CapState>) -> Option<wasmtime::Result<R>>,
    ) -> Result<R, CallError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let span =
            tracing::info_span!("plugin.call", plugin = %self.name, world = self.world().name());
        let _entered = span.enter();
        let limits = &self.policy.limits;
        let deadline = Instant::now() + limits.deadline;
        // Declared before the store, so the slot is given back after the
        // instance is gone. Waiting for it counts against the deadline.
        let Some(_slot) = self.runtime.inner.slots.acquire(deadline) else {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            let e = CallError::Busy {
                plugin: self.name.to_string(),
                limit: self.runtime.inner.options.max_instances,
            };
            tracing::warn!(plugin = %self.name, "plugin call failed: {e}");
            return Err(e);
        };
        let call = Call {
            plugin: &self.name,
            config: &self.config,
            context: ctx,
            deadline,
        };
        let state = CapState::new(&self.policy.grants, &call, limits.memory as usize);
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.memory);
        store.set_epoch_deadline(limits.deadline.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1);
        store.epoch_deadline_trap();
        store
            .set_fuel(limits.fuel.unwrap_or(u64::MAX))
            .expect("fuel is enabled on the engine");
        let result = match f(&self.pre, &mut store) {
            None => Err(CallError::WrongWorld {
                plugin: self.name.to_string(),
                world: self.world(),
            }),
            Some(Ok(out)) => {
                let size = size(&out);
                if size > limits.output {
                    Err(CallError::OutputTooLarge {
                        plugin: self.name.to_string(),
                        size,
                        limit: limits.output,
                    })
                } else {
                    Ok(out)
                }
            }
            Some(Err(e)) => Err(self.classify(e, store.data())),
        };
        if let Err(e) = &result {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            let counter = match e {
                CallError::Timeout { .. } => Some(&self.stats.timeouts),
                CallError::OutOfMemory { .. } => Some(&self.stats.out_of_memory),
                CallError::Trap { .. } | CallError::OutOfFuel { .. } => Some(&self.stats.traps),
                _ => None,
            };
            if let Some(c) = counter {
                c.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(plugin = %self.name, "plugin call failed: {e}");
        }
        let m = crate::telemetry::metrics::global();
        let labels = [("plugin", &*self.name)];
        m.add(crate::telemetry::metrics::PLUGIN_CALLS, &labels, 1.0);
        if result.is_err() {
            m.add(crate::telemetry::metrics::PLUGIN_ERRORS, &labels, 1.0);
        }
        m.observe(
            crate::telemetry::metrics::PLUGIN_DURATION,
            &labels,
            started.elapsed().as_secs_f64(),
        );
        result
    }

    fn classify(&self, e: wasmtime::Error, state: &CapState) -> CallError {
        let plugin = self.name.to_string();
        if state.memory.hit {
            return CallError::OutOfMemory {
                plugin,
                limit: self.policy.limits.memory,
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout {
                plugin,
                deadline: self.policy.limits.deadline,
            },
            Some(Trap::OutOfFuel) => CallError::OutOfFuel {
                plugin,
                fuel: self.policy.limits.fuel.unwrap_or(0),
            },
            Some(trap) => {
                let said = state.wasi.stderr_text();
                let message = if said.is_empty() {
                    trap.to_string()
                } else {
                    format!("{trap}; the plugin said: {said}")
                };
                CallError::Trap { plugin, message }
            }
            None => CallError::Trap {
                plugin,
                message: format!("{e:#}"),
            },
        }
    }

    /// Instantiates the plugin once under its limits, as a reload does before
    /// swapping a set in: a component whose start-up traps never goes live.
    pub fn self_test(&self) -> Result<(), CallError> {
        self.call(&CallContext::default(), |pre, store| {
            Some(match pre {
                WorldPre::DumpPlanner(p) => p.instantiate(&mut *store).map(drop),
                WorldPre::Verifier(p) => p.instantiate(&mut *store).map(drop),
                WorldPre::Retention(p) => p.instantiate(&mut *store).map(drop),
                WorldPre::Authorizer(p) => p.instantiate(&mut *store).map(drop),
                WorldPre::Redactor(p) => p.instantiate(&mut *store).map(drop),
                WorldPre::Notifier(p) => p.instantiate(&mut *store).map(drop),
            })
        })
    }

    pub fn plan_dump(&self, ctx: &CallContext, info: &DatabaseInfo) -> Result<DumpPlan, CallError> {
        self.call(ctx, |pre, store| match pre {
            WorldPre::DumpPlanner(p) => Some(
                p.instantiate(&mut *store)
                    .and_then(|i| i.call_plan(&mut *store, info)),
            ),
            _ => None,
        })?
        .map_err(|message| CallError::Refused {
            plugin: self.name.to_string(),
            message,
        })
    }

    pub fn transform_rows(
        &self,
        ctx: &CallContext,
        table: &TableRef,
        columns: &[String],
        rows: &[Vec<Option<String>>],
    ) -> Result<Vec<Vec<Option<String>>>, CallError> {
        self.call(ctx, |pre, store| match pre {
            WorldPre::DumpPlanner(p) => Some(
                p.instantiate(&mut *store)
                    .and_then(|i| i.call_transform(&mut *store, table, columns, rows)),
            ),
            _ => None,
        })?
        .map_err(|message| CallError::Refused {
            plugin: self.name.to_string(),
            message,
        })
    }

    pub fn verify(
        &self,
        ctx: &CallContext,
        drill: &DrillContext,
    ) -> Result<Vec<CheckResult>, CallError> {
        self.call(ctx, |pre, store| match pre {
            WorldPre::Verifier(p) => Some(
                p.instantiate(&mut *store)
                    .and_then(|i| i.call_verify(&mut *store, drill)),
            ),
            _ => None,
        })
    }

    pub fn plan_retention(
        &self,
        ctx: &CallContext,
        backups: &[BackupInfo],
        now: Timestamp,
    ) -> Result<Vec<RetentionDecision>, CallError> {
        self.call(ctx, |pre, store| match pre {
            WorldPre::Retention(p) => Some(
                p.instantiate(&mut *store)
                    .and_then(|i| i.call_plan(&mut *store, backups, now)),
            ),
            _ => None,
        })
    }

    pub fn authorize(
        &self,
        ctx: &CallContext,
        facts: &RequestFacts,
    ) -> Result<Decision, CallError> {
        self.call(ctx, |pre, store| match pre {
            WorldPre::Authorizer(p) => Some(
                p.instantiate(&mut *store)
                    .and_then(|i| i.call_authorize(&mut *store, facts)),
            ),
            _ => None,
        })
    }

    /// The messages `event` calls for, each naming a destination.
    pub fn notify(&self, ctx: &CallContext, event: &Event) -> Result<Vec<Message>, CallError> {
        self.call(ctx, |pre, store| match pre {
            WorldPre::Notifier(p) => Some(
                p.instantiate(&mut *store)
                    .and_then(|i| i.call_notify(&mut *store, event)),
            ),
            _ => None,
        })
    }

    /// Returns exactly one line per input line, or an error.
    pub fn redact(&self, ctx: &CallContext, lines: &[String]) -> Result<Vec<String>, CallError> {
        // Every line the process writes passes here: its size is its bytes.
        let bytes = |lines: &Vec<String>| lines.iter().map(|l| l.len() as u64 + 3).sum();
        let out = self.call_sized(ctx, bytes, |pre, store| match pre {
            WorldPre::Redactor(p) => Some(
                p.instantiate(&mut *store)
                    .and_then(|i| i.call_redact(&mut *store, lines)),
            ),
            _ => None,
        })?;
        if out.len() != lines.len() {
            return Err(CallError::Refused {
                plugin: self.name.to_string(),
                message: format!("returned {} lines for {}", out.len(), lines.len()),
            });
        }
        Ok(out)
    }
}

/// The size of a call's result as JSON, without building the JSON.
fn output_size<R: Serialize>(out: &R) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, out);
    c.0
}
