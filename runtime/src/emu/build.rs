//! The emulator's host build of a kernel: `kernel.cu` compiled by the system C++ compiler
//! against `templates/emu/cuda_host.h` (with `-fsanitize=thread`, whose hooks the emulator's
//! runtime defines), linked with that runtime into one shared library, cached on disk by a hash
//! of everything that goes into it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mimo_compiler::artifact::fnv1a;

use super::ffi;
use crate::cuda::kernel::{kernel_cache_dir, store_in_cache};

/// The emulator's sources, embedded so the build needs nothing but a C++ compiler.
/// Its interface, `launch_abi.h`, is generated ([`ffi::launch_abi_header`]).
const SOURCES: [(&str, &str); 3] = [
    (
        "cuda_host.h",
        include_str!("../../../templates/emu/cuda_host.h"),
    ),
    (
        "kernel_entry.h",
        include_str!("../../../templates/emu/kernel_entry.h"),
    ),
    (
        "runtime.cpp",
        include_str!("../../../templates/emu/runtime.cpp"),
    ),
];

/// The kernel's flags: MIMO_EMU selects the templates' emulator branches, the TSan
/// instrumentation (without its runtime, and without function entry/exit hooks) reports every
/// plain load and store to the emulator.
const KERNEL_FLAGS: &[&str] = &[
    "-std=c++17",
    "-O2",
    "-g",
    "-fPIC",
    "-DMIMO_EMU",
    "-fsanitize=thread",
    "--param",
    "tsan-instrument-func-entry-exit=0",
    "-Wno-unknown-pragmas",
];
const RUNTIME_FLAGS: &[&str] = &["-std=c++17", "-O2", "-g", "-fPIC"];

/// The C++ compiler: `$CXX`, else `c++`.
fn compiler() -> String {
    std::env::var("CXX")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "c++".to_string())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| {
        format!(
            "{what}: cannot run {:?} (is a C++ compiler installed? set CXX)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("error"))
            .take(8)
            .collect();
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            if first.is_empty() {
                stderr.trim().to_string()
            } else {
                first.join("\n")
            }
        );
    }
    Ok(())
}

/// The shared library of `source` (a whole generated `kernel.cu`), built or taken from the
/// cache. Returns its path and a note saying which.
pub fn build_kernel_library(source: &str) -> Result<(PathBuf, String)> {
    let cxx = compiler();
    let mut key_text = format!(
        "{cxx}\0{}\0{}\0",
        KERNEL_FLAGS.join(" "),
        RUNTIME_FLAGS.join(" ")
    );
    for (name, text) in SOURCES {
        key_text.push_str(name);
        key_text.push_str(text);
    }
    key_text.push_str(&ffi::launch_abi_header());
    key_text.push_str(source);
    let key = fnv1a(key_text.as_bytes());
    let cached = kernel_cache_dir().map(|d| d.join(format!("{key}-emu.so")));
    if let Some(path) = &cached
        && path.is_file()
    {
        return Ok((
            path.clone(),
            format!("kernel.cu for the emulator from {}", path.display()),
        ));
    }
    let started = Instant::now();
    // A directory of this build's own (two threads may build the same kernel at once).
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = std::env::temp_dir().join(format!("mimo-emu-{key}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = build_in(&work, &cxx, source);
    let built = match result {
        Ok(lib) => lib,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    let stored = cached
        .as_ref()
        .is_some_and(|path| std::fs::read(&built).is_ok_and(|bytes| store_in_cache(path, &bytes)));
    let final_path = match &cached {
        Some(path) if stored => {
            let _ = std::fs::remove_dir_all(&work);
            path.clone()
        }
        _ => built,
    };
    Ok((
        final_path,
        format!(
            "kernel.cu compiled for the emulator by {cxx} in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    ))
}

fn build_in(work: &Path, cxx: &str, source: &str) -> Result<PathBuf> {
    for (name, text) in SOURCES {
        std::fs::write(work.join(name), text)
            .with_context(|| format!("writing {}", work.join(name).display()))?;
    }
    std::fs::write(work.join("launch_abi.h"), ffi::launch_abi_header())?;
    std::fs::write(work.join("kernel.cu"), source)?;
    std::fs::write(
        work.join("kernel_host.cpp"),
        "#include \"kernel.cu\"\n#include \"kernel_entry.h\"\n",
    )?;
    run(
        Command::new(cxx)
            .args(KERNEL_FLAGS)
            .arg("-include")
            .arg(work.join("cuda_host.h"))
            .arg("-c")
            .arg(work.join("kernel_host.cpp"))
            .arg("-o")
            .arg(work.join("kernel.o")),
        "compiling kernel.cu for the emulator",
    )?;
    run(
        Command::new(cxx)
            .args(RUNTIME_FLAGS)
            .arg("-c")
            .arg(work.join("runtime.cpp"))
            .arg("-o")
            .arg(work.join("runtime.o")),
        "compiling the emulator's runtime",
    )?;
    let lib = work.join("kernel.so");
    run(
        Command::new(cxx)
            .arg("-shared")
            .arg(work.join("kernel.o"))
            .arg(work.join("runtime.o"))
            .arg("-o")
            .arg(&lib),
        "linking the emulator's kernel library",
    )?;
    Ok(lib)
}
