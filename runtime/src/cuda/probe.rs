//! Whether a CUDA driver and a GPU are usable, and what the GPU is, without creating a context
//! (cheap, and it leaves the device untouched when the answer decides for the CPU).

use cudarc::driver::{result, sys};

use super::{call, guarded};

/// What the engine needs to know about a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Streaming multiprocessors: the most workers a megakernel may have (one block per SM).
    pub sm_count: usize,
    pub memory_bytes: usize,
    /// (major, minor), e.g. (9, 0) for an H100.
    pub compute_capability: (i32, i32),
    /// Shared memory one block may use after opting in (bytes).
    pub max_shared_per_block: usize,
    /// Whether `cuLaunchCooperativeKernel` is supported.
    pub cooperative_launch: bool,
    /// The driver's CUDA version, e.g. 13000 for 13.0.
    pub driver_version: i32,
}

impl DeviceInfo {
    /// The architecture NVRTC compiles for: `sm_XY`, with the `a` suffix (architecture-specific
    /// features, e.g. Hopper's wgmma) where that variant exists.
    pub fn arch(&self) -> String {
        arch_of(self.compute_capability)
    }

    /// `cuda:0 (NVIDIA H100 80GB HBM3, 132 SMs, 79.1 GiB, driver 13.0)`.
    pub fn describe(&self) -> String {
        format!(
            "cuda:{} ({}, {} SMs, {:.1} GiB, driver {}.{})",
            self.ordinal,
            self.name,
            self.sm_count,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.driver_version / 1000,
            self.driver_version % 1000 / 10
        )
    }
}

/// `sm_XY` for compute capability (X, Y), `sm_XYa` on the architectures with `a` variants.
pub fn arch_of((major, minor): (i32, i32)) -> String {
    let suffix = if matches!(
        (major, minor),
        (9, 0) | (10, 0) | (10, 3) | (12, 0) | (12, 1)
    ) {
        "a"
    } else {
        ""
    };
    format!("sm_{major}{minor}{suffix}")
}

/// Whether a CUBIN built for `arch` (`sm_90a`) runs on compute capability `cc`: the same major
/// and minor (CUBINs are not portable across minor versions for `a` targets, and mimo never
/// relies on the forward compatibility of the others).
pub fn cubin_runs_on(arch: &str, cc: (i32, i32)) -> bool {
    let base = arch.trim_end_matches(['a', 'f']);
    base == format!("sm_{}{}", cc.0, cc.1)
}

/// Probes GPU `ordinal`: `Err` with one line saying why the CPU it is (no driver, no GPU, a
/// driver error), never a panic.
pub fn probe(ordinal: usize) -> Result<DeviceInfo, String> {
    if std::env::var_os("MIMO_DISABLE_CUDA").is_some_and(|v| v != "0" && !v.is_empty()) {
        return Err("CUDA is disabled by MIMO_DISABLE_CUDA".into());
    }
    // SAFETY: `is_culib_present` only tries to dlopen libcuda under cudarc's candidate names and
    // closes it again; loading the driver library runs no initialiser with preconditions on us.
    let present = guarded("loading the CUDA driver", || unsafe {
        sys::is_culib_present()
    })
    .map_err(|e| e.to_string())?;
    if !present {
        return Err("no CUDA driver (libcuda.so.1 is not on the library search path)".into());
    }
    probe_present(ordinal).map_err(|e| e.to_string())
}

fn probe_present(ordinal: usize) -> anyhow::Result<DeviceInfo> {
    call("cuInit", result::init).map_err(|e| {
        anyhow::anyhow!("the CUDA driver is present but unusable ({e}); is there a GPU?")
    })?;
    let count = call("cuDeviceGetCount", result::device::get_count)?;
    if count <= 0 {
        anyhow::bail!("the CUDA driver reports no GPU");
    }
    if ordinal >= count as usize {
        anyhow::bail!("no GPU {ordinal}: the CUDA driver reports {count}");
    }
    let dev = call("cuDeviceGet", || result::device::get(ordinal as i32))?;
    let attr = |a: sys::CUdevice_attribute, what: &str| -> anyhow::Result<i32> {
        // SAFETY: `dev` is a valid device handle from cuDeviceGet; the attribute is read only.
        call(what, || unsafe { result::device::get_attribute(dev, a) })
    };
    use sys::CUdevice_attribute as A;
    let mut driver_version = 0i32;
    call("cuDriverGetVersion", || {
        // SAFETY: the pointer is valid for one write of a c_int during the call.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }.result()
    })?;
    Ok(DeviceInfo {
        ordinal,
        name: call("cuDeviceGetName", || result::device::get_name(dev))?,
        sm_count: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "SM count")?.max(0) as usize,
        // SAFETY: `dev` is a valid device handle from cuDeviceGet.
        memory_bytes: call("cuDeviceTotalMem", || unsafe {
            result::device::total_mem(dev)
        })?,
        compute_capability: (
            attr(
                A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                "compute capability",
            )?,
            attr(
                A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                "compute capability",
            )?,
        ),
        max_shared_per_block: attr(
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            "shared memory per block",
        )?
        .max(0) as usize,
        cooperative_launch: attr(
            A::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH,
            "cooperative launch",
        )? != 0,
        driver_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_and_cubin_compatibility() {
        assert_eq!(arch_of((9, 0)), "sm_90a");
        assert_eq!(arch_of((8, 9)), "sm_89");
        assert_eq!(arch_of((10, 0)), "sm_100a");
        assert!(cubin_runs_on("sm_90a", (9, 0)));
        assert!(cubin_runs_on("sm_90", (9, 0)));
        assert!(!cubin_runs_on("sm_90a", (8, 9)));
        assert!(!cubin_runs_on("sm_90a", (10, 0)));
    }

    #[test]
    fn probing_never_panics() {
        // Whatever this machine has, the answer is a value; without a GPU it says why in one line.
        match probe(0) {
            Ok(info) => assert!(info.sm_count > 0, "{info:?}"),
            Err(reason) => assert!(!reason.is_empty() && !reason.contains('\n'), "{reason}"),
        }
        assert!(probe(1 << 20).is_err());
    }
}
