//! Per-function GPU resource usage (registers, stack, spills, shared and local memory) of a
//! compiled kernel, read from ptxas' verbose log (`--ptxas-options=-v`, see [`crate::nvrtc`]) or
//! from `cuobjdump -res-usage` on a CUBIN.
//!
//! ptxas prints, per function (NVRTC 13.0, sm_90a):
//!
//! ```text
//! ptxas info    : Compiling entry function 'mimo_kernel' for 'sm_90a'
//! ptxas info    : Function properties for mimo_kernel
//! ptxas         .     1024 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//! ptxas info    : Used 19 registers, used 1 barriers, 1024 bytes cumulative stack size, 4096 bytes smem
//! ptxas info    : Function properties for _Z9run_embedRK12KernelParamsi
//! ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//! ```
//!
//! Only entry functions (`__global__`) get a `Used N registers` line; a non-inlined `__device__`
//! function reports its stack frame and spills only, so its `registers` stay 0 (unknown).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Resource usage of one function of a compiled kernel. Fields a source does not report are 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionResources {
    /// The function's (usually Itanium-mangled) symbol name; see [`short_name`].
    pub function: String,
    /// Registers per thread (0 when not reported: ptxas reports entry functions only).
    pub registers: u32,
    /// Bytes of per-thread stack frame.
    pub stack_bytes: u32,
    /// Bytes of register spill stores (ptxas log only).
    pub spill_stores: u32,
    /// Bytes of register spill loads (ptxas log only).
    pub spill_loads: u32,
    /// Bytes of static shared memory (cuobjdump includes the 1 KiB the system reserves on sm_90).
    pub shared_bytes: u32,
    /// Bytes of per-thread local memory (ptxas `lmem`, cuobjdump `LOCAL`).
    pub local_bytes: u32,
}

impl FunctionResources {
    /// True when the function spills registers to local memory.
    pub fn spills(&self) -> bool {
        self.spill_stores > 0 || self.spill_loads > 0
    }
}

/// Parses the ptxas verbose lines of an NVRTC program log (or of `nvcc -Xptxas -v` output) into one
/// entry per `Function properties for NAME` block, in the order they appear. Lines that are not
/// ptxas resource lines are ignored, so the whole program log may be passed.
pub fn parse_ptxas_verbose(log: &str) -> Vec<FunctionResources> {
    let mut out: Vec<FunctionResources> = Vec::new();
    // The entry function whose `Compiling entry function` line was seen last: its `Used ...` line
    // follows its properties block.
    let mut entry: Option<String> = None;
    for line in log.lines() {
        let body = ptxas_body(line);
        if let Some(rest) = body.strip_prefix("Compiling entry function ") {
            entry = rest.split('\'').nth(1).map(str::to_owned);
        } else if let Some(rest) = body.strip_prefix("Function properties for ") {
            out.push(FunctionResources {
                function: unquote(rest).to_owned(),
                ..FunctionResources::default()
            });
        } else if body.contains("bytes stack frame") {
            if let Some(f) = out.last_mut() {
                for (value, what) in numbered_items(body) {
                    match what {
                        "bytes stack frame" => f.stack_bytes = value,
                        "bytes spill stores" => f.spill_stores = value,
                        "bytes spill loads" => f.spill_loads = value,
                        _ => {}
                    }
                }
            }
        } else if let Some(rest) = body.strip_prefix("Used ") {
            let index = match &entry {
                Some(name) => out.iter().rposition(|f| &f.function == name),
                None => out.len().checked_sub(1),
            };
            let index = index.unwrap_or_else(|| {
                out.push(FunctionResources {
                    function: entry.clone().unwrap_or_default(),
                    ..FunctionResources::default()
                });
                out.len() - 1
            });
            let f = &mut out[index];
            for (value, what) in numbered_items(&format!("used {rest}")) {
                match what {
                    "registers" => f.registers = value,
                    "bytes smem" => f.shared_bytes = value,
                    "bytes lmem" => f.local_bytes = value,
                    // Older ptxas prints the stack only here, as `N bytes stack`.
                    "bytes stack" if f.stack_bytes == 0 => f.stack_bytes = value,
                    _ => {}
                }
            }
        }
    }
    out
}

/// The text after ptxas' `ptxas info    :` / `ptxas         .` prefix, trimmed; the whole line,
/// trimmed, when it has no such prefix.
fn ptxas_body(line: &str) -> &str {
    let line = line.trim();
    let Some(rest) = line.strip_prefix("ptxas") else {
        return line;
    };
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("info").unwrap_or(rest).trim_start();
    rest.strip_prefix([':', '.']).unwrap_or(rest).trim()
}

