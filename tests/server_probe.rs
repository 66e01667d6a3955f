//! The board probe against the CPU runtime speaking ABI 1.3, and rkserve reading its report
//! from the models directory's probe cache; a report about another model is ignored.

mod common;
#[path = "common/probe.rs"]
mod probe;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cached_probe_report_chooses_n_batch_and_how_runs_are_cut_on_abi_1_3() {
    let models = common::synthetic_models(&[("probed", probe::FAULTY)]);
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("report.json");
    let cache = models.path().join("probe");
    let (report, printed) = probe::probe(
        &models.path().join("probed.toml"),
        "1.3",
        &json,
        &["--cache", cache.to_str().unwrap()],
    );
    probe::assert_faulty_findings(&report, &printed, "1.3");
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "one cached report"
    );
    probe::assert_server_takes_the_probe(models.path(), "", "1.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_about_another_model_is_ignored_and_explicit_settings_win() {
    let models = common::synthetic_models(&[
        ("probed", probe::FAULTY),
        ("other", "[timing]\ndecode_step_ms = 1.0\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("report.json");
    let (report, _) = probe::probe(&models.path().join("probed.toml"), "1.3", &json, &[]);
    assert_eq!(report["recommendations"]["max_n_batch"], 4);
    let extra = format!(
        "[runtime]\nprobe = {:?}\n\n[scheduler]\nreform_via = \"pause\"\n",
        json.to_str().unwrap()
    );
    let server = common::Server::start(
        models.path(),
        &common::config(&["other", "probed"], &extra),
        &[],
    )
    .await;
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ignoring probe report") && l.contains("other")),
        "no warning for the other model:\n{log}"
    );
    assert_eq!(server.loaded("other").await["n_batch"], 8);
    let line = log
        .lines()
        .find(|l| l.contains("probe report") && l.contains("took"))
        .unwrap_or_else(|| panic!("no probe line:\n{log}"));
    assert!(line.contains("n_batch 4 (capped from 8)"), "{line}");
    assert!(
        line.contains("your settings win over it: kept reform_via pause (the probe says abort)"),
        "{line}"
    );
    assert_eq!(server.loaded("probed").await["n_batch"], 4);
}
