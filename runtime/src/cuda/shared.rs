//! What the programs of one generation share on the device.
//!
//! A target runs several programs over one sequence (the one-token `decode` program, a `verify`
//! program per block length) and a DFlash draft one program per number of context rows. Each
//! program has its own task tables, arena and event counters ([`super::Megakernel`]), but:
//!
//! - all of them run on one device ([`DeviceContext`], whose work is ordered as on one stream),
//!   so stream order alone orders a verify step's cache writes before the next draft step, and an
//!   arena value of one program can be copied into another's without the host;
//! - the weights are uploaded once, target's and draft's together, into one pool; each program
//!   gets only its own `WeightRef` table pointing into it ([`super::upload::table_words`]);
//! - each model's KV cache is one device buffer ([`DeviceKv`]) shared by all of that model's
//!   programs (target and draft have one each), exactly as [`crate::exec::SharedState`] does on
//!   the CPU; a program joins only when its memory plan lays the cache out identically.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mimo_compiler::Program;
use mimo_compiler::plan::StateLayout;
use mimo_ir::weights::WeightStore;

use super::probe::DeviceInfo;
use super::upload::{DeviceWeights, plan_layout};
use crate::device::{Device, DeviceBuffer, MemClass};

/// A device with a model's weights on it.
pub struct DeviceContext {
    pub(super) weights: DeviceWeights,
    pub(super) device: Arc<dyn Device>,
}

impl DeviceContext {
    /// `device` with the weights `names` of `store` uploaded (every weight of the store when
    /// `None`: a target and its draft in one store, for all their programs).
    pub fn new(
        device: &Arc<dyn Device>,
        store: &WeightStore,
        names: Option<&[String]>,
    ) -> Result<Arc<Self>> {
        let all: Vec<String>;
        let names = match names {
            Some(n) => n,
            None => {
                all = store.iter().map(|(n, _)| n.to_string()).collect();
                &all
            }
        };
        let layout = plan_layout(names, store)?;
        let free = device.free_memory()?;
        if layout.bytes > free {
            bail!(
                "the weights need {:.2} GB of device memory; {} has {:.2} GB free",
                layout.bytes as f64 / 1e9,
                device.describe(),
                free as f64 / 1e9
            );
        }
        let weights = DeviceWeights::upload(device, layout, store)?;
        Ok(Arc::new(DeviceContext {
            weights,
            device: device.clone(),
        }))
    }

    /// The device the programs run on.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.device
    }

    /// What the device is.
    pub fn info(&self) -> &DeviceInfo {
        self.device.info()
    }

    /// Bytes of device memory the weights take.
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }
}

/// One model's KV cache on the device, shared by every program of that model.
pub struct DeviceKv {
    /// Which model's (for messages: `target`, `draft`).
    name: String,
    layout: StateLayout,
    /// Zeroed between sequences; programs read and write it through its address.
    buffer: DeviceBuffer,
}

impl DeviceKv {
    /// A zeroed cache laid out as `program` places its state.
    pub fn for_program(dc: &DeviceContext, program: &Program, name: &str) -> Result<Arc<Self>> {
        let layout = StateLayout::of(program);
        let buffer = DeviceBuffer::zeroed(
            &dc.device,
            layout.len.max(1) * 2,
            MemClass::Kv,
            &format!("{name} KV cache"),
        )?;
        Ok(Arc::new(DeviceKv {
            name: name.to_string(),
            layout,
            buffer,
        }))
    }

    /// Refuses a program whose cache is not exactly this one (other caches, other sizes).
    pub fn check(&self, program: &Program) -> Result<()> {
        match self.layout.mismatch(&StateLayout::of(program)) {
            None => Ok(()),
            Some(detail) => bail!(
                "graph `{}` lays out its KV state unlike the {} programs it would share the device cache with: {detail}",
                program.graph.name,
                self.name
            ),
        }
    }

    /// Device address of the cache.
    pub fn ptr(&self) -> u64 {
        self.buffer.ptr()
    }

    /// Zeroes the cache (in stream order): a new sequence.
    pub fn zero(&self) -> Result<()> {
        self.buffer
            .zero()
            .with_context(|| format!("zeroing the {} KV cache", self.name))
    }
}
