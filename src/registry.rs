//! The model registry: which models exist in a models directory and what they are called.
//!
//! Rockchip and Hugging Face file names carry conversion details (quantisation, NPU core count,
//! SoC, context length) that a user should not have to type, so every model also gets a short
//! friendly name. A `<stem>.toml` sidecar next to a model file overrides anything derived.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Rkllm,
    Gguf,
    Synthetic,
}

/// Optional `<model-file-stem>.toml` next to a model file; every field overrides what is derived.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Friendly name.
    pub name: Option<String>,
    /// Jinja source.
    pub chat_template: Option<String>,
    /// A built-in family: chatml, llama3, gemma, phi3, minicpm, deepseek.
    pub template_family: Option<String>,
    pub context_len: Option<usize>,
    pub stop: Option<Vec<String>>,
    pub instances: Option<usize>,
    pub n_batch: Option<u8>,
    /// "1.2" or "1.3".
    pub abi: Option<String>,
    pub runtime_lib: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// Friendly name, unique (case-insensitively) within a scan.
    pub name: String,
    pub file_name: String,
    pub path: PathBuf,
    pub kind: ModelKind,
    pub size_bytes: u64,
    pub modified: SystemTime,
    /// Sidecar, else the file name (`ctx16384`), else a synthetic profile's
    /// `[model] context_length`; `None` means the caller must read the model's metadata.
    pub context_len: Option<usize>,
    pub sidecar: Sidecar,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("models directory {} does not exist", path.display())]
    DirMissing { path: PathBuf },
    #[error("models path {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot read models directory {}: {source}", path.display())]
    DirUnreadable { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot parse sidecar {}: {source}", path.display())]
    SidecarParse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid sidecar {}: {message}", path.display())]
    SidecarInvalid { path: PathBuf, message: String },
}

/// Sections of a synthetic engine profile (schema in `cpu-runtime/src/engine/synthetic.rs`);
/// requiring one keeps unrelated `.toml` files in the models directory from posing as models.
const PROFILE_SECTIONS: [&str; 4] = ["model", "timing", "output", "faults"];

fn is_separator(b: u8) -> bool {
    matches!(b, b'-' | b'_' | b'.')
}

/// True when `s` starts with `prefix` followed by one or more ASCII digits; returns the rest.
fn strip_prefix_digits<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let rest = s.strip_prefix(prefix)?;
    let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    (n > 0).then(|| &rest[n..])
}

/// A word ends at the end of the name or at a separator, so `-optimized` is not `-opt`.
fn at_word_end(rest: &[u8]) -> bool {
    rest.first().is_none_or(|&b| is_separator(b))
}

/// Whether lowercased `s` begins with a conversion/quantisation/hardware marker.
fn is_marker(s: &[u8]) -> bool {
    // -w8a8, -w4a16, -w8a8g128 ...
    if let Some(rest) = strip_prefix_digits(s, b"w") {
        if strip_prefix_digits(rest, b"a").is_some() {
            return true;
        }
    }
    // -opt0, -hybrid0, -npu3, -ctx16384, -ctx-4096
    for word in [&b"opt"[..], b"hybrid", b"npu", b"ctx"] {
        if let Some(rest) = s.strip_prefix(word) {
            if rest
                .first()
                .is_none_or(|&b| is_separator(b) || b.is_ascii_digit())
            {
                return true;
            }
        }
    }
    // Rockchip SoCs: rk3588, rk3588s, rk3576, rk3562, rv1126, rv1106 ...
    for soc in [&b"rk"[..], b"rv"] {
        if let Some(rest) = s.strip_prefix(soc) {
            if rest.len() >= 4 && rest[..4].iter().all(u8::is_ascii_digit) {
                return true;
            }
        }
    }
    // GGUF quantisations: q4_0, q4_k_m, q8_0, iq4_xs ...
    for quant in [&b"q"[..], b"iq"] {
        if let Some(rest) = strip_prefix_digits(s, quant) {
            if at_word_end(rest) {
                return true;
            }
        }
    }
    // Float formats and the repository-name suffix.
    for word in [&b"f16"[..], b"f32", b"bf16", b"fp16", b"fp32", b"gguf"] {
        if let Some(rest) = s.strip_prefix(word) {
            if at_word_end(rest) {
                return true;
            }
        }
    }
    false
}

