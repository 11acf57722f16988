//! Compiles CUDA C++ source to a CUBIN with NVRTC, loaded at run time through `cudarc`
//! (`dynamic-loading`, CUDA 13.0 API).
//!
//! cudarc `dlopen()`s NVRTC by name (`libnvrtc.so`, then versioned names including
//! `libnvrtc.so.13`) through the dynamic loader's search path, so `LD_LIBRARY_PATH` must hold the
//! directory of `libnvrtc.so.13` (NVRTC then finds `libnvrtc-builtins.so.13.0` the same way).
//! Without a CUDA install, `eval "$(.ci/install-cuda-tools)"` provides both from PyPI.
//!
//! A missing library makes cudarc panic on first use; every entry point here checks
//! [`nvrtc_available`] first and turns any panic inside cudarc into an [`NvrtcError`], so callers
//! never see a panic for a missing or unusable NVRTC.

use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;

use cudarc::nvrtc::{result, sys};

use crate::resources::{FunctionResources, parse_ptxas_verbose};

/// How many lines of the NVRTC log a compile error shows.
const LOG_LINES_IN_ERROR: usize = 40;

/// What [`compile_cubin`] passes to NVRTC besides the fixed flags (`--std=c++17`,
/// `-default-device`, `--ptxas-options=-v`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// The real GPU architecture to compile for, e.g. `"sm_90a"` (H100/H200). A virtual one
    /// (`compute_90a`) yields no CUBIN.
    pub arch: String,
    /// Further NVRTC options, passed after the fixed ones (e.g. `"-DMIMO_DEBUG=1"`,
    /// `"--maxrregcount=128"`, `"-lineinfo"`).
    pub extra: Vec<String>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            arch: "sm_90a".to_owned(),
            extra: Vec::new(),
        }
    }
}

impl CompileOptions {
    /// The full NVRTC option list [`compile_cubin`] uses (also a fair cache-key ingredient).
    pub fn nvrtc_flags(&self) -> Vec<String> {
        let mut flags = vec![
            format!("--gpu-architecture={}", self.arch),
            "--std=c++17".to_owned(),
            "-default-device".to_owned(),
            "--ptxas-options=-v".to_owned(),
        ];
        flags.extend(self.extra.iter().cloned());
        flags
    }
}

/// A compiled CUBIN with NVRTC's log and the per-function resources ptxas reported in it.
#[derive(Clone)]
pub struct Compiled {
    /// The CUBIN (an ELF file), loadable with `cuModuleLoadData` / cudarc's `Ptx::from_binary`.
    pub cubin: Vec<u8>,
    /// The whole program log (warnings and the ptxas `-v` lines).
    pub log: String,
    /// Per-function registers, stack and spills parsed from `log`.
    pub resources: Vec<FunctionResources>,
}

impl std::fmt::Debug for Compiled {
    // The CUBIN of a full model is megabytes: show its size, not its bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("cubin", &format_args!("<{} bytes>", self.cubin.len()))
            .field("log", &self.log)
            .field("resources", &self.resources)
            .finish()
    }
}

/// Why an NVRTC call failed. Every message's first line names what failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NvrtcError {
    /// libnvrtc could not be loaded.
    #[error(
        "NVRTC is not available: no usable libnvrtc.so.13 on the library search path \
         (run `eval \"$(.ci/install-cuda-tools)\"` or put a CUDA 13 lib directory on LD_LIBRARY_PATH)"
    )]
    NotAvailable,
    /// An argument cannot be passed to NVRTC.
    #[error("invalid NVRTC input: {0}")]
    InvalidInput(String),
    /// An NVRTC API call returned an error code.
    #[error("NVRTC call {call} failed: {code}")]
    Call {
        /// The NVRTC function.
        call: &'static str,
        /// The `nvrtcResult` name.
        code: String,
    },
    /// The source did not compile; `log` is the whole NVRTC log.
    #[error("{}", compile_failure_message(.name, .arch, .code, .log))]
    Compile {
        /// The program name (the file name in the log's messages).
        name: String,
        /// The target architecture.
        arch: String,
        /// The `nvrtcResult` name (`NVRTC_ERROR_COMPILATION`, `NVRTC_ERROR_INVALID_OPTION`, ...).
        code: String,
        /// The whole NVRTC program log.
        log: String,
    },
    /// cudarc panicked inside an NVRTC call (e.g. a symbol missing from an old libnvrtc).
    #[error("NVRTC call {call} panicked: {message}")]
    Panicked {
        /// The NVRTC function.
        call: &'static str,
        /// The panic message.
        message: String,
    },
}

