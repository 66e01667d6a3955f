//! As `server_probe.rs`, with the CPU runtime speaking ABI 1.2: the probe finds 1.2 by the
//! layouts alone, and rkserve, whose default family is 1.3, takes 1.2 from the report given
//! as runtime.probe. Its own test binary: the server inherits RKLLM_CPU_ABI from this one.

mod common;
#[path = "common/probe.rs"]
mod probe;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configured_probe_report_chooses_the_family_n_batch_and_cut_on_abi_1_2() {
    std::env::set_var("RKLLM_CPU_ABI", "1.2");
    let models = common::synthetic_models(&[("probed", probe::FAULTY)]);
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("report.json");
    let (report, printed) = probe::probe(&models.path().join("probed.toml"), "1.2", &json, &[]);
    probe::assert_faulty_findings(&report, &printed, "1.2");
    let extra = format!("[runtime]\nprobe = {:?}\n", json.to_str().unwrap());
    probe::assert_server_takes_the_probe(models.path(), &extra, "1.2").await;
}
