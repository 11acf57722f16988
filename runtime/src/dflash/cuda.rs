//! DFlash on the megakernel (a GPU, or the emulator): the target's programs on a [`CudaEngine`]
//! (verify blocks accepted by the program's own `accept` op), the draft's programs on a
//! [`super::CompiledRunner`] over a [`crate::cuda::CudaBackend`] behind the same
//! [`super::DFlashDrafter`] the CPU paths use, both on one device over one weight upload (the
//! draft reads the target's `embed` and `lm_head`), each model with its own device KV cache.
//!
//! The features of the committed rows reach the draft through the host: the verify program's
//! `features` and the draft program's `context` live in different arenas, each laid out by its
//! own memory plan, and the drafter decides how the rows are split into draft programs (pieces of
//! at most B rows), so the [`crate::dflash::Drafter`] interface carries them as host rows. That is
//! `(accepted + 1) x len(capture layers) x hidden` floats per step, read with the acceptance.
//! [`crate::cuda::Megakernel::copy_arena_to`] is the device-to-device copy a direct hand-over
//! will use.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::DFlashDrafter;
use super::artifact::SpeculativeArtifact;
use crate::cuda::{self, CudaEngine, KernelImage, KernelSource, LaunchOptions};
use crate::device::Device;
use crate::engine::TargetProgram;
use crate::session::{Session, artifact_compile_options, artifact_target_programs};

/// Speculative decoding of an artifact on the GPU: its `decode`, `verify` and `draft` programs
/// (the others compiled on first use, their kernels the artifact's `kernel.cu` with the
/// generated header swapped), the weights of the target and the draft uploaded once.
pub(super) fn open_artifact(
    dir: &Path,
    draft: &Path,
    block_size: Option<usize>,
    device: &Arc<dyn Device>,
    notes: Vec<String>,
) -> Result<(Session, DFlashDrafter)> {
    let opened = SpeculativeArtifact::open(dir, draft, block_size)?;
    let (art, spec) = (&opened.art, &opened.model.spec);
    let options = artifact_compile_options(art)?;
    let decode = art
        .program("decode")
        .with_context(|| format!("{}: no `decode` graph", dir.display()))?
        .clone();
    let image = KernelImage::from_artifact(art)?;
    let source = KernelSource::from_kernel(spec, &decode, &image);
    let shared = cuda::DeviceContext::new(device, &opened.model.weights, None)?;
    let launch = LaunchOptions::from_env();
    let mut engine = CudaEngine::on(
        shared,
        spec.clone(),
        decode,
        &image,
        source,
        options,
        launch,
    )?;
    // `decode` is the engine's own, with the artifact's kernel; the others get generated ones.
    for target in artifact_target_programs(art) {
        let (which, name, program) = target?;
        if which != TargetProgram::Decode {
            engine
                .insert(which, program.clone(), None)
                .with_context(|| format!("{}: graph `{name}` on the GPU", dir.display()))?;
        }
    }
    opened.start(engine, notes)
}
