//! CORS, so that browser clients (web UIs, extensions, desktop apps) can call the API:
//! allowed origins are a setting, matched as Ollama matches OLLAMA_ORIGINS.

use actix_cors::Cors;

/// Whether `origin` matches `pattern`, where `*` stands for any run of characters.
fn matches(pattern: &str, origin: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = origin.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

pub fn allowed(origins: &[String], origin: &str) -> bool {
    origins.iter().any(|p| matches(p, origin))
}

/// The middleware for the configured origins; preflight requests are answered by it.
pub fn cors(origins: &[String]) -> Cors {
    let origins = origins.to_vec();
    Cors::default()
        .allowed_origin_fn(move |origin, _| origin.to_str().is_ok_and(|o| allowed(&origins, o)))
        .allow_any_method()
        .allow_any_header()
        .expose_any_header()
        .max_age(86_400)
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn origins_match_like_ollama_origins() {
        let o: Vec<String> = ["http://localhost:*", "app://*", "https://chat.example.org"]
            .map(String::from)
            .to_vec();
        assert!(allowed(&o, "http://localhost:3000"));
        assert!(allowed(&o, "app://anything"));
        assert!(allowed(&o, "https://chat.example.org"));
        assert!(!allowed(&o, "https://chat.example.org.evil.com"));
        assert!(!allowed(&o, "http://evil.com"));
        assert!(
            !allowed(&o, "http://localhost.evil.com:80"),
            "the port part must follow"
        );
        assert!(allowed(&["*".to_string()], "http://anything"));
    }
}
