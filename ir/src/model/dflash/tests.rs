//! The draft's config import, its graph's meaning (a cached multi-step draft equals one pass over
//! all its context), acceptance on the device, and the tiling of every op of the DFlash graphs.

use super::graph::{ATTN_POSITIONS, CONTEXT, DRAFT_IDS, KV_POSITIONS};
use super::*;
use crate::graph::Graph;
use crate::interp::{self, F32Weights, StateStore};
use crate::model::Architecture;
use crate::model::build::{
    ACCEPTED, COMMITTED, FEATURES, LOGITS, NEXT_IDS, POSITIONS, TOKEN_IDS, decode_graph,
};
use crate::model::random::random_weights;
use crate::op::tests::check_graph_tiling;
use crate::tensor::Tensor;

fn tiny_qwen3() -> ModelSpec {
    ModelSpec::tiny(Architecture::Qwen3Moe)
}

fn tiny_draft() -> DraftSpec {
    DraftSpec {
        hidden_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        intermediate_size: 48,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        max_position_embeddings: 128,
        block_size: 4,
        target_layer_ids: vec![1, 0],
        mask_token_id: 96,
        num_target_layers: Some(2),
        format: WeightFormat::F32,
    }
}

fn weights(draft: &DraftSpec) -> F32Weights {
    let mut store = random_weights(&tiny_qwen3(), 5).unwrap();
    for (name, w) in random_draft_weights(draft, 9).unwrap().iter() {
        store.insert(name, w.clone());
    }
    F32Weights::from_store(&store)
}

fn ids(v: &[i32]) -> Tensor {
    Tensor::from_i32([v.len()], v.to_vec())
}

/// Runs the draft over `block` at `start` with context `features` rows at `start - rows ..`.
fn draft_step(
    graph: &Graph,
    w: &F32Weights,
    state: &mut StateStore,
    block: &[i32],
    start: i32,
    features: Tensor,
) -> Tensor {
    let (b, c) = (block.len() as i32, features.shape[0] as i32);
    let inputs = [
        (TOKEN_IDS, ids(block)),
        (POSITIONS, ids(&(start..start + b).collect::<Vec<_>>())),
        (CONTEXT, features),
        (
            KV_POSITIONS,
            ids(&(start - c..start + b).collect::<Vec<_>>()),
        ),
        (ATTN_POSITIONS, ids(&vec![start + b - 1; block.len()])),
    ];
    let mut out = interp::run(graph, w, state, &inputs).unwrap();
    assert_eq!(out[DRAFT_IDS].shape, [block.len()]);
    out.remove(LOGITS).unwrap()
}

fn random_rows(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut rng = crate::math::Rng::new(seed);
    Tensor::from_f32(
        [rows, cols],
        (0..rows * cols).map(|_| rng.normal(1.0)).collect(),
    )
}

fn rows(t: &Tensor, range: std::ops::Range<usize>) -> Tensor {
    let cols = t.shape[1];
    Tensor::from_f32(
        [range.len(), cols],
        t.f32()[range.start * cols..range.end * cols].to_vec(),
    )
}

#[test]
fn cached_context_equals_one_pass_over_all_of_it() {
    // Step 1 sees context rows 0..5 and drafts at 5..9; step 2 sees rows 5..7 (two committed
    // tokens) and drafts at 7..11. Step 2 must equal a fresh pass with all 7 rows at once: the
    // cache keeps exactly the context, and step 1's block rows leave no trace.
    let (d, target) = (tiny_draft(), tiny_qwen3());
    let w = weights(&d);
    let feats = random_rows(7, d.feature_dim(), 3);
    let block2 = [11, 96, 96, 96];
    let g = |c| draft_graph(&d, &target, 4, c, 32).unwrap();
    let mut state = StateStore::new();
    draft_step(
        &g(5),
        &w,
        &mut state,
        &[4, 96, 96, 96],
        5,
        rows(&feats, 0..5),
    );
    let cached = draft_step(&g(2), &w, &mut state, &block2, 7, rows(&feats, 5..7));
    let fresh = draft_step(&g(7), &w, &mut StateStore::new(), &block2, 7, feats);
    assert_eq!(cached.f32(), fresh.f32());
}

