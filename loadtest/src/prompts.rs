//! What the requests ask. Requests take prompts in a fixed cycle, so every level of a sweep,
//! and every run with the same flags, sends the same sequence.

use std::path::Path;

use anyhow::Context;
use clap::ValueEnum;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Category {
    Short,
    Explain,
    Creative,
    Code,
    Json,
    Essay,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Short,
        Category::Explain,
        Category::Creative,
        Category::Code,
        Category::Json,
        Category::Essay,
    ];

    fn prompts(self) -> &'static [&'static str] {
        match self {
            Category::Short => &[
                "What is the capital of Australia?",
                "How many legs does a spider have?",
                "Who wrote Pride and Prejudice?",
                "What is the boiling point of water at sea level in Celsius?",
                "Name the largest planet in the solar system.",
            ],
            Category::Explain => &[
                "Explain how a refrigerator keeps food cold.",
                "Explain the difference between TCP and UDP to a new programmer.",
                "Why is the sky blue? Explain it step by step.",
                "Explain what inflation is and why central banks raise interest rates.",
                "Explain how vaccines train the immune system.",
            ],
            Category::Creative => &[
                "Write a short poem about a lighthouse keeper who talks to the sea.",
                "Write the opening paragraph of a mystery novel set on a night train.",
                "Invent a new board game and describe its rules in a playful tone.",
                "Write a letter from a cat to its owner complaining about the new dog.",
                "Describe a city on Mars a hundred years from now, as a travel guide would.",
            ],
            Category::Code => &[
                "Write a Python function that returns the n-th Fibonacci number iteratively.",
                "Write a Rust function that reverses the words of a sentence in place.",
                "Write a SQL query that finds the top 5 customers by total order value.",
                "Write a bash script that counts lines in every .txt file in a directory.",
                "Write a JavaScript function that debounces another function.",
            ],
            Category::Json => &[
                "Return a JSON object describing a fictional book with fields title, author, year, genres (array) and rating. Output only JSON.",
                "List three European capitals as a JSON array of objects with name, country and population. Output only JSON.",
                "Produce a JSON object for a user profile with id, name, email, roles (array) and settings (object). Output only JSON.",
                "Convert this to JSON with keys name, age, city: Maria is 34 and lives in Lisbon. Output only JSON.",
                "Return a JSON array of four weekly tasks, each with title, priority (low, medium, high) and done (boolean). Output only JSON.",
            ],
            Category::Essay => &[
                "Write a long essay on how the printing press changed European society, with an introduction, several sections and a conclusion.",
                "Write a detailed essay on the advantages and drawbacks of remote work for companies and employees.",
                "Write a long essay about the history of computing, from mechanical calculators to smartphones.",
                "Write an in-depth essay on why biodiversity matters and what threatens it today.",
                "Write a thorough essay comparing renewable energy sources and their role in the next thirty years.",
            ],
        }
    }
}

/// Common English words that BPE vocabularies (GPT-2, Llama, Qwen) hold as single tokens when
/// preceded by a space, so a prompt of N of them is close to N tokens.
const WORDS: &[&str] = &[
    "time", "people", "year", "way", "day", "man", "thing", "woman", "life", "child", "world",
    "school", "state", "family", "group", "country", "problem", "hand", "part", "place", "case",
    "week", "company", "system", "program", "question", "work", "number", "night", "point", "home",
    "water", "room", "mother", "area", "money", "story", "fact", "month", "right", "study", "book",
    "job", "word", "business", "side", "kind", "head", "house", "service", "friend", "father",
    "power", "hour", "game", "line", "end", "member", "law", "car", "city", "name", "team",
    "minute", "idea", "body", "back", "face", "level", "office", "door", "health", "person", "art",
    "war", "history", "party", "result", "change", "morning", "reason", "girl", "moment", "air",
    "teacher", "force", "music", "market", "sense", "field", "garden", "river", "table", "window",
    "road", "paper", "letter", "color", "light", "food",
];

/// Opening of every generated prompt; its words count towards the requested length.
const GENERATED_PREFIX: &str = "Write a story using these words:";

/// Distinct generated prompts: enough that servers with prefix caching cannot answer most
/// requests from cache, few enough to stay cheap.
const GENERATED_VARIANTS: usize = 16;

