//! [`CudaDevice`]: the [`Device`] boundary over a real NVIDIA GPU through `cudarc`: one context,
//! one stream every copy and launch is ordered on, the allocations it made, the kernels it
//! loaded, and CUDA events for waiting and timing. The rest of the engine never sees a cudarc
//! type; it asks for this through `Arc<dyn Device>`.
//!
//! Allocations are `CudaSlice<u8>`s kept here by device address and freed by [`Device::free`];
//! every copy is first checked to lie inside one of them, so a wrong address is an error, never
//! a stray write. Waiting ([`Device::synchronize`]) records an event and polls it against the
//! caller's deadline, so a kernel that never returns is a [`DeviceFailure::Hang`] rather than a
//! hung process. Every call into cudarc goes through [`super::call`] / [`super::guarded`]
//! (cudarc panics when a library or symbol is missing).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cudarc::driver::sys::{CUevent_flags, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr as _, DeviceRepr,
    DriverError, LaunchConfig, PushKernelArg, result,
};
use cudarc::nvrtc::Ptx;

use super::kernel::KernelImage;
use super::probe::DeviceInfo;
use super::{call, error_name, guarded};
use crate::device::{
    Device, DeviceFailure, DeviceKind, DevicePtr, LaunchShape, LoadedKernel, MemClass, TimeMark,
};

/// The largest by-value parameter list a launch may pass (CUDA's classic 4 KiB limit).
const PARAM_BYTES: usize = 4096;

/// A GPU as a [`Device`].
pub struct CudaDevice {
    info: DeviceInfo,
    /// Every live allocation, by its device address.
    allocations: Mutex<BTreeMap<DevicePtr, CudaSlice<u8>>>,
    /// Loaded kernels; [`LoadedKernel::handle`] indexes this.
    functions: Mutex<Vec<CudaFunction>>,
    /// Recorded by [`Device::synchronize`] and polled.
    done: Mutex<CudaEvent>,
    /// Timing events of dropped [`TimeMark`]s, reused so a timed loop creates none.
    spare_marks: Arc<Mutex<Vec<CudaEvent>>>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

/// A lock, also after a panic elsewhere held it (the data are plain maps and lists).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CudaDevice {
    /// Opens the GPU `info` describes (from [`super::probe::probe`]): its primary context and a
    /// stream of its own.
    pub fn open(info: &DeviceInfo) -> Result<Arc<dyn Device>> {
        let ctx = call("creating a CUDA context", || CudaContext::new(info.ordinal))?;
        // SAFETY: no slice or stream exists yet on this context object. Event tracking orders
        // work across streams; everything here runs on one stream, which orders it already, and
        // tracking would add two events per buffer per launch.
        guarded("configuring the CUDA context", || unsafe {
            ctx.disable_event_tracking()
        })?;
        let stream = call("creating a CUDA stream", || ctx.new_stream())?;
        let done = call("creating a CUDA event", || ctx.new_event(None))?;
        Ok(Arc::new(CudaDevice {
            info: info.clone(),
            allocations: Mutex::new(BTreeMap::new()),
            functions: Mutex::new(Vec::new()),
            done: Mutex::new(done),
            spare_marks: Arc::new(Mutex::new(Vec::new())),
            stream,
            ctx,
        }))
    }

    /// Calls `f` with this context bound to the calling thread (an engine may move between
    /// threads: a server steps it on whichever runs the request).
    fn bound<T>(&self, what: &str, f: impl FnOnce() -> Result<T, DriverError>) -> Result<T> {
        call(what, || {
            self.ctx.bind_to_thread()?;
            f()
        })
    }

    /// Refuses `bytes` bytes at `ptr` unless they lie inside one live allocation.
    fn check_range(&self, ptr: DevicePtr, bytes: usize, what: &str) -> Result<()> {
        let map = lock(&self.allocations);
        let inside = map.range(..=ptr).next_back().is_some_and(|(&base, slice)| {
            (ptr - base)
                .checked_add(bytes as u64)
                .is_some_and(|end| end <= slice.len() as u64)
        });
        if !inside {
            bail!("{what}: {bytes} bytes at {ptr:#x} are not inside one allocation on the GPU");
        }
        Ok(())
    }

    fn function(&self, kernel: &LoadedKernel) -> Result<CudaFunction> {
        lock(&self.functions)
            .get(kernel.handle as usize)
            .cloned()
            .with_context(|| format!("kernel handle {} is not loaded on the GPU", kernel.handle))
    }