/// The stem of a file name. Only an extension-looking suffix is removed, so a bare
/// "qwen3-0.6b" keeps its ".6b" and "model.Q4_1" its quantisation (cut later as a marker).
fn strip_extension(file_name: &str) -> &str {
    match file_name.rsplit_once('.') {
        Some((stem, ext))
            if !stem.is_empty()
                && (1..=8).contains(&ext.len())
                && ext.starts_with(|c: char| c.is_ascii_alphabetic())
                && ext.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            stem
        }
        _ => file_name,
    }
}

/// Short, lowercase name for a model file: "Qwen_Qwen3-0.6B-w8a8-...-rk3588.rkllm" → "qwen3-0.6b".
pub fn friendly_name(file_name: &str) -> String {
    let stem = strip_extension(file_name).to_lowercase();
    let mut name = stem.as_str();

    // Hugging Face downloads are often saved as "<org>_<repo>". An underscore that introduces
    // a marker ("..._W8A8_RK3588") is a separator, not an org boundary, and a prefix with a
    // '.' is a model version ("Qwen2.5-1.5B_...") rather than an organisation.
    if let Some((org, rest)) = name.split_once('_') {
        if !org.is_empty() && !org.contains('.') && !rest.is_empty() && !is_marker(rest.as_bytes())
        {
            name = rest;
        }
    }

    let bytes = name.as_bytes();
    if let Some(cut) =
        (1..bytes.len()).find(|&i| is_separator(bytes[i - 1]) && is_marker(&bytes[i..]))
    {
        // Separators are ASCII, so `cut - 1` is a char boundary.
        name = &name[..cut - 1];
    }
    let name = name.trim_end_matches(['-', '_', '.']);
    if name.is_empty() {
        // A name made only of markers ("w8a8.rkllm"): better unshortened than empty.
        stem
    } else {
        name.to_string()
    }
}

/// Context length encoded in a file name: "-ctx16384", "-ctx-4096", "_ctx8k" (×1024).
pub fn context_from_name(file_name: &str) -> Option<usize> {
    let b = file_name.as_bytes();
    (0..b.len()).find_map(|i| {
        if !b[i..].get(..3)?.eq_ignore_ascii_case(b"ctx") {
            return None;
        }
        if i > 0 && !is_separator(b[i - 1]) {
            return None;
        }
        let mut j = i + 3;
        if matches!(b.get(j), Some(b'-' | b'_')) {
            j += 1;
        }
        let digits = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let mut value: usize = file_name[j..j + digits].parse().ok()?;
        j += digits;
        if matches!(b.get(j), Some(b'k' | b'K')) {
            value = value.checked_mul(1024)?;
            j += 1;
        }
        // "ctx4kb" or "ctx12x" is something else.
        if b.get(j).is_some_and(|c| c.is_ascii_alphanumeric()) || value == 0 {
            return None;
        }
        Some(value)
    })
}

/// A file found during the scan, before names are assigned.
struct Candidate {
    path: PathBuf,
    file_name: String,
    kind: ModelKind,
    size_bytes: u64,
    modified: SystemTime,
    sidecar: Sidecar,
    /// `[model] context_length` of a synthetic profile.
    profile_context: Option<usize>,
}

