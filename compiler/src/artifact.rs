//! The artifact directory `mimo-compile` writes and the runtime opens:
//!
//! ```text
//! manifest.toml            format and compiler versions, the model, its config hash, the target
//! <graph>.graph.json       the (rewritten) IR graph: `decode`; with a DFlash draft also
//!                          `verify` (block tokens) and `draft` (block tokens, block context rows)
//! <graph>.fused.json       the fused ops, with member names for reading
//! <graph>.schedule.json    tasks, events, worker queues, memory plan, cost-model machine
//! kernel.cu                the self-contained megakernel source
//! kernel.<arch>.cubin      the kernel compiled by NVRTC (when NVRTC was available)
//! report.md                tasks, events, bytes per step, roofline, kernel resources
//! ```
//!
//! An artifact is tied to a model shape and a compiler version: opening one with another compiler
//! version, or running it with weights whose config hashes differently, is refused. Its draft
//! programs are tied to the draft's config hash the same way.

use std::fs;
use std::path::{Path, PathBuf};

use mimo_ir::ModelSpec;
use mimo_ir::graph::Graph;
use mimo_ir::model::dflash::DraftSpec;
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::program::Program;

/// Bumped whenever the files' meaning changes.
pub const FORMAT_VERSION: u32 = 1;
/// The compiler that wrote an artifact must be the one that reads it.
pub const COMPILER_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{}: written by mimo-compile {found} (format {found_format}); this is {COMPILER_VERSION} (format {FORMAT_VERSION}): recompile it",
        path.display()
    )]
    Stale {
        path: PathBuf,
        found: String,
        found_format: u32,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `manifest.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub compiler_version: String,
    /// Target GPU architecture (`sm_90a`).
    pub arch: String,
    pub model: ModelEntry,
    pub graphs: Vec<GraphEntry>,
    pub kernel: KernelEntry,
    /// The DFlash draft the `draft` graphs were compiled for (a model.toml's `[speculative]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<DraftEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The model.toml or Hugging Face directory compiled (absolute), where the weights come from;
    /// absent for a model.toml that describes an architecture only.
    pub source: Option<PathBuf>,
    /// Hash of the model spec (shapes, formats, hyper-parameters) the artifact was compiled for.
    pub config_hash: String,
    pub max_context: usize,
    pub spec: ModelSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphEntry {
    pub name: String,
    pub tokens: usize,
    pub tasks: usize,
    pub events: usize,
    pub workers: usize,
    /// A verify graph's captured target layers, in order (DFlash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_layers: Option<Vec<usize>>,
    /// A draft graph's new context rows per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_rows: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftEntry {
    /// The draft's directory (absolute), where its weights come from.
    pub source: PathBuf,
    /// [`draft_hash`] of `spec`.
    pub config_hash: String,
    /// Tokens per block the `verify` and `draft` graphs were compiled for.
    pub block_size: usize,
    pub spec: DraftSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelEntry {
    pub source: String,
    pub source_hash: String,
    pub abi_version: u32,
    /// The CUBIN file, when NVRTC was available at compile time.
    pub cubin: Option<String>,
}

/// FNV-1a, 64 bits: a stable content hash (not for security).
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The hash that ties an artifact to a model shape.
pub fn config_hash(spec: &ModelSpec) -> String {
    fnv1a(
        serde_json::to_string(spec)
            .expect("a spec serialises")
            .as_bytes(),
    )
}

/// The hash that ties draft programs to a draft's shape.
pub fn draft_hash(spec: &DraftSpec) -> String {
    fnv1a(
        serde_json::to_string(spec)
            .expect("a draft spec serialises")
            .as_bytes(),
    )
}

/// An artifact read back.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub programs: Vec<(String, Program)>,
}

impl Artifact {
    /// Whether `dir` looks like an artifact (has a manifest).
    pub fn is_artifact(dir: &Path) -> bool {
        dir.join("manifest.toml").is_file()
    }

    /// Reads an artifact, refusing one written by another compiler version.
    pub fn open(dir: &Path) -> Result<Artifact, ArtifactError> {
        let manifest = Self::manifest(dir)?;
        let mut programs = Vec::new();
        for g in &manifest.graphs {
            let read = |suffix: &str| -> Result<serde_json::Value, ArtifactError> {
                let p = dir.join(format!("{}.{suffix}.json", g.name));
                let text = fs::read_to_string(&p).map_err(io(&p))?;
                serde_json::from_str(&text).map_err(|e| ArtifactError::Invalid {
                    path: p.clone(),
                    message: e.to_string(),
                })
            };
            let doc = json!({ "graph": read("graph")?, "program": merge(read("fused")?, read("schedule")?) });
            let program = Program::from_json(&doc).map_err(|e| ArtifactError::Invalid {
                path: dir.join(format!("{}.schedule.json", g.name)),
                message: e.to_string(),
            })?;
            programs.push((g.name.clone(), program));
        }
        Ok(Artifact {
            dir: dir.to_path_buf(),
            manifest,
            programs,
        })
    }

    /// Reads an artifact's manifest alone, with the same checks as [`Artifact::open`].
    pub fn manifest(dir: &Path) -> Result<Manifest, ArtifactError> {
        let path = dir.join("manifest.toml");
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let head: toml::Value = toml::from_str(&text).map_err(|e| ArtifactError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let found = head
            .get("compiler_version")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string();
        let found_format = head
            .get("format_version")
            .and_then(|v| v.as_integer())
            .unwrap_or(0) as u32;
        if found != COMPILER_VERSION || found_format != FORMAT_VERSION {
            return Err(ArtifactError::Stale {
                path,
                found,
                found_format,
            });
        }
        let manifest: Manifest = toml::from_str(&text).map_err(|e| ArtifactError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if config_hash(&manifest.model.spec) != manifest.model.config_hash {
            return Err(ArtifactError::Invalid {
                path,
                message: "model.config_hash does not match model.spec".into(),
            });
        }
        if let Some(d) = &manifest.draft
            && draft_hash(&d.spec) != d.config_hash
        {
            return Err(ArtifactError::Invalid {
                path,
                message: "draft.config_hash does not match draft.spec".into(),
            });
        }
        Ok(manifest)
    }

    pub fn program(&self, name: &str) -> Option<&Program> {
        self.programs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
    }
}

fn merge(a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    let mut obj = a.as_object().cloned().unwrap_or_default();
    obj.extend(b.as_object().cloned().unwrap_or_default());
    serde_json::Value::Object(obj)
}

/// Everything an artifact holds, to write.
pub struct ArtifactFiles<'a> {
    pub manifest: &'a Manifest,
    pub programs: &'a [(&'a str, &'a Program)],
    pub kernel_source: &'a str,
    pub cubin: Option<&'a [u8]>,
    pub report: &'a str,
}

/// Writes an artifact into `dir` (created if needed; existing artifact files are replaced).
pub fn write(dir: &Path, files: &ArtifactFiles<'_>) -> Result<(), ArtifactError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let put = |name: &str, bytes: &[u8]| -> Result<(), ArtifactError> {
        let p = dir.join(name);
        fs::write(&p, bytes).map_err(io(&p))
    };
    for (name, program) in files.programs {
        let doc = program.to_json();
        let parts = &doc["program"];
        put(
            &format!("{name}.graph.json"),
            pretty(&doc["graph"]).as_bytes(),
        )?;
        let fused =
            json!({ "ops": parts["ops"], "op_members": member_names(&program.graph, program) });
        put(&format!("{name}.fused.json"), pretty(&fused).as_bytes())?;
        let schedule = json!({
            "machine": parts["machine"], "tasks": parts["tasks"], "events": parts["events"],
            "schedule": parts["schedule"], "memory": parts["memory"],
        });
        put(
            &format!("{name}.schedule.json"),
            pretty(&schedule).as_bytes(),
        )?;
    }
    put(
        &files.manifest.kernel.source,
        files.kernel_source.as_bytes(),
    )?;
    if let (Some(cubin), Some(name)) = (files.cubin, &files.manifest.kernel.cubin) {
        put(name, cubin)?;
    }
    put("report.md", files.report.as_bytes())?;
    let manifest = toml::to_string(files.manifest).map_err(|e| ArtifactError::Invalid {
        path: dir.join("manifest.toml"),
        message: e.to_string(),
    })?;
    put("manifest.toml", manifest.as_bytes())
}

/// For people reading the JSON: each fused op's member node names.
fn member_names(graph: &Graph, program: &Program) -> Vec<Vec<String>> {
    program
        .ops
        .iter()
        .map(|op| {
            op.members
                .iter()
                .map(|m| graph.node(NodeIndex::new(m.node)).name.clone())
                .collect()
        })
        .collect()
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values serialise")
}
