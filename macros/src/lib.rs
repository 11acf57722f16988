//! mimo-macros: the `#[op]` attribute with which IR ops are declared, and `#[derive(CStruct)]`,
//! with which the structs the kernel reads are declared once for Rust and C (see `macros/src/c_struct.rs`).
//!
//! An op is a struct whose fields are its attributes, declared in its own file under
//! `ir/src/ops/`:
//!
//! ```ignore
//! /// RMSNorm over the last axis.
//! #[op(name = "rms_norm", inputs(x, weight), outputs(y))]
//! pub struct RmsNorm {
//!     pub eps: f32,
//! }
//!
//! impl Op for RmsNorm { /* infer, work, access, reference */ }
//! ```
//!
//! The attribute generates what every op needs and no op should write by hand:
//! - serde (de)serialisation of the attributes, so graphs dump to and load from JSON;
//! - `impl OpDecl`: the op's name and its operand and result names;
//! - one associated constant per operand and result (`RmsNorm::X`, `RmsNorm::WEIGHT`, `RmsNorm::Y`),
//!   so code indexes operands by name, never by a bare number;
//! - `OP_ENTRY`, the registry entry that `ir/build.rs` collects from every file in `ir/src/ops/`.
//!
//! Trailing operands may be optional, marked `?` (`inputs(q, k_cache, v_cache, positions,
//! sinks?)`): a node passes them or leaves them off, and `OpDecl::optional_inputs` counts them.

mod c_struct;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, ItemStruct, LitStr, Token, parenthesized};

/// Declares an IR op; see the crate documentation.
#[proc_macro_attribute]
pub fn op(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(attr as OpArgs);
    let item = syn::parse_macro_input!(item as ItemStruct);
    match expand(args, item) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// Declares a struct the kernel reads; see the `c_struct` module.
#[proc_macro_derive(CStruct, attributes(c_type))]
pub fn derive_c_struct(item: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(item as syn::DeriveInput);
    match c_struct::expand(input) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// The arguments of `#[op(...)]`.
struct OpArgs {
    name: LitStr,
    inputs: Vec<Ident>,
    /// How many of the trailing `inputs` are optional (marked `?`).
    optional_inputs: usize,
    outputs: Vec<Ident>,
}

/// One name of `inputs(...)` or `outputs(...)`, optional when followed by `?`.
struct Operand {
    name: Ident,
    optional: Option<Token![?]>,
}

impl Parse for Operand {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        Ok(Operand {
            name: input.parse()?,
            optional: input.parse()?,
        })
    }
}

impl Parse for OpArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut name = None;
        let mut inputs = None;
        let mut outputs = None;
        let mut optional_inputs = 0;
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            match key.to_string().as_str() {
                "name" => {
                    input.parse::<Token![=]>()?;
                    let value: LitStr = input.parse()?;
                    if name.replace(value).is_some() {
                        return Err(syn::Error::new(key.span(), format!("`{key}` given twice")));
                    }
                }
                "inputs" | "outputs" => {
                    let content;
                    parenthesized!(content in input);
                    let list: Punctuated<Operand, Token![,]> =
                        content.parse_terminated(Operand::parse, Token![,])?;
                    let is_inputs = key == "inputs";
                    let mut names = Vec::new();
                    for operand in list {
                        match (operand.optional, is_inputs) {
                            (Some(mark), false) => {
                                return Err(syn::Error::new(
                                    mark.span,
                                    "results cannot be optional",
                                ));
                            }
                            (Some(_), true) => optional_inputs += 1,
                            (None, true) if optional_inputs > 0 => {
                                return Err(syn::Error::new(
                                    operand.name.span(),
                                    "a required operand cannot follow an optional one",
                                ));
                            }
                            (None, _) => {}
                        }
                        names.push(operand.name);
                    }
                    let slot = if is_inputs { &mut inputs } else { &mut outputs };
                    if slot.replace(names).is_some() {
                        return Err(syn::Error::new(key.span(), format!("`{key}` given twice")));
                    }
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown op argument `{other}` (expected name, inputs, outputs)"),
                    ));
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        let missing =
            |what: &str| syn::Error::new(Span::call_site(), format!("#[op] needs `{what}`"));
        let outputs = outputs.ok_or_else(|| missing("outputs(...)"))?;
        if outputs.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                "an op has at least one output",
            ));
        }
        Ok(OpArgs {
            name: name.ok_or_else(|| missing("name = \"...\""))?,
            inputs: inputs.ok_or_else(|| missing("inputs(...)"))?,
            optional_inputs,
            outputs,
        })
    }
}