fn unquote(s: &str) -> &str {
    s.trim().trim_matches(|c| c == '\'' || c == '"')
}

/// Splits `N what, used N what, ...` into `(N, "what")` pairs, skipping parts without a number.
fn numbered_items(text: &str) -> impl Iterator<Item = (u32, &str)> {
    text.split(',').filter_map(|part| {
        let part = part.trim();
        let part = part.strip_prefix("used ").unwrap_or(part).trim_start();
        let (number, what) = part.split_once(char::is_whitespace)?;
        Some((number.parse().ok()?, what.trim()))
    })
}

/// Why [`cuobjdump_res_usage`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CuobjdumpError {
    /// No cuobjdump executable was found.
    #[error(
        "cuobjdump not found (tried {tried}): set MIMO_CUOBJDUMP or run `eval \"$(.ci/install-cuda-tools)\"`"
    )]
    NotFound { tried: String },
    /// cuobjdump could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// cuobjdump exited with an error.
    #[error("{program} -res-usage {cubin} failed ({status}): {message}")]
    Failed {
        program: String,
        cubin: String,
        status: String,
        message: String,
    },
}

/// The cuobjdump to run: `$MIMO_CUOBJDUMP` when set and non-empty, else `cuobjdump` from `PATH`.
pub fn cuobjdump_program() -> Result<PathBuf, CuobjdumpError> {
    if let Some(path) = std::env::var_os("MIMO_CUOBJDUMP").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(CuobjdumpError::NotFound {
                tried: format!("MIMO_CUOBJDUMP={}", path.display()),
            })
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("cuobjdump"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| CuobjdumpError::NotFound {
            tried: "MIMO_CUOBJDUMP (unset) and cuobjdump on PATH".to_owned(),
        })
}

/// Runs `cuobjdump -res-usage` on a CUBIN (or any ELF/fatbin cuobjdump reads) and parses its
/// per-function lines with [`parse_cuobjdump_res_usage`].
pub fn cuobjdump_res_usage(cubin_path: &Path) -> Result<Vec<FunctionResources>, CuobjdumpError> {
    let program = cuobjdump_program()?;
    let output = Command::new(&program)
        .arg("-res-usage")
        .arg(cubin_path)
        .output()
        .map_err(|source| CuobjdumpError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let message = stderr
            .lines()
            .chain(stdout.lines())
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no output")
            .to_owned();
        return Err(CuobjdumpError::Failed {
            program: program.display().to_string(),
            cubin: cubin_path.display().to_string(),
            status: output.status.to_string(),
            message,
        });
    }
    Ok(parse_cuobjdump_res_usage(&String::from_utf8_lossy(
        &output.stdout,
    )))
}

/// Parses `cuobjdump -res-usage` output:
///
/// ```text
///  Function mimo_kernel:
///   REG:19 STACK:1024 SHARED:5120 LOCAL:0 CONSTANT[0]:552 TEXTURE:0 SURFACE:0 SAMPLER:0
/// ```
///
/// cuobjdump reports no spills, so `spill_stores` and `spill_loads` stay 0.
pub fn parse_cuobjdump_res_usage(text: &str) -> Vec<FunctionResources> {
    let mut out: Vec<FunctionResources> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Function ") {
            let name = rest.trim_end().strip_suffix(':').unwrap_or(rest).trim();
            // Older cuobjdump spells it `Function name:` with the name on the same line.
            out.push(FunctionResources {
                function: unquote(name).to_owned(),
                ..FunctionResources::default()
            });
            current = Some(out.len() - 1);
        } else if line.starts_with("REG:") {
            let Some(f) = current.and_then(|i| out.get_mut(i)) else {
                continue;
            };
            for item in line.split_whitespace() {
                let Some((key, value)) = item.split_once(':') else {
                    continue;
                };
                let Ok(value) = value.parse::<u32>() else {
                    continue;
                };
                match key {
                    "REG" => f.registers = value,
                    "STACK" => f.stack_bytes = value,
                    "SHARED" => f.shared_bytes = value,
                    "LOCAL" => f.local_bytes = value,
                    _ => {}
                }
            }
            current = None;
        }
    }
    out
}

/// A readable name for a symbol, for reports: the (possibly `::`-qualified) function name of an
/// Itanium-mangled C++ symbol without its parameter and template-argument lists
/// (`_Z9run_embedRK12KernelParamsi` -> `run_embed`, `_ZN4mimo9ns_kernelEPfi` -> `mimo::ns_kernel`,
/// `_Z11tmpl_kernelILi4EEvPf` -> `tmpl_kernel`). A name that is not mangled (an `extern "C"`
/// kernel) or that this small reader does not understand is returned unchanged.
pub fn short_name(mangled: &str) -> String {
    demangle_name(mangled).unwrap_or_else(|| mangled.to_owned())
}