#[test]
fn the_block_attends_both_ways() {
    // Non-causal: changing the block's last token changes the logits of its first rows.
    let (d, target) = (tiny_draft(), tiny_qwen3());
    let w = weights(&d);
    let g = draft_graph(&d, &target, 4, 3, 32).unwrap();
    let feats = random_rows(3, d.feature_dim(), 4);
    let a = draft_step(
        &g,
        &w,
        &mut StateStore::new(),
        &[4, 96, 96, 96],
        3,
        feats.clone(),
    );
    let b = draft_step(&g, &w, &mut StateStore::new(), &[4, 96, 96, 7], 3, feats);
    let vocab = target.vocab_size;
    assert_ne!(a.f32()[..vocab], b.f32()[..vocab]);
}

#[test]
fn verify_graph_adds_features_and_acceptance_to_the_decode_step() {
    let spec = tiny_qwen3();
    let w = F32Weights::from_store(&random_weights(&spec, 5).unwrap());
    let verify = verify_graph(&spec, 4, 16, &[1, 0]).unwrap();
    let plain = decode_graph(&spec, 4, 16).unwrap();
    let run = |g: &Graph, block: &[i32]| {
        let inputs = [(TOKEN_IDS, ids(block)), (POSITIONS, ids(&[3, 4, 5, 6]))];
        interp::run(g, &w, &mut StateStore::new(), &inputs).unwrap()
    };
    let first = run(&plain, &[5, 17, 2, 9])[NEXT_IDS].i32()[0];
    // The first draft is the target's own choice after token 5, so at least it is accepted.
    let block = [5, first, 3, 3];
    let out = run(&verify, &block);
    let greedy = run(&plain, &block);
    assert_eq!(out[LOGITS], greedy[LOGITS]);
    let accepted = out[ACCEPTED].i32()[0] as usize;
    let post = greedy[NEXT_IDS].i32();
    assert!(accepted >= 1);
    assert_eq!(accepted, crate::ops::Accept::accepted(&block, post));
    assert_eq!(out[COMMITTED].i32()[..=accepted], post[..=accepted]);
    assert_eq!(out[FEATURES].shape, [4, 2 * spec.hidden_size]);
}

#[test]
fn draft_graph_refuses_a_draft_for_another_target() {
    let mut d = tiny_draft();
    d.target_layer_ids = vec![0, 2];
    let err = draft_graph(&d, &tiny_qwen3(), 4, 1, 16).unwrap_err();
    assert!(err.to_string().contains("target_layer_ids has 2"), "{err}");
    d = tiny_draft();
    d.hidden_size = 32;
    let err = draft_graph(&d, &tiny_qwen3(), 4, 1, 16).unwrap_err();
    assert!(err.to_string().contains("hidden_size 32 differs"), "{err}");
}

#[test]
fn default_target_layer_ids_follow_the_reference() {
    assert_eq!(default_target_layer_ids(36, 5), [1, 9, 17, 25, 33]);
    assert_eq!(default_target_layer_ids(48, 5), [1, 12, 23, 34, 45]);
    assert_eq!(default_target_layer_ids(64, 5), [1, 16, 31, 46, 61]);
    assert_eq!(default_target_layer_ids(28, 1), [14]);
    // 1 + 3 * 27 / 6 = 14.5 rounds to even.
    assert_eq!(default_target_layer_ids(31, 7)[3], 14);
}

// --- tiling: the same property `op.rs` checks for the decode graph, over the DFlash graphs ---

#[test]
fn every_op_of_the_dflash_graphs_tiles_as_it_declares() {
    let (d, target) = (tiny_draft(), tiny_qwen3());
    let w = weights(&d);
    let verify = verify_graph(&target, 4, 12, &[1, 0]).unwrap();
    let inputs = [
        (TOKEN_IDS, ids(&[5, 17, 96, 3])),
        (POSITIONS, ids(&[7, 8, 9, 10])),
    ];
    check_graph_tiling(&verify, &w, &inputs);
    let draft = draft_graph(&d, &target, 4, 3, 12).unwrap();
    let inputs = [
        (TOKEN_IDS, ids(&[5, 96, 96, 96])),
        (POSITIONS, ids(&[7, 8, 9, 10])),
        (CONTEXT, random_rows(3, d.feature_dim(), 8)),
        (KV_POSITIONS, ids(&[4, 5, 6, 7, 8, 9, 10])),
        (ATTN_POSITIONS, ids(&[10; 4])),
    ];
    check_graph_tiling(&draft, &w, &inputs);
    // Both graphs survive the JSON round trip that artifacts rely on.
    for g in [&verify, &draft] {
        let json = g.to_json();
        assert_eq!(Graph::from_json(&json).unwrap().to_json(), json);
    }
}
