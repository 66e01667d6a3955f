//! Named prompt caches, the seed project's API (`POST /v1/cache/{model}`, `use_cache`): a
//! name for a system prompt that many requests share. Caching itself is automatic: a request
//! that starts with a prefix a slot already holds prefills only the rest (docs/server.md).
//! A named cache makes the prefix the same to the byte for every request that names it, so
//! it is found every time, and warms a slot with it when it is created.

use super::error::ApiError;
use super::request::{GenRequest, Prompt};
use actix_web::http::StatusCode;
use chat_template::ChatMessage;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::SystemTime;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NamedCache {
    pub prompt: String,
    pub prompt_tokens: usize,
    pub created: SystemTime,
}

type ByModel = HashMap<String, BTreeMap<String, NamedCache>>;

/// Caches by model, then by name. A few per model, touched once per request: one lock.
#[derive(Default)]
pub struct NamedCaches {
    by_model: Mutex<ByModel>,
    /// Where the names are kept across restarts (beside the prompt-cache files that hold
    /// their prefixes); `None`: in memory only.
    file: Option<PathBuf>,
}

impl NamedCaches {
    /// Caches kept in `file`, read from it now. A file that cannot be read is reported and
    /// left alone until the next change replaces it: the caches are a convenience, not
    /// something to refuse to start over.
    pub fn persistent(file: PathBuf) -> NamedCaches {
        let read = match std::fs::read(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ByModel::new()),
            read => read
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())),
        };
        let by_model = read.unwrap_or_else(|e| {
            tracing::warn!(
                "named prompt caches: cannot read {}: {e}; starting with none",
                file.display()
            );
            ByModel::new()
        });
        NamedCaches {
            by_model: Mutex::new(by_model),
            file: Some(file),
        }
    }

    /// Writes the caches to their file (a temporary file renamed over it, so a crash leaves
    /// the old or the new list, never half of one).
    fn save(&self, all: &ByModel) {
        let Some(file) = &self.file else { return };
        let tmp = file.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(all)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::warn!(
                "named prompt caches: cannot write {}: {e}; they will not outlive a restart",
                file.display()
            );
        }
    }

    /// Stores `cache` under `name`, replacing one of that name. Returns whether it replaced.
    pub fn put(&self, model: &str, name: &str, cache: NamedCache) -> bool {
        let mut all = self.by_model.lock();
        let replaced = all
            .entry(model.to_string())
            .or_default()
            .insert(name.to_string(), cache)
            .is_some();
        self.save(&all);
        replaced
    }

    pub fn get(&self, model: &str, name: &str) -> Option<NamedCache> {
        self.by_model.lock().get(model)?.get(name).cloned()
    }

    /// The model's caches, by name.
    pub fn list(&self, model: &str) -> Vec<(String, NamedCache)> {
        self.by_model.lock().get(model).map_or_else(Vec::new, |m| {
            m.iter().map(|(n, c)| (n.clone(), c.clone())).collect()
        })
    }

    pub fn remove(&self, model: &str, name: &str) -> bool {
        let mut all = self.by_model.lock();
        let removed = all.get_mut(model).is_some_and(|m| m.remove(name).is_some());
        if removed {
            self.save(&all);
        }
        removed
    }

    /// `g` with the cache it names put in front of its prompt: as the conversation's system
    /// message (before the request's own system text, if it has one), or as the system text
    /// of a plain prompt.
    pub fn apply(&self, model: &str, g: &GenRequest) -> Result<Option<GenRequest>, ApiError> {
        let Some(name) = &g.use_cache else {
            return Ok(None);
        };
        let cache = self
            .get(model, name)
            .ok_or_else(|| not_found(model, name))?;
        let mut g = g.clone();
        g.cache_prefix = Some(cache.prompt.clone());
        match &mut g.prompt {
            Prompt::Chat { messages, .. } => match messages.first_mut() {
                Some(m) if m.role == "system" => {
                    m.content = joined(&cache.prompt, &m.content);
                }
                _ => messages.insert(0, ChatMessage::new("system", cache.prompt)),
            },
            Prompt::Text {
                raw: true, prompts, ..
            } => {
                for p in prompts {
                    *p = format!("{}{p}", cache.prompt);
                }
            }
            Prompt::Text { system, .. } => {
                *system = Some(match system.take() {
                    Some(s) => joined(&cache.prompt, &s),
                    None => cache.prompt,
                });
            }
        }
        Ok(Some(g))
    }
}

fn joined(cached: &str, own: &str) -> String {
    if own.is_empty() {
        cached.to_string()
    } else {
        format!("{cached}\n\n{own}")
    }
}

