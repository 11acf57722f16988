//! Timing on the device's own clock, for benchmarks: CUDA events recorded in stream order, the
//! milliseconds between them, and the device's measured copy bandwidth (the roofline a decode
//! step is compared with).
//!
//! Apart from the step path because no step needs it: `CudaEngine::bench_decode` and
//! `mimo bench` do.

use anyhow::Result;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice};

use super::call;
use super::megakernel::Megakernel;

impl Megakernel {
    /// A new CUDA event that records time (for benchmarks).
    pub fn timing_event(&self) -> Result<CudaEvent> {
        call("creating a CUDA event", || {
            self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        })
    }

    /// Records `event` in stream order.
    pub fn record(&self, event: &CudaEvent) -> Result<()> {
        call("recording a CUDA event", || event.record(&self.stream))
    }

    /// Milliseconds between two recorded events (both must have completed).
    pub fn elapsed_ms(start: &CudaEvent, end: &CudaEvent) -> Result<f64> {
        Ok(f64::from(call("reading CUDA event times", || {
            start.elapsed_ms(end)
        })?))
    }

    /// The device's copy bandwidth in GB/s, counting bytes read plus bytes written: a large
    /// device-to-device copy timed with events (after a warm-up copy).
    pub fn copy_bandwidth_gbs(&mut self) -> Result<f64> {
        self.check_usable()?;
        let (free, _) = call("reading the free device memory", || self.ctx.mem_get_info())?;
        let bytes = (1usize << 30).min(free / 4).max(1 << 20);
        let src = call("allocating a copy buffer", || {
            self.stream.alloc_zeros::<u8>(bytes)
        })?;
        let mut dst = call("allocating a copy buffer", || {
            self.stream.alloc_zeros::<u8>(bytes)
        })?;
        let copy = |dst: &mut CudaSlice<u8>| {
            call("copying device memory", || {
                self.stream.memcpy_dtod(&src, dst)
            })
        };
        copy(&mut dst)?;
        let (start, end) = (self.timing_event()?, self.timing_event()?);
        let reps = 20;
        self.record(&start)?;
        for _ in 0..reps {
            copy(&mut dst)?;
        }
        self.record(&end)?;
        let ms = Self::elapsed_ms(&start, &end)?;
        Ok(2.0 * bytes as f64 * reps as f64 / (ms / 1e3) / 1e9)
    }
}
