//! Settings from a board probe (`rkllm-run probe`, docs/probe.md): a report about the very
//! library and model being loaded (by sha256) chooses the ABI family, caps n_batch and picks
//! how runs are re-formed, unless the user set those; a report about other files is ignored.

use parking_lot::Mutex;
use rkllm::probe_report::{FileId, ProbeReport, Recommendations};
use rkllm::AbiFamily;
use scheduler::{CutVia, Reform};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Which of the settings a probe chooses were set by the user (configuration file, flag,
/// environment or the model's sidecar): those win over the probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Explicit {
    pub abi: bool,
    pub n_batch: bool,
    pub reform: bool,
    pub reform_via: bool,
}

/// The settings a probe can change, for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mechanisms {
    pub abi: AbiFamily,
    pub n_batch: u8,
    pub reform: Reform,
    pub reform_via: CutVia,
}

/// Where reports are looked for: one configured file (`runtime.probe`), then a directory of
/// reports named by [`ProbeReport::cache_name`] (`runtime.probe_dir`).
pub struct ProbeReports {
    file: Option<PathBuf>,
    dir: PathBuf,
    /// File identities by path, valid while size and modification time stay the same:
    /// hashing a model of a gigabyte takes seconds on a board.
    ids: Mutex<HashMap<PathBuf, Identified>>,
}

/// A file's identity and the size and modification time it was computed at.
type Identified = (u64, Option<SystemTime>, FileId);

impl ProbeReports {
    pub fn new(file: Option<PathBuf>, dir: PathBuf) -> ProbeReports {
        ProbeReports {
            file,
            dir,
            ids: Mutex::new(HashMap::new()),
        }
    }

    fn id(&self, path: &Path) -> std::io::Result<FileId> {
        let meta = std::fs::metadata(path)?;
        let key = (meta.len(), meta.modified().ok());
        if let Some((len, time, id)) = self.ids.lock().get(path) {
            if (*len, *time) == key {
                return Ok(id.clone());
            }
        }
        let id = FileId::of(path)?;
        self.ids
            .lock()
            .insert(path.to_path_buf(), (key.0, key.1, id.clone()));
        Ok(id)
    }

    /// Cached reports that may be about `lib`: their names start with its hash.
    fn cached_for(&self, lib: &FileId) -> Vec<PathBuf> {
        let prefix = ProbeReport::cache_name(&lib.sha256, "");
        let prefix = prefix.trim_end_matches(".json");
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return vec![];
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json"))
            })
            .collect()
    }

    /// The report about `lib` and `model`, with its path. A configured report about other
    /// files, or one that cannot be read, is warned about and ignored.
    pub fn find(&self, name: &str, lib: &Path, model: &Path) -> Option<(PathBuf, ProbeReport)> {
        let cached_dir_has_any = std::fs::read_dir(&self.dir)
            .map(|mut rd| rd.next().is_some())
            .unwrap_or(false);
        if self.file.is_none() && !cached_dir_has_any {
            return None;
        }
        let lib_id = match self.id(lib) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(model = %name, "probe reports not consulted: cannot read {}: {e}", lib.display());
                return None;
            }
        };
        let candidates: Vec<PathBuf> = self
            .file
            .iter()
            .cloned()
            .chain(self.cached_for(&lib_id))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let model_id = match self.id(model) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(model = %name, "probe reports not consulted: cannot read {}: {e}", model.display());
                return None;
            }
        };
        for path in candidates {
            match ProbeReport::read(&path) {
                Ok(r) => match r.mismatch(&lib_id, &model_id) {
                    None => return Some((path, r)),
                    Some(why) => tracing::warn!(
                        model = %name,
                        "ignoring probe report {}: {why}",
                        path.display()
                    ),
                },
                Err(e) => tracing::warn!(model = %name, "ignoring {e}"),
            }
        }
        None
    }
}

