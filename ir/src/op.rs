//! The op contract: what every IR op declares (README, "Adding an IR op").
//!
//! An op lives in one file under `ir/src/ops/`, declared with `#[op(...)]` (which implements
//! [`OpDecl`] and registers it) and an `impl Op` with its semantics: type inference, how its work
//! splits into tiles and what each tile reads and writes, and its reference implementation.

use std::any::Any;
use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

use crate::tensor::Tensor;
use crate::types::TensorType;

/// The part of an op that `#[op]` generates.
pub trait OpDecl {
    /// The op's registry name (`"rms_norm"`).
    fn name(&self) -> &'static str;
    /// Operand names, in order.
    fn input_names(&self) -> &'static [&'static str];
    /// How many trailing operands a node may leave off (declared `name?`).
    fn optional_inputs(&self) -> usize;
    /// Result names, in order.
    fn output_names(&self) -> &'static [&'static str];
    /// The attributes as a JSON object.
    fn attrs(&self) -> serde_json::Value;
    fn clone_op(&self) -> Arc<dyn Op>;
    fn eq_op(&self, other: &dyn Op) -> bool;
    fn as_any(&self) -> &dyn Any;
}

/// The types of an op's operands and results.
#[derive(Debug, Clone, Copy)]
pub struct Io<'a> {
    pub inputs: &'a [TensorType],
    pub outputs: &'a [TensorType],
}

/// A box in an operand's or result's index space: one half-open range per axis.
pub type Region = Vec<Range<usize>>;

/// The whole of a value of type `ty`.
pub fn whole(ty: &TensorType) -> Region {
    ty.shape.iter().map(|&d| 0..d).collect()
}

/// How an elementwise op tiles: its units are the columns (last axis) of result `y`; a tile
/// writes those columns of every row and reads the same region of each operand in `reads`
/// (operands of `y`'s shape).
pub fn columns_access(io: Io<'_>, y: usize, reads: &[usize], units: Range<usize>) -> Access {
    let ty = &io.outputs[y];
    let region = crate::math::axis_region(ty, ty.rank() - 1, units);
    Access {
        writes: vec![(y, region.clone())],
        reads: reads.iter().map(|&r| (r, region.clone())).collect(),
    }
}

/// The flat indices of an elementwise op's tile: columns `units` of every row of a row-major
/// tensor of `len` elements in rows of `cols`.
pub fn column_indices(len: usize, cols: usize, units: Range<usize>) -> impl Iterator<Item = usize> {
    (0..len / cols.max(1)).flat_map(move |row| units.clone().map(move |c| row * cols + c))
}

/// What one tile of an op touches: the result regions it writes (disjoint from every other tile
/// of the same op) and the operand regions it reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Access {
    /// `(result index, region)`.
    pub writes: Vec<(usize, Region)>,
    /// `(operand index, region)`.
    pub reads: Vec<(usize, Region)>,
}

/// The semantics every op implements by hand.
pub trait Op: OpDecl + Debug + Send + Sync + 'static {
    /// Result types from operand types, or a message saying what is wrong with the operands.
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String>;

    /// How many independent units of work the op has; a tile covers a contiguous range of units.
    fn work_units(&self, io: Io<'_>) -> usize;

    /// The regions the tile covering `units` writes and reads.
    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access;

    /// Computes the part of the results that the tile covering `units` writes. `outputs` are the
    /// whole result tensors; a tile leaves everything outside its regions untouched. A result that
    /// the op updates in place (see [`Op::in_place`]) arrives holding its operand's contents, and
    /// that operand's slot in `inputs` is an empty placeholder.
    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>);

    /// `(result, operand)` pairs where the result is the operand updated in place (a KV cache).
    fn in_place(&self) -> &'static [(usize, usize)] {
        &[]
    }

    /// A cheap, pure op whose result every consumer's fused op recomputes whole (a prologue),
    /// rather than a result written to memory and waited for. Norms, reshapes and top-k are.
    fn recompute_in_consumers(&self) -> bool {
        false
    }

    /// A tail op (elementwise, or a reduction over the tile) that may run in the tiles of the op
    /// producing its input instead of in tiles of its own: residual adds, SwiGLU, the expert
    /// combine, the per-chunk argmax. Fused device functions exist for such tails only.
    fn fuse_as_epilogue(&self) -> bool {
        false
    }

    /// Bytes moved and flops done by the tile covering `units`. The default counts every element
    /// of every region the tile reads and writes, at its type's stored size, and no flops.
    fn cost(&self, io: Io<'_>, units: Range<usize>) -> Cost {
        let access = self.access(io, units);
        let bytes = |list: &[(usize, Region)], types: &[TensorType]| -> f64 {
            list.iter()
                .map(|(i, r)| region_numel(r) as f64 * types[*i].dtype.bytes_per_element())
                .sum()
        };
        Cost {
            bytes: bytes(&access.reads, io.inputs) + bytes(&access.writes, io.outputs),
            flops: 0.0,
        }
    }
}

