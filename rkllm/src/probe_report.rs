//! The board probe's report (`rkllm-run probe --json`): written by the probe, read by rkserve
//! to choose its mechanisms for one library and one model. The format is documented in
//! docs/probe.md; `schema` changes when a field changes meaning.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const SCHEMA: u32 = 1;

/// A file the report is about, identified by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let (sha256, size) = sha256_file(path)?;
        Ok(FileId {
            path: path.to_path_buf(),
            sha256,
            size,
        })
    }
}

/// The sha256 (lower-case hex) and size of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, size))
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Did what it tests.
    Ok,
    /// Ran to the end and found the feature broken or refused.
    Failed,
    /// The child process died (its signal or exit code is in `detail`).
    Crashed,
    /// The child made no answer in time and was killed.
    TimedOut,
    /// Not run: the library lacks the function, or an earlier check rules it out.
    Skipped,
}

/// One check's result, as its child process printed it (or as its death was seen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// `family`, `n_batch`, `pause_resume`, ... (docs/probe.md lists them).
    pub check: String,
    /// The parameter this run of the check had (`"8"`, `"8 empty slots"`, `"1.2"`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arg: String,
    pub status: Status,
    /// One line: what was seen.
    pub detail: String,
    /// Figures the check measured (tok/s, latencies in ms, sizes), by name.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub figures: serde_json::Map<String, serde_json::Value>,
    /// The child's peak RSS (VmHWM) in MB, when it lived to read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_hwm_mb: Option<f64>,
    pub elapsed_ms: f64,
}

/// What rkserve should do with this library and model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recommendations {
    /// The ABI family that initialised and ran cleanly ("1.2" or "1.3"); none if neither did.
    pub family: Option<String>,
    /// The largest n_batch that worked, with every smaller one (of 1, 2, 4, 8); 0 if none did.
    pub max_n_batch: u8,
    /// Whether a run can be cut and a new one started on the same handle.
    pub reform: bool,
    /// How to cut a run: "pause" (the callback returns 1) or "abort" (`rkllm_abort`), as
    /// rkserve's `scheduler.reform_via` spells them; none when neither works.
    pub reform_via: Option<String>,
}

/// One point of the decode batching curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub n_batch: u8,
    /// Tokens per second over all sequences, after the first token.
    pub tok_per_s: f64,
    /// `tok_per_s` over the one-sequence figure.
    pub ratio: f64,
    /// The batch_alpha this point alone implies (none at n_batch 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub schema: u32,
    pub library: FileId,
    pub model: FileId,
    /// The family the probe found (the recommendation's, repeated for readers).
    pub family: Option<String>,
    /// What `rkllm_cpu_abi_family` says, where the library exports it (rkserve's CPU
    /// runtime only); the probe's verdict is checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_family: Option<String>,
    pub checks: Vec<CheckResult>,
    pub recommendations: Recommendations,
    /// Aggregate decode throughput at each n_batch that worked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch_curve: Vec<CurvePoint>,
    /// The synthetic engine's `timing.batch_alpha` that fits the curve: a step with `b`
    /// sequences takes `1 + batch_alpha * (b - 1)` times a step with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_alpha: Option<f64>,
    /// The largest VmHWM of any check's process, in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_vm_hwm_mb: Option<f64>,
    /// When the probe ran (seconds since the Unix epoch) and with which rkllm-run.
    pub probed_at: u64,
    pub tool: String,
}

/// Why a report cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read probe report {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("probe report {path} is not a probe report: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("probe report {path} has schema {found}; this build reads schema {SCHEMA}")]
    Schema { path: PathBuf, found: u32 },
}

impl ProbeReport {
    pub fn read(path: &Path) -> Result<ProbeReport, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // The schema first, so that a future report says so instead of failing to parse.
        #[derive(Deserialize)]
        struct Head {
            schema: u32,
        }
        let head: Head = serde_json::from_str(&text).map_err(|source| ReportError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if head.schema != SCHEMA {
            return Err(ReportError::Schema {
                path: path.to_path_buf(),
                found: head.schema,
            });
        }
        serde_json::from_str(&text).map_err(|source| ReportError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// The file name a report is cached under: the library's sha256 and the model's.
    pub fn cache_name(library_sha256: &str, model_sha256: &str) -> String {
        let short = |s: &str| s.chars().take(16).collect::<String>();
        format!("{}-{}.json", short(library_sha256), short(model_sha256))
    }

    /// Why this report is not about `library` and `model` (by content), if it is not.
    pub fn mismatch(&self, library: &FileId, model: &FileId) -> Option<String> {
        if self.library.sha256 != library.sha256 {
            return Some(format!(
                "it probed library {} (sha256 {}), not {} (sha256 {})",
                self.library.path.display(),
                self.library.sha256,
                library.path.display(),
                library.sha256
            ));
        }
        if self.model.size != model.size || self.model.sha256 != model.sha256 {
            return Some(format!(
                "it probed model {} (sha256 {}), not {} (sha256 {})",
                self.model.path.display(),
                self.model.sha256,
                model.path.display(),
                model.sha256
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lib: &str, model: &str) -> ProbeReport {
        let id = |p: &str, s: &str| FileId {
            path: p.into(),
            sha256: s.into(),
            size: 10,
        };
        ProbeReport {
            schema: SCHEMA,
            library: id("lib.so", lib),
            model: id("m.rkllm", model),
            family: Some("1.2".into()),
            exported_family: None,
            checks: vec![],
            batch_curve: vec![],
            batch_alpha: None,
            peak_vm_hwm_mb: None,
            recommendations: Recommendations {
                family: Some("1.2".into()),
                max_n_batch: 4,
                reform: true,
                reform_via: Some("abort".into()),
            },
            probed_at: 0,
            tool: "test".into(),
        }
    }

    #[test]
    fn a_report_round_trips_and_matches_only_its_own_files() {
        let dir = std::env::temp_dir().join(format!("probe-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.json");
        let r = report("aa", "bb");
        std::fs::write(&path, r.to_json()).unwrap();
        let back = ProbeReport::read(&path).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.mismatch(&r.library, &r.model), None);
        let other = FileId {
            sha256: "cc".into(),
            ..r.model.clone()
        };
        assert!(back.mismatch(&r.library, &other).unwrap().contains("model"));
        assert!(back.mismatch(&other, &r.model).unwrap().contains("library"));
        std::fs::write(&path, r.to_json().replace("\"schema\": 1", "\"schema\": 2")).unwrap();
        assert!(matches!(
            ProbeReport::read(&path),
            Err(ReportError::Schema { found: 2, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha256_of_a_known_text() {
        let dir = std::env::temp_dir().join(format!("probe-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("abc");
        std::fs::write(&p, "abc").unwrap();
        let (h, n) = sha256_file(&p).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