#[derive(Debug, Clone)]
pub struct Prompt {
    pub category: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct PromptSet {
    prompts: Vec<Prompt>,
}

impl PromptSet {
    /// Categories are interleaved, so even a short level mixes short answers with long ones.
    pub fn builtin(categories: &[Category]) -> PromptSet {
        let categories = if categories.is_empty() {
            &Category::ALL[..]
        } else {
            categories
        };
        let longest = categories
            .iter()
            .map(|c| c.prompts().len())
            .max()
            .unwrap_or(0);
        let mut prompts = Vec::new();
        for i in 0..longest {
            for c in categories {
                if let Some(text) = c.prompts().get(i) {
                    let category = c.to_possible_value().expect("no skipped variants");
                    prompts.push(Prompt {
                        category: category.get_name().to_owned(),
                        text: (*text).to_owned(),
                    });
                }
            }
        }
        PromptSet { prompts }
    }

    /// Prompts of `tokens` whitespace-separated words (about that many tokens, plus whatever
    /// the chat template adds; the server's own count is what the results report).
    pub fn generated(tokens: usize, seed: u64) -> PromptSet {
        let mut rng = StdRng::seed_from_u64(seed);
        let prefix: Vec<&str> = GENERATED_PREFIX.split_whitespace().collect();
        let prompts = (0..GENERATED_VARIANTS)
            .map(|_| {
                // Below the prefix's own length, a bare word list is the closest we can get.
                let mut words = if tokens >= prefix.len() {
                    prefix.clone()
                } else {
                    Vec::new()
                };
                let mut pool = WORDS.to_vec();
                while words.len() < tokens {
                    pool.shuffle(&mut rng);
                    let room = tokens - words.len();
                    words.extend(pool.iter().take(room));
                }
                Prompt {
                    category: "generated".to_owned(),
                    text: words.join(" "),
                }
            })
            .collect();
        PromptSet { prompts }
    }

    /// One prompt per non-empty line.
    pub fn from_file(path: &Path) -> anyhow::Result<PromptSet> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading prompts from {}", path.display()))?;
        let prompts: Vec<Prompt> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| Prompt {
                category: "file".to_owned(),
                text: l.to_owned(),
            })
            .collect();
        if prompts.is_empty() {
            anyhow::bail!("{} holds no prompts", path.display());
        }
        Ok(PromptSet { prompts })
    }

    /// The i-th request's prompt.
    pub fn get(&self, i: u64) -> &Prompt {
        &self.prompts[(i % self.prompts.len() as u64) as usize]
    }

    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_covers_every_category_interleaved() {
        let set = PromptSet::builtin(&[]);
        assert!(set.len() >= 6 * 4);
        let first: Vec<&str> = (0..6).map(|i| set.get(i).category.as_str()).collect();
        assert_eq!(
            first,
            ["short", "explain", "creative", "code", "json", "essay"]
        );
        assert_eq!(set.get(0).text, set.get(set.len() as u64).text, "cycles");
    }

    #[test]
    fn category_restricts() {
        let set = PromptSet::builtin(&[Category::Code, Category::Json]);
        assert!(
            (0..set.len() as u64).all(|i| ["code", "json"].contains(&set.get(i).category.as_str()))
        );
    }

    #[test]
    fn generated_prompts_have_the_requested_length() {
        for n in [1, 3, 8, 50, 200, 1000] {
            let set = PromptSet::generated(n, 7);
            for i in 0..set.len() as u64 {
                assert_eq!(set.get(i).text.split_whitespace().count(), n, "n = {n}");
            }
        }
        let long = PromptSet::generated(500, 7);
        assert!(long.get(0).text.starts_with(GENERATED_PREFIX));
        assert_ne!(long.get(0).text, long.get(1).text, "variants differ");
    }

    #[test]
    fn generated_prompts_are_deterministic_per_seed() {
        let a = PromptSet::generated(100, 1);
        let b = PromptSet::generated(100, 1);
        let c = PromptSet::generated(100, 2);
        assert_eq!(a.get(3).text, b.get(3).text);
        assert_ne!(a.get(3).text, c.get(3).text);
    }

    #[test]
    fn every_word_is_a_single_plain_word() {
        assert!(WORDS
            .iter()
            .all(|w| w.chars().all(|c| c.is_ascii_lowercase())));
    }
}