fn demangle_name(mangled: &str) -> Option<String> {
    let mut s = mangled.strip_prefix("_Z")?.as_bytes();
    // `_ZL`: internal linkage.
    if let [b'L', rest @ ..] = s {
        s = rest;
    }
    if let [b'N', rest @ ..] = s {
        s = rest;
        // CV- and ref-qualifiers of a member function.
        while let [b'r' | b'V' | b'K' | b'R' | b'O', rest @ ..] = s {
            s = rest;
        }
        let mut parts: Vec<String> = Vec::new();
        loop {
            match s {
                [b'E', ..] => break,
                [b'S', b't', rest @ ..] => {
                    parts.push("std".to_owned());
                    s = rest;
                }
                [b'I', ..] => s = skip_template_args(s)?,
                [b'C', b'1' | b'2' | b'3', rest @ ..] => {
                    parts.push(parts.last()?.clone());
                    s = rest;
                }
                [b'D', b'0' | b'1' | b'2', rest @ ..] => {
                    parts.push(format!("~{}", parts.last()?));
                    s = rest;
                }
                [b'0'..=b'9', ..] => {
                    let (name, rest) = source_name(s)?;
                    parts.push(name);
                    s = rest;
                }
                _ => return None,
            }
        }
        return (!parts.is_empty()).then(|| parts.join("::"));
    }
    let (name, _) = source_name(s)?;
    Some(name)
}

/// Reads an Itanium `<source-name>` (`<length><identifier>`).
fn source_name(s: &[u8]) -> Option<(String, &[u8])> {
    let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
    let len: usize = std::str::from_utf8(&s[..digits]).ok()?.parse().ok()?;
    let name = s.get(digits..digits + len)?;
    let name = std::str::from_utf8(name).ok()?.to_owned();
    Some((name, &s[digits + len..]))
}

