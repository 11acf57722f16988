//! The device emulator: a [`Device`] whose memory is host memory and whose kernels are the
//! generated `kernel.cu` itself, compiled for the host ([`build`]) against
//! `templates/emu/cuda_host.h` and run by the emulator's runtime (`templates/emu/runtime.cpp`):
//! every thread a fiber, blocks concurrent, the schedule seedable, and every access checked
//! (bounds, alignment, races, the read-only path, shared memory size, warp collectives).
//! A correctness tool: `--device emu`, and the GPU tests in CI.
//!
//! Each allocation gets 256 bytes of unused space either side, so an access just outside one is
//! never inside another. Launches run synchronously, one at a time.

pub mod build;
mod ffi;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use crate::cuda::kernel::KernelImage;
use crate::cuda::probe::DeviceInfo;
use crate::device::{
    Device, DeviceFailure, DeviceKind, DevicePtr, LaunchShape, LoadedKernel, MemClass, TaskBytes,
    TimeMark,
};

/// How the emulator runs a launch.
#[derive(Debug, Clone, Default)]
pub struct EmuOptions {
    /// Seed of a random thread schedule (`MIMO_EMU_SEED`); `None`: threads run in order.
    pub seed: Option<u64>,
}

impl EmuOptions {
    /// The defaults with `MIMO_EMU_SEED` applied.
    pub fn from_env() -> Self {
        EmuOptions {
            seed: std::env::var("MIMO_EMU_SEED")
                .ok()
                .and_then(|s| s.parse().ok()),
        }
    }
}

/// Unused bytes on each side of every allocation.
const REDZONE: usize = 256;
/// One launch at a time in the process: a kernel library's runtime state is global, and two
/// devices loading the same kernel share one library (the loader opens a path once).
static LAUNCHES: Mutex<()> = Mutex::new(());

/// Rows of the per-task byte counters (kernel task indices beyond are not counted).
const COUNTED_TASKS: usize = 1 << 14;

struct HostAllocation {
    memory: Vec<u128>, // 16-byte units: the start is 16-byte aligned, the base 256-byte aligned
    base: u64,
    bytes: usize,
    class: MemClass,
    name: CString,
}

#[derive(Default)]
struct State {
    allocations: BTreeMap<u64, HostAllocation>,
    kernels: Vec<Arc<ffi::KernelLibrary>>,
    /// Per kernel: the dynamic shared memory a launch may pass (CUDA's 48 KB until the kernel
    /// opts in with [`Device::allow_dynamic_smem`]).
    dynamic_smem_allowed: Vec<u32>,
    launches: u64,
    task_bytes: Vec<u64>,
    counted_launches: u64,
}

/// The dynamic shared memory a kernel may take before it opts in for more (CUDA's rule).
const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

/// The emulated device (an sm_90a-like GPU whose kernels run on the CPU).
pub struct EmuDevice {
    info: DeviceInfo,
    options: EmuOptions,
    state: Mutex<State>,
}

