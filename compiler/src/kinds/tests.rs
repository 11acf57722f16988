//! The DFlash programs (the target's verify graph and the draft graph) on the megakernel: which
//! fused kinds they come out as.

use mimo_ir::model::dflash::{DraftSpec, default_target_layer_ids, draft_graph, verify_graph};
use mimo_ir::{Architecture, Graph, ModelSpec};
use petgraph::graph::NodeIndex;

use crate::fuse::{FusedKind, UnitMap};
use crate::{CompileOptions, Machine, Program, compile};

/// Block size and new context rows of the programs under test.
pub const BLOCK: usize = 16;
pub const CONTEXT_ROWS: usize = 16;

/// A 5-layer draft for `target` (dense MLP of `intermediate` features).
pub fn draft_for(target: &ModelSpec, intermediate: usize, ids: Vec<usize>) -> DraftSpec {
    DraftSpec {
        hidden_size: target.hidden_size,
        num_layers: 5,
        num_heads: target.num_heads,
        num_kv_heads: target.num_kv_heads,
        head_dim: target.head_dim,
        intermediate_size: intermediate,
        rope_theta: target.rope_theta,
        rms_norm_eps: target.rms_norm_eps,
        max_position_embeddings: target.max_position_embeddings,
        block_size: BLOCK,
        target_layer_ids: ids,
        mask_token_id: (target.vocab_size - 1) as u32,
        num_target_layers: Some(target.num_layers),
        format: target.formats.dense,
    }
}

/// (name, target, draft) of the models under test: the tiny test model (its two layers captured,
/// in the order the DFlash tests use) and Qwen3-30B-A3B's shape with its default five ids.
pub fn models() -> Vec<(&'static str, ModelSpec, DraftSpec)> {
    let tiny = ModelSpec::tiny(Architecture::Qwen3Moe);
    let tiny_draft = draft_for(&tiny, 48, vec![1, 0]);
    let big = ModelSpec::qwen3_30b_a3b();
    let big_draft = draft_for(&big, 6144, default_target_layer_ids(big.num_layers, 5));
    vec![
        ("tiny", tiny, tiny_draft),
        ("qwen3-30b-a3b", big, big_draft),
    ]
}

/// The verify and draft graphs of one model, with their names.
pub fn graphs(
    target: &ModelSpec,
    draft: &DraftSpec,
    max_context: usize,
) -> Vec<(&'static str, Graph)> {
    vec![
        (
            "verify",
            verify_graph(target, BLOCK, max_context, &draft.target_layer_ids).unwrap(),
        ),
        (
            "draft",
            draft_graph(draft, target, BLOCK, CONTEXT_ROWS, max_context).unwrap(),
        ),
    ]
}

pub fn compile_on(graph: &Graph, workers: usize) -> Program {
    compile(
        graph,
        &CompileOptions::for_machine(Machine {
            workers,
            ..Machine::h100()
        }),
    )
    .unwrap()
}

fn describe(p: &Program) -> Vec<String> {
    p.ops
        .iter()
        .map(|op| {
            let names: Vec<String> = op
                .members
                .iter()
                .map(|m| {
                    let n = p.graph.node(NodeIndex::new(m.node));
                    let kind = n.op().map_or("?", |o| o.name());
                    let whole = if m.map == UnitMap::Whole { "*" } else { "" };
                    format!("{}:{kind}{whole}", n.name)
                })
                .collect();
            format!(
                "{:?} units={} q={} [{}]",
                op.kind,
                op.units,
                op.quantum,
                names.join(", ")
            )
        })
        .collect()
}

