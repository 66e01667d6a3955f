//! Which free slot a new request goes to: the one whose cached context shares the longest
//! prefix with its prompt, as llama.cpp's server picks slots. A runtime that reuses a slot's
//! prefix (the CPU runtime; perhaps Rockchip's with a prompt cache) then prefills a system
//! prompt shared by many requests once per slot, not once per request. Continuing requests
//! never move: they keep their slot, whose cache holds their whole context. Across the
//! instances of a model, an idle instance leaves a waiting request to another idle one that
//! holds much more of its prompt ([`better_elsewhere`]).

/// Items (bytes of text, token ids) two sequences share at their start.
pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Of a prompt of `prompt_tokens` tokens and `prompt_bytes` bytes, the tokens its first
/// `bytes` hold, estimated in proportion (the scheduler sees text, the runtime counts tokens).
pub fn tokens_in(prompt_tokens: usize, prompt_bytes: usize, bytes: f64) -> f64 {
    if prompt_bytes == 0 {
        return 0.0;
    }
    prompt_tokens as f64 * bytes / prompt_bytes as f64
}

/// Assigns each prompt, in order (oldest first), the free slot whose `cached` text shares the
/// longest prefix with it; ties go to the lowest slot. Returns one slot per prompt, or fewer
/// when the free slots run out.
pub fn assign(free: &[usize], cached: &[&[u8]], prompts: &[&[u8]]) -> Vec<usize> {
    let mut free: Vec<usize> = free.to_vec();
    free.sort_unstable();
    let mut out = Vec::with_capacity(prompts.len().min(free.len()));
    for p in prompts {
        let best = free
            .iter()
            .enumerate()
            .max_by(|(_, &a), (_, &b)| {
                let (ca, cb) = (
                    common_prefix(cached.get(a).copied().unwrap_or(&[]), p),
                    common_prefix(cached.get(b).copied().unwrap_or(&[]), p),
                );
                // Longest prefix first; among equals the lower slot (max_by keeps the last
                // maximum, so a higher index must compare as smaller).
                ca.cmp(&cb).then(b.cmp(&a))
            })
            .map(|(i, _)| i);
        let Some(i) = best else { break };
        out.push(free.remove(i));
    }
    out
}

/// Bytes of a prompt another instance must hold beyond what this one holds before a request
/// is left to it: a few tokens are not worth handing the request over.
pub const ELSEWHERE_MIN_GAIN: usize = 64;

/// The longest prefix of `prompt` that one of `held` (texts a runtime holds) starts with.
pub fn best_prefix(held: &[Vec<u8>], prompt: &[u8]) -> usize {
    held.iter()
        .map(|h| common_prefix(h, prompt))
        .max()
        .unwrap_or(0)
}

/// Whether `prompt` is better placed elsewhere: `elsewhere` (the longest prefix of it that
/// another idle instance holds) exceeds `here` (this instance's) by [`ELSEWHERE_MIN_GAIN`].
pub fn better_elsewhere(here: usize, elsewhere: usize) -> bool {
    elsewhere >= here.saturating_add(ELSEWHERE_MIN_GAIN)
}