fn compile_failure_message(name: &str, arch: &str, code: &str, log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let first_error = lines
        .iter()
        .find(|l| l.contains("error"))
        .or(lines.first())
        .map_or("empty log", |l| l.trim());
    let mut message = format!("NVRTC failed to compile {name} for {arch} ({code}): {first_error}");
    if lines.is_empty() {
        return message;
    }
    message.push_str("\nNVRTC log");
    if lines.len() > LOG_LINES_IN_ERROR {
        message.push_str(&format!(
            " (first {LOG_LINES_IN_ERROR} of {} lines)",
            lines.len()
        ));
    }
    message.push_str(":\n");
    for line in lines.iter().take(LOG_LINES_IN_ERROR) {
        message.push_str("  ");
        message.push_str(line);
        message.push('\n');
    }
    let hint = if code == "NVRTC_ERROR_INVALID_OPTION" {
        "hint: an NVRTC option is misspelled or unsupported by this NVRTC version; see CompileOptions::nvrtc_flags"
    } else {
        "hint: line numbers refer to the generated source (write it out to read them); NVRTC has no CUDA \
         headers on its include path, so define helpers in templates/common"
    };
    message.push_str(hint);
    message
}

/// True when libnvrtc can be loaded and answers `nvrtcVersion`. Never panics; the answer is
/// computed once per process (the loader reads `LD_LIBRARY_PATH` at start-up only).
pub fn nvrtc_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        panic::catch_unwind(library_has_symbols).unwrap_or(false) && raw_version().is_ok()
    })
}

/// The NVRTC functions this module calls: cudarc panics on the first call of a missing one.
const REQUIRED_SYMBOLS: [&CStr; 8] = [
    c"nvrtcVersion",
    c"nvrtcCreateProgram",
    c"nvrtcCompileProgram",
    c"nvrtcDestroyProgram",
    c"nvrtcGetProgramLogSize",
    c"nvrtcGetProgramLog",
    c"nvrtcGetCUBINSize",
    c"nvrtcGetCUBIN",
];

/// Whether cudarc finds a libnvrtc exporting every function in [`REQUIRED_SYMBOLS`] (another
/// library that happens to be called `libnvrtc.so` would make cudarc panic later).
fn library_has_symbols() -> bool {
    // SAFETY: `is_culib_present` only tries to dlopen libnvrtc under cudarc's candidate names and
    // closes it again; loading NVRTC runs no initialiser with preconditions on us.
    if !unsafe { sys::is_culib_present() } {
        return false;
    }
    // SAFETY: the library was just found, so `culib` (which searches the same names in the same
    // order) loads it instead of panicking; it stays loaded for the rest of the process.
    let lib = unsafe { sys::culib() };
    REQUIRED_SYMBOLS.iter().all(|&name| {
        // SAFETY: the symbol is only looked up, never called through this signature.
        unsafe { lib.get::<unsafe extern "C" fn()>(name) }.is_ok()
    })
}

/// The NVRTC version as `(major, minor)`, e.g. `(13, 0)`.
pub fn nvrtc_version() -> Result<(i32, i32), NvrtcError> {
    if !nvrtc_available() {
        return Err(NvrtcError::NotAvailable);
    }
    raw_version()
}

fn raw_version() -> Result<(i32, i32), NvrtcError> {
    let mut major: c_int = 0;
    let mut minor: c_int = 0;
    guarded("nvrtcVersion", || {
        // SAFETY: both pointers are valid for writes of one c_int for the duration of the call.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result()
    })?
    .map_err(|e| call_error("nvrtcVersion", e))?;
    Ok((major, minor))
}

