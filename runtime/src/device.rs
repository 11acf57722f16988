//! The device boundary: everything the megakernel engine asks of a device, at the level of a
//! driver (allocate, copy to and from, set, launch, synchronize, time). Two implementations:
//!
//! - [`crate::cuda::driver::CudaDevice`]: a real NVIDIA GPU through `cudarc`;
//! - [`crate::emu::EmuDevice`]: the device emulator, which runs the same generated `kernel.cu`
//!   on the CPU (compiled by the system C++ compiler against `templates/emu/`), with memory,
//!   race and warp-collective checks and byte counters.
//!
//! The engine (`crate::cuda`: weight upload, ABI tables, arena, KV state, launch parameters,
//! diagnostics readback, DFlash programs) is written once over `Arc<dyn Device>`.
//!
//! Device memory is addressed by [`DevicePtr`] (the address the kernel sees); [`DeviceBuffer`]
//! owns an allocation and frees it on drop. Work is ordered as on one CUDA stream: a copy or a
//! launch may be asynchronous, [`Device::synchronize`] waits for all of it within a deadline, and
//! [`Device::copy_to_host`] returns only once the bytes are there.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::cuda::kernel::KernelImage;
use crate::cuda::probe::DeviceInfo;

/// A device address, as the kernel dereferences it.
pub type DevicePtr = u64;

/// What an allocation holds: the emulator's byte counters and messages group by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemClass {
    /// Model weights (read-only during a launch).
    Weights,
    /// The KV cache (and other recurrent state).
    Kv,
    /// The arena: graph inputs, intermediate activations, outputs.
    Activations,
    /// Task, wait, trigger and operand tables, `WeightRef` tables.
    Tables,
    /// Event counters and the diagnostics block.
    Sync,
    /// Anything else (copy buffers of benchmarks).
    Other,
}

impl MemClass {
    pub const ALL: [MemClass; 6] = [
        MemClass::Weights,
        MemClass::Kv,
        MemClass::Activations,
        MemClass::Tables,
        MemClass::Sync,
        MemClass::Other,
    ];

    /// Index into [`TaskBytes`] arrays (and the emulator's C ABI).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            MemClass::Weights => "weights",
            MemClass::Kv => "kv",
            MemClass::Activations => "activations",
            MemClass::Tables => "tables",
            MemClass::Sync => "sync",
            MemClass::Other => "other",
        }
    }
}

/// A kernel loaded on a device.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// The device's own handle for it.
    pub handle: u64,
    /// How it was obtained (`CUBIN for sm_90a`, `kernel.cu compiled by NVRTC ...`, `kernel.cu
    /// compiled for the emulator ...`).
    pub note: String,
    /// Bytes of static shared memory it declares.
    pub static_smem: usize,
    /// Registers per thread (-1 where unknown).
    pub registers: i32,
}

/// The launch configuration of the megakernel: a 1-D grid of 1-D blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    pub blocks: u32,
    pub threads: u32,
    /// Dynamic shared memory per block, in bytes.
    pub dynamic_smem: u32,
    /// Launch cooperatively (the driver refuses a grid that cannot be co-resident).
    pub cooperative: bool,
}

/// Why a launch, or waiting for one, failed.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceFailure {
    /// A driver error after the launch: the device context is lost.
    Fault(String),
    /// The deadline passed with the kernel still running.
    Hang,
    /// An emulator check failed (out of bounds, misaligned, race, non-coherent read of memory
    /// written in the launch, a lane skipping a warp collective, shared memory overrun,
    /// deadlock). `task` is the kernel task index (into the ABI task table) the failing block
    /// was running, when it was running one; `message` names the op's device function, the
    /// address and the allocation.
    Check {
        worker: u32,
        task: Option<u32>,
        message: String,
    },
    /// Anything else (the launch itself was refused).
    Other(String),
}

impl fmt::Display for DeviceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceFailure::Fault(e) => write!(f, "device fault: {e}"),
            DeviceFailure::Hang => write!(f, "the kernel did not finish in time"),
            DeviceFailure::Check {
                worker,
                task,
                message,
            } => match task {
                Some(t) => write!(f, "worker {worker}, kernel task index {t}: {message}"),
                None => write!(f, "worker {worker}: {message}"),
            },
            DeviceFailure::Other(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DeviceFailure {}

/// Bytes the kernel read, per kernel task index and [`MemClass`] (emulator only).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskBytes {
    /// `per_task[i][c]`: bytes task index `i` read from allocations of class `c`.
    pub per_task: Vec<[u64; MemClass::ALL.len()]>,
    /// Launches counted.
    pub launches: u64,
}

impl TaskBytes {
    /// Total bytes read from class `class`, over every task.
    pub fn total(&self, class: MemClass) -> u64 {
        self.per_task.iter().map(|t| t[class.index()]).sum()
    }
}

/// Which implementation of the boundary a device is: what `--device` names it, what its clock
/// measures, how messages say where something ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A real NVIDIA GPU.
    Cuda,
    /// The device emulator (`kernel.cu` on the CPU, with checks).
    Emulator,
}

impl DeviceKind {
    /// The `--device` value that selects it.
    pub fn flag(self) -> &'static str {
        match self {
            DeviceKind::Cuda => "cuda",
            DeviceKind::Emulator => "emu",
        }
    }

    /// Where a step runs, for messages: "the GPU", "the device emulator".
    pub fn place(self) -> &'static str {
        match self {
            DeviceKind::Cuda => "the GPU",
            DeviceKind::Emulator => "the device emulator",
        }
    }

    /// What [`Device::elapsed_ms`] measures: CUDA events on the GPU's own clock, or the host's
    /// clock around each emulated launch (the emulator's times say nothing about a GPU's).
    pub fn timing(self) -> &'static str {
        match self {
            DeviceKind::Cuda => "cuda-events",
            DeviceKind::Emulator => "emulator-host-clock",
        }
    }
}

