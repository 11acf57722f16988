//! The kernel binary a program runs: [`KernelImage`] (an artifact's `kernel.cu` and CUBIN, or a
//! source generated in memory), which CUBIN a GPU loads (the artifact's, the on-disk cache of
//! NVRTC's CUBINs keyed by source hash, or a fresh NVRTC compile), and the launch shape its
//! generated header asks for.
//!
//! One place decides where a kernel comes from and what launch shape it has (`MIMO_THREADS`,
//! `MIMO_SMEM_BYTES`, `MIMO_TOKENS`), so the launch code only ever sees a loaded kernel and
//! checked numbers. Nothing here touches a driver: [`KernelImage::load_with`] hands each
//! candidate CUBIN to the device's own loader ([`super::driver::CudaDevice`]).

use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use mimo_compiler::Program;
use mimo_compiler::abi;
use mimo_compiler::{artifact, nvrtc};

use super::arena::ports;
use super::probe::{DeviceInfo, cubin_runs_on};

/// The kernel's entry point (`templates/megakernel.cu`).
pub const KERNEL_NAME: &str = "mimo_megakernel";

/// The kernel to run: the source (always; NVRTC compiles it when no CUBIN fits the device) and
/// a CUBIN with the architecture it was built for.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelImage {
    pub source: String,
    pub cubin: Option<(String, Vec<u8>)>,
}

impl KernelImage {
    /// An artifact's `kernel.cu` (refused when it does not hash to the manifest's
    /// `source_hash`) and its CUBIN, when there is one.
    pub fn from_artifact(art: &artifact::Artifact) -> Result<Self> {
        let k = &art.manifest.kernel;
        if k.abi_version != abi::ABI_VERSION {
            bail!(
                "{}: kernel ABI {} but this runtime speaks ABI {}: recompile it with mimo-compile",
                art.dir.display(),
                k.abi_version,
                abi::ABI_VERSION
            );
        }
        let path = art.dir.join(&k.source);
        let source = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if artifact::fnv1a(source.as_bytes()) != k.source_hash {
            bail!(
                "{}: does not match the manifest's source_hash (edited after compilation?): recompile with mimo-compile",
                path.display()
            );
        }
        let cubin = match &k.cubin {
            Some(name) => {
                let p = art.dir.join(name);
                let bytes =
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                Some((art.manifest.arch.clone(), bytes))
            }
            None => None,
        };
        Ok(KernelImage { source, cubin })
    }

    /// `#define NAME value` of the generated header (the first definition in the source).
    pub fn define(&self, name: &str) -> Option<u64> {
        self.source.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("#define ")?.strip_prefix(name)?;
            rest.starts_with([' ', '\t'])
                .then(|| rest.split_whitespace().next()?.parse().ok())?
        })
    }

    /// Loads the kernel on `device` with `load` (which takes a CUBIN): the artifact's CUBIN when
    /// it was built for this device (and `load` accepts it), else `kernel.cu` compiled by NVRTC
    /// for the device (from the on-disk cache when it holds it). Returns what `load` made and a
    /// note saying which CUBIN it was.
    pub fn load_with<T>(
        &self,
        device: &DeviceInfo,
        load: impl Fn(Vec<u8>) -> Result<T>,
    ) -> Result<(T, String)> {
        let arch = device.arch();
        let mut why = String::new();
        if let Some((built_for, bytes)) = &self.cubin {
            if cubin_runs_on(built_for, device.compute_capability) {
                match load(bytes.clone()) {
                    Ok(f) => return Ok((f, format!("CUBIN for {built_for}"))),
                    Err(e) => why = format!(" (the {built_for} CUBIN did not load: {e})"),
                }
            } else {
                why = format!(" (the CUBIN is for {built_for})");
            }
        }
        let opts = nvrtc::CompileOptions {
            arch: arch.clone(),
            extra: vec![],
        };
        let cached = cache_path(&self.source, &opts);
        if let Some(path) = &cached
            && let Ok(bytes) = std::fs::read(path)
        {
            match load(bytes) {
                Ok(f) => return Ok((f, format!("kernel.cu for {arch} from {}", path.display()))),
                Err(e) => {
                    tracing::warn!("{}: unusable ({e:#}); recompiling", path.display());
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let started = Instant::now();
        let compiled = nvrtc::compile_cubin(&self.source, "kernel.cu", &opts)
            .map_err(|e| anyhow!("compiling kernel.cu for {arch}{why}: {e}"))?;
        if let Some(path) = &cached {
            store_in_cache(path, &compiled.cubin);
        }
        let f = load(compiled.cubin)
            .with_context(|| format!("loading the kernel NVRTC compiled for {arch}"))?;
        Ok((
            f,
            format!(
                "kernel.cu compiled by NVRTC for {arch} in {:.1} s{why}",
                started.elapsed().as_secs_f64()
            ),
        ))
    }
}

/// Where NVRTC's CUBIN of `source` under `opts` is cached: `$MIMO_KERNEL_CACHE` (`off` disables
/// the cache), else `$XDG_CACHE_HOME/mimo/kernels`, else `~/.cache/mimo/kernels`; the file is
/// named by a hash of the source and the NVRTC flags, so a changed kernel never hits a stale
/// entry. Compiling a full kernel takes NVRTC 10-20 s; a cached one loads in milliseconds.
fn cache_path(source: &str, opts: &nvrtc::CompileOptions) -> Option<std::path::PathBuf> {
    let key = artifact::fnv1a(format!("{source}\0{}", opts.nvrtc_flags().join(" ")).as_bytes());
    Some(kernel_cache_dir()?.join(format!("{key}-{}.cubin", opts.arch)))
}

/// The directory of cached kernel builds (NVRTC's CUBINs, the emulator's libraries):
/// `$MIMO_KERNEL_CACHE` (`off`: none), else `$XDG_CACHE_HOME/mimo/kernels`, else
/// `~/.cache/mimo/kernels`.
pub(crate) fn kernel_cache_dir() -> Option<std::path::PathBuf> {
    Some(match std::env::var_os("MIMO_KERNEL_CACHE") {
        Some(d) if d == "off" => return None,
        Some(d) if !d.is_empty() => std::path::PathBuf::from(d),
        _ => match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            Some(d) => std::path::PathBuf::from(d).join("mimo/kernels"),
            None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache/mimo/kernels"),
        },
    })
}

/// Writes a cache entry atomically (a temporary file of this call's own, renamed into place:
/// two threads may store the same entry at once); failures only cost a rebuild later, so they
/// are logged, not returned. Returns whether the entry was stored.
pub(crate) fn store_in_cache(path: &std::path::Path, bytes: &[u8]) -> bool {
    static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = &written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!("kernel cache {}: {e}", path.display());
    }
    written.is_ok()
}