/// Compiles `source` (named `name` in messages, e.g. `"kernel.cu"`) to a CUBIN for `opts.arch`
/// with `--std=c++17 -default-device --ptxas-options=-v` and `opts.extra`. The program log is
/// always fetched: it is returned in [`Compiled::log`] and parsed into
/// [`Compiled::resources`], or, on failure, put into [`NvrtcError::Compile`].
pub fn compile_cubin(
    source: &str,
    name: &str,
    opts: &CompileOptions,
) -> Result<Compiled, NvrtcError> {
    if !opts.arch.starts_with("sm_") {
        return Err(NvrtcError::InvalidInput(format!(
            "architecture {:?} yields no CUBIN: use a real one such as sm_90a, not compute_XX",
            opts.arch
        )));
    }
    let c_source = CString::new(source)
        .map_err(|_| NvrtcError::InvalidInput(format!("source of {name} contains a NUL byte")))?;
    let c_name = CString::new(name).map_err(|_| {
        NvrtcError::InvalidInput(format!("program name {name:?} contains a NUL byte"))
    })?;
    let flags = opts.nvrtc_flags();
    if let Some(bad) = flags.iter().find(|f| f.contains('\0')) {
        return Err(NvrtcError::InvalidInput(format!(
            "NVRTC option {bad:?} contains a NUL byte"
        )));
    }

    if !nvrtc_available() {
        return Err(NvrtcError::NotAvailable);
    }

    let program = Program::create(&c_source, &c_name)?;
    let compiled = guarded("nvrtcCompileProgram", || {
        // SAFETY: `program.raw` was created by `create_program` and is destroyed only by
        // `Program::drop`, after this call; the options contain no NUL byte (checked above).
        unsafe { result::compile_program(program.raw, &flags) }
    })?;
    let log = program.log()?;
    if let Err(e) = compiled {
        return Err(NvrtcError::Compile {
            name: name.to_owned(),
            arch: opts.arch.clone(),
            code: code_name(e),
            log,
        });
    }
    let cubin = program.cubin()?;
    if cubin.is_empty() {
        return Err(NvrtcError::InvalidInput(format!(
            "NVRTC produced no CUBIN for {name}: architecture {:?} is not a real one (use sm_XX, not compute_XX)",
            opts.arch
        )));
    }
    let resources = parse_ptxas_verbose(&log);
    Ok(Compiled {
        cubin,
        log,
        resources,
    })
}

/// An NVRTC program, destroyed on drop. It borrows the source and name, which NVRTC may keep
/// pointers to until the program is destroyed.
struct Program<'a> {
    raw: sys::nvrtcProgram,
    _source: &'a CStr,
    _name: &'a CStr,
}

impl<'a> Program<'a> {
    fn create(source: &'a CStr, name: &'a CStr) -> Result<Self, NvrtcError> {
        let raw = guarded("nvrtcCreateProgram", || {
            result::create_program(source, Some(name))
        })?
        .map_err(|e| call_error("nvrtcCreateProgram", e))?;
        Ok(Self {
            raw,
            _source: source,
            _name: name,
        })
    }

    /// The program log as text (NVRTC's trailing NUL removed).
    fn log(&self) -> Result<String, NvrtcError> {
        let raw = guarded("nvrtcGetProgramLog", || {
            // SAFETY: `self.raw` is a live program created by `create_program`.
            unsafe { result::get_program_log(self.raw) }
        })?
        .map_err(|e| call_error("nvrtcGetProgramLog", e))?;
        Ok(c_chars_to_string(&raw))
    }

    fn cubin(&self) -> Result<Vec<u8>, NvrtcError> {
        let mut size: usize = 0;
        guarded("nvrtcGetCUBINSize", || {
            // SAFETY: `self.raw` is a live, compiled program; `size` is valid for one write.
            unsafe { sys::nvrtcGetCUBINSize(self.raw, &mut size) }.result()
        })?
        .map_err(|e| call_error("nvrtcGetCUBINSize", e))?;
        let mut cubin = vec![0u8; size];
        if size == 0 {
            return Ok(cubin);
        }
        guarded("nvrtcGetCUBIN", || {
            // SAFETY: `cubin` holds exactly the `size` bytes nvrtcGetCUBINSize asked for, and
            // `self.raw` is the same live, compiled program.
            unsafe { sys::nvrtcGetCUBIN(self.raw, cubin.as_mut_ptr().cast::<c_char>()) }.result()
        })?
        .map_err(|e| call_error("nvrtcGetCUBIN", e))?;
        Ok(cubin)
    }
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        let raw = self.raw;
        // SAFETY: `raw` was created by `create_program` and is destroyed exactly once, here.
        // A failure to free the program only leaks it, so the result is ignored.
        let _ = panic::catch_unwind(|| unsafe { result::destroy_program(raw) });
    }
}