/// Skips a template-argument list `I ... E`, including nested names, nested lists and literals.
fn skip_template_args(mut s: &[u8]) -> Option<&[u8]> {
    let mut depth = 0usize;
    loop {
        match s {
            [] => return None,
            [b'I' | b'N' | b'X', rest @ ..] => {
                depth += 1;
                s = rest;
            }
            // A literal `L <type> <value> E`: its value digits are no length prefix.
            [b'L', rest @ ..] => {
                let end = rest.iter().position(|&c| c == b'E')?;
                s = &rest[end + 1..];
            }
            [b'E', rest @ ..] => {
                depth = depth.checked_sub(1)?;
                s = rest;
                if depth == 0 {
                    return Some(s);
                }
            }
            [b'0'..=b'9', ..] => s = source_name(s)?.1,
            [_, rest @ ..] => s = rest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--ptxas-options=-v` program log of NVRTC 13.0.88 for sm_90a: an `extern "C"` kernel calling
    /// two `__noinline__` device functions, a namespaced kernel and a template instance.
    const PTXAS_LOG: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN4mimo9ns_kernelEPfi' for 'sm_90a'
ptxas info    : Function properties for _ZN4mimo9ns_kernelEPfi
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers
ptxas info    : Compile time = 2.350 ms
ptxas info    : Compiling entry function '_Z11tmpl_kernelILi4EEvPf' for 'sm_90a'
ptxas info    : Function properties for _Z11tmpl_kernelILi4EEvPf
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers
ptxas info    : Compile time = 1.643 ms
ptxas info    : Compiling entry function 'mimo_kernel' for 'sm_90a'
ptxas info    : Function properties for mimo_kernel
ptxas         .     1024 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 19 registers, used 1 barriers, 1024 bytes cumulative stack size, 4096 bytes smem
ptxas info    : Compile time = 8.603 ms
ptxas info    : Function properties for _Z7spillerRK12KernelParamsi
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Function properties for _Z9run_embedRK12KernelParamsi
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
  
";

    /// The same NVRTC for a kernel held to 32 registers by `__launch_bounds__(1024, 2)`.
    const PTXAS_SPILL_LOG: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'spill_kernel' for 'sm_90a'
ptxas info    : Function properties for spill_kernel
ptxas         .     1896 bytes stack frame, 3796 bytes spill stores, 5124 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 1896 bytes cumulative stack size
ptxas info    : Compile time = 305.657 ms
ptxas info    : Function properties for _Z9run_embedRK12KernelParamsi
ptxas         .     0 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads
";

    /// `cuobjdump -res-usage` (13.2.86) of the CUBIN that produced `PTXAS_LOG`.
    const CUOBJDUMP_OUT: &str = "
Resource usage:
 Common:
  GLOBAL:0
 Function _ZN4mimo9ns_kernelEPfi:
  REG:10 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:540 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z11tmpl_kernelILi4EEvPf:
  REG:10 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:536 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function mimo_kernel:
  REG:19 STACK:1024 SHARED:5120 LOCAL:0 CONSTANT[0]:552 TEXTURE:0 SURFACE:0 SAMPLER:0
";

    fn res(
        function: &str,
        registers: u32,
        stack: u32,
        stores: u32,
        loads: u32,
        shared: u32,
    ) -> FunctionResources {
        FunctionResources {
            function: function.to_owned(),
            registers,
            stack_bytes: stack,
            spill_stores: stores,
            spill_loads: loads,
            shared_bytes: shared,
            local_bytes: 0,
        }
    }

    #[test]
    fn parses_ptxas_verbose_log() {
        assert_eq!(
            parse_ptxas_verbose(PTXAS_LOG),
            vec![
                res("_ZN4mimo9ns_kernelEPfi", 10, 0, 0, 0, 0),
                res("_Z11tmpl_kernelILi4EEvPf", 10, 0, 0, 0, 0),
                res("mimo_kernel", 19, 1024, 0, 0, 4096),
                res("_Z7spillerRK12KernelParamsi", 0, 0, 0, 0, 0),
                res("_Z9run_embedRK12KernelParamsi", 0, 0, 0, 0, 0),
            ]
        );
    }

    #[test]
    fn parses_spills() {
        let parsed = parse_ptxas_verbose(PTXAS_SPILL_LOG);
        assert_eq!(
            parsed,
            vec![
                res("spill_kernel", 32, 1896, 3796, 5124, 0),
                res("_Z9run_embedRK12KernelParamsi", 0, 0, 12, 12, 0),
            ]
        );
        assert!(parsed.iter().all(FunctionResources::spills));
    }

    #[test]
    fn parses_older_ptxas_format_with_lmem_and_cmem() {
        let log = "\
ptxas info    : Compiling entry function '_Z3addPfS_' for 'sm_80'
ptxas info    : Function properties for _Z3addPfS_
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 24 registers, 16 bytes lmem, 2048 bytes smem, 368 bytes cmem[0]
";
        let mut want = res("_Z3addPfS_", 24, 8, 4, 4, 2048);
        want.local_bytes = 16;
        assert_eq!(parse_ptxas_verbose(log), vec![want]);
    }

    #[test]
    fn ignores_non_ptxas_lines() {
        assert!(parse_ptxas_verbose("kernel.cu(3): error: expected a \";\"\n  }\n").is_empty());
        assert!(parse_ptxas_verbose("").is_empty());
    }

    #[test]
    fn parses_cuobjdump_res_usage() {
        assert_eq!(
            parse_cuobjdump_res_usage(CUOBJDUMP_OUT),
            vec![
                res("_ZN4mimo9ns_kernelEPfi", 10, 0, 0, 0, 0),
                res("_Z11tmpl_kernelILi4EEvPf", 10, 0, 0, 0, 0),
                res("mimo_kernel", 19, 1024, 0, 0, 5120),
            ]
        );
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name("_Z9run_embedRK12KernelParams"), "run_embed");
        assert_eq!(short_name("_Z9run_embedRK12KernelParamsi"), "run_embed");
        assert_eq!(short_name("_ZN4mimo9ns_kernelEPfi"), "mimo::ns_kernel");
        assert_eq!(short_name("_Z11tmpl_kernelILi4EEvPf"), "tmpl_kernel");
        assert_eq!(short_name("_ZL6helperv"), "helper");
        assert_eq!(short_name("_ZNK4mimo4Tile4sizeEv"), "mimo::Tile::size");
        assert_eq!(
            short_name("_ZN4mimo4TileILi64ELi128EE4loadEPKf"),
            "mimo::Tile::load"
        );
        assert_eq!(
            short_name("_ZNSt6vectorIiE9push_backEOi"),
            "std::vector::push_back"
        );
        assert_eq!(short_name("mimo_kernel"), "mimo_kernel");
        assert_eq!(short_name("_Z"), "_Z");
        assert_eq!(short_name("_Z99short"), "_Z99short");
        assert_eq!(short_name("_ZN4mimo"), "_ZN4mimo");
    }

    #[test]
    fn cuobjdump_failure_is_a_one_line_error() {
        // Without cuobjdump: NotFound; with it: Failed on a file that does not exist.
        let err = cuobjdump_res_usage(Path::new("/nonexistent/kernel.cubin")).unwrap_err();
        assert!(
            matches!(
                err,
                CuobjdumpError::NotFound { .. } | CuobjdumpError::Failed { .. }
            ),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}
