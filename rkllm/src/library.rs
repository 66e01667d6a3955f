use crate::abi::{self, v1_2, v1_3};
use crate::defaults::{decode, implausible, other_family_fits, RawDefaultFn, RawParam};
use crate::error::{Error, LoadError};
use crate::handle::Handle;
use crate::params::InitParams;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// The two incompatible ABI families of `librkllmrt.so`. Which one a library speaks cannot be
/// read from its symbols (the runtime prints its version when it loads), so it is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AbiFamily {
    /// v1.2.1, v1.2.2, v1.2.3.
    V1_2,
    /// v1.3.0.
    #[default]
    V1_3,
}

impl fmt::Display for AbiFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbiFamily::V1_2 => "1.2",
            AbiFamily::V1_3 => "1.3",
        })
    }
}

impl AbiFamily {
    /// The number rkserve's CPU runtime returns from `rkllm_cpu_abi_family` for this family.
    pub fn code(self) -> i32 {
        match self {
            AbiFamily::V1_2 => 12,
            AbiFamily::V1_3 => 13,
        }
    }

    pub fn from_code(code: i32) -> Option<AbiFamily> {
        match code {
            12 => Some(AbiFamily::V1_2),
            13 => Some(AbiFamily::V1_3),
            _ => None,
        }
    }
}

impl FromStr for AbiFamily {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().trim_start_matches('v') {
            "1.2" | "1.2.1" | "1.2.2" | "1.2.3" => Ok(AbiFamily::V1_2),
            "1.3" | "1.3.0" => Ok(AbiFamily::V1_3),
            other => Err(format!(
                "unknown RKLLM ABI family '{other}': expected 1.2 (runtime 1.2.x) or 1.3 (runtime 1.3.0)"
            )),
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) enum FamilyFns {
    V1_2 {
        init: v1_2::InitFn,
        run: v1_2::RunFn,
        run_async: Option<v1_2::RunFn>,
    },
    V1_3 {
        init: v1_3::InitFn,
        run: v1_3::RunFn,
        run_async: Option<v1_3::RunFn>,
    },
}

/// Function pointers resolved once at load time. They stay valid while the `Runtime`'s
/// `libloading::Library` is alive, which every holder of `Fns` guarantees by holding the Arc.
#[derive(Clone, Copy)]
pub(crate) struct Fns {
    pub family: FamilyFns,
    pub create_default: RawDefaultFn,
    pub destroy: abi::DestroyFn,
    pub abort: abi::AbortFn,
    pub is_running: abi::IsRunningFn,
    pub clear_kv_cache: Option<abi::ClearKvCacheFn>,
    pub get_kv_cache_size: Option<abi::GetKvCacheSizeFn>,
    pub set_chat_template: Option<abi::SetChatTemplateFn>,
    pub load_prompt_cache: Option<abi::LoadPromptCacheFn>,
    pub release_prompt_cache: Option<abi::ReleasePromptCacheFn>,
}

pub(crate) struct Loaded {
    pub fns: Fns,
    pub path: PathBuf,
    // Dropped last: unloading the library invalidates every pointer in `fns`.
    _lib: libloading::Library,
}

/// A loaded `librkllmrt.so`. Cheap to clone; handles keep it loaded.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Loaded>,
    family: AbiFamily,
    /// What `rkllm_cpu_abi_family` returned, where the library exports it.
    reported: Option<i32>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("path", &self.inner.path)
            .field("family", &self.family)
            .finish()
    }
}

fn required<T: Copy>(
    lib: &libloading::Library,
    path: &Path,
    symbol: &'static str,
) -> Result<T, LoadError> {
    optional(lib, symbol).ok_or_else(|| LoadError::MissingSymbol {
        path: path.to_path_buf(),
        symbol,
    })
}

/// `int rkllm_cpu_abi_family(void)`, exported by rkserve's CPU runtime only.
type AbiFamilyFn = unsafe extern "C" fn() -> std::ffi::c_int;

/// A library that says which family it speaks must be the one requested: with the other
/// family's struct layouts, the first `rkllm_init` or `rkllm_run` reads garbage.
fn check_family(path: &Path, requested: AbiFamily, reported: Option<i32>) -> Result<(), LoadError> {
    let Some(code) = reported else {
        // Rockchip's library cannot say; the configuration is trusted, as it must be.
        return Ok(());
    };
    match AbiFamily::from_code(code) {
        Some(library) if library == requested => Ok(()),
        Some(library) => Err(LoadError::AbiMismatch {
            path: path.to_path_buf(),
            requested,
            library,
        }),
        None => Err(LoadError::UnknownAbi {
            path: path.to_path_buf(),
            code,
        }),
    }
}

fn optional<T: Copy>(lib: &libloading::Library, symbol: &'static str) -> Option<T> {
    // SAFETY: T is one of the fn-pointer types of `abi` (or `AbiFamilyFn`), declared to match
    // the symbol's C declaration for the family the caller chose; the pointer is copied out
    // and used only while `lib` is loaded.
    unsafe { lib.get::<T>(symbol.as_bytes()).ok().map(|s| *s) }
}

impl Runtime {
    /// Loads a runtime library and resolves its symbols for `family`.
    pub fn load(path: impl AsRef<Path>, family: AbiFamily) -> Result<Runtime, LoadError> {
        let rt = Runtime::load_unverified(path, family)?;
        check_family(rt.path(), family, rt.reported)?;
        if let Some(other) = rt.other_family_fits() {
            tracing::warn!(
                "{}: its default parameters read as nonsense in ABI family {family} and as \
                 sane ones in {other}; {}",
                rt.path().display(),
                crate::error::family_hint(other)
            );
        }
        Ok(rt)
    }