pub fn not_found(model: &str, name: &str) -> ApiError {
    ApiError {
        param: Some("use_cache".into()),
        code: Some("cache_not_found"),
        ..ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "model '{model}' has no prompt cache named '{name}' (create it with POST /v1/cache/{model})"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistent_caches_outlive_their_process() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("named-caches.json");
        let caches = NamedCaches::persistent(file.clone());
        caches.put("m", "coder", cache("You write Rust."));
        caches.put("m", "gone", cache("x"));
        assert!(caches.remove("m", "gone"));
        let again = NamedCaches::persistent(file.clone());
        assert_eq!(again.get("m", "coder").unwrap().prompt, "You write Rust.");
        assert!(again.get("m", "gone").is_none());
        // A damaged file starts empty and is replaced by the next change.
        std::fs::write(&file, b"{not json").unwrap();
        let damaged = NamedCaches::persistent(file.clone());
        assert!(damaged.list("m").is_empty());
        damaged.put("m", "k", cache("y"));
        assert!(NamedCaches::persistent(file).get("m", "k").is_some());
    }

    fn cache(prompt: &str) -> NamedCache {
        NamedCache {
            prompt: prompt.into(),
            prompt_tokens: 3,
            created: SystemTime::now(),
        }
    }

    fn chat(messages: Vec<ChatMessage>, use_cache: &str) -> GenRequest {
        let mut g = GenRequest::new(
            Prompt::Chat {
                messages,
                continue_final: false,
            },
            "messages",
        );
        g.use_cache = Some(use_cache.into());
        g
    }

    fn messages(g: &GenRequest) -> Vec<(String, String)> {
        match &g.prompt {
            Prompt::Chat { messages, .. } => messages
                .iter()
                .map(|m| (m.role.clone(), m.content.clone()))
                .collect(),
            Prompt::Text { .. } => panic!("a chat"),
        }
    }

    #[test]
    fn a_named_cache_goes_first_in_the_conversation() {
        let c = NamedCaches::default();
        assert!(!c.put("m", "coder", cache("You write Rust.")));
        let user = ChatMessage::new("user", "Hi");
        let g = c
            .apply("m", &chat(vec![user.clone()], "coder"))
            .unwrap()
            .unwrap();
        assert_eq!(
            messages(&g),
            [
                ("system".into(), "You write Rust.".into()),
                ("user".into(), "Hi".into())
            ]
        );
        // The request's own system text follows the cached one, so the prefix stays shared.
        let own = ChatMessage::new("system", "Be brief.");
        let g = c
            .apply("m", &chat(vec![own, user], "coder"))
            .unwrap()
            .unwrap();
        assert_eq!(messages(&g)[0].1, "You write Rust.\n\nBe brief.");
    }

    #[test]
    fn plain_prompts_take_it_as_system_text_or_verbatim_prefix() {
        let c = NamedCaches::default();
        c.put("m", "k", cache("SYS"));
        let mut g = GenRequest::new(
            Prompt::Text {
                prompts: vec!["q".into()],
                raw: false,
                system: None,
            },
            "prompt",
        );
        g.use_cache = Some("k".into());
        match c.apply("m", &g).unwrap().unwrap().prompt {
            Prompt::Text { system, .. } => assert_eq!(system.as_deref(), Some("SYS")),
            Prompt::Chat { .. } => panic!(),
        }
        g.prompt = Prompt::Text {
            prompts: vec!["q".into()],
            raw: true,
            system: None,
        };
        match c.apply("m", &g).unwrap().unwrap().prompt {
            Prompt::Text { prompts, .. } => assert_eq!(prompts, ["SYSq"]),
            Prompt::Chat { .. } => panic!(),
        }
    }

    #[test]
    fn unknown_names_and_other_models_are_not_found_and_removal_sticks() {
        let c = NamedCaches::default();
        c.put("m", "k", cache("SYS"));
        let g = chat(vec![ChatMessage::new("user", "Hi")], "k");
        let err = |model: &str| c.apply(model, &g).err().expect("an error");
        assert_eq!(err("other").status, StatusCode::NOT_FOUND);
        assert!(c.put("m", "k", cache("NEW")), "a second put replaces");
        assert_eq!(c.list("m").len(), 1);
        assert!(c.remove("m", "k"));
        assert!(!c.remove("m", "k"));
        assert_eq!(err("m").code, Some("cache_not_found"));
        let none = GenRequest::new(
            Prompt::Text {
                prompts: vec!["q".into()],
                raw: false,
                system: None,
            },
            "prompt",
        );
        assert!(c.apply("m", &none).unwrap().is_none());
    }
}
