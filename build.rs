//! Embeds every file under `templates/` (the CUDA sources of the megakernel) into the binaries,
//! so `mimo-compile` and the runtime can generate and compile a kernel on any machine, without
//! the source tree. It is the build script of mimo-compiler (`build = "../build.rs"` in
//! compiler/Cargo.toml), the crate that generates code from them: `codegen::TEMPLATES`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let templates = root
        .parent()
        .expect("compiler/ lies in the repository")
        .join("templates");
    println!("cargo:rerun-if-changed={}", templates.display());

    let mut files = Vec::new();
    collect(&templates, &mut files);
    files.sort();
    let mut out = String::from("/// Every file under templates/, by path relative to it.\n");
    out.push_str("pub static TEMPLATES: &[(&str, &str)] = &[\n");
    for file in &files {
        let rel = file
            .strip_prefix(&templates)
            .expect("under templates/")
            .to_string_lossy()
            .replace('\\', "/");
        writeln!(
            out,
            "    ({rel:?}, include_str!({:?})),",
            file.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("templates.rs");
    fs::write(&dest, out).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("cu" | "cuh")
        ) {
            files.push(path);
        }
    }
}
