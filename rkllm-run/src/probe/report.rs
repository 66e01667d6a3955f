//! The probe's readable report on stdout: the files, one line per check as it ends, then the
//! batching curve and the recommendations.

use rkllm::probe_report::{CheckResult, FileId, ProbeReport, Status};

fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{bytes} B")
    }
}

pub fn header(library: &FileId, model: &FileId) {
    println!("rkllm-run probe");
    for (what, f) in [("library", library), ("model", model)] {
        println!(
            "{what:<8} {} ({}, sha256 {})",
            f.path.display(),
            size(f.size),
            f.sha256
        );
    }
    println!();
    println!(
        "{:<14} {:<28} {:<10} {:>8} {:>8}  detail",
        "check", "arg", "result", "time", "VmHWM"
    );
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Failed => "FAILED",
        Status::Crashed => "CRASHED",
        Status::TimedOut => "TIMED OUT",
        Status::Skipped => "skipped",
    }
}

pub fn line(r: &CheckResult) {
    let hwm = r
        .vm_hwm_mb
        .map_or("-".to_string(), |m| format!("{m:.0} MB"));
    println!(
        "{:<14} {:<28} {:<10} {:>7.1}s {:>8}  {}",
        r.check,
        r.arg,
        status(r.status),
        r.elapsed_ms / 1000.0,
        hwm,
        r.detail
    );
}

pub fn summary(r: &ProbeReport) {
    println!();
    match (&r.family, &r.exported_family) {
        (Some(f), Some(e)) if f == e => {
            println!("ABI family: {f} (the library says {e}: agreed)")
        }
        (Some(f), Some(e)) => println!(
            "ABI family: {f}, BUT the library says {e}: the layouts' symptoms disagree with it"
        ),
        (Some(f), None) => println!("ABI family: {f}"),
        (None, _) => {
            println!("ABI family: none initialised and ran cleanly; nothing else was checked")
        }
    }
    if !r.batch_curve.is_empty() {
        let points: Vec<String> = r
            .batch_curve
            .iter()
            .map(|p| format!("{}: {:.1} tok/s ({:.2}x)", p.n_batch, p.tok_per_s, p.ratio))
            .collect();
        println!("decode batching: {}", points.join(", "));
        if let Some(a) = r.batch_alpha {
            println!("  a synthetic profile of this board needs timing.batch_alpha = {a}");
        }
    }
    if let Some(m) = r.peak_vm_hwm_mb {
        println!("peak memory (VmHWM of any check): {m:.0} MB");
    }
    let rec = &r.recommendations;
    println!(
        "recommendations: runtime.abi = {}, scheduler.n_batch at most {}, scheduler.reform = {}{}",
        rec.family.as_deref().unwrap_or("(none)"),
        rec.max_n_batch,
        if rec.reform { "auto" } else { "off" },
        rec.reform_via
            .as_ref()
            .map(|v| format!(", scheduler.reform_via = {v}"))
            .unwrap_or_default()
    );
}