fn expand(args: OpArgs, item: ItemStruct) -> syn::Result<TokenStream2> {
    let ident = item.ident.clone();
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &item.generics,
            "IR ops cannot be generic",
        ));
    }
    if matches!(item.fields, syn::Fields::Unnamed(_)) {
        return Err(syn::Error::new_spanned(
            &item.fields,
            "op attributes must be named fields",
        ));
    }
    check_unique(args.inputs.iter().chain(&args.outputs))?;

    let name = &args.name;
    let optional_inputs = args.optional_inputs;
    let input_strs = args.inputs.iter().map(Ident::to_string);
    let output_strs = args.outputs.iter().map(Ident::to_string);
    let operand_consts = |idents: &[Ident], what: &str| -> Vec<TokenStream2> {
        idents
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let konst = format_ident!("{}", id.to_string().to_uppercase());
                let doc = format!("Index of the {what} `{id}`.");
                quote!(#[doc = #doc] pub const #konst: usize = #i;)
            })
            .collect()
    };
    let input_consts = operand_consts(&args.inputs, "operand");
    let output_consts = operand_consts(&args.outputs, "result");

    // Unit structs serialise as `null`; give them braces so every op's attributes are an object.
    let item = if matches!(item.fields, syn::Fields::Unit) {
        let mut item = item;
        item.fields = syn::Fields::Named(syn::parse_quote!({}));
        item
    } else {
        item
    };

    Ok(quote! {
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(deny_unknown_fields, crate = "::serde")]
        #item

        impl #ident {
            #(#input_consts)*
            #(#output_consts)*
        }

        impl ::mimo_ir::op::OpDecl for #ident {
            fn name(&self) -> &'static str {
                #name
            }
            fn input_names(&self) -> &'static [&'static str] {
                &[#(#input_strs),*]
            }
            fn optional_inputs(&self) -> usize {
                #optional_inputs
            }
            fn output_names(&self) -> &'static [&'static str] {
                &[#(#output_strs),*]
            }
            fn attrs(&self) -> ::serde_json::Value {
                ::serde_json::to_value(self).expect("op attributes serialise to JSON")
            }
            fn clone_op(&self) -> ::std::sync::Arc<dyn ::mimo_ir::op::Op> {
                ::std::sync::Arc::new(::std::clone::Clone::clone(self))
            }
            fn eq_op(&self, other: &dyn ::mimo_ir::op::Op) -> bool {
                other.as_any().downcast_ref::<Self>().is_some_and(|o| o == self)
            }
            fn as_any(&self) -> &dyn ::std::any::Any {
                self
            }
        }

        /// The registry entry of this op (collected by `ir/build.rs`).
        pub const OP_ENTRY: ::mimo_ir::op::OpEntry = ::mimo_ir::op::OpEntry {
            name: #name,
            from_attrs: |attrs| {
                let op: #ident = ::serde_json::from_value(attrs.clone())?;
                Ok(::std::sync::Arc::new(op))
            },
        };
    })
}

fn check_unique<'a>(idents: impl Iterator<Item = &'a Ident>) -> syn::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for id in idents {
        if !seen.insert(id.to_string()) {
            return Err(syn::Error::new(
                id.span(),
                format!("operand `{id}` declared twice"),
            ));
        }
    }
    Ok(())
}