    /// Loads a library in `family`'s layouts even when it says it speaks the other: for
    /// probing which family works, in a process that may die of it (`rkllm-run probe`).
    pub fn load_unverified(
        path: impl AsRef<Path>,
        family: AbiFamily,
    ) -> Result<Runtime, LoadError> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(LoadError::NotFound(path.to_path_buf()));
        }
        // SAFETY: loading a library runs its initialisers. That is inherent to using a
        // runtime library at all; the path is the one the user configured.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|source| LoadError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let report: Option<AbiFamilyFn> = optional(&lib, "rkllm_cpu_abi_family");
        // SAFETY: `int rkllm_cpu_abi_family(void)` takes nothing and only reads the library's
        // configuration; `lib` is loaded for the call.
        let reported = report.map(|f| unsafe { f() });
        let family_fns = match family {
            AbiFamily::V1_2 => FamilyFns::V1_2 {
                init: required(&lib, path, "rkllm_init")?,
                run: required(&lib, path, "rkllm_run")?,
                run_async: optional(&lib, "rkllm_run_async"),
            },
            AbiFamily::V1_3 => FamilyFns::V1_3 {
                init: required(&lib, path, "rkllm_init")?,
                run: required(&lib, path, "rkllm_run")?,
                run_async: optional(&lib, "rkllm_run_async"),
            },
        };
        let fns = Fns {
            family: family_fns,
            create_default: required(&lib, path, "rkllm_createDefaultParam")?,
            destroy: required(&lib, path, "rkllm_destroy")?,
            abort: required(&lib, path, "rkllm_abort")?,
            is_running: required(&lib, path, "rkllm_is_running")?,
            clear_kv_cache: optional(&lib, "rkllm_clear_kv_cache"),
            get_kv_cache_size: optional(&lib, "rkllm_get_kv_cache_size"),
            set_chat_template: optional(&lib, "rkllm_set_chat_template"),
            load_prompt_cache: optional(&lib, "rkllm_load_prompt_cache"),
            release_prompt_cache: optional(&lib, "rkllm_release_prompt_cache"),
        };
        Ok(Runtime {
            inner: Arc::new(Loaded {
                fns,
                path: path.to_path_buf(),
                _lib: lib,
            }),
            family,
            reported,
        })
    }

    pub fn family(&self) -> AbiFamily {
        self.family
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The family `rkllm_cpu_abi_family` names, where the library exports it (rkserve's CPU
    /// runtime): `Some(Err(code))` for a code of no known family.
    pub fn reported_family(&self) -> Option<Result<AbiFamily, i32>> {
        self.reported.map(|c| AbiFamily::from_code(c).ok_or(c))
    }

    fn raw_defaults(&self) -> RawParam {
        // SAFETY: `rkllm_createDefaultParam` takes nothing and returns an RKLLMParam of at
        // most 208 bytes through the caller's return buffer; RawParam's 256 bytes hold either
        // family's, and every byte pattern in it is a valid RawParam.
        unsafe { (self.inner.fns.create_default)() }
    }

    /// The runtime's own defaults (`rkllm_createDefaultParam`), as family-neutral parameters.
    pub fn default_params(&self) -> InitParams {
        decode(self.family, &self.raw_defaults())
    }

    /// Why the runtime's defaults cannot be real ones in the loaded family, if they cannot
    /// (an `n_batch` of 0, say): the first sign of the wrong family on Rockchip's library.
    pub fn implausible_defaults(&self) -> Option<String> {
        implausible(&self.default_params())
    }

    /// The other family, when the runtime's defaults read as nonsense in the loaded one and
    /// as sane values in it.
    pub fn other_family_fits(&self) -> Option<AbiFamily> {
        other_family_fits(self.family, &self.raw_defaults())
    }

    /// Creates a handle: loads the model and allocates `n_batch` sequences.
    pub fn init(&self, params: &InitParams) -> Result<Handle, Error> {
        Handle::init(self.clone(), params)
    }
}

/// rkserve's CPU runtime as built by cargo: next to the running executable, or one level up
/// for test and bench executables (`target/<profile>/deps`). The deps copy comes first
/// because `cargo test` refreshes it without copying it up.
pub fn cpu_runtime_near_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("librkllmrt.so"),
        dir.parent()?.join("librkllmrt.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_that_cannot_say_is_trusted() {
        for f in [AbiFamily::V1_2, AbiFamily::V1_3] {
            assert!(check_family(Path::new("x.so"), f, None).is_ok());
        }
    }

    #[test]
    fn family_codes_round_trip_and_unknown_codes_are_refused() {
        for f in [AbiFamily::V1_2, AbiFamily::V1_3] {
            assert_eq!(AbiFamily::from_code(f.code()), Some(f));
            assert!(check_family(Path::new("x.so"), f, Some(f.code())).is_ok());
        }
        let e = check_family(Path::new("x.so"), AbiFamily::V1_3, Some(14)).unwrap_err();
        assert!(matches!(e, LoadError::UnknownAbi { code: 14, .. }), "{e}");
    }

    #[test]
    fn a_mismatch_names_both_families_and_the_fix() {
        let e = check_family(Path::new("lib.so"), AbiFamily::V1_2, Some(13)).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                LoadError::AbiMismatch {
                    requested: AbiFamily::V1_2,
                    library: AbiFamily::V1_3,
                    ..
                }
            ),
            "{msg}"
        );
        for part in ["1.3", "1.2", "--runtime-abi 1.3", "runtime.abi"] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }
}