/// What a tile costs: bytes through memory and floating-point operations.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    pub bytes: f64,
    pub flops: f64,
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            bytes: self.bytes + o.bytes,
            flops: self.flops + o.flops,
        }
    }
}

/// Elements in a region.
pub fn region_numel(region: &Region) -> usize {
    region.iter().map(|r| r.len()).product()
}

/// Whether two regions of one value share an element.
pub fn regions_overlap(a: &Region, b: &Region) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.start < y.end && y.start < x.end && !x.is_empty() && !y.is_empty())
}

/// A registry entry: rebuilds an op from its name and attributes (graphs loaded from JSON).
pub struct OpEntry {
    pub name: &'static str,
    pub from_attrs: fn(&serde_json::Value) -> Result<Arc<dyn Op>, serde_json::Error>,
}

/// Every op of `ir/src/ops/`, collected at build time.
pub fn registry() -> &'static [OpEntry] {
    crate::ops::REGISTRY
}

/// Rebuilds an op from its registry name and attributes.
pub fn op_from_json(name: &str, attrs: &serde_json::Value) -> Result<Arc<dyn Op>, String> {
    let entry = registry()
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| format!("unknown op `{name}`"))?;
    (entry.from_attrs)(attrs).map_err(|e| format!("op `{name}`: bad attributes {attrs}: {e}"))
}

