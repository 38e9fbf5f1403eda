//! The one wasmtime `Engine` of the agent and the `Linker` every plugin is
//! built against.
//!
//! Pooling allocator (instances come from pre-reserved slots, so a call
//! costs no mmap), epoch interruption (a ticker thread advances the epoch;
//! each call's store traps when its deadline in ticks passes) and fuel (off
//! unless a policy sets a budget, by giving everyone else an unlimited one).

use super::cache::CodeCache;
use super::worlds::{World, WorldPre};
use super::RuntimeError;
use crate::caps::{self, CapState};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Bytes of each linear memory reset in place between calls rather than
/// handed back to the kernel: a Rust plugin's 1 MiB stack plus its heap.
const KEEP_RESIDENT: usize = 4 << 20;

/// How often the epoch advances: the granularity of deadlines.
pub(crate) const TICK: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled code is cached; none disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Plugin instances alive at once (calls in flight), across all plugins.
    pub max_instances: u32,
    /// The most linear memory any policy may grant.
    pub max_memory: u64,
    /// Which plugin signatures are accepted, and whether one is required.
    pub trust: super::PluginTrust,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: default_cache_dir(),
            max_instances: 128,
            max_memory: 1 << 30,
            trust: Default::default(),
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FIREDRILL_CACHE_DIR") {
        return Some(d.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("firedrill").join("code"))
}

/// PAGEMAP_SCAN arrived in Linux 6.7.
fn pagemap_scan_available() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 7)
}

/// Cheap to clone; all clones share the engine, linker and cache.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    /// Instances alive at once never exceed the pool: a call waits for a
    /// slot rather than failing when many arrive together.
    pub(crate) slots: Slots,
    pub(crate) linker: Linker<CapState>,
    pub(crate) cache: Option<CodeCache>,
    pub(crate) options: RuntimeOptions,
    ticking: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

/// A counting semaphore over the pool's instance slots.
pub(crate) struct Slots {
    free: std::sync::Mutex<u32>,
    freed: std::sync::Condvar,
}

/// One instance slot, given back when dropped.
pub(crate) struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(n: u32) -> Slots {
        Slots {
            free: std::sync::Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    /// A slot, waiting until `deadline` at most.
    pub(crate) fn acquire(&self, deadline: Instant) -> Option<Slot<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            let left = deadline.checked_duration_since(Instant::now())?;
            free = self
                .freed
                .wait_timeout(free, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *free -= 1;
        Some(Slot(self))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// A compiled component and what it took.
pub struct Compiled {
    pub component: Component,
    pub sha256: String,
    pub compile_time: Duration,
    pub from_cache: bool,
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        let n = options.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // A Rust component holds a handful of core instances, memories and tables.
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 8)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_core_instances_per_component(16)
            .max_memory_size(options.max_memory as usize)
            // Reset a slot by rewriting only the pages a call dirtied
            // (PAGEMAP_SCAN, Linux 6.7+) instead of madvise: no page faults on
            // the next call and no TLB shootdowns across cores. Measured in
            // tests/bench/plugin_call.rs.
            .pagemap_scan(Enabled::Auto);
        // Without PAGEMAP_SCAN, keeping memory resident would memset all of
        // it on every call: slower than madvise. Then keep wasmtime's default.
        if pagemap_scan_available() {
            pool.linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(64 << 10);
        }
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(true)
            .memory_reservation(options.max_memory)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        caps::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let cache = match &options.cache_dir {
            Some(dir) => match CodeCache::open(dir, &engine) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "compiled-code cache disabled: {e}");
                    None
                }
            },
            None => None,
        };
        let ticking = Arc::new(AtomicBool::new(true));
        let (e, t) = (engine.clone(), ticking.clone());
        std::thread::Builder::new()
            .name("firedrill-epoch".into())
            .spawn(move || {
                while t.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                slots: Slots::new(n),
                linker,
                cache,
                options,
                ticking,
            }),
        })
    }

    pub fn max_memory(&self) -> u64 {
        self.inner.options.max_memory
    }

    /// Compiles a component, or loads its compiled code from the cache.
    pub fn compile(&self, wasm: &[u8]) -> Result<Compiled, RuntimeError> {
        let sha256 = hex::encode(Sha256::digest(wasm));
        let start = Instant::now();
        if let Some(component) = self
            .inner
            .cache
            .as_ref()
            .and_then(|c| c.get(&self.inner.engine, &sha256))
        {
            return Ok(Compiled {
                component,
                sha256,
                compile_time: start.elapsed(),
                from_cache: true,
            });
        }
        if !wasm.starts_with(b"\0asm") {
            return Err(RuntimeError::NotAComponent(
                "not WebAssembly at all (no \\0asm header)".into(),
            ));
        }
        if wasm.len() >= 8 && wasm[4..8] == [1, 0, 0, 0] {
            return Err(RuntimeError::NotAComponent(
                "this is a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`".into(),
            ));
        }
        let component = Component::new(&self.inner.engine, wasm)
            .map_err(|e| RuntimeError::NotAComponent(format!("{e:#}")))?;
        if let Some(cache) = &self.inner.cache {
            cache.put(&sha256, &component);
        }
        Ok(Compiled {
            component,
            sha256,
            compile_time: start.elapsed(),
            from_cache: false,
        })
    }

    /// The names a component imports and the functions it exports.
    pub fn describe(&self, component: &Component) -> (Vec<String>, Vec<String>) {
        let ty = component.component_type();
        let imports = ty
            .imports(&self.inner.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        // Only functions: a world's exports are functions, and an exported
        // interface the host never calls (componentize-py leaves its
        // build-time `exports` interface in) changes nothing.
        let exports = ty
            .exports(&self.inner.engine)
            .filter(|(_, e)| {
                matches!(
                    e.ty,
                    wasmtime::component::types::ComponentItem::ComponentFunc(_)
                )
            })
            .map(|(n, _)| n.to_string())
            .collect();
        (imports, exports)
    }

    /// Links a component and checks it against `world`'s exports.
    pub(crate) fn prepare(&self, world: World, component: &Component) -> Result<WorldPre, String> {
        let pre: InstancePre<CapState> = self
            .inner
            .linker
            .instantiate_pre(component)
            .map_err(|e| format!("{e:#}"))?;
        WorldPre::new(world, pre).map_err(|e| format!("does not implement {world}: {e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_waits_for_a_free_slot_until_its_deadline() {
        let slots = std::sync::Arc::new(Slots::new(1));
        let held = slots.acquire(Instant::now()).expect("one is free");
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(
            slots.acquire(soon).is_none(),
            "none free before the deadline"
        );
        // Given back while another call waits: that call gets it.
        let s = slots.clone();
        let waiter = std::thread::spawn(move || {
            s.acquire(Instant::now() + Duration::from_secs(10))
                .is_some()
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        assert!(waiter.join().unwrap());
        assert!(slots.acquire(Instant::now()).is_some());
    }
}
