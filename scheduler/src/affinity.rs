//! Which free slot a new request goes to: the one whose cached context shares the longest
//! prefix with its prompt, as llama.cpp's server picks slots, or an empty one where that
//! prefix is a few template bytes ([`pick`]). A runtime that reuses a slot's
//! prefix (the CPU runtime; perhaps Rockchip's with a prompt cache) then prefills a system
//! prompt shared by many requests once per slot, not once per request. Continuing requests
//! never move: they keep their slot, whose cache holds their whole context. Across the
//! instances of a model, an idle instance leaves a waiting request to another idle one that
//! holds much more of its prompt, or that has an empty slot where it would evict one
//! ([`better_elsewhere`]).

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

/// Of the free slots, the one a prompt goes to, given what each shares with it (`shared`) and
/// whether it holds anything (`held`): the longest shared prefix, the lowest slot among
/// equals. A slot that shares less than [`ELSEWHERE_MIN_GAIN`] bytes but holds something is
/// passed over for an empty one, as llama.cpp's server takes an unused slot when no slot's
/// cache is similar enough: a few template bytes are not worth evicting a conversation its
/// next turn would reuse. Returns the slot and what it shares with the prompt.
fn pick(
    free: impl Iterator<Item = usize> + Clone,
    shared: impl Fn(usize) -> usize,
    held: impl Fn(usize) -> bool,
) -> Option<(usize, usize)> {
    let (n, std::cmp::Reverse(best)) = free
        .clone()
        .map(|s| (shared(s), std::cmp::Reverse(s)))
        .max()?;
    if n < ELSEWHERE_MIN_GAIN && held(best) {
        if let Some(empty) = free.filter(|&s| !held(s)).min() {
            // A slot that holds nothing shares nothing.
            return Some((empty, 0));
        }
    }
    Some((best, n))
}

/// Assigns each prompt, in order (oldest first), a free slot by [`pick`]. Returns one slot
/// per prompt, or fewer when the free slots run out.
pub fn assign(free: &[usize], cached: &[&[u8]], prompts: &[&[u8]]) -> Vec<usize> {
    let mut free: Vec<usize> = free.to_vec();
    let text = |s: usize| cached.get(s).copied().unwrap_or(&[]);
    let mut out = Vec::with_capacity(prompts.len().min(free.len()));
    for p in prompts {
        let chosen = pick(
            free.iter().copied(),
            |s| common_prefix(text(s), p),
            |s| !text(s).is_empty(),
        );
        let Some((slot, _)) = chosen else { break };
        free.retain(|&s| s != slot);
        out.push(slot);
    }
    out
}

/// Bytes of a prompt another instance must hold beyond what this one holds before a request
/// is left to it; also the least shared prefix worth keeping a slot for. A few tokens are not
/// worth handing the request over, nor evicting what a slot holds.
pub const ELSEWHERE_MIN_GAIN: usize = 64;

/// What an instance's runtime holds, as placement sees it for one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    /// The longest prefix of the prompt that one of its texts starts with.
    pub prefix: usize,
    /// One of its slots holds nothing: the prompt can go there without evicting anything.
    pub empty_slot: bool,
}

/// `held` (an instance's slot texts, and its prompt-cache file's prefix) for `prompt`.
pub fn holding(held: &[Vec<u8>], prompt: &[u8]) -> Holding {
    Holding {
        prefix: held
            .iter()
            .map(|h| common_prefix(h, prompt))
            .max()
            .unwrap_or(0),
        empty_slot: held.iter().any(Vec::is_empty),
    }
}

/// Whether a prompt is better placed on another idle instance (`there`) than here: there
/// holds [`ELSEWHERE_MIN_GAIN`] bytes more of it; or neither holds enough of it to matter
/// and there it fills an empty slot, where here it would evict what a slot holds (as
/// llama.cpp's server takes a free slot over one whose cache is worth keeping).
pub fn better_elsewhere(here: Holding, there: Holding) -> bool {
    let useless = |h: Holding| h.prefix < ELSEWHERE_MIN_GAIN;
    there.prefix >= here.prefix.saturating_add(ELSEWHERE_MIN_GAIN)
        || (useless(here) && useless(there) && there.empty_slot && !here.empty_slot)
}