    fn load_function(&self, cubin: Vec<u8>, entry: &str) -> Result<CudaFunction> {
        let module = self.bound("loading the kernel module (cuModuleLoadData)", || {
            self.ctx.load_module(Ptx::from_binary(cubin))
        })?;
        call(&format!("finding `{entry}` in the module"), || {
            module.load_function(entry)
        })
    }
}

/// The bytes of a launch's by-value parameters. The driver copies as many bytes as the kernel's
/// image declares for its parameters, so the block is the largest list a kernel may take,
/// zero past the caller's bytes: whatever the kernel declares, the read stays inside it.
#[repr(C, align(16))]
struct ParamBlock([u8; PARAM_BYTES]);

// SAFETY: plain bytes with no padding, valid for any bit pattern, 16-byte aligned (the largest
// alignment of a kernel parameter), so the driver may copy any parameter list out of it.
unsafe impl DeviceRepr for ParamBlock {}

/// A timing event that goes back to its device's spare list when the mark is dropped.
struct PooledEvent {
    event: Option<CudaEvent>,
    pool: Arc<Mutex<Vec<CudaEvent>>>,
}

impl Drop for PooledEvent {
    fn drop(&mut self) {
        if let Some(e) = self.event.take() {
            lock(&self.pool).push(e);
        }
    }
}

