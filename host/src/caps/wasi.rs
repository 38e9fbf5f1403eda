//! The WASI 0.2 base every plugin links against, with nothing behind it: no
//! preopened directories, no environment variables, no arguments, no network.
//! Standard library code in a plugin works; reaching outside does not.
//!
//! Grant: none (always linked). stderr is kept (up to 4 KiB) so that a panic
//! message can be quoted when the plugin traps.

use super::CapState;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

const STDERR_CAPACITY: usize = 4096;

pub(crate) struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
}

impl WasiState {
    pub(crate) fn sandboxed() -> WasiState {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let ctx = WasiCtxBuilder::new().stderr(stderr.clone()).build();
        WasiState {
            ctx,
            table: ResourceTable::new(),
            stderr,
        }
    }

    /// What the plugin wrote to stderr (a panic message, usually).
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
    }
}

impl WasiView for CapState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.ctx,
            table: &mut self.wasi.table,
        }
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<CapState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)
}