/// Prompt tokens a new request is expected to prefill: those past the longest prefix the
/// runtime can reuse, either the cached text of the free slot it would take (by [`pick`] of
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
    let bits = *free;
    let chosen = pick(
        (0..cached.len().min(64)).filter(|&i| bits & (1 << i) != 0),
        |i| common_prefix(&cached[i], prompt),
        |i| !cached[i].is_empty(),
    );
    let own = match chosen {
        Some((i, shared)) => {
            *free &= !(1 << i);
            shared
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
        let a = [vec![b'a'; 80], b": hello".to_vec()].concat();
        let b = [vec![b'b'; 80], b": hi".to_vec()].concat();
        let cached: Vec<&[u8]> = vec![&a, b"", &b, &a[..80]];
        let (qa, qb) = (
            [&a[..80], b": help"].concat(),
            [&b[..80], b": what"].concat(),
        );
        let slots = assign(&[0, 1, 2, 3], &cached, &[&qb, &qa]);
        assert_eq!(slots, vec![2, 0]);
    }

    #[test]
    fn a_prompt_sharing_only_a_few_bytes_takes_an_empty_slot_over_evicting() {
        let conversation =
            b"<|im_start|>system\nYou write code.<|im_end|>\n<|im_start|>user\nA long talk";
        let cached: Vec<&[u8]> = vec![conversation, b"", b""];
        let other: &[u8] = b"<|im_start|>system\nYou plan train trips.";
        assert!(common_prefix(conversation, other) < ELSEWHERE_MIN_GAIN);
        // The lowest empty slot, not the conversation's, though it shares a few bytes.
        assert_eq!(assign(&[0, 1, 2], &cached, &[other]), vec![1]);
        // With no empty slot free, the best one all the same.
        assert_eq!(assign(&[0], &cached, &[other]), vec![0]);
        // The conversation's next turn shares all of it: its slot.
        let next = [conversation.as_slice(), b" and more"].concat();
        assert_eq!(assign(&[0, 1, 2], &cached, &[&next]), vec![0]);
        // The estimate follows the same choice: the empty slot, so all of the prompt.
        let owned: Vec<Vec<u8>> = cached.iter().map(|c| c.to_vec()).collect();
        let mut free = 0b111u64;
        assert_eq!(expected_prefill(other, 12, &owned, &mut free, b"", 1.0), 12);
        assert_eq!(free, 0b101);
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
        let system = b"a system prompt long enough to be worth keeping a slot for it all, ";
        let prompt = [system.as_slice(), b"and a question?"].concat();
        let prompt = prompt.as_slice();
        let cached = vec![[system.as_slice(), b"other"].concat(), Vec::new()];
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
        let file = system.as_slice();
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
        let holds_it = holding(&[Vec::new(), system.clone()], &prompt);
        let holds_a_bit = holding(&[system[..40].to_vec()], &prompt);
        assert_eq!(holds_it.prefix, 300);
        assert_eq!(holds_a_bit.prefix, 40);
        assert_eq!(holding(&[], &prompt).prefix, 0);
        // 260 bytes more elsewhere: worth leaving; the other way round, never.
        assert!(better_elsewhere(holds_a_bit, holds_it));
        assert!(!better_elsewhere(holds_it, holds_a_bit));
        // A few tokens more elsewhere are not worth a hand-over; nor is a tie.
        let full = |prefix| Holding {
            prefix,
            empty_slot: false,
        };
        assert!(!better_elsewhere(
            full(300),
            full(300 + ELSEWHERE_MIN_GAIN - 1)
        ));
        assert!(better_elsewhere(full(300), full(300 + ELSEWHERE_MIN_GAIN)));
        assert!(!better_elsewhere(full(0), full(0)));
    }

    #[test]
    fn a_prompt_nobody_holds_goes_where_it_evicts_nothing() {
        let prompt = b"<|im_start|>system\nYou plan train trips.";
        // Here every slot holds another system prompt (a few template bytes shared); there
        // a slot holds nothing.
        let here = holding(&[b"<|im_start|>system\nYou write code.".to_vec()], prompt);
        let there = holding(
            &[b"<|im_start|>system\nYou cook.".to_vec(), Vec::new()],
            prompt,
        );
        assert!(here.prefix > 0 && here.prefix < ELSEWHERE_MIN_GAIN);
        assert!(there.empty_slot && !here.empty_slot);
        assert!(better_elsewhere(here, there));
        // Not the other way round, nor when both have an empty slot.
        assert!(!better_elsewhere(there, here));
        assert!(!better_elsewhere(there, there));
        // A prefix worth keeping here stays here, empty slot elsewhere or not.
        let long = [vec![b'x'; 100], b"q".to_vec()].concat();
        let holds_long = holding(&[vec![b'x'; 100]], &long);
        assert!(!better_elsewhere(holds_long, holding(&[Vec::new()], &long)));
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
