//! The megakernel engine, written once over the device boundary ([`crate::device::Device`]):
//! a real NVIDIA GPU through `cudarc` (driver API and NVRTC, both loaded at run time, so this
//! builds and runs, on the CPU, where no CUDA is installed), or the device emulator
//! ([`crate::emu`]).
//!
//! - [`driver`]: [`CudaDevice`], the device boundary over cudarc: the only module (with
//!   [`probe`](mod@probe) and the error helpers here) that touches a cudarc type;
//! - [`probe`](mod@probe): is a driver and a GPU usable; the device's name, SMs, memory, architecture;
//! - [`upload`]: weights to the device exactly as stored ([`mimo_ir::weights::WeightData`]), in
//!   the layout `templates/common/weights.cuh` reads through `WeightRef`;
//! - [`kernel`]: [`KernelImage`], the kernel binary (an artifact's CUBIN, or NVRTC through an
//!   on-disk cache) and the launch shape its header asks for;
//! - [`shared`]: [`DeviceContext`] (the device and the weights every program of a generation
//!   shares) and [`DeviceKv`] (a model's KV cache);
//! - [`programs`]: [`CudaBackend`], the device's half of a [`crate::engine::ProgramCache`];
//! - [`megakernel`]: [`Megakernel`], one compiled program on the device: its tables, arena, KV
//!   state and event counters, set up and checked before anything is uploaded;
//! - [`launch`]: one step of it, one kernel launch per step (or per task in serial mode), and
//!   [`LaunchOptions`];
//! - [`arena`]: graph inputs and outputs in the arena, device-side copies, readback;
//! - [`diagnose`]: waiting for a step against a deadline, faults, hangs and aborted waits turned
//!   into errors that name the task;
//! - [`timing`]: device time marks and copy bandwidth, for benchmarks;
//! - [`engine`]: [`CudaEngine`], the [`crate::engine::Engine`] over a decode program, and
//!   [`compile_in_memory`], a model compiled without an artifact directory.
//!
//! **Never a panic, never a hang.** cudarc panics when a library or symbol is missing, so every
//! call into it goes through [`guarded`] (or [`call`]) and [`probe::probe`] checks for the driver
//! before anything else. The kernel bounds every wait (`templates/common/sync.cuh`); the host
//! waits for each step with [`crate::device::Device::synchronize`] against its own deadline too,
//! and reads results back only after it, so even a kernel that never returns becomes an error
//! rather than a hung process.

pub mod arena;
pub mod diagnose;
pub mod driver;
pub mod engine;
pub mod kernel;
pub mod launch;
pub mod megakernel;
pub mod probe;
pub mod programs;
pub mod shared;
pub mod timing;
pub mod upload;

use anyhow::{Result, anyhow};
use cudarc::driver::DriverError;
use mimo_compiler::nvrtc::catch_cudarc_panic;

pub use driver::CudaDevice;
pub use engine::{CudaEngine, DecodeTiming, KernelImage, compile_graph, compile_in_memory};
pub use launch::LaunchOptions;
pub use megakernel::Megakernel;
pub use probe::{DeviceInfo, probe};
pub use programs::{CudaBackend, KernelSource};
pub use shared::{DeviceContext, DeviceKv};

/// Runs `f`, turning a panic inside cudarc (a missing library or symbol) into an error naming
/// `what`.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    catch_cudarc_panic(f).map_err(|m| anyhow!("{what}: the CUDA library failed: {m}"))
}

/// A driver error as one line: `what failed: CUDA_ERROR_NAME (description)`.
pub fn driver_error(what: &str, e: DriverError) -> anyhow::Error {
    anyhow!("{what} failed: {}", error_name(e))
}

/// `CUDA_ERROR_NAME (description)`, without panicking when the driver cannot name it.
pub fn error_name(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// Calls a cudarc function that returns a driver result, guarded against panics, with the error
/// naming `what`.
pub fn call<T>(what: &str, f: impl FnOnce() -> Result<T, DriverError>) -> Result<T> {
    guarded(what, f)?.map_err(|e| driver_error(what, e))
}