/// Checks operand count and returns a helpful message on mismatch.
pub fn expect_arity(op: &dyn Op, inputs: &[TensorType]) -> Result<(), String> {
    let names = op.input_names();
    let required = names.len() - op.optional_inputs();
    if !(required..=names.len()).contains(&inputs.len()) {
        let count = if required == names.len() {
            required.to_string()
        } else {
            format!("{required} to {}", names.len())
        };
        let listed: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if i < required {
                    n.to_string()
                } else {
                    format!("{n}?")
                }
            })
            .collect();
        return Err(format!(
            "`{}` takes {count} operands ({}), got {}",
            op.name(),
            listed.join(", "),
            inputs.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    //! Every op's tiling is checked against its reference: computing an op tile by tile, where
    //! each tile sees only the operand regions it declares (everything else poisoned with NaN),
    //! must reproduce the whole-op result, and the tiles' writes must cover the result exactly once.

    use super::*;
    use crate::graph::{Graph, NodeKind};
    use crate::interp::F32Weights;
    use crate::math::Rng;
    use crate::model::build::decode_graph;
    use crate::model::random::random_weights;
    use crate::{Architecture, ModelSpec};

    /// The results of `op`'s tile `units` over `inputs` (i32 or f32), from zeroed results of
    /// the types it infers.
    pub(crate) fn run_reference(
        op: &dyn Op,
        inputs: &[&Tensor],
        units: Range<usize>,
    ) -> Vec<Tensor> {
        let types: Vec<TensorType> = inputs
            .iter()
            .map(|t| {
                let dtype = if t.is_i32() {
                    crate::DType::I32
                } else {
                    crate::DType::F32
                };
                TensorType::new(t.shape.clone(), dtype)
            })
            .collect();
        let mut out: Vec<Tensor> = op
            .infer(&types)
            .unwrap()
            .iter()
            .map(Tensor::zeros)
            .collect();
        op.reference(inputs, &mut out, units);
        out
    }

    fn in_region(shape: &[usize], region: &Region, flat: usize) -> bool {
        let mut rem = flat;
        let mut inside = true;
        for (axis, &d) in shape.iter().enumerate().rev() {
            let i = rem % d;
            rem /= d;
            inside &= region[axis].contains(&i);
        }
        inside
    }

    /// Computes every value of `graph` with whole-op references (state starts random, so the
    /// cache holds "earlier" tokens).
    fn evaluate_all(
        graph: &Graph,
        weights: &F32Weights,
        inputs: &[(&str, Tensor)],
        rng: &mut Rng,
    ) -> Vec<Vec<Tensor>> {
        let mut values: Vec<Vec<Tensor>> = vec![Vec::new(); graph.node_count()];
        for &idx in graph.topo_order() {
            let node = graph.node(idx);
            values[idx.index()] = match &node.kind {
                NodeKind::Input => vec![
                    inputs
                        .iter()
                        .find(|(n, _)| *n == node.name)
                        .unwrap()
                        .1
                        .clone(),
                ],
                NodeKind::Weight => vec![(**weights.get(&node.name).unwrap()).clone()],
                NodeKind::State => {
                    let n = node.outputs[0].numel();
                    vec![Tensor::from_f32(
                        node.outputs[0].shape.clone(),
                        (0..n).map(|_| rng.normal(1.0)).collect(),
                    )]
                }
                NodeKind::Op(op) => {
                    let operands: Vec<&Tensor> = node
                        .inputs
                        .iter()
                        .map(|v| &values[v.node.index()][v.output])
                        .collect();
                    let mut outputs: Vec<Tensor> = node.outputs.iter().map(Tensor::zeros).collect();
                    for &(out, inp) in op.in_place() {
                        outputs[out] = operands[inp].clone();
                    }
                    let types = graph.operand_types(idx);
                    let units = op.work_units(Io {
                        inputs: &types,
                        outputs: &node.outputs,
                    });
                    op.reference(&operands, &mut outputs, 0..units);
                    outputs
                }
            };
        }
        values
    }

    /// `t` with every element outside `regions` replaced by NaN (i32 tensors are left intact:
    /// ids and positions index other operands).
    fn poison_outside(t: &Tensor, regions: &[&Region]) -> Tensor {
        let mut t = t.clone();
        if t.is_i32() {
            return t;
        }
        let shape = t.shape.clone();
        for (i, v) in t.f32_mut().iter_mut().enumerate() {
            if !regions.iter().any(|r| in_region(&shape, r, i)) {
                *v = f32::NAN;
            }
        }
        t
    }

    /// Computes every op of `graph` tile by tile, each tile seeing only the operand regions it
    /// declares, and requires the whole-op result, every result element written by one tile.
    /// The model builders' tests run it over their graphs too.
    pub(crate) fn check_graph_tiling(
        graph: &Graph,
        weights: &F32Weights,
        inputs: &[(&str, Tensor)],
    ) {
        let mut rng = Rng::new(11);
        let values = evaluate_all(graph, weights, inputs, &mut rng);
        for &idx in graph.topo_order() {
            let node = graph.node(idx);
            let Some(op) = node.op() else { continue };
            let types = graph.operand_types(idx);
            let io = Io {
                inputs: &types,
                outputs: &node.outputs,
            };
            let units = op.work_units(io);
            let operands: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|v| &values[v.node.index()][v.output])
                .collect();
            let full = &values[idx.index()];
            for tile in [1, 2, 3, 5] {
                let mut covered: Vec<Vec<u8>> =
                    node.outputs.iter().map(|t| vec![0; t.numel()]).collect();
                for start in (0..units).step_by(tile) {
                    let range = start..(start + tile).min(units);
                    let access = op.access(io, range.clone());
                    let masked: Vec<Tensor> = operands
                        .iter()
                        .enumerate()
                        .map(|(slot, t)| {
                            let regions: Vec<&Region> = access
                                .reads
                                .iter()
                                .filter(|(s, _)| *s == slot)
                                .map(|(_, r)| r)
                                .collect();
                            poison_outside(t, &regions)
                        })
                        .collect();
                    let mut outs: Vec<Tensor> = node
                        .outputs
                        .iter()
                        .map(|t| poison_outside(&Tensor::zeros(t), &[]))
                        .collect();
                    for &(out, inp) in op.in_place() {
                        outs[out] = operands[inp].clone();
                    }
                    let mut refs: Vec<&Tensor> = masked.iter().collect();
                    let empty = Tensor::empty();
                    for &(_, inp) in op.in_place() {
                        refs[inp] = &empty;
                    }
                    op.reference(&refs, &mut outs, range.clone());
                    for (out, region) in &access.writes {
                        let shape = &node.outputs[*out].shape;
                        let (got, want) = (&outs[*out], &full[*out]);
                        for (i, count) in covered[*out].iter_mut().enumerate() {
                            if in_region(shape, region, i) {
                                *count += 1;
                                let same = match (got.is_i32(), want.is_i32()) {
                                    (true, true) => got.i32()[i] == want.i32()[i],
                                    _ => got.f32()[i].to_bits() == want.f32()[i].to_bits(),
                                };
                                assert!(
                                    same,
                                    "{}: result {out}: tile {range:?} of size {tile} differs at {i}: {}",
                                    node.name,
                                    if got.is_i32() {
                                        format!("{} vs {}", got.i32()[i], want.i32()[i])
                                    } else {
                                        format!("{} vs {}", got.f32()[i], want.f32()[i])
                                    }
                                );
                            }
                        }
                    }
                }
                for (out, c) in covered.iter().enumerate() {
                    assert!(
                        c.iter().all(|&n| n == 1),
                        "{}: result {out} not covered exactly once by tiles of {tile}",
                        node.name
                    );
                }
            }
        }
    }

    #[test]
    fn every_op_tiles_as_it_declares() {
        for spec in [
            ModelSpec::tiny(Architecture::Qwen3Moe),
            ModelSpec::tiny(Architecture::Mixtral),
            ModelSpec::tiny(Architecture::MimoV2Flash),
        ] {
            let weights = F32Weights::from_store(&random_weights(&spec, 5).unwrap());
            let graph = decode_graph(&spec, 3, 12).unwrap();
            let inputs = [
                ("token_ids", Tensor::from_i32([3], vec![5, 17, 96])),
                ("positions", Tensor::from_i32([3], vec![7, 8, 9])),
            ];
            check_graph_tiling(&graph, &weights, &inputs);
        }
    }

    /// A graph of the ops the compiler's rewrites introduce, next to the ops they replace.
    fn split_ops_graph() -> (Graph, Vec<(&'static str, Tensor)>) {
        use crate::graph::{GraphBuilder, Value};
        use crate::ops::{
            Argmax, ArgmaxCombine, ArgmaxPartial, Attention, AttentionCombine, AttentionPartial,
        };
        let (t, heads, kvh, hd, ctx, vocab) = (3, 6, 2, 8, 11, 50);
        let mut rng = Rng::new(3);
        let mut rand = |n: usize| (0..n).map(|_| rng.normal(1.0)).collect::<Vec<f32>>();
        let inputs = vec![
            ("q", Tensor::from_f32([t, heads, hd], rand(t * heads * hd))),
            ("k", Tensor::from_f32([ctx, kvh, hd], rand(ctx * kvh * hd))),
            ("v", Tensor::from_f32([ctx, kvh, hd], rand(ctx * kvh * hd))),
            // Values narrower than the keys, as MiMo-V2's.
            (
                "v_narrow",
                Tensor::from_f32([ctx, kvh, 5], rand(ctx * kvh * 5)),
            ),
            ("positions", Tensor::from_i32([t], vec![1, 5, 10])),
            ("logits", Tensor::from_f32([t, vocab], rand(t * vocab))),
            ("sinks", Tensor::from_f32([heads], rand(heads))),
        ];
        let mut b = GraphBuilder::new("split_ops");
        let value = |b: &mut GraphBuilder, name: &str| {
            let tensor = &inputs.iter().find(|(n, _)| *n == name).unwrap().1;
            let ty = TensorType::new(
                tensor.shape.clone(),
                if tensor.is_i32() {
                    crate::DType::I32
                } else {
                    crate::DType::F32
                },
            );
            b.input(name, ty).unwrap()
        };
        let (q, k, v, vn, p, l) = (
            value(&mut b, "q"),
            value(&mut b, "k"),
            value(&mut b, "v"),
            value(&mut b, "v_narrow"),
            value(&mut b, "positions"),
            value(&mut b, "logits"),
        );
        let sinks = value(&mut b, "sinks");
        // The whole causal context; a sliding window of 4 rows over narrower values; the same
        // with attention sinks (MiMo-V2's sliding layers).
        let mut attn = Vec::new();
        for (tag, window, v, sinks) in [
            ("", 0, v, None),
            ("_windowed", 4, vn, None),
            ("_sinks", 4, vn, Some(sinks)),
        ] {
            let (scale, splits) = (0.3, 4);
            let partial = AttentionPartial {
                scale,
                splits,
                window,
            };
            let parts = b
                .op(&format!("attn_parts{tag}"), partial, &[q, k, v, p])
                .unwrap();
            let combine = AttentionCombine {};
            let sinks: Vec<Value> = sinks.into_iter().collect();
            let parts = [&parts[..], &sinks].concat();
            let split = b.op1(&format!("attn_split{tag}"), combine, &parts);
            let whole = Attention { scale, window };
            let operands = [&[q, k, v, p][..], &sinks].concat();
            let whole = b.op1(&format!("attn_whole{tag}"), whole, &operands);
            attn.push((format!("attn_split{tag}"), split.unwrap()));
            attn.push((format!("attn_whole{tag}"), whole.unwrap()));
        }
        let chunks = b
            .op("argmax_parts", ArgmaxPartial { chunk: 7 }, &[l])
            .unwrap();
        let split_ids = b.op1("argmax_split", ArgmaxCombine {}, &chunks).unwrap();
        let whole_ids = b.op1("argmax_whole", Argmax {}, &[l]).unwrap();
        attn.push(("ids_split".into(), split_ids));
        attn.push(("ids_whole".into(), whole_ids));
        for (name, v) in attn {
            b.output(&name, v).unwrap();
        }
        (b.finish().unwrap(), inputs)
    }

    #[test]
    fn split_ops_tile_as_they_declare() {
        let (graph, inputs) = split_ops_graph();
        check_graph_tiling(&graph, &F32Weights::default(), &inputs);
    }

    #[test]
    fn split_attention_and_argmax_equal_the_ops_they_replace() {
        let (graph, inputs) = split_ops_graph();
        let out = crate::interp::run(
            &graph,
            &F32Weights::default(),
            &mut Default::default(),
            &inputs,
        )
        .unwrap();
        assert_eq!(out["ids_split"], out["ids_whole"]);
        for tag in ["", "_windowed", "_sinks"] {
            let split = &out[&format!("attn_split{tag}")];
            let whole = &out[&format!("attn_whole{tag}")];
            assert_eq!(split.shape, whole.shape);
            for (x, y) in split.f32().iter().zip(whole.f32()) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{tag}: {x} vs {y}");
            }
        }
        assert_eq!(out["attn_whole_windowed"].shape, [3, 6, 5]);
        // A sink takes probability away from every row: the same window, smaller outputs.
        let norm = |t: &Tensor| t.f32().iter().map(|x| x * x).sum::<f32>();
        assert!(norm(&out["attn_whole_sinks"]) < norm(&out["attn_whole_windowed"]));
    }

    #[test]
    fn every_registered_op_round_trips_its_attributes() {
        let graph = decode_graph(&ModelSpec::tiny(Architecture::MimoV2Flash), 1, 4).unwrap();
        for (_, node) in graph.nodes() {
            if let Some(op) = node.op() {
                let back = op_from_json(op.name(), &op.attrs()).unwrap();
                assert!(back.eq_op(op.as_ref()), "{}", node.name);
            }
        }
        assert!(
            op_from_json("no_such_op", &serde_json::json!({}))
                .unwrap_err()
                .contains("unknown op")
        );
        assert!(op_from_json("rms_norm", &serde_json::json!({"eps": 1e-6, "bogus": 1})).is_err());
        // Attributes added later default to the earlier behaviour in older graphs.
        let old = op_from_json(
            "router_topk",
            &serde_json::json!({"k": 2, "normalize": true}),
        );
        let old = old.unwrap();
        assert!(old.eq_op(&crate::ops::RouterTopK::softmax(2, true)));
    }

    #[test]
    fn optional_operands_may_be_left_off_but_no_more() {
        use crate::ops::Attention;
        let op = Attention {
            scale: 1.0,
            window: 0,
        };
        let q = TensorType::f32([1, 4, 8]);
        let cache = TensorType::f32([6, 2, 8]);
        let pos = TensorType::i32([1]);
        let base = vec![q, cache.clone(), cache, pos];
        assert!(op.infer(&base).is_ok());
        let with_sinks = [&base[..], &[TensorType::f32([4])]].concat();
        assert!(op.infer(&with_sinks).is_ok());
        let err = op.infer(&base[..3]).unwrap_err();
        assert_eq!(
            err,
            "`attention` takes 4 to 5 operands (q, k_cache, v_cache, positions, sinks?), got 3"
        );
        let wrong = [&base[..], &[TensorType::f32([2])]].concat();
        assert_eq!(
            op.infer(&wrong).unwrap_err(),
            "sinks must be float [4], got f32[2]"
        );
    }
}