/// Checks that `program` can run on `device` with `image` (before anything is uploaded):
/// workers within the SMs, the kernel generated for the program's token count, its shared
/// memory within the device's. Returns the kernel's threads and dynamic shared memory.
pub(super) fn check_launchable(
    device: &DeviceInfo,
    program: &Program,
    image: &KernelImage,
) -> Result<(u32, u32)> {
    let workers = program.schedule.queues.len();
    if workers > device.sm_count {
        bail!(
            "the program has {workers} workers but {} has {} SMs: recompile with --workers {}",
            device.describe(),
            device.sm_count,
            device.sm_count
        );
    }
    let (threads, smem) = kernel_launch_shape(program, image)?;
    if smem as usize + 160 > device.max_shared_per_block {
        bail!(
            "the kernel needs {smem} bytes of shared memory per block; {} allows {}",
            device.describe(),
            device.max_shared_per_block
        );
    }
    Ok((threads, smem))
}

/// The kernel's `MIMO_THREADS` and `MIMO_SMEM_BYTES`, after checking that it was generated for
/// `program`'s tokens per step (`MIMO_TOKENS`: every token count needs its own kernel).
pub fn kernel_launch_shape(program: &Program, image: &KernelImage) -> Result<(u32, u32)> {
    let define = |name: &str| {
        image
            .define(name)
            .and_then(|v| u32::try_from(v).ok())
            .with_context(|| format!("kernel.cu does not define {name}"))
    };
    let (threads, smem, tokens) = (
        define("MIMO_THREADS")?,
        define("MIMO_SMEM_BYTES")?,
        define("MIMO_TOKENS")?,
    );
    let inputs = ports(program, true)?;
    if let Some(p) = inputs.first()
        && p.ty.shape.first().copied() != Some(tokens as usize)
    {
        bail!(
            "kernel.cu was generated for {tokens} tokens per step, `{}` takes {:?}: recompile",
            program.graph.name,
            p.ty.shape
        );
    }
    Ok((threads, smem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_defines_are_read_from_the_source() {
        let image = KernelImage {
            source: "// x\n#define MIMO_THREADS 256\n#define MIMO_SMEM_BYTES 49152 // bytes\n#define MIMO_SMEM_BYTES_X 1\n".into(),
            cubin: None,
        };
        assert_eq!(image.define("MIMO_THREADS"), Some(256));
        assert_eq!(image.define("MIMO_SMEM_BYTES"), Some(49152));
        assert_eq!(image.define("MIMO_TOKENS"), None);
    }
}
