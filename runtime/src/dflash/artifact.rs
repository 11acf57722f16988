//! An artifact opened with a DFlash draft, for either compiled backend ([`super::compiled`] on
//! the CPU schedule executor, [`super::cuda`] on the GPU): the model it was compiled from, the
//! draft checked against the draft programs it holds, both models' weights in one store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mimo_compiler::Program;
use mimo_compiler::artifact::{Artifact, draft_hash};
use mimo_ir::model::dflash::DraftSpec;

use super::compiled::join;
use super::{CompiledRunner, DFlashDrafter, Drafter};
use crate::draft::load_draft;
use crate::engine::{Backend, Engine, ProgramEngine};
use crate::model::LoadedModel;
use crate::session::{Session, load_artifact_model};

pub(super) struct SpeculativeArtifact {
    pub art: Artifact,
    /// The target model, its weights joined by the draft's (the draft reads the target's
    /// `embed` and `lm_head`, so one store holds both).
    pub model: LoadedModel,
    pub draft: DraftSpec,
    pub draft_dir: PathBuf,
    /// The block asked for, else the one the artifact's draft programs were compiled for.
    pub block_size: Option<usize>,
}

impl SpeculativeArtifact {
    /// The artifact at `dir` with the draft at `draft`; refused when the artifact's draft
    /// programs were compiled for another draft (a stale artifact).
    pub fn open(dir: &Path, draft: &Path, block_size: Option<usize>) -> Result<Self> {
        let (art, mut model) = load_artifact_model(dir)?;
        let loaded = load_draft(draft, &model.spec)
            .with_context(|| format!("loading the draft {}", draft.display()))?;
        let compiled_for = art.manifest.draft.as_ref();
        if let Some(entry) = compiled_for
            && draft_hash(&loaded.spec) != entry.config_hash
        {
            bail!(
                "{}: stale artifact: its draft programs were compiled for {} (config hash {}), but the draft {} hashes {}; run mimo-compile again",
                dir.display(),
                entry.source.display(),
                entry.config_hash,
                loaded.dir.display(),
                draft_hash(&loaded.spec)
            );
        }
        let block_size = block_size.or(compiled_for.map(|d| d.block_size));
        for (name, w) in loaded.weights.iter() {
            model.weights.insert(name, w.clone());
        }
        Ok(SpeculativeArtifact {
            art,
            model,
            draft: loaded.spec,
            draft_dir: loaded.dir,
            block_size,
        })
    }

    /// The artifact's draft programs by shape (block tokens, context rows).
    pub fn draft_programs(&self) -> impl Iterator<Item = (&str, (usize, usize), &Program)> {
        self.art.manifest.graphs.iter().filter_map(|g| {
            let rows = g.context_rows?;
            Some((
                g.name.as_str(),
                (g.tokens, rows),
                self.art.program(&g.name)?,
            ))
        })
    }

    /// The session of `engine` (the target, with the artifact's target programs) and the
    /// artifact's drafter on the same device: its draft programs added up front, the other
    /// shapes compiled when first met.
    pub fn start<B: Backend + 'static>(
        self,
        engine: ProgramEngine<B>,
        mut notes: Vec<String>,
    ) -> Result<(Session, DFlashDrafter)> {
        let mut runner = CompiledRunner::on(engine.programs().for_draft());
        for (name, shape, program) in self.draft_programs() {
            runner
                .insert(shape, program.clone())
                .with_context(|| format!("{}: graph `{name}`", self.art.dir.display()))?;
        }
        let (engine, drafter) = join(engine, runner, self.draft.clone(), self.block_size)?;
        let dir = self.art.dir.display().to_string();
        notes.push(format!(
            "speculative decoding of {dir} with the DFlash draft {} (block of {}) on {}",
            self.draft_dir.display(),
            drafter.block_size(),
            engine.device()
        ));
        let session = Session {
            engine: Box::new(engine),
            tokenizer: self.model.tokenizer,
            eos_token_ids: self.model.eos_token_ids,
            name: dir,
            notes,
        };
        Ok((session, drafter))
    }
}