impl EmuDevice {
    /// A new emulated device. Fails when no C++ compiler is found (kernels are built with it).
    #[allow(clippy::new_ret_no_self)] // the engine holds devices as `Arc<dyn Device>`
    pub fn new(options: EmuOptions) -> Result<Arc<dyn Device>> {
        let info = DeviceInfo {
            ordinal: 0,
            name: "mimo device emulator (sm_90a-like, on the CPU)".to_string(),
            sm_count: 132,
            memory_bytes: 16 << 30,
            compute_capability: (9, 0),
            max_shared_per_block: 232_448,
            cooperative_launch: true,
            driver_version: 13000,
        };
        Ok(Arc::new(EmuDevice {
            info,
            options,
            state: Mutex::new(State::default()),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// The host address range [ptr, ptr + len) of one allocation, or an error naming it.
    fn host_range(&mut self, ptr: DevicePtr, len: usize, what: &str) -> Result<*mut u8> {
        let (_, a) = self
            .allocations
            .range_mut(..=ptr)
            .next_back()
            .ok_or_else(|| anyhow!("{what}: {ptr:#x} is not device memory"))?;
        let offset = (ptr - a.base) as usize;
        if offset.checked_add(len).is_none_or(|end| end > a.bytes) {
            bail!(
                "{what}: {len} bytes at {ptr:#x} run past allocation `{}` ({} bytes)",
                a.name.to_string_lossy(),
                a.bytes
            );
        }
        let start = a.memory.as_mut_ptr() as *mut u8;
        let base_in_memory = (a.base - start as u64) as usize;
        // SAFETY: base_in_memory + offset + len <= the memory's length (checked above and at
        // allocation: memory holds REDZONE + alignment + bytes + REDZONE bytes).
        Ok(unsafe { start.add(base_in_memory + offset) })
    }
}

impl Device for EmuDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Emulator
    }

    fn describe(&self) -> String {
        "emu (the device emulator: sm_90a-like, on the CPU)".to_string()
    }

    fn free_memory(&self) -> Result<usize> {
        let used: usize = self.state().allocations.values().map(|a| a.bytes).sum();
        Ok(self.info.memory_bytes.saturating_sub(used))
    }

    fn alloc(&self, bytes: usize, class: MemClass, what: &str) -> Result<DevicePtr> {
        let bytes = bytes.max(1);
        let units = (bytes + 2 * REDZONE + 256).div_ceil(16);
        let mut memory = Vec::new();
        memory
            .try_reserve_exact(units)
            .map_err(|_| anyhow!("allocating {bytes} bytes for `{what}`: out of host memory"))?;
        memory.resize(units, 0u128);
        let start = memory.as_ptr() as u64;
        let base = (start + REDZONE as u64).next_multiple_of(256);
        let mut s = self.state();
        s.allocations.insert(
            base,
            HostAllocation {
                memory,
                base,
                bytes,
                class,
                name: ffi::c_name(what),
            },
        );
        Ok(base)
    }

    fn free(&self, ptr: DevicePtr) {
        self.state().allocations.remove(&ptr);
    }

    fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        let mut s = self.state();
        let p = s.host_range(dst, src.len(), "copying to the device")?;
        // SAFETY: host_range checked that [p, p + len) lies inside one live allocation, which
        // the held lock keeps alive; `src` is host memory, never device memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    fn copy_to_host(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        let mut s = self.state();
        let p = s.host_range(src, dst.len(), "copying from the device")?;
        // SAFETY: as in copy_to_device.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy_on_device(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        let mut s = self.state();
        let from = s.host_range(src, bytes, "copying on the device")?;
        let to = s.host_range(dst, bytes, "copying on the device")?;
        // SAFETY: both ranges lie inside live allocations (checked); `copy` allows overlap.
        unsafe { std::ptr::copy(from, to, bytes) };
        Ok(())
    }

    fn set(&self, dst: DevicePtr, bytes: usize, value: u8) -> Result<()> {
        let mut s = self.state();
        let p = s.host_range(dst, bytes, "setting device memory")?;
        // SAFETY: the range lies inside a live allocation (checked).
        unsafe { std::ptr::write_bytes(p, value, bytes) };
        Ok(())
    }

    fn load_kernel(&self, image: &KernelImage, entry: &str) -> Result<LoadedKernel> {
        if entry != crate::cuda::kernel::KERNEL_NAME {
            bail!(
                "the emulator runs the megakernel `{}` only, not `{entry}`",
                crate::cuda::kernel::KERNEL_NAME
            );
        }
        let (path, note) = build::build_kernel_library(&image.source)?;
        let library = ffi::KernelLibrary::open(&path)?;
        let expected = std::mem::size_of::<mimo_compiler::abi::KernelParams>() as u64;
        if library.params_bytes != expected {
            bail!(
                "kernel.cu's KernelParams has {} bytes, the runtime's {expected}: it was generated for another ABI than mimo_compiler::abi's",
                library.params_bytes
            );
        }
        let static_smem = library.static_smem as usize;
        let mut s = self.state();
        s.kernels.push(Arc::new(library));
        s.dynamic_smem_allowed.push(DEFAULT_DYNAMIC_SMEM);
        Ok(LoadedKernel {
            handle: (s.kernels.len() - 1) as u64,
            note,
            static_smem,
            registers: -1,
        })
    }

    fn allow_dynamic_smem(&self, kernel: &LoadedKernel, bytes: u32) -> Result<()> {
        if bytes as usize + kernel.static_smem > self.info.max_shared_per_block {
            bail!(
                "{bytes} bytes of dynamic shared memory (+ {} static) exceed the {} a block may use",
                kernel.static_smem,
                self.info.max_shared_per_block
            );
        }
        let mut s = self.state();
        let Some(allowed) = s.dynamic_smem_allowed.get_mut(kernel.handle as usize) else {
            bail!("no kernel {}", kernel.handle);
        };
        *allowed = (*allowed).max(bytes);
        Ok(())
    }

    fn resident_blocks_per_sm(
        &self,
        kernel: &LoadedKernel,
        _threads: u32,
        dynamic_smem: u32,
    ) -> Result<usize> {
        let per_block = dynamic_smem as usize + kernel.static_smem;
        Ok(if per_block > self.info.max_shared_per_block {
            0
        } else {
            1
        })
    }

    fn launch(
        &self,
        kernel: &LoadedKernel,
        shape: LaunchShape,
        params: &[u8],
    ) -> Result<(), DeviceFailure> {
        let mut s = self.state();
        let library = s
            .kernels
            .get(kernel.handle as usize)
            .cloned()
            .ok_or_else(|| DeviceFailure::Other(format!("no kernel {}", kernel.handle)))?;
        if params.len() as u64 != library.params_bytes {
            return Err(DeviceFailure::Other(format!(
                "the kernel takes {} bytes of parameters, the launch passes {}",
                library.params_bytes,
                params.len()
            )));
        }
        if shape.dynamic_smem as usize + kernel.static_smem > self.info.max_shared_per_block {
            return Err(DeviceFailure::Other(format!(
                "{} bytes of dynamic shared memory: more than a block may use",
                shape.dynamic_smem
            )));
        }
        let allowed = s.dynamic_smem_allowed[kernel.handle as usize];
        if shape.dynamic_smem > allowed {
            // What a GPU's launch refuses (CUDA_ERROR_INVALID_VALUE).
            return Err(DeviceFailure::Other(format!(
                "{} bytes of dynamic shared memory, above the {allowed} the kernel allows: above \
                 48 KB a kernel must opt in first (cuFuncSetAttribute \
                 MAX_DYNAMIC_SHARED_SIZE_BYTES, Device::allow_dynamic_smem)",
                shape.dynamic_smem
            )));
        }
        let table: Vec<ffi::EmuAllocation> = s
            .allocations
            .values()
            .map(|a| ffi::EmuAllocation {
                base: a.base,
                bytes: a.bytes as u64,
                mem_class: a.class.index() as u32,
                reserved: 0,
                name: a.name.as_ptr() as u64,
            })
            .collect();
        if s.task_bytes.is_empty() {
            s.task_bytes = vec![0; COUNTED_TASKS * ffi::CLASSES];
        }
        s.launches += 1;
        s.counted_launches += 1;
        let mut message = [0u8; ffi::MESSAGE_BYTES];
        let mut l = ffi::EmuLaunch {
            allocations: table.as_ptr() as u64,
            allocation_count: table.len() as u64,
            params: params.as_ptr() as u64,
            params_bytes: params.len() as u64,
            blocks: shape.blocks,
            threads: shape.threads,
            dynamic_smem: shape.dynamic_smem,
            randomize: self.options.seed.is_some() as u32,
            seed: self.options.seed.unwrap_or(0).wrapping_add(s.launches),
            launch_id: s.launches,
            task_count: COUNTED_TASKS as u32,
            message_bytes: ffi::MESSAGE_BYTES as u32,
            task_bytes: s.task_bytes.as_mut_ptr() as u64,
            message: message.as_mut_ptr() as u64,
            failed: 0,
            worker: 0,
            task: ffi::NO_TASK,
            reserved: 0,
            virtual_ns: 0,
        };
        // The allocations' memory, the names, the counters and the message buffer stay alive
        // (and unmoved) while the state is locked.
        let _one_at_a_time = LAUNCHES.lock().unwrap_or_else(|e| e.into_inner());
        library.launch(&mut l);
        if l.failed != 0 {
            let end = message
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(message.len());
            return Err(DeviceFailure::Check {
                worker: l.worker,
                task: (l.task != ffi::NO_TASK).then_some(l.task),
                message: String::from_utf8_lossy(&message[..end]).into_owned(),
            });
        }
        Ok(())
    }

    fn synchronize(&self, _deadline: Duration) -> Result<(), DeviceFailure> {
        Ok(()) // launches run to completion before they return
    }

    fn time_mark(&self) -> Result<TimeMark> {
        Ok(TimeMark(Box::new(Instant::now())))
    }

    fn elapsed_ms(&self, start: &TimeMark, end: &TimeMark) -> Result<f64> {
        match (
            start.0.downcast_ref::<Instant>(),
            end.0.downcast_ref::<Instant>(),
        ) {
            (Some(a), Some(b)) => Ok(b.saturating_duration_since(*a).as_secs_f64() * 1e3),
            _ => bail!("not a time mark of the emulator"),
        }
    }

    fn take_task_bytes(&self) -> Option<TaskBytes> {
        let mut s = self.state();
        let rows = s.task_bytes.len() / ffi::CLASSES;
        let used = (0..rows)
            .rev()
            .find(|&r| {
                s.task_bytes[r * ffi::CLASSES..(r + 1) * ffi::CLASSES]
                    .iter()
                    .any(|&b| b != 0)
            })
            .map_or(0, |r| r + 1);
        let per_task = (0..used)
            .map(|r| {
                let mut row = [0u64; ffi::CLASSES];
                row.copy_from_slice(&s.task_bytes[r * ffi::CLASSES..(r + 1) * ffi::CLASSES]);
                row
            })
            .collect();
        let launches = s.counted_launches;
        s.task_bytes.iter_mut().for_each(|b| *b = 0);
        s.counted_launches = 0;
        Some(TaskBytes { per_task, launches })
    }
}

#[cfg(test)]
mod tests {
    //! The emulator on a small kernel of its own (the megakernel's tests are in
    //! tests/gpu_kernel.rs): warp shuffles, a barrier over static shared memory, one mma, and
    //! each sabotage mode caught by the check meant for it.