/// A point in a device's timeline (see [`Device::time_mark`]).
pub struct TimeMark(pub Box<dyn std::any::Any + Send>);

/// The driver-level operations the engine needs (see the module docs).
pub trait Device: Send + Sync {
    /// What the device is (SMs, shared memory, architecture).
    fn info(&self) -> &DeviceInfo;
    /// A GPU or the emulator.
    fn kind(&self) -> DeviceKind;
    /// Bytes of device memory still free.
    fn free_memory(&self) -> Result<usize>;
    /// A zeroed allocation of `bytes` (at least 1), 256-byte aligned; `what` names it in errors.
    fn alloc(&self, bytes: usize, class: MemClass, what: &str) -> Result<DevicePtr>;
    /// Frees an allocation made by [`Device::alloc`] (after all work using it).
    fn free(&self, ptr: DevicePtr);
    /// Copies `src` to `dst` (stream-ordered).
    fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()>;
    /// Copies device memory at `src` into `dst`, after all earlier work; returns when done.
    fn copy_to_host(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;
    /// Copies `bytes` from `src` to `dst` on the device (stream-ordered).
    fn copy_on_device(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()>;
    /// Sets `bytes` bytes at `dst` to `value` (stream-ordered).
    fn set(&self, dst: DevicePtr, bytes: usize, value: u8) -> Result<()>;
    /// Loads a kernel image (the CUBIN, NVRTC, or the emulator's host build of `kernel.cu`).
    fn load_kernel(&self, image: &KernelImage, entry: &str) -> Result<LoadedKernel>;
    /// Lets `kernel` use `bytes` of dynamic shared memory per block (the opt-in above 48 KB).
    fn allow_dynamic_smem(&self, kernel: &LoadedKernel, bytes: u32) -> Result<()>;
    /// How many blocks of `kernel` with `threads` threads and `dynamic_smem` bytes fit on one SM.
    fn resident_blocks_per_sm(
        &self,
        kernel: &LoadedKernel,
        threads: u32,
        dynamic_smem: u32,
    ) -> Result<usize>;
    /// Launches `kernel` with `params`, the bytes of its one by-value parameter.
    fn launch(
        &self,
        kernel: &LoadedKernel,
        shape: LaunchShape,
        params: &[u8],
    ) -> Result<(), DeviceFailure>;
    /// Waits for all enqueued work, at most `deadline`.
    fn synchronize(&self, deadline: Duration) -> Result<(), DeviceFailure>;
    /// Marks the current point of the work stream (for timing).
    fn time_mark(&self) -> Result<TimeMark>;
    /// Milliseconds between two marks (both completed).
    fn elapsed_ms(&self, start: &TimeMark, end: &TimeMark) -> Result<f64>;
    /// The bytes read since the last call, per task and class, and resets them (the emulator
    /// counts every access; a GPU returns `None`).
    fn take_task_bytes(&self) -> Option<TaskBytes> {
        None
    }
    /// `cuda:0 (NVIDIA H100 ...)` or `emu (...)`, for messages.
    fn describe(&self) -> String {
        self.info().describe()
    }
}

/// An allocation on a device, freed on drop.
pub struct DeviceBuffer {
    device: Arc<dyn Device>,
    ptr: DevicePtr,
    bytes: usize,
}

impl DeviceBuffer {
    /// A zeroed allocation of `bytes` (at least 1) of class `class`.
    pub fn zeroed(
        device: &Arc<dyn Device>,
        bytes: usize,
        class: MemClass,
        what: &str,
    ) -> Result<Self> {
        let bytes = bytes.max(1);
        let ptr = device.alloc(bytes, class, what)?;
        Ok(DeviceBuffer {
            device: device.clone(),
            ptr,
            bytes,
        })
    }

    /// An allocation holding `words` (a zero word when empty, so never an empty allocation).
    pub fn from_words(
        device: &Arc<dyn Device>,
        words: &[u32],
        class: MemClass,
        what: &str,
    ) -> Result<Self> {
        let buf = Self::zeroed(device, words.len().max(1) * 4, class, what)?;
        if !words.is_empty() {
            buf.write_words(0, words)?;
        }
        Ok(buf)
    }

    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.bytes) {
            anyhow::bail!(
                "device buffer access {offset}..{} outside its {} bytes",
                offset.saturating_add(len),
                self.bytes
            );
        }
        Ok(())
    }

    /// Writes `bytes` at byte `offset`.
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        self.check(offset, bytes.len())?;
        self.device.copy_to_device(self.ptr + offset as u64, bytes)
    }

    /// Writes `words` at byte `offset`.
    pub fn write_words(&self, offset: usize, words: &[u32]) -> Result<()> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.write(offset, &bytes)
    }

    /// Reads `len` bytes at byte `offset` (after all earlier work).
    pub fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        self.check(offset, len)?;
        let mut out = vec![0u8; len];
        self.device
            .copy_to_host(self.ptr + offset as u64, &mut out)?;
        Ok(out)
    }

    /// Reads `count` words at byte `offset` (after all earlier work).
    pub fn read_words(&self, offset: usize, count: usize) -> Result<Vec<u32>> {
        let bytes = self.read(offset, count * 4)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Sets the whole buffer to zero (stream-ordered).
    pub fn zero(&self) -> Result<()> {
        self.device.set(self.ptr, self.bytes, 0)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.device.free(self.ptr);
    }
}

impl fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}
