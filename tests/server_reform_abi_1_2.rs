//! As `server_reform.rs`, on the 1.2 ABI (sampling and max_new_tokens per handle). Its own
//! test binary: the CPU runtime reads RKLLM_CPU_ABI once per process, and the server inherits
//! it from this one.

mod common;
#[path = "common/reform.rs"]
mod reform;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn greedy_replies_cut_and_resumed_read_as_uninterrupted_ones_on_abi_1_2() {
    std::env::set_var("RKLLM_CPU_ABI", "1.2");
    reform::cut_replies_equal_uninterrupted_ones("abi = \"1.2\"", "abort").await;
}