/// Prompt tokens a new request is expected to prefill: those past the longest prefix the
/// runtime can reuse, either the cached text of the free slot it would take (the best of
/// `free`, a bit per slot, which it then takes; reused at `own_reuse`, 0 to 1, what the
/// runtime was seen to keep of a slot's prefix) or the loaded prompt-cache file's prefix
/// (reused whole, in any slot: the runtime loaded it). Counted in proportion to bytes; at
/// least one token, whose logits start the reply.
pub fn expected_prefill(
    prompt: &[u8],
    prompt_tokens: usize,
    cached: &[Vec<u8>],
    free: &mut u64,
    file_prefix: &[u8],
    own_reuse: f64,
) -> usize {
    let best = (0..cached.len().min(64))
        .filter(|&i| *free & (1 << i) != 0)
        .map(|i| (common_prefix(&cached[i], prompt), std::cmp::Reverse(i)))
        .max();
    let own = match best {
        Some((n, std::cmp::Reverse(i))) => {
            *free &= !(1 << i);
            n
        }
        None => 0,
    };
    if prompt.is_empty() {
        return prompt_tokens.max(1);
    }
    let file = if prompt.starts_with(file_prefix) {
        file_prefix.len()
    } else {
        0
    };
    let shared = (own as f64 * own_reuse.clamp(0.0, 1.0)).max(file as f64);
    let left = prompt_tokens as f64 - tokens_in(prompt_tokens, prompt.len(), shared);
    (left.ceil() as usize).clamp(1, prompt_tokens.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_goes_where_its_prefix_is_cached() {
        let cached: Vec<&[u8]> = vec![b"system A: hello", b"", b"system B: hi", b"system A"];
        let slots = assign(
            &[0, 1, 2, 3],
            &cached,
            &[b"system B: what", b"system A: help"],
        );
        assert_eq!(slots, vec![2, 0]);
    }

    #[test]
    fn ties_take_the_lowest_free_slot_and_slots_run_out() {
        let cached: Vec<&[u8]> = vec![b"", b"", b"", b""];
        assert_eq!(assign(&[3, 1, 2], &cached, &[b"x", b"y"]), vec![1, 2]);
        assert_eq!(assign(&[2], &cached, &[b"x", b"y"]), vec![2]);
        assert!(assign(&[], &cached, &[b"x"]).is_empty());
    }

    #[test]
    fn a_newcomer_prefills_what_its_free_slot_or_the_file_does_not_hold() {
        let prompt = b"system prompt of forty bytes, and a q?";
        let cached = vec![b"system prompt of forty bytes, other".to_vec(), Vec::new()];
        let all = || 0b11u64;
        // A runtime that reuses what its slots hold: only the question is left, and the
        // slot that holds the prefix is taken.
        let mut free = all();
        assert!(expected_prefill(prompt, 40, &cached, &mut free, b"", 1.0) < 15);
        assert_eq!(free, 0b10);
        // The next newcomer gets the empty slot: all of it.
        assert_eq!(
            expected_prefill(prompt, 40, &cached, &mut free, b"", 1.0),
            40
        );
        // A slot that is not free helps nobody.
        let mut busy = 0b10u64;
        assert_eq!(
            expected_prefill(prompt, 40, &cached, &mut busy, b"", 1.0),
            40
        );
        // One that reuses nothing of its slots prefills all of it ...
        assert_eq!(
            expected_prefill(prompt, 40, &cached, &mut all(), b"", 0.0),
            40
        );
        // ... unless the prompt-cache file it loaded holds the prefix, in any slot.
        let file = b"system prompt of forty bytes";
        assert!(expected_prefill(prompt, 40, &cached, &mut 0, file, 0.0) < 15);
        // A file of another prefix is no help; nor is an empty prompt a division by zero.
        assert_eq!(
            expected_prefill(prompt, 40, &[], &mut 0, b"other prefix", 0.0),
            40
        );
        assert_eq!(expected_prefill(b"", 0, &[], &mut 0, b"", 1.0), 1);
        let same = [prompt.to_vec()];
        assert_eq!(expected_prefill(prompt, 40, &same, &mut 1, b"", 1.0), 1);
    }

    #[test]
    fn a_request_is_left_to_the_instance_holding_much_more_of_it() {
        let system = vec![b's'; 300];
        let prompt = [system.as_slice(), b"question"].concat();
        let holds_it = vec![Vec::new(), system.clone()];
        let holds_a_bit = vec![system[..40].to_vec()];
        assert_eq!(best_prefix(&holds_it, &prompt), 300);
        assert_eq!(best_prefix(&holds_a_bit, &prompt), 40);
        assert_eq!(best_prefix(&[], &prompt), 0);
        // 260 bytes more elsewhere: worth leaving; the other way round, never.
        assert!(better_elsewhere(40, 300));
        assert!(!better_elsewhere(300, 40));
        // A few tokens more elsewhere are not worth a hand-over; nor is a tie.
        assert!(!better_elsewhere(300, 300 + ELSEWHERE_MIN_GAIN - 1));
        assert!(better_elsewhere(300, 300 + ELSEWHERE_MIN_GAIN));
        assert!(!better_elsewhere(0, 0));
    }

    #[test]
    fn a_taken_slot_is_not_given_twice() {
        let cached: Vec<&[u8]> = vec![b"same prefix", b"other"];
        assert_eq!(
            assign(&[0, 1], &cached, &[b"same prefix 1", b"same prefix 2"]),
            vec![0, 1]
        );
    }
}