/// Runs `f` (a cudarc call), turning a panic inside cudarc (a missing library or symbol) into
/// the first line of its message.
pub fn catch_cudarc_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        message.lines().next().unwrap_or_default().to_owned()
    })
}

fn guarded<T>(call: &'static str, f: impl FnOnce() -> T) -> Result<T, NvrtcError> {
    catch_cudarc_panic(f).map_err(|message| NvrtcError::Panicked { call, message })
}

fn code_name(e: result::NvrtcError) -> String {
    format!("{:?}", e.0)
}

fn call_error(call: &'static str, e: result::NvrtcError) -> NvrtcError {
    NvrtcError::Call {
        call,
        code: code_name(e),
    }
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    // `c_char` is `i8` or `u8` depending on the target; `as u8` reinterprets the byte either way.
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether NVRTC tests should run: false (skip, with a note) when NVRTC is missing, a test
    /// failure when `MIMO_REQUIRE_NVRTC=1` demands it.
    fn nvrtc_or_skip(test: &str) -> bool {
        if nvrtc_available() {
            return true;
        }
        assert!(
            std::env::var("MIMO_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "MIMO_REQUIRE_NVRTC=1 but NVRTC is not available (LD_LIBRARY_PATH={:?}); run `eval \"$(.ci/install-cuda-tools)\"`",
            std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
        );
        eprintln!(
            "skipping {test}: NVRTC is not available (run `eval \"$(.ci/install-cuda-tools)\"`)"
        );
        false
    }

    const SMALL_KERNEL: &str = r#"
struct KernelParams { const float* x; float* y; int n; };

__noinline__ __device__ float run_embed(const KernelParams& p, int i) {
  return p.x[i] * 2.0f + 1.0f;
}

extern "C" __global__ void mimo_kernel(KernelParams p) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < p.n) p.y[i] = run_embed(p, i);
}
"#;

    #[test]
    fn compiles_a_small_kernel_for_sm_90a() {
        if !nvrtc_or_skip("compiles_a_small_kernel_for_sm_90a") {
            return;
        }
        let (major, _minor) = nvrtc_version().expect("nvrtcVersion");
        assert!(major >= 12, "NVRTC {major} is too old for sm_90a");

        let compiled = compile_cubin(SMALL_KERNEL, "kernel.cu", &CompileOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&compiled.cubin[..4], b"\x7fELF", "CUBIN is not an ELF file");

        let embed = compiled
            .resources
            .iter()
            .find(|f| crate::resources::short_name(&f.function) == "run_embed")
            .unwrap_or_else(|| {
                panic!(
                    "run_embed missing from {:?}\n{}",
                    compiled.resources, compiled.log
                )
            });
        assert_eq!((embed.spill_stores, embed.spill_loads), (0, 0), "{embed:?}");

        let kernel = compiled
            .resources
            .iter()
            .find(|f| f.function == "mimo_kernel")
            .unwrap_or_else(|| panic!("mimo_kernel missing from {:?}", compiled.resources));
        assert!(kernel.registers > 0, "{kernel:?}");
        assert!(!kernel.spills(), "{kernel:?}");

        // cuobjdump, when installed, reads the same registers back from the CUBIN.
        if crate::resources::cuobjdump_program().is_ok() {
            let path =
                std::env::temp_dir().join(format!("mimo-nvrtc-test-{}.cubin", std::process::id()));
            std::fs::write(&path, &compiled.cubin).expect("write CUBIN");
            let dumped = crate::resources::cuobjdump_res_usage(&path);
            let _ = std::fs::remove_file(&path);
            let dumped = dumped.unwrap_or_else(|e| panic!("{e}"));
            let dumped_kernel = dumped
                .iter()
                .find(|f| f.function == "mimo_kernel")
                .unwrap_or_else(|| panic!("mimo_kernel missing from {dumped:?}"));
            assert_eq!(dumped_kernel.registers, kernel.registers);
            assert_eq!(dumped_kernel.stack_bytes, kernel.stack_bytes);
        }
    }

    #[test]
    fn syntax_error_reports_the_nvrtc_log() {
        if !nvrtc_or_skip("syntax_error_reports_the_nvrtc_log") {
            return;
        }
        let source =
            "extern \"C\" __global__ void broken(float* y) {\n  y[threadIdx.x] = 1.0f\n}\n";
        let err = compile_cubin(source, "broken.cu", &CompileOptions::default())
            .expect_err("a missing ';' must not compile");
        let message = err.to_string();
        assert!(matches!(err, NvrtcError::Compile { .. }), "{message}");
        assert!(
            message.contains("broken.cu(3): error: expected a \";\""),
            "{message}"
        );
        assert!(
            message.lines().next().unwrap().starts_with(
                "NVRTC failed to compile broken.cu for sm_90a (NVRTC_ERROR_COMPILATION)"
            ),
            "{message}"
        );
        assert!(message.contains("hint:"), "{message}");
    }

    #[test]
    fn unknown_option_is_reported() {
        if !nvrtc_or_skip("unknown_option_is_reported") {
            return;
        }
        let opts = CompileOptions {
            extra: vec!["--no-such-option".to_owned()],
            ..CompileOptions::default()
        };
        let message = compile_cubin(SMALL_KERNEL, "kernel.cu", &opts)
            .expect_err("an unknown option must fail")
            .to_string();
        assert!(message.contains("NVRTC_ERROR_INVALID_OPTION"), "{message}");
        assert!(message.contains("--no-such-option"), "{message}");
    }

    #[test]
    fn bad_input_is_rejected_without_calling_nvrtc() {
        let err = compile_cubin("a\0b", "kernel.cu", &CompileOptions::default()).unwrap_err();
        assert!(matches!(err, NvrtcError::InvalidInput(_)), "{err}");
        let opts = CompileOptions {
            arch: "compute_90a".to_owned(),
            ..CompileOptions::default()
        };
        let err = compile_cubin(SMALL_KERNEL, "kernel.cu", &opts).unwrap_err();
        assert!(matches!(err, NvrtcError::InvalidInput(_)), "{err}");
        let opts = CompileOptions {
            extra: vec!["-DX=\0".to_owned()],
            ..CompileOptions::default()
        };
        let err = compile_cubin(SMALL_KERNEL, "kernel.cu", &opts).unwrap_err();
        assert!(matches!(err, NvrtcError::InvalidInput(_)), "{err}");
    }

    #[test]
    fn debug_of_compiled_shows_the_cubin_size_only() {
        let compiled = Compiled {
            cubin: vec![0x7f; 4096],
            log: String::new(),
            resources: Vec::new(),
        };
        assert!(format!("{compiled:?}").contains("<4096 bytes>"));
    }

    #[test]
    fn missing_nvrtc_is_an_error_not_a_panic() {
        // Whatever the environment holds, these return instead of panicking.
        let available = nvrtc_available();
        assert_eq!(nvrtc_version().is_ok(), available);
        if !available {
            let err =
                compile_cubin(SMALL_KERNEL, "kernel.cu", &CompileOptions::default()).unwrap_err();
            assert!(matches!(err, NvrtcError::NotAvailable));
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn compile_error_message_keeps_the_first_40_lines() {
        let log: String = (1..=100)
            .map(|i| format!("k.cu({i}): error: bad {i}\n"))
            .collect();
        let message = compile_failure_message("k.cu", "sm_90a", "NVRTC_ERROR_COMPILATION", &log);
        let first = message.lines().next().unwrap();
        assert_eq!(
            first,
            "NVRTC failed to compile k.cu for sm_90a (NVRTC_ERROR_COMPILATION): k.cu(1): error: bad 1"
        );
        assert!(message.contains("first 40 of 100 lines"));
        assert!(message.contains("k.cu(40): error: bad 40"));
        assert!(!message.contains("k.cu(41): error"));
        assert!(message.lines().last().unwrap().starts_with("hint:"));
    }

    #[test]
    fn flags_are_spelled_as_nvrtc_documents() {
        let opts = CompileOptions {
            extra: vec!["-lineinfo".to_owned()],
            ..CompileOptions::default()
        };
        assert_eq!(
            opts.nvrtc_flags(),
            [
                "--gpu-architecture=sm_90a",
                "--std=c++17",
                "-default-device",
                "--ptxas-options=-v",
                "-lineinfo"
            ]
        );
    }
}