/// Applies a report's recommendations to what the settings chose, except where the user
/// set them; returns the one line to log, saying what was taken and what was kept.
pub fn apply(
    model: &str,
    report: &Path,
    rec: &Recommendations,
    explicit: Explicit,
    m: &mut Mechanisms,
) -> String {
    let mut took = Vec::new();
    let mut kept = Vec::new();
    if let Some(f) = rec
        .family
        .as_deref()
        .and_then(|f| f.parse::<AbiFamily>().ok())
    {
        if !explicit.abi {
            m.abi = f;
            took.push(format!("abi {f}"));
        } else if m.abi != f {
            kept.push(format!("abi {} (the probe found {f})", m.abi));
        }
    }
    if rec.max_n_batch == 0 {
        kept.push("n_batch (no n_batch worked in the probe)".to_string());
    } else if m.n_batch > rec.max_n_batch {
        if explicit.n_batch {
            kept.push(format!(
                "n_batch {} (the probe's largest working n_batch is {})",
                m.n_batch, rec.max_n_batch
            ));
        } else {
            took.push(format!(
                "n_batch {} (capped from {})",
                rec.max_n_batch, m.n_batch
            ));
            m.n_batch = rec.max_n_batch;
        }
    }
    let reform = if rec.reform {
        Reform::Auto
    } else {
        Reform::Off
    };
    if !explicit.reform {
        m.reform = reform;
        took.push(format!("reform {reform}"));
    } else if m.reform != reform {
        kept.push(format!("reform {} (the probe says {reform})", m.reform));
    }
    if let Some(via) = rec
        .reform_via
        .as_deref()
        .and_then(|v| v.parse::<CutVia>().ok())
    {
        if !explicit.reform_via {
            m.reform_via = via;
            took.push(format!("reform_via {via}"));
        } else if m.reform_via != via {
            kept.push(format!(
                "reform_via {} (the probe says {via})",
                m.reform_via
            ));
        }
    }
    let mut line = format!("model {model}: probe report {}: ", report.display());
    if took.is_empty() {
        line.push_str("nothing taken");
    } else {
        line.push_str(&format!("took {}", took.join(", ")));
    }
    if !kept.is_empty() {
        line.push_str(&format!(
            "; your settings win over it: kept {}",
            kept.join(", ")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Recommendations {
        Recommendations {
            family: Some("1.2".into()),
            max_n_batch: 4,
            reform: true,
            reform_via: Some("abort".into()),
        }
    }

    fn defaults() -> Mechanisms {
        Mechanisms {
            abi: AbiFamily::V1_3,
            n_batch: 8,
            reform: Reform::Auto,
            reform_via: CutVia::Pause,
        }
    }

    #[test]
    fn unset_settings_take_the_probes_choice() {
        let mut m = defaults();
        let line = apply(
            "m",
            Path::new("r.json"),
            &rec(),
            Explicit::default(),
            &mut m,
        );
        assert_eq!(
            m,
            Mechanisms {
                abi: AbiFamily::V1_2,
                n_batch: 4,
                reform: Reform::Auto,
                reform_via: CutVia::Abort
            }
        );
        for part in [
            "r.json",
            "abi 1.2",
            "n_batch 4 (capped from 8)",
            "reform_via abort",
        ] {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
        assert!(!line.contains("win"), "{line}");
    }

    #[test]
    fn explicit_settings_win_and_the_line_says_so() {
        let mut m = defaults();
        let all = Explicit {
            abi: true,
            n_batch: true,
            reform: true,
            reform_via: true,
        };
        let line = apply("m", Path::new("r.json"), &rec(), all, &mut m);
        assert_eq!(m, defaults());
        for part in [
            "your settings win",
            "abi 1.3 (the probe found 1.2)",
            "n_batch 8 (the probe's largest working n_batch is 4)",
            "reform_via pause (the probe says abort)",
        ] {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
    }

    fn report_about(lib: &FileId, model: &FileId) -> String {
        ProbeReport {
            schema: rkllm::probe_report::SCHEMA,
            library: lib.clone(),
            model: model.clone(),
            family: Some("1.2".into()),
            exported_family: None,
            checks: vec![],
            recommendations: rec(),
            batch_curve: vec![],
            batch_alpha: None,
            peak_vm_hwm_mb: None,
            probed_at: 0,
            tool: "test".into(),
        }
        .to_json()
    }

    #[test]
    fn a_configured_report_about_other_files_gives_way_to_the_cached_one_for_these() {
        let d = tempfile::tempdir().unwrap();
        let file = |name: &str, body: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, body).unwrap();
            FileId::of(&p).unwrap()
        };
        let (lib, model, other) = (
            file("lib.so", "lib"),
            file("m.rkllm", "m"),
            file("o.rkllm", "o"),
        );
        let cache = d.path().join("probe");
        std::fs::create_dir(&cache).unwrap();
        let configured = d.path().join("configured.json");
        std::fs::write(&configured, report_about(&lib, &other)).unwrap();
        let reports = ProbeReports::new(Some(configured.clone()), cache.clone());
        assert!(reports.find("m", &lib.path, &model.path).is_none());
        let cached = cache.join(ProbeReport::cache_name(&lib.sha256, &model.sha256));
        std::fs::write(&cached, report_about(&lib, &model)).unwrap();
        let (path, r) = reports
            .find("m", &lib.path, &model.path)
            .expect("the cached report");
        assert_eq!(path, cached);
        assert_eq!(r.model.sha256, model.sha256);
        // The configured one is taken first when it is about these files.
        let (path, _) = reports
            .find("o", &lib.path, &other.path)
            .expect("the configured report");
        assert_eq!(path, configured);
        // Without a configured report and an empty cache, nothing is hashed or found.
        let empty = ProbeReports::new(None, d.path().join("none"));
        assert!(empty.find("m", &lib.path, &model.path).is_none());
        assert!(
            empty.ids.lock().is_empty(),
            "nothing to match, nothing hashed"
        );
    }

    #[test]
    fn a_probe_where_nothing_could_be_cut_turns_reform_off_and_a_smaller_n_batch_stays() {
        let mut m = Mechanisms {
            n_batch: 2,
            ..defaults()
        };
        let r = Recommendations {
            reform: false,
            reform_via: None,
            ..rec()
        };
        apply("m", Path::new("r.json"), &r, Explicit::default(), &mut m);
        assert_eq!(m.reform, Reform::Off);
        assert_eq!(m.n_batch, 2);
        assert_eq!(m.reform_via, CutVia::Pause);
    }
}