fn extension_lower(file_name: &str) -> Option<String> {
    Path::new(file_name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn file_stem(file_name: &str) -> &str {
    Path::new(file_name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(file_name)
}

/// Lists one directory's visible entries as (name, path, metadata), sorted by name so the
/// scan does not depend on the file system's order.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf, fs::Metadata)>, RegistryError> {
    let unreadable = |source| RegistryError::DirUnreadable {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        // A name that is not UTF-8 could not be requested through the API anyway.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, so a models directory of links into a download cache works.
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            // A dangling symlink, or a file removed while we were listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(RegistryError::Io { path, source }),
        };
        out.push((name, path, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn read_sidecar(path: &Path) -> Result<Sidecar, RegistryError> {
    let text = fs::read_to_string(path).map_err(|source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let sidecar: Sidecar = toml::from_str(&text).map_err(|source| RegistryError::SidecarParse {
        path: path.to_path_buf(),
        source,
    })?;
    // Caught here rather than at model load so a typo stops the server at startup.
    let invalid = |message: &str| RegistryError::SidecarInvalid {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    if sidecar.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(invalid("`name` must not be empty"));
    }
    if sidecar.context_len == Some(0) {
        return Err(invalid("`context_len` must be at least 1"));
    }
    if sidecar.instances == Some(0) {
        return Err(invalid("`instances` must be at least 1"));
    }
    if sidecar.n_batch == Some(0) {
        return Err(invalid("`n_batch` must be at least 1"));
    }
    if let Some(abi) = &sidecar.abi {
        if abi != "1.2" && abi != "1.3" {
            return Err(invalid(&format!(
                "`abi` must be \"1.2\" or \"1.3\", not {abi:?}"
            )));
        }
    }
    Ok(sidecar)
}

/// What a synthetic engine profile says about itself: both may be absent.
struct ProfileInfo {
    context: Option<usize>,
    /// `[model] name`: the name it is served under, as a sidecar's `name` is.
    name: Option<String>,
}

/// `Some` if the file is a synthetic engine profile, `None` if it is some other `.toml`.
/// Unparseable files are skipped rather than reported: the models directory may hold any
/// kind of configuration.
fn read_profile(path: &Path) -> Result<Option<ProfileInfo>, RegistryError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
        Err(source) => {
            return Err(RegistryError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(None);
    };
    if !PROFILE_SECTIONS
        .iter()
        .any(|s| table.get(*s).is_some_and(toml::Value::is_table))
    {
        return Ok(None);
    }
    let context = table
        .get("model")
        .and_then(|m| m.get("context_length"))
        .and_then(toml::Value::as_integer)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0);
    let name = table
        .get("model")
        .and_then(|m| m.get("name"))
        .and_then(toml::Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    Ok(Some(ProfileInfo { context, name }))
}

/// Adds the models of one directory to `out`; returns its subdirectories.
fn scan_one(dir: &Path, out: &mut Vec<Candidate>) -> Result<Vec<PathBuf>, RegistryError> {
    let entries = list_dir(dir)?;
    let mut subdirs = Vec::new();
    let mut models = Vec::new();
    // Sidecars by stem, and which stems are model files, so "X.toml" can be told apart.
    let mut tomls = BTreeMap::new();
    let mut model_stems = BTreeSet::new();
    for (name, path, meta) in entries {
        if meta.is_dir() {
            subdirs.push(path);
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let kind = match extension_lower(&name).as_deref() {
            Some("rkllm") => ModelKind::Rkllm,
            Some("gguf") => ModelKind::Gguf,
            Some("toml") => {
                tomls.insert(file_stem(&name).to_string(), (name, path, meta));
                continue;
            }
            _ => continue,
        };
        model_stems.insert(file_stem(&name).to_string());
        models.push((name, path, meta, kind));
    }

    let mut sidecars = BTreeMap::new();
    for (stem, (name, path, meta)) in tomls {
        if model_stems.contains(&stem) {
            sidecars.insert(stem, read_sidecar(&path)?);
        } else if let Some(profile) = read_profile(&path)? {
            let mut c = candidate((name, path, meta, ModelKind::Synthetic), profile.context);
            c.sidecar.name = profile.name;
            out.push(c);
        }
    }
    for model in models {
        let sidecar = sidecars
            .get(file_stem(&model.0))
            .cloned()
            .unwrap_or_default();
        let mut c = candidate(model, None);
        c.sidecar = sidecar;
        out.push(c);
    }
    Ok(subdirs)
}

fn candidate(
    (file_name, path, meta, kind): (String, PathBuf, fs::Metadata, ModelKind),
    profile_context: Option<usize>,
) -> Candidate {
    Candidate {
        path,
        file_name,
        kind,
        size_bytes: meta.len(),
        // Only shown to users (Ollama's `modified_at`); not worth failing a scan over on file
        // systems that do not record it.
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        sidecar: Sidecar::default(),
        profile_context,
    }
}

/// Returns `base`, or `base-2`, `base-3`... whichever is not yet taken (case-insensitively,
/// because [`find`] is).
fn claim_name(base: &str, taken: &mut HashSet<String>) -> String {
    if taken.insert(base.to_lowercase()) {
        return base.to_string();
    }
    (2..)
        .map(|k| format!("{base}-{k}"))
        .find(|n| taken.insert(n.to_lowercase()))
        .expect("unbounded range")
}

/// Models in `dir` and its immediate subdirectories, sorted by friendly name.
pub fn scan(dir: &Path) -> Result<Vec<ModelEntry>, RegistryError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(RegistryError::NotADirectory {
                path: dir.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RegistryError::DirMissing {
                path: dir.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(RegistryError::DirUnreadable {
                path: dir.to_path_buf(),
                source,
            })
        }
    }

    let mut found = Vec::new();
    for sub in scan_one(dir, &mut found)? {
        // Immediate subdirectories only: deeper trees are usually download caches or
        // source checkouts, not models meant to be served.
        scan_one(&sub, &mut found)?;
    }
    // Path order decides which duplicate keeps the plain name, independent of listing order.
    found.sort_by(|a, b| a.path.cmp(&b.path));

    // Names the user chose in a sidecar are claimed first, so a derived name never pushes an
    // explicit one to "-2".
    let mut taken = HashSet::new();
    let mut names: Vec<Option<String>> = found
        .iter()
        .map(|c| c.sidecar.name.as_deref().map(|n| claim_name(n, &mut taken)))
        .collect();
    for (c, name) in found.iter().zip(names.iter_mut()) {
        if name.is_none() {
            *name = Some(claim_name(&friendly_name(&c.file_name), &mut taken));
        }
    }

    let mut entries: Vec<ModelEntry> = found
        .into_iter()
        .zip(names)
        .map(|(c, name)| ModelEntry {
            name: name.expect("every candidate was named"),
            context_len: c
                .sidecar
                .context_len
                .or_else(|| context_from_name(&c.file_name))
                .or(c.profile_context),
            file_name: c.file_name,
            path: c.path,
            kind: c.kind,
            size_bytes: c.size_bytes,
            modified: c.modified,
            sidecar: c.sidecar,
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.path.cmp(&b.path)));
    Ok(entries)
}

/// The entry a client asked for, by friendly name, file name or file stem (case-insensitive),
/// accepting Ollama's "name:latest".
pub fn find<'a>(entries: &'a [ModelEntry], query: &str) -> Option<&'a ModelEntry> {
    let query = query.trim();
    let mut queries = vec![query];
    // Ollama clients add ":latest" when no tag is given. Any other tag must be part of the
    // name itself, since the registry has no notion of tags.
    let tag_len = ":latest".len();
    if query.len() > tag_len
        && query.is_char_boundary(query.len() - tag_len)
        && query[query.len() - tag_len..].eq_ignore_ascii_case(":latest")
    {
        queries.push(&query[..query.len() - tag_len]);
    }
    // Friendly names first, so another model's file stem cannot shadow a name.
    let keys: [fn(&ModelEntry) -> &str; 3] =
        [|e| &e.name, |e| &e.file_name, |e| file_stem(&e.file_name)];
    keys.iter().find_map(|key| {
        queries
            .iter()
            .find_map(|q| entries.iter().find(|e| key(e).eq_ignore_ascii_case(q)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "rkserve-registry-{tag}-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, rel: &str, contents: &str) -> PathBuf {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn friendly_names() {
        let cases = [
            (
                "Qwen_Qwen3-0.6B-w8a8-opt0-hybrid0-npu3-ctx16384-rk3588.rkllm",
                "qwen3-0.6b",
            ),
            ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
            (
                "DeepSeek-R1-Distill-Qwen-1.5B_W8A8_RK3588.rkllm",
                "deepseek-r1-distill-qwen-1.5b",
            ),
            ("qwen3-0.6b-rk3588.toml", "qwen3-0.6b"),
            ("zero-delay.toml", "zero-delay"),
            ("Llama-3.2-1B-Instruct.Q4_K_M.gguf", "llama-3.2-1b-instruct"),
            ("qwen2.5-0.5b-instruct-q4_0.gguf", "qwen2.5-0.5b-instruct"),
            ("gemma-3-1b-it.f16.gguf", "gemma-3-1b-it"),
            ("Phi-3-mini-4k-instruct-gguf.gguf", "phi-3-mini-4k-instruct"),
            (
                "meta-llama_Llama-3.2-1B-Instruct-w4a16-rk3576.rkllm",
                "llama-3.2-1b-instruct",
            ),
            (
                "Qwen2.5-1.5B-Instruct_W4A16_G128_RK3588.rkllm",
                "qwen2.5-1.5b-instruct",
            ),
            ("MiniCPM4-0.5B-rv1126.rkllm", "minicpm4-0.5b"),
            (
                "TinyLlama-1.1B-Chat-v1.0-w8a16-rk3562.rkllm",
                "tinyllama-1.1b-chat-v1.0",
            ),
            // "-optimized" is a word, not the "-opt" marker.
            ("tiny-optimized.gguf", "tiny-optimized"),
            // Nothing but markers: keep the stem rather than return "".
            ("w8a8.rkllm", "w8a8"),
        ];
        for (file, want) in cases {
            assert_eq!(friendly_name(file), want, "friendly_name({file:?})");
        }
    }

    #[test]
    fn context_lengths_from_names() {
        let name = "Qwen_Qwen3-0.6B-w8a8-opt0-hybrid0-npu3-ctx16384-rk3588.rkllm";
        assert_eq!(context_from_name(name), Some(16384));
        assert_eq!(context_from_name("model-ctx-4096.gguf"), Some(4096));
        assert_eq!(context_from_name("model_CTX8k.rkllm"), Some(8192));
        assert_eq!(context_from_name("model.ctx32K"), Some(32768));
        assert_eq!(context_from_name("SmolLM2-135M-Instruct.Q4_1.gguf"), None);
        // Not preceded by a separator, no digits, or followed by more letters.
        assert_eq!(context_from_name("myctx4096.gguf"), None);
        assert_eq!(context_from_name("model-ctx.gguf"), None);
        assert_eq!(context_from_name("model-ctx4kb.gguf"), None);
        assert_eq!(context_from_name("model-ctx0.gguf"), None);
        assert_eq!(
            context_from_name("model-ctx99999999999999999999999k.gguf"),
            None
        );
    }

    fn fixture() -> TempDir {
        let t = TempDir::new("scan");
        t.write(
            "Qwen_Qwen3-0.6B-w8a8-opt0-hybrid0-npu3-ctx16384-rk3588.rkllm",
            "RKLLM",
        );
        t.write("SmolLM2-135M-Instruct.Q4_1.gguf", "GGUF....");
        t.write(
            "SmolLM2-135M-Instruct.Q4_1.toml",
            "name = \"smol\"\ncontext_len = 2048\nstop = [\"<|im_end|>\"]\n",
        );
        // Same friendly name as the .rkllm above; its path sorts later, so it gets "-2".
        t.write(
            "synthetic/qwen3-0.6b-rk3588.toml",
            "[model]\ncontext_length = 16384\n[timing]\ndecode_step_ms = 30.0\n",
        );
        t.write(
            "synthetic/zero-delay.toml",
            "[model]\nname = \"synthetic-zero-delay\"\n[timing]\nbatch_alpha = 0.0\n",
        );
        t.write("config.toml", "[server]\nport = 8080\n");
        t.write("notes.toml", "this is = = not toml");
        t.write(".hidden.gguf", "GGUF");
        t.write(".cache/other.gguf", "GGUF");
        t.write("synthetic/deeper/too-deep.gguf", "GGUF");
        t.write("README.md", "models go here");
        t
    }

    #[test]
    fn scan_finds_models_sidecars_and_profiles() {
        let t = fixture();
        let entries = scan(&t.0).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        // A profile's own `[model] name` is its name, as a sidecar's would be.
        assert_eq!(
            names,
            ["qwen3-0.6b", "qwen3-0.6b-2", "smol", "synthetic-zero-delay"]
        );

        let rk = &entries[0];
        assert_eq!(rk.kind, ModelKind::Rkllm);
        assert_eq!(rk.size_bytes, 5);
        assert_eq!(rk.context_len, Some(16384));
        assert_eq!(rk.sidecar, Sidecar::default());
        assert_eq!(
            rk.path,
            t.0.join("Qwen_Qwen3-0.6B-w8a8-opt0-hybrid0-npu3-ctx16384-rk3588.rkllm")
        );

        let dup = &entries[1];
        assert_eq!(dup.kind, ModelKind::Synthetic);
        assert_eq!(dup.file_name, "qwen3-0.6b-rk3588.toml");
        assert_eq!(dup.context_len, Some(16384));

        let smol = &entries[2];
        assert_eq!(smol.kind, ModelKind::Gguf);
        assert_eq!(smol.file_name, "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(smol.size_bytes, 8);
        assert_eq!(smol.context_len, Some(2048));
        assert_eq!(smol.sidecar.name.as_deref(), Some("smol"));
        assert_eq!(smol.sidecar.stop, Some(vec!["<|im_end|>".to_string()]));

        let zero = &entries[3];
        assert_eq!(zero.kind, ModelKind::Synthetic);
        // No context in the file name or the profile: the caller decides.
        assert_eq!(zero.context_len, None);
        assert_eq!(zero.path, t.0.join("synthetic").join("zero-delay.toml"));
        // Still found by its file stem.
        assert_eq!(
            find(&entries, "zero-delay").map(|e| e.name.as_str()),
            Some("synthetic-zero-delay")
        );
    }

    #[test]
    fn sidecar_name_is_claimed_before_derived_names() {
        let t = TempDir::new("claim");
        t.write("a-model.gguf", "GGUF");
        t.write("b.gguf", "GGUF");
        t.write("b.toml", "name = \"A-Model\"\n");
        let entries = scan(&t.0).unwrap();
        let names: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.file_name.as_str()))
            .collect();
        assert_eq!(
            names,
            [("A-Model", "b.gguf"), ("a-model-2", "a-model.gguf")]
        );
    }

    #[test]
    fn broken_sidecar_names_the_file() {
        let t = TempDir::new("broken");
        t.write("tiny.gguf", "GGUF");
        let sidecar = t.write("tiny.toml", "contxt_len = 4096\n");
        let err = scan(&t.0).unwrap_err();
        assert!(matches!(err, RegistryError::SidecarParse { ref path, .. } if *path == sidecar));
        let msg = err.to_string();
        assert!(msg.contains("tiny.toml"), "{msg}");
        assert!(msg.contains("contxt_len"), "{msg}");

        t.write("tiny.toml", "name = \"tiny\"\ncontext_len = \n");
        let msg = scan(&t.0).unwrap_err().to_string();
        assert!(msg.contains("tiny.toml"), "{msg}");

        t.write("tiny.toml", "abi = \"1.4\"\n");
        let err = scan(&t.0).unwrap_err();
        assert!(matches!(err, RegistryError::SidecarInvalid { .. }), "{err}");
        assert!(err.to_string().contains("tiny.toml"), "{err}");
    }

    #[test]
    fn missing_dir_is_an_error() {
        let t = TempDir::new("missing");
        let gone = t.0.join("nope");
        let err = scan(&gone).unwrap_err();
        assert!(matches!(err, RegistryError::DirMissing { .. }));
        assert!(err.to_string().contains("nope"));

        let file = t.write("file.gguf", "GGUF");
        assert!(matches!(
            scan(&file).unwrap_err(),
            RegistryError::NotADirectory { .. }
        ));
    }

    #[test]
    fn find_by_name_file_stem_and_tag() {
        let t = fixture();
        let entries = scan(&t.0).unwrap();
        let file = |q: &str| find(&entries, q).map(|e| e.file_name.as_str());
        let smol = Some("SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(file("smol"), smol);
        assert_eq!(file("SMOL"), smol);
        assert_eq!(file("SmolLM2-135M-Instruct.Q4_1.gguf"), smol);
        assert_eq!(file("smollm2-135m-instruct.q4_1"), smol);
        assert_eq!(file("smol:latest"), smol);
        assert_eq!(file("smol:Latest"), smol);
        assert_eq!(file("smol:q8_0"), None);
        assert_eq!(file("zero-delay:latest"), Some("zero-delay.toml"));
        assert_eq!(file("qwen3-0.6b-2"), Some("qwen3-0.6b-rk3588.toml"));
        // The friendly name wins over another model's identical file stem.
        assert_eq!(
            file("qwen3-0.6b"),
            Some("Qwen_Qwen3-0.6B-w8a8-opt0-hybrid0-npu3-ctx16384-rk3588.rkllm")
        );
        assert_eq!(file("llama3"), None);
        assert_eq!(file(""), None);
        assert_eq!(file(":latest"), None);
    }
}
