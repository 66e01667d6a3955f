use std::path::PathBuf;

/// Why a runtime library could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("runtime library {0} does not exist (set the path to librkllmrt.so)")]
    NotFound(PathBuf),
    #[error("cannot load {path} as a shared library: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: libloading::Error,
    },
    #[error("{path} is not an RKLLM runtime: it lacks the symbol `{symbol}`")]
    MissingSymbol { path: PathBuf, symbol: &'static str },
    #[error(
        "{path} speaks RKLLM ABI family {library}, but family {requested} was requested: \
         set --runtime-abi {library} (config runtime.abi = \"{library}\"; rkllm-run --abi \
         {library}), or start rkserve's CPU runtime with RKLLM_CPU_ABI={requested}"
    )]
    AbiMismatch {
        path: PathBuf,
        requested: crate::AbiFamily,
        library: crate::AbiFamily,
    },
    #[error("{path} reports an unknown RKLLM ABI family {code} (rkllm_cpu_abi_family); expected 12 or 13")]
    UnknownAbi { path: PathBuf, code: i32 },
}

/// Errors from an initialised runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "rkllm_init failed for model {model} (see the runtime's log above for the reason){}",
        hint.map(|f| format!("; {}", family_hint(f))).unwrap_or_default()
    )]
    InitFailed {
        model: String,
        /// The family the library looks like it speaks, when it is not the configured one.
        hint: Option<crate::AbiFamily>,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{what} is not available in ABI family {family}")]
    Unsupported {
        what: &'static str,
        family: crate::AbiFamily,
    },
    #[error("{function} returned {code}")]
    CallFailed { function: &'static str, code: i32 },
    #[error("the step callback panicked: {0}")]
    CallbackPanicked(String),
    #[error("rkllm_destroy did not return within {0:?}; the handle was abandoned")]
    DestroyTimedOut(std::time::Duration),
    /// An error the runtime reported in a worker process, as its text.
    #[error("{0}")]
    Worker(String),
    /// An error the runtime reported in a worker process, with what the worker printed
    /// before it (where the runtime's own reason is).
    #[error("{message}{}", stderr_tail(.output))]
    WorkerSaid {
        message: String,
        output: Vec<String>,
    },
    /// The worker process holding the runtime is gone.
    #[error("the runtime's worker process {how}{}", stderr_tail(.stderr))]
    WorkerDied { how: String, stderr: Vec<String> },
}

/// What to tell a user whose library looks like it speaks `family` instead.
pub(crate) fn family_hint(family: crate::AbiFamily) -> String {
    format!(
        "this looks like a v{family} library: set runtime.abi = {family} (--runtime-abi \
         {family}; rkllm-run --abi {family}), or run rkllm-run probe"
    )
}

fn stderr_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its last output: {}", lines.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AbiFamily;

    #[test]
    fn an_init_failure_that_fits_the_other_family_names_it_and_the_fix() {
        let e = Error::InitFailed {
            model: "m.rkllm".into(),
            hint: Some(AbiFamily::V1_2),
        };
        let msg = e.to_string();
        for part in [
            "rkllm_init failed for model m.rkllm",
            "this looks like a v1.2 library",
            "set runtime.abi = 1.2",
            "rkllm-run probe",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }
        let plain = Error::InitFailed {
            model: "m.rkllm".into(),
            hint: None,
        }
        .to_string();
        assert!(!plain.contains("looks like"), "{plain}");
    }
}