impl Device for CudaDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda
    }

    fn free_memory(&self) -> Result<usize> {
        Ok(self
            .bound("reading the free device memory", || self.ctx.mem_get_info())?
            .0)
    }

    fn alloc(&self, bytes: usize, _class: MemClass, what: &str) -> Result<DevicePtr> {
        let slice = self.bound(&format!("allocating the {what} ({bytes} bytes)"), || {
            self.stream.alloc_zeros::<u8>(bytes.max(1))
        })?;
        let ptr = guarded("reading a device address", || {
            slice.device_ptr(&self.stream).0
        })?;
        lock(&self.allocations).insert(ptr, slice);
        Ok(ptr)
    }

    fn free(&self, ptr: DevicePtr) {
        let slice = lock(&self.allocations).remove(&ptr);
        if let Some(slice) = slice {
            // Freed in stream order, after the work using it (cudarc's drop does not bind the
            // context itself); a failure here has nowhere to go.
            let _ = guarded("freeing device memory", || {
                let _ = self.ctx.bind_to_thread();
                drop(slice)
            });
        }
    }

    fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        let what = "copying to the device";
        self.check_range(dst, src.len(), what)?;
        self.bound(what, || {
            // SAFETY: `dst..dst + len` lies inside a live allocation of this context (checked
            // above); `src` is readable for the call, and for pageable host memory the driver
            // has staged the bytes before it returns, so `src` may go away afterwards.
            unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
        })
    }

    fn copy_to_host(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        let what = "copying to the host";
        self.check_range(src, dst.len(), what)?;
        self.bound(what, || {
            // SAFETY: `src..src + len` lies inside a live allocation of this context (checked
            // above); `dst` is writable for its whole length and outlives the copy, which the
            // stream synchronisation below completes before `dst` is handed back.
            unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }?;
            self.stream.synchronize()
        })
    }

    fn copy_on_device(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        let what = "copying device memory";
        self.check_range(src, bytes, what)?;
        self.check_range(dst, bytes, what)?;
        self.bound(what, || {
            // SAFETY: both ranges lie inside live allocations of this context (checked above);
            // the copy is ordered on the stream every launch uses.
            unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
        })
    }

    fn set(&self, dst: DevicePtr, bytes: usize, value: u8) -> Result<()> {
        let what = "setting device memory";
        self.check_range(dst, bytes, what)?;
        self.bound(what, || {
            // SAFETY: the range lies inside a live allocation of this context (checked above);
            // the memset is ordered on the stream every launch uses.
            unsafe { result::memset_d8_async(dst, value, bytes, self.stream.cu_stream()) }
        })
    }

    fn load_kernel(&self, image: &KernelImage, entry: &str) -> Result<LoadedKernel> {
        let (function, note) =
            image.load_with(&self.info, |cubin| self.load_function(cubin, entry))?;
        let static_smem = call("reading the kernel's shared memory", || {
            function.shared_size_bytes()
        })?
        .max(0) as usize;
        let registers = guarded("reading the kernel's registers", || function.num_regs())
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(-1);
        let mut functions = lock(&self.functions);
        functions.push(function);
        Ok(LoadedKernel {
            handle: (functions.len() - 1) as u64,
            note,
            static_smem,
            registers,
        })
    }

    fn allow_dynamic_smem(&self, kernel: &LoadedKernel, bytes: u32) -> Result<()> {
        let function = self.function(kernel)?;
        let bytes = i32::try_from(bytes).context("dynamic shared memory past 2 GB")?;
        self.bound("raising the kernel's dynamic shared memory limit", || {
            function.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes,
            )
        })
    }

    fn resident_blocks_per_sm(
        &self,
        kernel: &LoadedKernel,
        threads: u32,
        dynamic_smem: u32,
    ) -> Result<usize> {
        let function = self.function(kernel)?;
        Ok(self.bound("computing the kernel's occupancy", || {
            function.occupancy_max_active_blocks_per_multiprocessor(
                threads,
                dynamic_smem as usize,
                None,
            )
        })? as usize)
    }

    fn launch(
        &self,
        kernel: &LoadedKernel,
        shape: LaunchShape,
        params: &[u8],
    ) -> Result<(), DeviceFailure> {
        let other = |e: anyhow::Error| DeviceFailure::Other(format!("{e:#}"));
        let function = self.function(kernel).map_err(other)?;
        if params.len() > PARAM_BYTES {
            return Err(DeviceFailure::Other(format!(
                "{} bytes of kernel parameters; a launch passes at most {PARAM_BYTES}",
                params.len()
            )));
        }
        let mut block = ParamBlock([0; PARAM_BYTES]);
        block.0[..params.len()].copy_from_slice(params);
        let cfg = LaunchConfig {
            grid_dim: (shape.blocks, 1, 1),
            block_dim: (shape.threads, 1, 1),
            shared_mem_bytes: shape.dynamic_smem,
        };
        let mut builder = self.stream.launch_builder(&function);
        builder.arg(&block);
        let what = if shape.cooperative {
            "cuLaunchCooperativeKernel"
        } else {
            "cuLaunchKernel"
        };
        call(what, || {
            // SAFETY: the kernel's parameters are copied from `block`, which holds the caller's
            // bytes (the kernel's one by-value parameter, laid out as its source declares it:
            // see `Device::launch`) and zeros up to the largest list a kernel may declare. The
            // caller guarantees that every address in them is a live allocation of this device
            // sized for what the kernel reads, that the grid can be co-resident and that
            // `dynamic_smem` is within the limit it raised (`Megakernel::on`, megakernel.rs).
            unsafe {
                if shape.cooperative {
                    builder.launch_cooperative(cfg)
                } else {
                    builder.launch(cfg)
                }
            }
            .map(|_| ())
        })
        .map_err(other)
    }

    fn synchronize(&self, deadline: Duration) -> Result<(), DeviceFailure> {
        let fault = |what: &str, r: Result<Result<(), DriverError>>| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DeviceFailure::Fault(format!("{what}: {}", error_name(e)))),
            Err(panic) => Err(DeviceFailure::Fault(format!("{what}: {panic}"))),
        };
        let done = lock(&self.done);
        fault(
            "binding the CUDA context",
            guarded("binding", || self.ctx.bind_to_thread()),
        )?;
        fault(
            "recording the end of the work",
            guarded("recording", || done.record(&self.stream)),
        )?;
        let started = Instant::now();
        let mut polls = 0u32;
        loop {
            match guarded("polling", || done.try_is_complete()) {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => return Err(DeviceFailure::Fault(error_name(e))),
                Err(panic) => return Err(DeviceFailure::Fault(panic.to_string())),
            }
            if started.elapsed() > deadline {
                return Err(DeviceFailure::Hang);
            }
            polls += 1;
            if polls < 2000 {
                std::hint::spin_loop();
            } else if polls < 20_000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    fn time_mark(&self) -> Result<TimeMark> {
        let spare = lock(&self.spare_marks).pop();
        let event = match spare {
            Some(e) => e,
            None => self.bound("creating a CUDA event", || {
                self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            })?,
        };
        let mark = PooledEvent {
            event: Some(event),
            pool: self.spare_marks.clone(),
        };
        if let Some(e) = &mark.event {
            self.bound("recording a CUDA event", || e.record(&self.stream))?;
        }
        Ok(TimeMark(Box::new(mark)))
    }

    fn elapsed_ms(&self, start: &TimeMark, end: &TimeMark) -> Result<f64> {
        fn event(m: &TimeMark) -> Result<&CudaEvent> {
            m.0.downcast_ref::<PooledEvent>()
                .and_then(|p| p.event.as_ref())
                .context("a time mark of another device")
        }
        let (start, end) = (event(start)?, event(end)?);
        Ok(f64::from(self.bound("reading CUDA event times", || {
            start.elapsed_ms(end)
        })?))
    }
}
