//! The directory of prompt-cache files: RKLLM's saved prefill state of a shared prefix (a
//! system prompt), one file per model file, runtime library and prefix. A key names the exact
//! files it was made with, so a replaced model or library never loads another's state. The
//! directory has a size limit, kept by evicting the least recently used files; a file's
//! modification time is its last use.

use crate::telemetry::{PROMPT_CACHE_BYTES, PROMPT_CACHE_EVICTIONS};
use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

const SUFFIX: &str = ".rkcache";

#[derive(Debug)]
pub struct PromptStore {
    dir: PathBuf,
    max_bytes: u64,
    /// Model names by the model-and-library key of their files, for the metrics' labels.
    models: parking_lot::Mutex<Vec<(String, String)>>,
    /// Makes temporary names unique within this process.
    next_tmp: AtomicU64,
}

/// Hex of the first 8 bytes of a SHA-256: short names, collisions out of reach.
fn short_hex(h: Sha256) -> String {
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A file's identity for the key: its path, size and modification time. Hashing a model of
/// gigabytes at every start would cost seconds; a replaced file changes size or time.
pub fn file_key(path: &Path) -> io::Result<String> {
    let meta = fs::metadata(path)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let id = format!("{}\0{}\0{modified}", canonical.display(), meta.len());
    Ok(short_hex(Sha256::new().chain_update(id.as_bytes())))
}

/// A prefix's part of the key: its bytes (text) or its ids (token input), tagged so the two
/// never collide.
pub fn prefix_key(text: Option<&[u8]>, ids: Option<&[i32]>) -> String {
    let mut h = Sha256::new();
    match ids {
        Some(ids) => {
            h.update(b"ids\0");
            ids.iter().for_each(|t| h.update(t.to_le_bytes()));
        }
        None => {
            h.update(b"text\0");
            h.update(text.unwrap_or_default());
        }
    }
    short_hex(h)
}

impl PromptStore {
    /// Opens `dir`, and evicts down to `max_bytes` at once: the limit may have been lowered
    /// since the files were written. The directory is made only when a first file is saved,
    /// so a models directory the user chose stays as they left it until a prefix is hot.
    /// A `dir` that is a file is refused now rather than at the first save.
    pub fn open(dir: PathBuf, max_bytes: u64) -> io::Result<PromptStore> {
        if dir.exists() && !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "it exists and is not a directory",
            ));
        }
        let store = PromptStore {
            dir,
            max_bytes,
            models: parking_lot::Mutex::new(Vec::new()),
            next_tmp: AtomicU64::new(0),
        };
        store.evict(None);
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names `model` as the owner of the files keyed `files`, so that its bytes on disk and
    /// evictions are reported under its name.
    pub fn register(&self, files: &str, model: &str) {
        {
            let mut m = self.models.lock();
            m.retain(|(f, n)| f != files && n != model);
            m.push((files.to_string(), model.to_string()));
        }
        metrics::counter!(PROMPT_CACHE_EVICTIONS, "model" => model.to_string()).increment(0);
        self.publish(&self.files());
    }

    /// The model whose files `path` is one of ("" if none is loaded).
    fn owner(&self, path: &Path) -> String {
        self.models
            .lock()
            .iter()
            .find(|(f, _)| keyed_by(path, f))
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// The file for a model-and-library key and a prefix key.
    pub fn path(&self, files: &str, prefix: &str) -> PathBuf {
        self.dir.join(format!("{files}-{prefix}{SUFFIX}"))
    }

    /// The file if it exists, marked as just used.
    pub fn lookup(&self, files: &str, prefix: &str) -> Option<PathBuf> {
        let path = self.path(files, prefix);
        let f = fs::File::options().write(true).open(&path).ok()?;
        // Last use is what eviction orders by; a file that cannot be touched is still usable.
        let _ = f.set_modified(SystemTime::now());
        Some(path)
    }

    /// Where the runtime writes a new file before it is committed: a name eviction and
    /// lookups ignore, so a half-written file is never loaded.
    pub fn temporary(&self, files: &str, prefix: &str) -> PathBuf {
        // Made here, at the first save; if it cannot be, the runtime writes nothing and the
        // commit says so.
        let _ = fs::create_dir_all(&self.dir);
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!(".{files}-{prefix}.{}.{n}.tmp", std::process::id()))
    }

    /// Moves a file the runtime wrote into place, then evicts others over the size limit.
    /// A file the runtime did not write (or wrote empty) is an error.
    pub fn commit(&self, tmp: &Path, files: &str, prefix: &str) -> io::Result<PathBuf> {
        let len = fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            let _ = fs::remove_file(tmp);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the runtime wrote no prompt cache (the file is missing or empty)",
            ));
        }
        let path = self.path(files, prefix);
        fs::rename(tmp, &path)?;
        self.evict(Some(&path));
        Ok(path)
    }

    /// Removes a file the runtime could not load, so that it is saved afresh.
    pub fn discard(&self, path: &Path) {
        let _ = fs::remove_file(path);
        self.evict(None);
    }

    /// The cache files, with size and last use.
    fn files(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(SUFFIX))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| {
                    let t = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    (e.path(), m.len(), t)
                })
            })
            .collect()
    }

    /// Bytes of cache files on disk.
    pub fn bytes(&self) -> u64 {
        self.files().iter().map(|f| f.1).sum()
    }

    /// Removes the least recently used files until the rest fit the limit, never `keep` (the
    /// file just written: a limit smaller than one file still lets it be used once), and sets
    /// the bytes gauge.
    fn evict(&self, keep: Option<&Path>) {
        let mut files = self.files();
        files.sort_by_key(|f| f.2);
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        // Oldest first; what is left over is what stays on disk.
        files.retain(|(path, len, _)| {
            if total <= self.max_bytes || Some(path.as_path()) == keep {
                return true;
            }
            if fs::remove_file(path).is_err() {
                return true;
            }
            total -= len;
            metrics::counter!(PROMPT_CACHE_EVICTIONS, "model" => self.owner(path)).increment(1);
            tracing::info!(
                "prompt cache: evicted {} ({len} bytes) to stay under {} bytes",
                path.display(),
                self.max_bytes
            );
            false
        });
        self.publish(&files);
    }

    /// Sets each registered model's bytes on disk, from `files` (what the directory holds).
    fn publish(&self, files: &[(PathBuf, u64, SystemTime)]) {
        for (key, model) in self.models.lock().iter() {
            let bytes: u64 = files
                .iter()
                .filter(|(p, _, _)| keyed_by(p, key))
                .map(|f| f.1)
                .sum();
            metrics::gauge!(PROMPT_CACHE_BYTES, "model" => model.clone()).set(bytes as f64);
        }
    }
}

