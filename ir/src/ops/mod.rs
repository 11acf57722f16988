//! The IR's ops, one per file, each declared here (so `cargo fmt`, rustdoc and editors see them).
//! `ir/build.rs` generates the re-exports and the registry from the `#[op]` structs of these
//! files, and refuses a file in this folder that is not declared below.

pub mod accept;
pub mod add;
pub mod argmax;
pub mod argmax_combine;
pub mod argmax_partial;
pub mod attention;
pub mod attention_combine;
pub mod attention_partial;
pub mod concat;
pub mod embedding;
pub mod expert_linear;
pub mod kv_append;
pub mod linear;
pub mod reshape;
pub mod rms_norm;
pub mod rope;
pub mod router_topk;
pub mod scale;
pub mod silu_mul;
pub mod weighted_sum;

include!(concat!(env!("OUT_DIR"), "/ops_registry.rs"));