#[test]
fn dflash_programs_have_a_template_for_every_fused_op() {
    let mut all_generic = Vec::new();
    for (model, target, draft) in models() {
        let max_context = if model == "tiny" { 128 } else { 4096 };
        for (what, graph) in graphs(&target, &draft, max_context) {
            let p = compile_on(&graph, if model == "tiny" { 16 } else { 132 });
            let lines = describe(&p);
            let generic: Vec<&String> = lines.iter().filter(|l| l.starts_with("Generic")).collect();
            for l in &lines {
                eprintln!("{model} {what}: {l}");
            }
            if generic.is_empty() {
                crate::abi::encode(&p).unwrap_or_else(|e| panic!("{model} {what}: {e}"));
            }
            // The kernel fits an sm_90 block's shared memory at T = 16.
            let header = crate::codegen::generated_header(&target, &p);
            let smem: usize = header
                .lines()
                .find_map(|l| l.strip_prefix("#define MIMO_SMEM_BYTES "))
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                smem <= crate::codegen::MAX_DYNAMIC_SMEM,
                "{model} {what}: {smem}"
            );
            eprintln!("{model} {what}: MIMO_SMEM_BYTES {smem}");
            all_generic.extend(generic.into_iter().map(|l| format!("{model} {what}: {l}")));
        }
    }
    assert!(all_generic.is_empty(), "{all_generic:#?}");
}

#[test]
fn tiny_dflash_programs_fuse_into_these_kinds() {
    use FusedKind::*;
    let (_, target, draft) = models().remove(0);
    let kinds =
        |g: &Graph| -> Vec<FusedKind> { compile_on(g, 16).ops.iter().map(|o| o.kind).collect() };
    let [(_, verify), (_, draft_g)] = <[_; 2]>::try_from(graphs(&target, &draft, 128)).unwrap();
    let mut want = vec![Embed];
    (0..target.num_layers).for_each(|_| want.extend(crate::fuse::tests::MOE_LAYER));
    want.extend([Concat, LmHead, ArgmaxCombine, Accept]);
    assert_eq!(kinds(&verify), want);
    // Per draft layer: K/V injection (context rows above the block's, both normed), q, k/v,
    // the cache append, attention, o-proj, the SwiGLU MLP.
    let layer = [
        Concat,
        NormMatmul,
        NormMatmul,
        KvAppend,
        AttentionPartial,
        OprojResidual,
        DenseGateUp,
        MatmulResidual,
    ];
    let mut want = vec![Embed, NormMatmul];
    (0..draft.num_layers).for_each(|_| want.extend(layer));
    want.extend([LmHead, ArgmaxCombine]);
    assert_eq!(kinds(&draft_g), want);
}

/// Every group the test models fuse into a kind stops being that kind (and becomes `Generic`,
/// which the megakernel refuses by name) as soon as it holds one op more that its template does
/// not implement: no kind runs a group with an op silently left out.
#[test]
fn a_group_with_an_op_its_template_lacks_is_generic() {
    use mimo_ir::Op;
    use mimo_ir::ops::{Accept, Embedding};

    use super::{OpTypes, classify};

    let mut kinds_seen = std::collections::BTreeSet::new();
    for (_, target, draft) in models() {
        let mut gs = graphs(&target, &draft, 64);
        gs.push((
            "decode",
            mimo_ir::model::decode_graph(&target, 1, 64).unwrap(),
        ));
        for (name, g) in gs {
            for workers in [1, 4, 132] {
                let opts = CompileOptions::for_machine(Machine {
                    workers,
                    ..Machine::h100()
                });
                let p = compile(&g, &opts).unwrap();
                for op in &p.ops {
                    let members: Vec<&dyn Op> = op
                        .members
                        .iter()
                        .map(|m| &**p.graph.node(NodeIndex::new(m.node)).op().unwrap())
                        .collect();
                    assert_eq!(classify(&OpTypes::of(members.iter().copied())), op.kind);
                    if op.kind == FusedKind::Generic {
                        continue;
                    }
                    kinds_seen.insert(format!("{:?}", op.kind));
                    let foreign: &dyn Op = if op.kind == FusedKind::Accept {
                        &Embedding {}
                    } else {
                        &Accept {}
                    };
                    let with = OpTypes::of(members.iter().copied().chain([foreign]));
                    assert_eq!(
                        classify(&with),
                        FusedKind::Generic,
                        "{name} on {workers} workers: `{}` ({:?}) with `{}` added",
                        op.name,
                        op.kind,
                        foreign.name()
                    );
                }
            }
        }
    }
    assert_eq!(kinds_seen.len(), super::KINDS.len(), "{kinds_seen:?}");
}