/// Whether `path` is one of the files of the model-and-library key `files`.
fn keyed_by(path: &Path, files: &str) -> bool {
    path.file_name().is_some_and(|n| {
        n.to_string_lossy()
            .strip_prefix(files)
            .is_some_and(|rest| rest.starts_with('-'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn write(store: &PromptStore, files: &str, prefix: &str, len: usize) -> PathBuf {
        let tmp = store.temporary(files, prefix);
        fs::write(&tmp, vec![7u8; len]).unwrap();
        store.commit(&tmp, files, prefix).unwrap()
    }

    fn age(path: &Path, secs_ago: u64) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
            .unwrap();
    }

    #[test]
    fn the_least_recently_used_file_goes_first_and_the_new_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = PromptStore::open(dir.path().to_path_buf(), 250).unwrap();
        let a = write(&store, "m", "a", 100);
        let b = write(&store, "m", "b", 100);
        age(&a, 30);
        age(&b, 60);
        // a was used after b was written: b is the least recently used.
        assert!(store.lookup("m", "a").is_some());
        let c = write(&store, "m", "c", 100);
        assert!(a.exists() && c.exists());
        assert!(!b.exists(), "b was the least recently used");
        assert_eq!(store.bytes(), 200);
        assert!(store.lookup("m", "b").is_none());
        // A file larger than the whole limit is still kept once written.
        let big = write(&store, "m", "big", 400);
        assert!(big.exists());
        assert!(!a.exists() && !c.exists());
    }

    #[test]
    fn an_empty_or_missing_file_is_not_committed_and_temporaries_are_not_cache_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = PromptStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
        let tmp = store.temporary("m", "p");
        assert!(store.commit(&tmp, "m", "p").is_err());
        fs::write(&tmp, b"").unwrap();
        assert!(store.commit(&tmp, "m", "p").is_err());
        assert!(!tmp.exists());
        let tmp = store.temporary("m", "p");
        fs::write(&tmp, b"half").unwrap();
        assert_eq!(store.bytes(), 0);
        assert!(store.lookup("m", "p").is_none());
    }

    #[test]
    fn keys_tell_files_and_prefixes_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (m1, m2) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
        fs::write(&m1, b"model").unwrap();
        fs::write(&m2, b"model").unwrap();
        let k1 = file_key(&m1).unwrap();
        assert_eq!(k1, file_key(&m1).unwrap());
        assert_ne!(k1, file_key(&m2).unwrap());
        fs::write(&m1, b"another model").unwrap();
        assert_ne!(k1, file_key(&m1).unwrap(), "a replaced file is another key");
        assert_eq!(
            prefix_key(Some(b"sys"), None),
            prefix_key(Some(b"sys"), None)
        );
        assert_ne!(
            prefix_key(Some(b"sys"), None),
            prefix_key(Some(b"syt"), None)
        );
        assert_ne!(
            prefix_key(None, Some(&[1, 2])),
            prefix_key(None, Some(&[1, 3]))
        );
    }

    #[test]
    fn opening_with_a_lower_limit_evicts_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = PromptStore::open(dir.path().to_path_buf(), 1000).unwrap();
        let a = write(&store, "m", "a", 300);
        let b = write(&store, "m", "b", 300);
        age(&a, 60);
        let store = PromptStore::open(dir.path().to_path_buf(), 400).unwrap();
        assert!(!a.exists() && b.exists());
        assert_eq!(store.bytes(), 300);
    }
}
