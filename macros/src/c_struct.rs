//! `#[derive(CStruct)]`: a `#[repr(C)]` Rust struct as the one declaration of a struct the kernel
//! reads, from which its C declaration (for `generated.cuh`) and its word encoding are generated.
//!
//! Fields are 4-byte scalars (`u32`, `i32`, `f32` and the operand aliases `ArenaOffset`,
//! `StateOffset`, `WeightIndex`, which are `u32` on both sides), arrays of them, `u64` (an
//! address where `#[c_type = "const Task*"]` names the C type), or another `CStruct` of 4-byte
//! fields, nested whole (declared before the struct that nests it). The layout is checked to have no
//! padding, so the C struct and the Rust struct agree byte for byte without a hand-kept copy.

use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{Attribute, DeriveInput, Expr, ExprLit, Lit, Meta, Type};

/// What one field is, for both languages.
struct Field {
    ident: syn::Ident,
    /// The C type of one element.
    c_type: String,
    /// Scalar element kind.
    scalar: Scalar,
    /// `Some(n)` for `[T; n]`.
    len: Option<usize>,
    /// The operand role of a `u32` alias (`ArenaOffset`, ...), for `CStruct::operands`.
    role: Option<syn::Ident>,
    /// Another `CStruct` (4-byte aligned), nested whole.
    nested: Option<Type>,
    doc: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Scalar {
    U32,
    I32,
    F32,
    U64,
}

impl Scalar {
    fn words(self) -> usize {
        if self == Scalar::U64 { 2 } else { 1 }
    }
}

fn docs(attrs: &[Attribute]) -> Vec<String> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s.value().trim().to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn c_type_override(attrs: &[Attribute]) -> syn::Result<Option<String>> {
    let Some(a) = attrs.iter().find(|a| a.path().is_ident("c_type")) else {
        return Ok(None);
    };
    match &a.meta {
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => Ok(Some(s.value())),
            _ => Err(syn::Error::new_spanned(a, "expected #[c_type = \"...\"]")),
        },
        _ => Err(syn::Error::new_spanned(a, "expected #[c_type = \"...\"]")),
    }
}

/// A scalar field's C spelling, kind and operand role.
type ScalarType = (String, Scalar, Option<syn::Ident>);

/// The type path's last name, and its scalar (C spelling, kind, operand role), or `None` for any
/// other type: another CStruct, nested whole and spelled by its name.
fn scalar_of(ty: &Type) -> syn::Result<(String, Option<ScalarType>)> {
    let Type::Path(p) = ty else {
        return Err(syn::Error::new_spanned(ty, "unsupported field type"));
    };
    let last = p.path.segments.last().expect("a path has a segment");
    let name = last.ident.to_string();
    let scalar = match name.as_str() {
        "u32" => ("u32".into(), Scalar::U32, None),
        "i32" => ("i32".into(), Scalar::I32, None),
        "f32" => ("float".into(), Scalar::F32, None),
        "u64" => ("u64".into(), Scalar::U64, None),
        "ArenaOffset" | "StateOffset" | "WeightIndex" => {
            (name.clone(), Scalar::U32, Some(last.ident.clone()))
        }
        _ => return Ok((name, None)),
    };
    Ok((name, Some(scalar)))
}

fn field(f: &syn::Field) -> syn::Result<Field> {
    let ident = f.ident.clone().expect("named fields");
    let (elem, len) = match &f.ty {
        Type::Array(a) => {
            let Expr::Lit(ExprLit {
                lit: Lit::Int(n), ..
            }) = &a.len
            else {
                return Err(syn::Error::new_spanned(
                    &a.len,
                    "array length must be a literal",
                ));
            };
            (&*a.elem, Some(n.base10_parse::<usize>()?))
        }
        ty => (ty, None),
    };
    let (name, scalar) = scalar_of(elem)?;
    let nested = scalar.is_none().then(|| elem.clone());
    // A nested struct's words are its own: `Scalar` is not read for it.
    let (mut c_type, scalar, role) = scalar.unwrap_or((name, Scalar::U32, None));
    if nested.is_some() && len.is_some() {
        return Err(syn::Error::new_spanned(
            &f.ty,
            "arrays of nested structs are not supported",
        ));
    }
    if let Some(over) = c_type_override(&f.attrs)? {
        if scalar != Scalar::U64 || len.is_some() {
            return Err(syn::Error::new_spanned(
                &f.ty,
                "#[c_type] is for u64 fields (device addresses)",
            ));
        }
        c_type = over;
    }
    Ok(Field {
        ident,
        c_type,
        scalar,
        len,
        role,
        nested,
        doc: docs(&f.attrs),
    })
}

