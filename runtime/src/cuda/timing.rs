//! Timing on the device's own clock, for benchmarks: time marks in stream order
//! ([`crate::device::Device::time_mark`]: CUDA events on a GPU), the milliseconds between them,
//! and the device's measured copy bandwidth (the roofline a decode step is compared with).
//!
//! Apart from the step path because no step needs it: `CudaEngine::bench_decode` and
//! `mimo bench` do.

use anyhow::{Context, Result};

use super::megakernel::Megakernel;
use crate::device::{DeviceBuffer, MemClass, TimeMark};

impl Megakernel {
    /// Marks the current point of the device's work (for benchmarks).
    pub fn time_mark(&self) -> Result<TimeMark> {
        self.dev.time_mark()
    }

    /// Milliseconds between two marks (waits for both to complete).
    pub fn elapsed_ms(&self, start: &TimeMark, end: &TimeMark) -> Result<f64> {
        self.dev.elapsed_ms(start, end)
    }

    /// The device's copy bandwidth in GB/s, counting bytes read plus bytes written: a large
    /// device-to-device copy timed with time marks (after a warm-up copy).
    pub fn copy_bandwidth_gbs(&mut self) -> Result<f64> {
        self.check_usable()?;
        let free = self.dev.free_memory()?;
        let bytes = (1usize << 30).min(free / 4).max(1 << 20);
        let src = DeviceBuffer::zeroed(&self.dev, bytes, MemClass::Other, "copy buffer")?;
        let dst = DeviceBuffer::zeroed(&self.dev, bytes, MemClass::Other, "copy buffer")?;
        let copy = || {
            self.dev
                .copy_on_device(dst.ptr(), src.ptr(), bytes)
                .context("copying device memory")
        };
        copy()?;
        let reps = 20;
        let start = self.time_mark()?;
        for _ in 0..reps {
            copy()?;
        }
        let end = self.time_mark()?;
        let ms = self.elapsed_ms(&start, &end)?;
        Ok(2.0 * bytes as f64 * reps as f64 / (ms / 1e3) / 1e9)
    }
}