    use super::*;

    /// `mode` 0: correct; 1: the barrier deleted (a race); 2: an out-of-bounds store; 3: a
    /// lane that leaves before the mma; 4: ld.global.nc of memory written in the launch.
    const KERNEL: &str = r#"
typedef unsigned u32;
struct KernelParams { float* out; const float* in; u32 mode; u32 pad[19]; };
__shared__ float tile[8];
extern "C" __global__ void mimo_megakernel(const __grid_constant__ KernelParams p) {
    const u32 t = threadIdx.x, b = blockIdx.x;
    float v = p.in[b * 64 + t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((t & 31) == 0) tile[t / 32] = v;
    if (p.mode != 1) __syncthreads();
    if (t == 0) p.out[b] = tile[0] + tile[1];
    if (p.mode == 2 && t == 5) p.out[100] = 1.0f;
    if (p.mode == 4 && t == 0) { __syncthreads(); }
    if (p.mode == 4 && t != 0) { __syncthreads(); float x; mimo_emu::ld_global(p.out + b, &x, 4, mimo_emu::kNonCoherent); }
    if (p.mode == 3 && t == 7) return;
    u32 a[4] = {0x3f803f80u, 0u, 0u, 0x3f803f80u};
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (t < 32) mimo_emu::mma_m16n8k16_row_col_f32_bf16_bf16_f32(d, a, 0x40003f80u, 0u);
    if (t == 0) p.out[2 + b] = d[0] + 100.0f * d[1];
}
"#;

    fn run(mode: u32, seed: Option<u64>) -> (Result<(), DeviceFailure>, Vec<f32>) {
        run_with(mode, seed, 0, false)
    }

    /// `run`, launching with `dynamic_smem` bytes of dynamic shared memory, after opting in for
    /// them when `opt_in`.
    fn run_with(
        mode: u32,
        seed: Option<u64>,
        dynamic_smem: u32,
        opt_in: bool,
    ) -> (Result<(), DeviceFailure>, Vec<f32>) {
        let dev = EmuDevice::new(EmuOptions { seed }).unwrap();
        let input: Vec<u8> = (0..128).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let inp = dev.alloc(input.len(), MemClass::Activations, "in").unwrap();
        dev.copy_to_device(inp, &input).unwrap();
        let out = dev.alloc(16, MemClass::Activations, "out").unwrap();
        let image = KernelImage {
            source: KERNEL.to_string(),
            cubin: None,
        };
        let k = dev
            .load_kernel(&image, crate::cuda::kernel::KERNEL_NAME)
            .unwrap();
        let mut params = Vec::new();
        params.extend(out.to_le_bytes());
        params.extend(inp.to_le_bytes());
        params.extend(mode.to_le_bytes());
        params.resize(96, 0);
        let shape = LaunchShape {
            blocks: 2,
            threads: 64,
            dynamic_smem,
            cooperative: true,
        };
        if opt_in {
            dev.allow_dynamic_smem(&k, dynamic_smem).unwrap();
        }
        let r = dev.launch(&k, shape, &params);
        let mut bytes = vec![0u8; 16];
        dev.copy_to_host(out, &mut bytes).unwrap();
        let floats = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (r, floats)
    }

    fn message(r: Result<(), DeviceFailure>) -> String {
        match r {
            Err(DeviceFailure::Check { message, .. }) => message,
            other => panic!("expected a check failure, got {other:?}"),
        }
    }

    #[test]
    fn runs_a_kernel_with_shuffles_barriers_and_mma() {
        for seed in [None, Some(1), Some(2)] {
            let (r, out) = run(0, seed);
            r.unwrap();
            // Block sums of 0..63 and 64..127; the mma: row 0 of A has ones in columns 0..7,
            // every column of B is (1, 2, 1, 2, ...), so D[0][0] = D[0][1] = 12.
            assert_eq!(out, vec![2016.0, 6112.0, 1212.0, 1212.0], "seed {seed:?}");
        }
    }

    #[test]
    fn dynamic_shared_memory_above_48_kb_needs_the_opt_in() {
        run_with(0, None, 48 * 1024, false).0.unwrap();
        match run_with(0, None, 64 * 1024, false).0 {
            Err(DeviceFailure::Other(m)) => assert!(m.contains("must opt in"), "{m}"),
            other => panic!("a launch above 48 KB without the opt-in ran: {other:?}"),
        }
        let (r, out) = run_with(0, None, 64 * 1024, true);
        r.unwrap();
        assert_eq!(out[0], 2016.0);
    }

    #[test]
    fn sabotaged_kernels_are_caught() {
        let m = message(run(1, None).0);
        assert!(m.contains("race") && m.contains("shared memory"), "{m}");
        let m = message(run(2, None).0);
        assert!(
            m.contains("out of bounds") && m.contains("past the end of allocation `out`"),
            "{m}"
        );
        let m = message(run(3, None).0);
        assert!(
            m.contains("skips a warp collective") && m.contains("mma.sync"),
            "{m}"
        );
        let m = message(run(4, None).0);
        assert!(m.contains("ld.global.nc"), "{m}");
    }
}
