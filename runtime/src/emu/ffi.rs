//! The C interface of the emulator's runtime (`templates/emu/launch_abi.h`), field for field,
//! and the loaded library. The library reports the size of its launch record, and the size of
//! the kernel's `KernelParams`, so a mismatch is refused instead of misread.

use std::ffi::{CString, c_char};
use std::path::Path;

use anyhow::{Context, Result, bail};
use libloading::{Library, Symbol};

pub const ABI_VERSION: u32 = 1;
pub const CLASSES: usize = 6;
pub const MESSAGE_BYTES: usize = 1024;
pub const NO_TASK: u32 = u32::MAX;

#[repr(C)]
pub struct Allocation {
    pub base: u64,
    pub bytes: u64,
    pub mem_class: u32,
    pub reserved: u32,
    pub name: *const c_char,
}

#[repr(C)]
pub struct Launch {
    pub allocations: *const Allocation,
    pub allocation_count: u64,
    pub params: *const u8,
    pub params_bytes: u64,
    pub blocks: u32,
    pub threads: u32,
    pub dynamic_smem: u32,
    pub randomize: u32,
    pub seed: u64,
    pub launch_id: u64,
    pub task_count: u32,
    pub reserved: u32,
    pub task_bytes: *mut u64,
    pub failed: u32,
    pub worker: u32,
    pub task: u32,
    pub reserved2: u32,
    pub virtual_ns: u64,
    pub message: [u8; MESSAGE_BYTES],
}

type LaunchFn = unsafe extern "C" fn(*mut Launch) -> i32;
type SizeFn = unsafe extern "C" fn() -> u64;
type VersionFn = unsafe extern "C" fn() -> u32;

/// One kernel's emulator library.
pub struct KernelLibrary {
    launch: LaunchFn,
    pub static_smem: u64,
    pub params_bytes: u64,
    // Kept last: the function pointer above lives in it.
    _library: Library,
}

impl KernelLibrary {
    pub fn open(path: &Path) -> Result<Self> {
        // SAFETY: the library is one this process built from the emulator's own sources
        // (build.rs); loading it runs only its static initialisers (none but the TSan stub).
        let library = unsafe { Library::new(path) }
            .with_context(|| format!("loading the emulator library {}", path.display()))?;
        // SAFETY: each symbol is looked up with the signature launch_abi.h / kernel_entry.h
        // declare for it.
        unsafe {
            let get_size = |name: &[u8]| -> Result<u64> {
                let f: Symbol<SizeFn> = library.get(name).with_context(|| {
                    format!("{}: no {}", path.display(), String::from_utf8_lossy(name))
                })?;
                Ok(f())
            };
            let version: Symbol<VersionFn> = library.get(b"mimo_emu_abi_version")?;
            if version() != ABI_VERSION {
                bail!(
                    "{}: emulator ABI {} (expected {ABI_VERSION})",
                    path.display(),
                    version()
                );
            }
            let record = get_size(b"mimo_emu_abi_bytes")?;
            if record != std::mem::size_of::<Launch>() as u64 {
                bail!(
                    "{}: its launch record has {record} bytes, this runtime's {}",
                    path.display(),
                    std::mem::size_of::<Launch>()
                );
            }
            let static_smem = get_size(b"mimo_emu_static_shared_bytes")?;
            let params_bytes = get_size(b"mimo_emu_params_bytes")?;
            let launch: Symbol<LaunchFn> = library.get(b"mimo_emu_launch")?;
            let launch = *launch;
            Ok(KernelLibrary {
                launch,
                static_smem,
                params_bytes,
                _library: library,
            })
        }
    }

    /// Runs one launch described by `l` (its pointers valid for the call).
    pub fn launch(&self, l: &mut Launch) {
        // SAFETY: `l` is a complete launch record whose pointers (allocations, names, params,
        // task_bytes of task_count rows) the caller keeps alive for the call; the library's
        // runtime only reads and writes through them and the allocations it lists.
        unsafe {
            (self.launch)(l);
        }
    }
}

/// A NUL-terminated copy of `s` (inner NULs replaced).
pub fn c_name(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).expect("NULs replaced")
}
