//! Continuous batching through the HTTP API on the default model (ABI 1.3): a greedy reply
//! whose run is cut and re-formed again and again, as short requests arrive beside it, reads
//! exactly as the same reply served alone; the resumed runs reuse the slot's prefix.
//! Runs are cut by pausing here; `server_reform_abi_1_2.rs` runs the same on the 1.2 ABI,
//! cutting by `rkllm_abort`.

mod common;
#[path = "common/reform.rs"]
mod reform;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn greedy_replies_cut_and_resumed_read_as_uninterrupted_ones() {
    reform::cut_replies_equal_uninterrupted_ones("", "pause").await;
}
