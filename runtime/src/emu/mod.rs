//! The device emulator (work in progress: see `templates/emu/`).

use std::sync::Arc;

use anyhow::{Result, bail};

use crate::device::Device;

/// How the emulator runs a launch.
#[derive(Debug, Clone, Default)]
pub struct EmuOptions {
    /// Seed of the thread schedule (`MIMO_EMU_SEED`); `None`: a fixed default order.
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

/// The emulated device.
pub struct EmuDevice;

impl EmuDevice {
    /// A new emulated device (an sm_90a-like GPU whose kernels run on the CPU).
    pub fn new(_options: EmuOptions) -> Result<Arc<dyn Device>> {
        bail!("the device emulator is not built yet")
    }
}