pub fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let ident = input.ident.clone();
    let repr_c = input
        .attrs
        .iter()
        .any(|a| a.path().is_ident("repr") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "C"));
    if !repr_c {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "a CStruct must be #[repr(C)]",
        ));
    }
    let syn::Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "CStruct is for structs",
        ));
    };
    let syn::Fields::Named(named) = &data.fields else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "CStruct needs named fields",
        ));
    };
    let fields = named
        .named
        .iter()
        .map(field)
        .collect::<syn::Result<Vec<_>>>()?;

    // No padding: every u64 starts 8-byte aligned and the size is a multiple of the alignment.
    let mut words = 0usize;
    let mut align = 1usize;
    let nested: Vec<&Type> = fields.iter().filter_map(|f| f.nested.as_ref()).collect();
    if !nested.is_empty() && fields.iter().any(|f| f.scalar == Scalar::U64) {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "a CStruct with a u64 field cannot nest structs",
        ));
    }
    for f in fields.iter().filter(|f| f.nested.is_none()) {
        if f.scalar == Scalar::U64 {
            align = 2;
            if !words.is_multiple_of(2) {
                return Err(syn::Error::new_spanned(
                    &f.ident,
                    "this u64 would need padding before it: reorder the fields",
                ));
            }
        }
        words += f.scalar.words() * f.len.unwrap_or(1);
    }
    if !words.is_multiple_of(align) {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "the struct would need tail padding: add a u32 field",
        ));
    }

    let name = ident.to_string();
    let mut decl = String::new();
    let comment = |indent: &str, line: &str| match line {
        "" => format!("{indent}//\n"),
        _ => format!("{indent}// {line}\n"),
    };
    for line in docs(&input.attrs) {
        decl.push_str(&comment("", &line));
    }
    decl.push_str(&format!("struct {name} {{\n"));
    for f in &fields {
        for line in &f.doc {
            decl.push_str(&comment("    ", line));
        }
        let array = f.len.map_or(String::new(), |n| format!("[{n}]"));
        decl.push_str(&format!("    {} {}{array};\n", f.c_type, f.ident));
    }
    decl.push_str("};\n");

    let write = fields.iter().map(|f| {
        let id = &f.ident;
        if f.nested.is_some() {
            return quote!(::mimo_compiler::abi::CStruct::write_words(&self.#id, out););
        }
        let one = |v: TokenStream2| match f.scalar {
            Scalar::U32 => quote!(out.push(#v);),
            Scalar::I32 => quote!(out.push(#v as u32);),
            Scalar::F32 => quote!(out.push(#v.to_bits());),
            Scalar::U64 => quote!(out.push(#v as u32); out.push((#v >> 32) as u32);),
        };
        match f.len {
            None => one(quote!(self.#id)),
            Some(_) => {
                let body = one(quote!((*v)));
                quote!(for v in self.#id.iter() { #body })
            }
        }
    });
    let read = fields.iter().map(|f| {
        let id = &f.ident;
        if let Some(ty) = &f.nested {
            return quote!(#id: {
                let n = <#ty as ::mimo_compiler::abi::CStruct>::WORDS;
                let v = <#ty as ::mimo_compiler::abi::CStruct>::from_words(&words[at..at + n]);
                at += n;
                v
            },);
        }
        let n = f.scalar.words();
        let one = match f.scalar {
            Scalar::U32 => quote!(words[at]),
            Scalar::I32 => quote!(words[at] as i32),
            Scalar::F32 => quote!(f32::from_bits(words[at])),
            Scalar::U64 => quote!(words[at] as u64 | (words[at + 1] as u64) << 32),
        };
        match f.len {
            None => quote!(#id: { let v = #one; at += #n; v },),
            Some(len) => {
                quote!(#id: ::std::array::from_fn::<_, #len, _>(|_| { let v = #one; at += #n; v }),)
            }
        }
    });
    let operands = fields.iter().filter_map(|f| {
        let id = &f.ident;
        if f.nested.is_some() {
            return Some(quote!(out.extend(::mimo_compiler::abi::CStruct::operands(&self.#id));));
        }
        let role = f.role.as_ref()?;
        let field = id.to_string();
        Some(match f.len {
            None => quote!(out.push((::mimo_compiler::abi::Operand::#role, #field, self.#id));),
            Some(_) => quote!(for &v in self.#id.iter() {
                out.push((::mimo_compiler::abi::Operand::#role, #field, v));
            }),
        })
    });
    Ok(quote! {
        impl ::mimo_compiler::abi::CStruct for #ident {
            const C_NAME: &'static str = #name;
            const C_DECLARATION: &'static str = #decl;
            const WORDS: usize = #words #(+ <#nested as ::mimo_compiler::abi::CStruct>::WORDS)*;
            fn declare(out: &mut ::std::vec::Vec<&'static str>) {
                #(<#nested as ::mimo_compiler::abi::CStruct>::declare(out);)*
                if !out.contains(&Self::C_DECLARATION) {
                    out.push(Self::C_DECLARATION);
                }
            }
            fn write_words(&self, out: &mut ::std::vec::Vec<u32>) {
                #(#write)*
            }
            #[allow(unused_assignments)]
            fn from_words(words: &[u32]) -> Self {
                assert_eq!(words.len(), Self::WORDS, "{} is {} words", #name, Self::WORDS);
                let mut at = 0usize;
                Self { #(#read)* }
            }
            fn operands(&self) -> ::std::vec::Vec<(::mimo_compiler::abi::Operand, &'static str, u32)> {
                #[allow(unused_mut)]
                let mut out = ::std::vec::Vec::new();
                #(#operands)*
                out
            }
        }
        const _: () = assert!(
            ::std::mem::size_of::<#ident>()
                == <#ident as ::mimo_compiler::abi::CStruct>::WORDS * 4,
            "a CStruct has no padding"
        );
        #(const _: () = assert!(
            ::std::mem::align_of::<#nested>() == 4,
            "a nested CStruct is 4-byte aligned"
        );)*
    })
}
